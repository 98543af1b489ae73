"""SSH connections whose every step is bounded by a deadline.

Why not ``SSHClient.connect``: it cannot apply a changed-key policy (it raises
before asking), and its timeouts are per step, not per overall budget. Here
TCP connect, banner, key exchange, authentication, channel open and command
run each get at most what is left of the caller's deadline.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field

import paramiko

from xenapi_driver.readiness.errors import UsageError
from xenapi_driver.readiness.hostkeys import HostKeyOutcome, HostKeyVerifier
from xenapi_driver.readiness.timing import Deadline

DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
OUTPUT_LIMIT = 64 * 1024  # keep the last 64 KiB of each stream; scripts can be chatty


class Unreachable(Exception):
    """The host did not answer SSH this time (refused, reset, no banner, timed out)."""


class AuthFailed(Exception):
    """SSH answered but refused our key (normal while an installer sets up root's keys)."""


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to connect. ``connect_timeout`` caps each attempt."""

    host: str
    port: int = 22
    username: str = "root"
    key_filename: str | None = None
    connect_timeout: float = 30.0
    passphrase: str | None = field(default=None, repr=False)


def load_private_key(key_filename: str | None, passphrase: str | None = None) -> paramiko.PKey:
    """Load the client key once, with an actionable error (never echoing the passphrase)."""
    candidates = [key_filename] if key_filename else [os.path.expanduser(p) for p in DEFAULT_KEY_FILES]
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
        if key_filename:
            raise UsageError(f"SSH key file {key_filename} does not exist")
        raise UsageError(f"no SSH key given and none of {', '.join(DEFAULT_KEY_FILES)} exists; pass --key")
    try:
        return paramiko.PKey.from_path(path, password=passphrase)
    except paramiko.PasswordRequiredException as exc:
        raise UsageError(f"SSH key {path} is encrypted; give its passphrase") from exc
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise UsageError(f"cannot load SSH key {path}: {type(exc).__name__}: {exc}") from exc


@dataclass
class CommandResult:
    """What a remote command did. ``exit_status`` is None when it never reported one."""

    exit_status: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    disconnected: bool = False


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, EOFError):
        return "connection closed by peer"
    return text


class SSHConnection:
    """One authenticated SSH transport; run bounded commands over it."""

    def __init__(self, transport: paramiko.Transport, target: SSHTarget, outcome: HostKeyOutcome) -> None:
        self.transport = transport
        self.target = target
        self.host_key = outcome

    @property
    def active(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        try:
            self.transport.close()
        except Exception:  # noqa: BLE001 - closing a dead transport must never fail a check
            pass

    def run(
        self, command: str, deadline: Deadline, timeout: float | None = None, stdin: bytes = b""
    ) -> CommandResult:
        """Run ``command``; never wait past ``deadline`` (nor ``timeout`` when given).

        Raises :class:`Unreachable` when the channel cannot even be opened.
        A connection lost mid-command is reported as ``disconnected`` with
        the output gathered so far: for a script that reboots the host that
        is the expected ending.
        """
        own = Deadline(deadline.bound(timeout if timeout is not None else deadline.remaining))
        try:
            channel = self.transport.open_session(timeout=max(own.remaining, 0.001))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(f"cannot open an SSH channel: {_describe(exc)}") from exc
        out, err = bytearray(), bytearray()
        # exec_command() waits for the server's reply without any timeout; a
        # host that vanished without a reset would hold it for many minutes.
        # The watchdog closes the transport at the deadline, which wakes it.
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            self.close()

        watchdog = threading.Timer(own.remaining + 0.25, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            channel.settimeout(max(own.remaining, 0.001))
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            channel.settimeout(0.0)
            while True:
                idle = True
                while channel.recv_ready():
                    out += channel.recv(65536)
                    idle = False
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    idle = False
                del out[:-OUTPUT_LIMIT], err[:-OUTPUT_LIMIT]
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not channel.recv_stderr_ready()
                ):
                    if channel.exit_status == -1:  # paramiko's "closed without an exit status"
                        return CommandResult(None, _text(out), _text(err), disconnected=True)
                    return CommandResult(channel.exit_status, _text(out), _text(err))
                if fired.is_set():
                    return CommandResult(None, _text(out), _text(err), timed_out=True)
                if channel.closed or not self.transport.is_active():
                    return CommandResult(None, _text(out), _text(err), disconnected=True)
                if own.expired:
                    return CommandResult(None, _text(out), _text(err), timed_out=True)
                if idle:
                    time.sleep(min(0.05, own.remaining) or 0)
        except TimeoutError:
            return CommandResult(None, _text(out), _text(err), timed_out=True)
        except (paramiko.SSHException, OSError, EOFError):
            if fired.is_set():
                return CommandResult(None, _text(out), _text(err), timed_out=True)
            return CommandResult(None, _text(out), _text(err), disconnected=True)
        finally:
            watchdog.cancel()
            try:
                channel.close()
            except Exception:  # noqa: BLE001
                pass


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def connect(
    target: SSHTarget, pkey: paramiko.PKey, verifier: HostKeyVerifier, deadline: Deadline
) -> SSHConnection:
    """Open and authenticate one connection within ``min(connect_timeout, deadline)``.

    Raises :class:`Unreachable`, :class:`AuthFailed` or
    :class:`~xenapi_driver.readiness.errors.HostKeyMismatch`.
    """
    attempt = Deadline(deadline.bound(target.connect_timeout))
    if attempt.remaining <= 0:
        raise Unreachable("no time left to connect")
    try:
        sock = socket.create_connection((target.host, target.port), timeout=attempt.remaining)
    except OSError as exc:
        raise Unreachable(_describe(exc)) from exc
    transport: paramiko.Transport | None = None
    try:
        sock.settimeout(attempt.remaining or 0.001)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = max(attempt.remaining, 0.001)
        transport.handshake_timeout = max(attempt.remaining, 0.001)
        options = transport.get_security_options()
        options.key_types = verifier.preferred_key_types(target.host, target.port, tuple(options.key_types))
        done = threading.Event()
        transport.start_client(event=done)
        done.wait(attempt.remaining)
        if not transport.is_active():
            exc = transport.get_exception()
            raise Unreachable(_describe(exc) if exc else "SSH negotiation failed")
        if not done.is_set():
            raise Unreachable("no SSH banner/key exchange within the time left")
        outcome = verifier.verify(target.host, target.port, transport.get_remote_server_key())
        transport.auth_timeout = max(attempt.remaining, 0.001)
        try:
            transport.auth_publickey(target.username, pkey)
        except paramiko.BadAuthenticationType as exc:
            raise AuthFailed(f"server does not accept public keys for {target.username} ({exc})") from exc
        except paramiko.AuthenticationException as exc:
            if transport.is_active() and "timeout" not in str(exc).lower():
                raise AuthFailed(f"key for {target.username} was refused") from exc
            raise Unreachable(f"lost during authentication: {_describe(exc)}") from exc
        if not transport.is_authenticated():
            raise AuthFailed(f"key for {target.username} was refused")
        return SSHConnection(transport, target, outcome)
    except (Unreachable, AuthFailed):
        _close(transport, sock)
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        _close(transport, sock)
        raise Unreachable(_describe(exc)) from exc
    except BaseException:
        _close(transport, sock)
        raise


def _close(transport: paramiko.Transport | None, sock: socket.socket) -> None:
    try:
        if transport is not None:
            transport.close()
        sock.close()
    except Exception:  # noqa: BLE001
        pass


def probe_banner(host: str, port: int, deadline: Deadline, probe_timeout: float = 5.0) -> tuple[str, str]:
    """Look once whether ``host:port`` answers like an SSH server; no key exchange.

    Returns ``(verdict, detail)``: ``up`` (banner received), ``down``
    (refused, unreachable, closed, or silent for the whole ``probe_timeout``)
    or ``unknown`` (the overall deadline cut the probe short). Used to see a
    host go down after a halt.
    """
    budget = Deadline(deadline.bound(probe_timeout))
    cut_short = budget.timeout < probe_timeout
    if budget.remaining <= 0:
        return "unknown", "no time left to probe"
    data = b""
    try:
        with socket.create_connection((host, port), timeout=budget.remaining) as sock:
            while b"\n" not in data and len(data) < 512 and not budget.expired:
                sock.settimeout(max(budget.remaining, 0.001))
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        if cut_short:
            return "unknown", "no answer before the deadline"
        return "down", f"no SSH banner within {probe_timeout:g}s"
    except OSError as exc:
        return "down", _describe(exc)
    line = data.split(b"\n", 1)[0].strip()
    if line.startswith(b"SSH-"):
        return "up", line.decode("ascii", "replace")
    if not data:
        return "down", "connection closed without a banner"
    return "down", f"not an SSH server: {line[:60]!r}"
