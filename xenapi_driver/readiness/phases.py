"""The readiness phases: wait until ready, run a script, pre-snapshot, wait until down.

Why a class: the phases of one CI node share state that must survive a
reboot in between — above all the host key pinned at first contact, so a
reinstall is noticed even without a known_hosts file — and one event stream.
The module-level functions are one-call wrappers for the common cases.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Sequence

from xenapi_driver.readiness.errors import (
    ExitCode,
    HostKeyMismatch,
    ReadinessError,
    ReadinessResult,
    ReadinessTimeout,
    ScriptFailed,
    UsageError,
)
from xenapi_driver.readiness.events import EventCallback, EventRecorder
from xenapi_driver.readiness.hostkeys import HostKeyVerifier, known_hosts_name
from xenapi_driver.readiness.ssh import (
    AuthFailed,
    SSHConnection,
    SSHTarget,
    Unreachable,
    connect,
    load_private_key,
    probe_banner,
)
from xenapi_driver.readiness.timing import Backoff, Deadline

WAIT_READY = "wait-ready"
RUN_SCRIPT = "run-script"
PRE_SNAPSHOT = "pre-snapshot"
WAIT_DOWN = "wait-down"

DEFAULT_TIMEOUT = 1800.0  # an XenServer install with its reboot takes well over ten minutes
DEFAULT_INTERVAL = 5.0
DEFAULT_BACKOFF = 1.5
DEFAULT_MAX_INTERVAL = 60.0
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_HALT_TIMEOUT = 300.0
OUTPUT_TAIL = 4096  # characters of script output carried in the final event

# Uploads the script on stdin to a private temporary file and runs it there,
# so its own "#!" line picks the interpreter and it can read nothing else.
_UPLOAD_AND_RUN = (
    'tmp=$(mktemp "${TMPDIR:-/tmp}/xenapi-driver-script.XXXXXX") || exit 126; '
    "trap 'rm -f \"$tmp\"' EXIT; "
    'cat > "$tmp" && chmod 700 "$tmp" && "$tmp"'
)


def _tail(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class HostReadiness:
    """Readiness checks for one host over SSH, sharing host-key trust and events.

    :param host: address or name of the host (dom0).
    :param port: SSH port.
    :param username: SSH user (root in dom0).
    :param key_filename: private key; the usual ``~/.ssh/id_*`` when None.
    :param known_hosts: known_hosts file to trust and update; None pins in memory.
    :param accept_new_host_key: accept a host key that differs from the
        recorded one (after a reinstall). Reported as ``host-key-replaced``.
    :param reject_unknown_host_key: refuse a host with no recorded key
        instead of trusting it on first use.
    :param connect_timeout: cap for one connection attempt (TCP, banner,
        key exchange, authentication) and for one status check.
    :param on_event: called with each phase-transition event (a dict).

    One object serves one caller at a time (it caches one SSH connection);
    use one per thread.
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        username: str = "root",
        key_filename: str | os.PathLike | None = None,
        known_hosts: str | os.PathLike | None = None,
        accept_new_host_key: bool = False,
        reject_unknown_host_key: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_event: EventCallback | None = None,
        passphrase: str | None = None,
    ) -> None:
        if connect_timeout <= 0:
            raise UsageError(f"connect timeout must be > 0, got {connect_timeout}")
        self.target = SSHTarget(
            host,
            int(port),
            username,
            os.fspath(key_filename) if key_filename is not None else None,
            float(connect_timeout),
            passphrase,
        )
        self.name = known_hosts_name(host, int(port))
        self._known_hosts = known_hosts
        self._accept_new_host_key = accept_new_host_key
        self._reject_unknown = reject_unknown_host_key
        self._verifier: HostKeyVerifier | None = None
        self.recorder = EventRecorder(host, int(port), on_event)
        self._pkey = None
        self._conn: SSHConnection | None = None
        self.attempts = 0
        self.host_key_fingerprint: str | None = None
        self._script_started = 0.0

    # ------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Drop the cached connection (it is re-opened on demand)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> HostReadiness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prepare(self) -> None:
        """Load the key and known_hosts once; raises UsageError for bad local input."""
        if self._verifier is None:
            self._verifier = HostKeyVerifier(
                self._known_hosts, self._accept_new_host_key, self._reject_unknown
            )
        if self._pkey is None:
            self._pkey = load_private_key(self.target.key_filename, self.target.passphrase)

    def _connection(self, deadline: Deadline, phase: str) -> SSHConnection:
        if self._conn is not None and self._conn.active:
            return self._conn
        self.close()
        self.attempts += 1
        conn = connect(self.target, self._pkey, self._verifier, deadline)
        outcome = conn.host_key
        self.host_key_fingerprint = outcome.fingerprint
        if outcome.status == "new":
            self.recorder.emit(
                phase,
                "host-key-recorded",
                f"no recorded key for {outcome.name}: trusting {outcome.fingerprint} on first use",
                fingerprint=outcome.fingerprint,
            )
        elif outcome.status == "replaced":
            self.recorder.emit(
                phase,
                "host-key-replaced",
                f"host key of {outcome.name} changed from {outcome.previous_fingerprint} to "
                f"{outcome.fingerprint}; accepted because accepting a new host key was requested",
                fingerprint=outcome.fingerprint,
                previous_fingerprint=outcome.previous_fingerprint,
            )
        self._conn = conn
        return conn

    def _finish(
        self,
        phase: str,
        state: str,
        detail: str,
        error: ReadinessError | None = None,
        **extra: object,
    ) -> ReadinessResult:
        exit_code = ExitCode.OK if error is None else error.exit_code
        self.recorder.emit(phase, state, detail, exit_code=int(exit_code), **extra)
        return ReadinessResult(
            ok=error is None,
            exit_code=exit_code,
            phase=phase,
            state=state,
            host=self.target.host,
            port=self.target.port,
            elapsed=round(self.recorder.elapsed, 3),
            detail=detail,
            attempts=self.attempts,
            host_key_fingerprint=self.host_key_fingerprint,
            exit_status=extra.get("exit_status"),  # type: ignore[arg-type]
            events=self.recorder.events,
            error=error,
        )

    def _fail(self, phase: str, state: str, error: ReadinessError, **extra: object) -> ReadinessResult:
        return self._finish(phase, state, str(error), error, **extra)

    def _poll(
        self,
        phase: str,
        deadline: Deadline,
        delays: Backoff,
        check: Callable[[SSHConnection], tuple[bool, str]],
        goal: str,
    ) -> SSHConnection | ReadinessResult:
        """Connect and run ``check`` until it passes; a result means the phase ended in failure.

        Refusals, resets, missing banners, refused keys and failing checks
        are retried with back-off; a host-key mismatch is not.
        """
        state: str | None = None
        detail = ""
        while True:
            try:
                conn = self._connection(deadline, phase)
                passed, detail = check(conn)
                if passed:
                    return conn
                state = "waiting"
            except HostKeyMismatch as exc:
                self.close()
                return self._fail(phase, "host-key-mismatch", exc)
            except AuthFailed as exc:
                self.close()
                state, detail = "auth-failed", f"SSH answers but {exc} (still installing?)"
            except Unreachable as exc:
                self.close()
                if state is None or deadline.remaining >= 0.01:
                    state, detail = "unreachable", f"{self.name}: {exc}"
                # else: the last try was cut short by the deadline itself; the
                # state seen before it is the honest one to report.
            if self.recorder.transition(phase, state, detail) is not None:
                delays.reset()
            if deadline.remaining < 0.01:
                self.close()
                error = ReadinessTimeout(
                    f"{self.name} not {goal} after {deadline.timeout:g}s "
                    f"({self.attempts} connection attempt(s)); last state {state}: {detail}"
                )
                return self._fail(phase, "timeout", error)
            deadline.sleep(delays.next_delay())

    def _status_check(
        self, status_file: str, contains: str | None, deadline: Deadline
    ) -> Callable[[SSHConnection], tuple[bool, str]]:
        if contains is None:
            command, missing = f"test -e {shlex.quote(status_file)}", f"{status_file} does not exist yet"
        else:
            command = f"grep -qF -e {shlex.quote(contains)} {shlex.quote(status_file)}"
            missing = f"{status_file} does not contain {contains!r} yet"

        def check(conn: SSHConnection) -> tuple[bool, str]:
            result = conn.run(command, deadline, timeout=self.target.connect_timeout)
            if result.timed_out or result.disconnected:
                self.close()
                raise Unreachable("connection lost while checking the status file")
            if result.exit_status == 0:
                return True, ""
            if result.exit_status == 1:
                return False, missing
            return False, f"checking {status_file} failed (exit {result.exit_status}): {_tail(result.stderr)}"

        return check

    @staticmethod
    def _delays(interval: float, backoff: float, max_interval: float | None) -> Backoff:
        try:
            return Backoff(interval, backoff, max_interval)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    @staticmethod
    def _deadline(timeout: float) -> Deadline:
        try:
            return Deadline(timeout)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    # -------------------------------------------------------------- phases
    def wait_ready(
        self,
        status_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        interval: float = DEFAULT_INTERVAL,
        backoff: float = DEFAULT_BACKOFF,
        max_interval: float | None = DEFAULT_MAX_INTERVAL,
        status_contains: str | None = None,
        phase: str = WAIT_READY,
    ) -> ReadinessResult:
        """Wait until SSH answers, accepts our key and ``status_file`` exists.

        Without ``status_file`` the host is ready as soon as SSH logs in. The
        host may refuse, reset, stall or change its key (with
        ``accept_new_host_key``) in between; only the timeout or a refused
        host key end the wait early.
        """
        try:
            self._prepare()
            deadline, delays = self._deadline(timeout), self._delays(interval, backoff, max_interval)
        except UsageError as exc:
            return self._fail(phase, "failed", exc)
        goal = f"SSH and {status_file}" if status_file else "SSH"
        self.recorder.emit(
            phase, "started", f"waiting up to {timeout:g}s for {goal} as {self.target.username}@{self.name}"
        )
        check = (
            self._status_check(status_file, status_contains, deadline)
            if status_file
            else (lambda conn: (True, ""))
        )
        outcome = self._poll(phase, deadline, delays, check, "ready")
        if isinstance(outcome, ReadinessResult):
            return outcome
        detail = f"SSH answers and {status_file} exists" if status_file else "SSH answers and accepts the key"
        return self._finish(phase, "ready", detail, fingerprint=self.host_key_fingerprint)

    def run_script(
        self,
        script: str | os.PathLike | None = None,
        command: str | None = None,
        args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        script_timeout: float | None = None,
        disconnect_ok: bool = False,
        interval: float = DEFAULT_INTERVAL,
        backoff: float = DEFAULT_BACKOFF,
        max_interval: float | None = DEFAULT_MAX_INTERVAL,
        phase: str = RUN_SCRIPT,
    ) -> ReadinessResult:
        """Run a local ``script`` (uploaded) or a remote ``command`` once on the host.

        Waits (with back-off) for SSH first, then runs exactly once — scripts
        are not assumed idempotent. ``disconnect_ok`` makes a connection lost
        mid-run a success: the normal ending of a script that reboots or
        halts the host.
        """
        try:
            self._prepare()
            if (script is None) == (command is None):
                raise UsageError("give exactly one of a local script file or a remote command")
            if script is not None:
                try:
                    with open(script, "rb") as handle:
                        body = handle.read()
                except OSError as exc:
                    raise UsageError(f"cannot read script {script}: {exc.strerror or exc}") from exc
                remote, label = _UPLOAD_AND_RUN, f"script {os.fspath(script)}"
            else:
                body, remote, label = b"", command, f"command {command!r}"
            if args:
                remote = f"{remote} {' '.join(shlex.quote(str(a)) for a in args)}"
            deadline, delays = self._deadline(timeout), self._delays(interval, backoff, max_interval)
            if script_timeout is not None and script_timeout <= 0:
                raise UsageError(f"script timeout must be > 0, got {script_timeout}")
        except UsageError as exc:
            return self._fail(phase, "failed", exc)
        self.recorder.emit(phase, "started", f"running {label} on {self.target.username}@{self.name}")
        while True:
            outcome = self._poll(phase, deadline, delays, lambda conn: (True, ""), "reachable")
            if isinstance(outcome, ReadinessResult):
                return outcome
            own_limit = script_timeout is not None and script_timeout < deadline.remaining
            self.recorder.emit(phase, "running", f"{label} started")
            self._script_started = time.monotonic()
            try:
                result = outcome.run(remote, deadline, timeout=script_timeout, stdin=body)
                break
            except Unreachable as exc:
                # No channel, so the script never started: trying again is safe.
                self.close()
                self.recorder.transition(phase, "unreachable", f"{self.name}: {exc}")
                deadline.sleep(delays.next_delay())
        if disconnect_ok and result.exit_status not in (None, 0) and self._goes_away(outcome, deadline):
            # A reboot or halt often kills the script before sshd: the client
            # sees 143/137, then the connection drops. That is the expected end.
            result.disconnected, result.exit_status = True, None
        error: ReadinessError | None = None
        if result.exit_status == 0:
            state, detail = "succeeded", f"{label} exited 0"
        elif result.disconnected:
            self.close()
            state, detail = (
                "disconnected",
                f"connection closed while {label} ran (expected: it reboots/halts)",
            )
            if not disconnect_ok:
                state = "failed"
                error = ScriptFailed(
                    f"connection to {self.name} lost while {label} ran: {_tail(result.stderr)}"
                )
        elif result.timed_out:
            self.close()
            if own_limit:
                state = "failed"
                error = ScriptFailed(f"{label} did not finish within its timeout of {script_timeout:g}s")
            else:
                state = "timeout"
                error = ReadinessTimeout(f"{label} still running at the overall timeout {timeout:g}s")
        else:
            state = "failed"
            error = ScriptFailed(
                f"{label} exited with status {result.exit_status}: {_tail(result.stderr or result.stdout)}",
                exit_status=result.exit_status,
            )
        done = self._finish(
            phase,
            state,
            str(error) if error else detail,
            error,
            exit_status=result.exit_status,
            stdout_tail=result.stdout[-OUTPUT_TAIL:],
            stderr_tail=result.stderr[-OUTPUT_TAIL:],
        )
        done.stdout, done.stderr = result.stdout, result.stderr
        return done

    @staticmethod
    def _goes_away(conn: SSHConnection, deadline: Deadline, grace: float = 3.0) -> bool:
        """True when ``conn`` dies within ``grace`` seconds (the host is going down)."""
        watch = Deadline(deadline.bound(grace))
        while not watch.expired:
            if not conn.active:
                return True
            watch.sleep(0.05)
        return not conn.active

    def wait_down(
        self,
        timeout: float = DEFAULT_HALT_TIMEOUT,
        interval: float = 1.0,
        settle: float = 0.0,
        phase: str = WAIT_DOWN,
        settle_bound: Deadline | None = None,
    ) -> ReadinessResult:
        """Wait up to ``timeout`` until the host stops answering SSH, then ``settle`` seconds more.

        "Down" means no SSH banner: refused, unreachable, closed, or silent
        for a whole probe. Used after a halt so a snapshot never captures a
        running host. ``settle_bound`` (a caller's overall deadline) cuts the
        settling pause short.
        """
        try:
            deadline, delays = self._deadline(timeout), self._delays(interval, 1.0, interval)
        except UsageError as exc:
            return self._fail(phase, "failed", exc)
        self.close()
        self.recorder.emit(
            phase, "started", f"waiting up to {timeout:g}s for {self.name} to stop answering SSH"
        )
        while True:
            verdict, why = probe_banner(
                self.target.host, self.target.port, deadline, min(5.0, self.target.connect_timeout)
            )
            if verdict == "down":
                break
            if verdict == "up":
                self.recorder.transition(phase, "waiting-down", f"{self.name} still answers ({why})")
            if deadline.remaining < 0.01:
                return self._fail(
                    phase,
                    "timeout",
                    ReadinessTimeout(f"{self.name} still answers SSH after {timeout:g}s; it has not halted"),
                )
            deadline.sleep(delays.next_delay())
        if settle > 0:
            self.recorder.emit(phase, "settling", f"{self.name} stopped answering; waiting {settle:g}s more")
            (settle_bound or Deadline(settle)).sleep(settle)
        return self._finish(phase, "down", f"{self.name} no longer answers SSH ({why})")

    def pre_snapshot(
        self,
        script: str | os.PathLike | None = None,
        command: str | None = None,
        args: Sequence[str] = (),
        halt_timeout: float = DEFAULT_HALT_TIMEOUT,
        timeout: float | None = None,
        settle: float = 0.0,
        interval: float = DEFAULT_INTERVAL,
        backoff: float = DEFAULT_BACKOFF,
        max_interval: float | None = DEFAULT_MAX_INTERVAL,
    ) -> ReadinessResult:
        """Run the pre-snapshot script (which halts dom0) and wait for the halt.

        ``halt_timeout`` runs from the start of the script until the host has
        stopped answering SSH. ``timeout`` bounds everything (waiting for SSH
        first and ``settle`` included); it defaults to ``halt_timeout`` plus
        one connect timeout plus ``settle``. Succeeds once the host stopped
        answering SSH and ``settle`` seconds passed.
        """
        if timeout is None:
            timeout = halt_timeout + self.target.connect_timeout + settle
        try:
            overall = self._deadline(timeout)
        except UsageError as exc:
            return self._fail(PRE_SNAPSHOT, "failed", exc)
        ran = self.run_script(
            script,
            command,
            args,
            timeout=timeout,
            script_timeout=halt_timeout,
            disconnect_ok=True,
            interval=interval,
            backoff=backoff,
            max_interval=max_interval,
            phase=PRE_SNAPSHOT,
        )
        if not ran.ok:
            return ran
        halt_left = halt_timeout - (time.monotonic() - self._script_started)
        down = self.wait_down(
            timeout=max(0.0, min(overall.remaining, halt_left)),
            interval=min(interval, 1.0),
            settle=settle,
            phase=PRE_SNAPSHOT,
            settle_bound=overall,
        )
        down.stdout, down.stderr = ran.stdout, ran.stderr
        return down


def wait_for_host_ready(
    host: str,
    port: int = 22,
    username: str = "root",
    key_filename: str | os.PathLike | None = None,
    status_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    known_hosts: str | os.PathLike | None = None,
    accept_new_host_key: bool = False,
    *,
    backoff: float = DEFAULT_BACKOFF,
    max_interval: float | None = DEFAULT_MAX_INTERVAL,
    status_contains: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    reject_unknown_host_key: bool = False,
    on_event: EventCallback | None = None,
    passphrase: str | None = None,
) -> ReadinessResult:
    """Wait until ``host`` answers SSH with our key and ``status_file`` exists.

    The one call the driver and installer use wherever a host goes away and
    comes back (after ``pool.join``, after a toolstack restart). Returns a
    :class:`ReadinessResult`; call ``raise_for_status()`` on it to get an
    exception instead. See :class:`HostReadiness` for the parameters.
    """
    with HostReadiness(
        host,
        port,
        username,
        key_filename,
        known_hosts,
        accept_new_host_key,
        reject_unknown_host_key,
        connect_timeout,
        on_event,
        passphrase,
    ) as checker:
        return checker.wait_ready(status_file, timeout, interval, backoff, max_interval, status_contains)
