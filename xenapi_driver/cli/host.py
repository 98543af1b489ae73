"""``xenapi-driver host ...``: host readiness and CI-node preparation over SSH.

Subcommands (each prints one JSON line per phase transition on stdout and
exits with a documented code; see doc/source/ci-nodes.rst):

* ``wait-ready``   wait until SSH answers with our key and the status file exists
* ``run-script``   run a local script (or a remote command) once; optionally
                   wait for the status file afterwards (an installer that reboots)
* ``pre-snapshot`` run the pre-snapshot (halt) script and wait for the halt
* ``wait-down``    wait until the host stops answering SSH

Exit codes: 0 success, 1 timeout, 2 usage / bad local input, 3 host key
mismatch, 4 remote script failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from xenapi_driver.readiness import ExitCode, HostReadiness, ReadinessResult, json_line_writer
from xenapi_driver.readiness.phases import (
    DEFAULT_BACKOFF,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HALT_TIMEOUT,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_TIMEOUT,
)

EPILOG = (
    "exit codes: 0 success, 1 timeout, 2 usage or bad local input, 3 host key mismatch, "
    "4 remote script failed. stdout carries one JSON object per line: "
    '{"phase", "state", "host", "elapsed", "detail", ...}; the last line is the outcome.'
)


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from exc


def _seconds(text: str) -> float:
    value = _float(text, "number of seconds")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = _float(text, "number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _factor(text: str) -> float:
    value = _float(text, "number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"back-off factor must be >= 1, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from exc
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {text}")
    return value


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="address of the host (dom0)")
    group = parser.add_argument_group("SSH")
    group.add_argument("--port", type=_port, default=22, help="SSH port (default 22)")
    group.add_argument("--user", default="root", help="SSH user (default root)")
    group.add_argument("--key", dest="key_filename", help="private key file (default ~/.ssh/id_*)")
    group.add_argument(
        "--key-passphrase-env",
        metavar="VAR",
        help="name of an environment variable holding the key's passphrase (never pass it as an argument)",
    )
    group.add_argument(
        "--known-hosts",
        help="known_hosts file to check and update; without it the first key seen is pinned for this run",
    )
    group.add_argument(
        "--accept-new-host-key",
        "--accept-changed-host-key",
        dest="accept_new_host_key",
        action="store_true",
        help="accept (and record) a host key that differs from the recorded one, as after a reinstall; "
        "without it a changed key fails with exit code 3",
    )
    group.add_argument(
        "--reject-unknown-host-key",
        action="store_true",
        help="fail (exit 3) when no key is recorded for the host instead of trusting it on first use",
    )
    group.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        help=f"cap for one connection attempt or status check (default {DEFAULT_CONNECT_TIMEOUT:g}s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log SSH details to stderr")


def _add_polling_options(parser: argparse.ArgumentParser, timeout: float | None = DEFAULT_TIMEOUT) -> None:
    group = parser.add_argument_group("polling")
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=timeout,
        help=f"overall timeout (default {timeout:g}s)"
        if timeout is not None
        else "overall timeout (default: halt timeout + connect timeout + settle)",
    )
    group.add_argument(
        "--interval",
        type=_seconds,
        default=DEFAULT_INTERVAL,
        help=f"first delay between polls (default {DEFAULT_INTERVAL:g}s)",
    )
    group.add_argument(
        "--backoff",
        type=_factor,
        default=DEFAULT_BACKOFF,
        help=f"delay growth factor while nothing changes (default {DEFAULT_BACKOFF:g})",
    )
    group.add_argument(
        "--max-interval",
        type=_seconds,
        default=DEFAULT_MAX_INTERVAL,
        help=f"largest delay between polls (default {DEFAULT_MAX_INTERVAL:g}s)",
    )


def _add_status_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--status-file",
        required=required,
        help="path in dom0 whose existence means ready"
        + ("" if required else "; when given, wait for it after the script (an installer that reboots)"),
    )
    parser.add_argument("--status-contains", help="also require this text inside the status file")


def _add_script_options(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--script", help="local script file, uploaded and run in dom0 (its #! line applies)")
    what.add_argument("--command", dest="remote_command", help="remote shell command to run instead")
    parser.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for the script or command (repeat for more; each is shell-quoted)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    host = subparsers.add_parser(
        "host",
        help="Host readiness and CI-node preparation over SSH.",
        description="Host readiness and CI-node preparation over SSH.",
        epilog=EPILOG,
    )
    actions = host.add_subparsers(dest="host_command", metavar="ACTION")
    actions.required = True

    wait = actions.add_parser(
        "wait-ready",
        help="wait until SSH answers and the status file exists",
        description="Poll the host over SSH until it accepts our key and the status file exists, "
        "through reboots and (with --accept-new-host-key) reinstalls.",
        epilog=EPILOG,
    )
    _add_connection_options(wait)
    _add_status_options(wait, required=False)
    _add_polling_options(wait)
    wait.set_defaults(func=_wait_ready)

    run = actions.add_parser(
        "run-script",
        help="run a script once on the host",
        description="Wait for SSH, run a local script (uploaded) or a remote command once; "
        "with --status-file, then wait until the status file exists (for installers that reboot).",
        epilog=EPILOG,
    )
    _add_connection_options(run)
    _add_script_options(run)
    run.add_argument("--script-timeout", type=_seconds, help="fail (exit 4) if the script runs longer")
    run.add_argument(
        "--disconnect-ok",
        action="store_true",
        help="a connection lost while the script runs is success (the script reboots the host)",
    )
    _add_status_options(run, required=False)
    _add_polling_options(run)
    run.set_defaults(func=_run_script)

    snap = actions.add_parser(
        "pre-snapshot",
        help="run the pre-snapshot (halt) script and wait for the halt",
        description="Run the pre-snapshot script (typically a clean-up that ends in halt) and wait up to "
        "--halt-timeout for the host to stop answering SSH, so the snapshot never captures a running host.",
        epilog=EPILOG,
    )
    _add_connection_options(snap)
    _add_script_options(snap)
    snap.add_argument(
        "--halt-timeout",
        type=_seconds,
        default=DEFAULT_HALT_TIMEOUT,
        help="time from the start of the script until the host stops answering SSH "
        f"(default {DEFAULT_HALT_TIMEOUT:g}s)",
    )
    snap.add_argument(
        "--settle", type=_non_negative, default=0.0, help="extra seconds to wait after SSH went away"
    )
    _add_polling_options(snap, timeout=None)
    snap.set_defaults(func=_pre_snapshot)

    down = actions.add_parser(
        "wait-down",
        help="wait until the host stops answering SSH",
        description="Wait until the host no longer answers SSH (refused, unreachable or silent).",
        epilog=EPILOG,
    )
    down.add_argument("host", help="address of the host (dom0)")
    down.add_argument("--port", type=_port, default=22, help="SSH port (default 22)")
    down.add_argument("--timeout", type=_seconds, default=DEFAULT_HALT_TIMEOUT, help="overall timeout")
    down.add_argument("--interval", type=_seconds, default=1.0, help="delay between probes (default 1s)")
    down.add_argument("--settle", type=_non_negative, default=0.0, help="extra seconds after it went away")
    down.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    down.set_defaults(func=_wait_down)


def _checker(args: argparse.Namespace) -> HostReadiness:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.WARNING)
    # paramiko logs every refused banner as an ERROR with a traceback; the
    # JSON events already say it, so keep stderr readable unless asked.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    passphrase = None
    if getattr(args, "key_passphrase_env", None):
        passphrase = os.environ.get(args.key_passphrase_env)
        if passphrase is None:
            raise SystemExit(_usage(f"environment variable {args.key_passphrase_env} is not set"))
    return HostReadiness(
        args.host,
        port=args.port,
        username=getattr(args, "user", "root"),
        key_filename=getattr(args, "key_filename", None),
        known_hosts=getattr(args, "known_hosts", None),
        accept_new_host_key=getattr(args, "accept_new_host_key", False),
        reject_unknown_host_key=getattr(args, "reject_unknown_host_key", False),
        connect_timeout=getattr(args, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        on_event=json_line_writer(sys.stdout),
        passphrase=passphrase,
    )


def _usage(message: str) -> int:
    print(f"xenapi-driver host: error: {message}", file=sys.stderr)
    return int(ExitCode.USAGE)


def _report(result: ReadinessResult) -> int:
    if not result.ok:
        print(f"xenapi-driver host {result.phase}: {result.state}: {result.detail}", file=sys.stderr)
    return int(result.exit_code)


def _wait_ready(args: argparse.Namespace) -> int:
    with _checker(args) as checker:
        return _report(
            checker.wait_ready(
                args.status_file,
                timeout=args.timeout,
                interval=args.interval,
                backoff=args.backoff,
                max_interval=args.max_interval,
                status_contains=args.status_contains,
            )
        )


def _run_script(args: argparse.Namespace) -> int:
    if args.status_contains and not args.status_file:
        return _usage("--status-contains needs --status-file")
    with _checker(args) as checker:
        ran = checker.run_script(
            args.script,
            args.remote_command,
            args.args,
            timeout=args.timeout,
            script_timeout=args.script_timeout,
            disconnect_ok=args.disconnect_ok,
            interval=args.interval,
            backoff=args.backoff,
            max_interval=args.max_interval,
        )
        if not ran.ok or not args.status_file:
            return _report(ran)
        remaining = args.timeout - checker.recorder.elapsed
        if remaining <= 0:
            remaining = 0.001  # reports the timeout through the normal path
        return _report(
            checker.wait_ready(
                args.status_file,
                timeout=remaining,
                interval=args.interval,
                backoff=args.backoff,
                max_interval=args.max_interval,
                status_contains=args.status_contains,
            )
        )


def _pre_snapshot(args: argparse.Namespace) -> int:
    with _checker(args) as checker:
        return _report(
            checker.pre_snapshot(
                args.script,
                args.remote_command,
                args.args,
                halt_timeout=args.halt_timeout,
                timeout=args.timeout,
                settle=args.settle,
                interval=args.interval,
                backoff=args.backoff,
                max_interval=args.max_interval,
            )
        )


def _wait_down(args: argparse.Namespace) -> int:
    with _checker(args) as checker:
        return _report(checker.wait_down(timeout=args.timeout, interval=args.interval, settle=args.settle))
