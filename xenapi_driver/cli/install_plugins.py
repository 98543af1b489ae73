"""``xenapi-driver install-plugins``: put the dom0 plug-ins on XenServer / XCP-ng hosts."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "install-plugins",
        help="Install the dom0 plug-ins on XenServer / XCP-ng hosts over SSH.",
        description=(
            "Copy the dom0 plug-ins into /etc/xapi.d/plugins over SFTP, link /images and /boot/guest "
            "into the local SR, and set up root SSH trust between the given dom0s (for migration). "
            "Idempotent. Host keys are checked against known_hosts."
        ),
    )
    parser.add_argument("targets", nargs="+", metavar="[USER@]HOST[:PORT]", help="dom0s to install on")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    parser.add_argument("--identity", "-i", help="SSH private key file (default: your usual keys/agent)")
    parser.add_argument("--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)")
    parser.add_argument("--dry-run", action="store_true", help="only show what would change")
    parser.add_argument("--no-trust", action="store_true", help="do not set up SSH trust between the hosts")
    parser.add_argument(
        "--target-root",
        default="/",
        help="install below this directory instead of / (for tests; may contain {host} and {port})",
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="SSH connect timeout in seconds")
    parser.add_argument("--xapi-url", help="verify the installed version through this XAPI (pool master URL)")
    parser.add_argument("--xapi-username", default="root", help="XAPI user (default root)")
    parser.add_argument(
        "--xapi-password-file",
        help="file holding the XAPI password (or set XENAPI_DRIVER_XAPI_PASSWORD)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from xenapi_driver import installer

    password = os.environ.get("XENAPI_DRIVER_XAPI_PASSWORD")
    if args.xapi_password_file:
        try:
            with open(args.xapi_password_file, encoding="utf-8") as handle:
                password = handle.read().strip()
        except OSError as exc:
            print(f"error: cannot read --xapi-password-file: {exc.strerror}", file=sys.stderr)
            return 2
    if args.xapi_url and password is None:
        print(
            "error: --xapi-url needs a password (--xapi-password-file or XENAPI_DRIVER_XAPI_PASSWORD)",
            file=sys.stderr,
        )
        return 2
    try:
        targets = [installer.Target.parse(t, args.port) for t in args.targets]
        options = installer.Options(
            identity=args.identity,
            known_hosts=args.known_hosts,
            target_root=args.target_root,
            dry_run=args.dry_run,
            trust=not args.no_trust,
            timeout=args.timeout,
            xapi_url=args.xapi_url,
            xapi_username=args.xapi_username,
            xapi_password=password,
        )
        changes = installer.install(targets, options, say=lambda line: print(line, flush=True))
    except installer.InstallerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"dry run: {changes} change(s) would be made")
    return 0
