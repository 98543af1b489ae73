"""A real OpenSSH server on loopback, for tests that must talk to a real ``sshd``.

Why: readiness checks, plug-in installation and rsync-over-SSH must be proven
against the real OpenSSH server, not a mock. This helper starts
``/usr/sbin/sshd`` in the foreground (``-D -e``) on a free 127.0.0.1 port with
its own host key, its own ``sshd_config`` and one authorised client key, all
in a private temporary directory. Nothing on the machine's own sshd set-up is
read or changed (apart from creating the privilege-separation directory
``/run/sshd`` when it is missing, which sshd insists on).

It can play a host's life cycle: ``stop()`` / ``start()`` is a reboot (every
session is killed abruptly, the port is kept), ``regenerate_host_key()`` is a
reinstall (a new host key, so clients see a changed key), ``freeze()`` /
``thaw()`` is a hung host (TCP connects, nothing answers).

Sessions run with ``SHLVL=1`` so bash skips the machine's ``~/.bashrc`` (which
may block); commands run as the user running the tests (root here), whose
login shell runs them.

Usage::

    with LoopbackSSHServer() as server:
        client.connect("127.0.0.1", port=server.port, username=server.username,
                       key_filename=server.client_key_path)

Other test areas may import it (``from tests.sshd import LoopbackSSHServer``)
and build their own pytest fixture on it; ``tests/readiness/conftest.py``
has an example (``sshd`` fixture). Properties: ``host``, ``port``,
``username``, ``host_key_path``, ``client_key_path``, ``authorized_keys_path``,
``known_hosts_line``, ``host_key_fingerprint``; ``write_known_hosts(path)``;
``log_text()`` for assertion messages.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

SSHD_BINARY = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
_MARKER_VAR = "LOOPBACK_SSHD_ID"
SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")


class SSHServerError(RuntimeError):
    """The loopback sshd could not be started or stopped; the message carries its log."""


def sshd_available() -> bool:
    """True when this machine can run the loopback server (binary and ssh-keygen present)."""
    return os.access(SSHD_BINARY, os.X_OK) and os.access(SSH_KEYGEN, os.X_OK)


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _fingerprint_of_public_line(public_line: str) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a ``type base64 [comment]`` line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class LoopbackSSHServer:
    """One private ``sshd`` on 127.0.0.1, with its own keys and configuration.

    :param workdir: directory for keys, config and log; a fresh temporary
        directory (removed by :meth:`cleanup`) when omitted.
    :param key_type: ``ssh-keygen -t`` type for host and client keys.
    :param port: fixed port; a free one is chosen when omitted. The port is
        kept across :meth:`restart` so clients see "the same host" come back.
    :param extra_host_key_types: more host key types the server also offers
        (as real hosts offer several); :attr:`host_key_path` stays the main one.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        key_type: str = "ed25519",
        port: int | None = None,
        extra_host_key_types: tuple[str, ...] = (),
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="loopback-sshd-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_type = key_type
        self.username = getpass.getuser()
        self._port = port or free_port(self.host)
        self._process: subprocess.Popen | None = None
        self.marker = uuid.uuid4().hex
        self._cleaned_up = False
        self._lock = threading.RLock()  # start/stop/cleanup may come from helper threads
        self._log_file = None
        self.host_key_path = str(self.workdir / f"ssh_host_{key_type}_key")
        self.client_key_path = str(self.workdir / f"id_{key_type}")
        self.authorized_keys_path = str(self.workdir / "authorized_keys")
        self.config_path = str(self.workdir / "sshd_config")
        self.log_path = str(self.workdir / "sshd.log")
        self.pid_path = str(self.workdir / "sshd.pid")
        self._keygen(self.client_key_path)
        shutil.copyfile(self.client_key_path + ".pub", self.authorized_keys_path)
        self.extra_host_key_paths = {
            kind: str(self.workdir / f"ssh_host_{kind}_key") for kind in extra_host_key_types
        }
        self._keygen(self.host_key_path)
        for kind, path in self.extra_host_key_paths.items():
            self._keygen(path, kind)
        self._write_config()

    # ----------------------------------------------------------------- keys
    def _keygen(self, path: str, key_type: str | None = None) -> None:
        for stale in (path, path + ".pub"):
            if os.path.exists(stale):
                os.unlink(stale)
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", key_type or self.key_type, "-N", "", "-C", "loopback-sshd", "-f", path],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=30,
        )
        os.chmod(path, 0o600)

    def regenerate_host_key(self) -> None:
        """Replace the host key, as a reinstall does.

        sshd reads its host key when it starts, so a running server is
        restarted (a reinstall always ends in a reboot anyway).
        """
        with self._lock:
            running = self.running
            if running:
                self.stop()
            self._keygen(self.host_key_path)
            for kind, path in self.extra_host_key_paths.items():
                self._keygen(path, kind)
            if running:
                self.start()

    @property
    def host_public_key_line(self) -> str:
        """``type base64`` of the current host public key."""
        with open(self.host_key_path + ".pub", encoding="ascii") as handle:
            return " ".join(handle.read().split()[:2])

    @property
    def host_key_fingerprint(self) -> str:
        """OpenSSH ``SHA256:...`` fingerprint of the current host key."""
        return _fingerprint_of_public_line(self.host_public_key_line)

    @property
    def known_hosts_name(self) -> str:
        """How this server is named in a known_hosts file (``[127.0.0.1]:port``)."""
        return self.host if self._port == 22 else f"[{self.host}]:{self._port}"

    @property
    def known_hosts_line(self) -> str:
        """A known_hosts line for the current host key."""
        return f"{self.known_hosts_name} {self.host_public_key_line}"

    def write_known_hosts(self, path: str | os.PathLike) -> str:
        """Write a known_hosts file trusting the current host key; returns its path."""
        Path(path).write_text(self.known_hosts_line + "\n", encoding="ascii")
        return str(path)

    # --------------------------------------------------------------- config
    @property
    def port(self) -> int:
        return self._port

    def _write_config(self) -> None:
        sftp = next((p for p in SFTP_SERVER_CANDIDATES if os.path.exists(p)), None)
        lines = [
            f"Port {self._port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key_path}",
            *(f"HostKey {path}" for path in self.extra_host_key_paths.values()),
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "UseDNS no",
            "MaxStartups 100",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            # SHLVL=1: bash sources ~/.bashrc for commands run by sshd only at
            # shell level 1, so the machine's rc files (which may block, e.g.
            # on a pyenv rehash lock) never run in our sessions. The marker
            # lets stop() find every process a session left behind.
            f"SetEnv SHLVL=1 {_MARKER_VAR}={self.marker}",
        ]
        if sftp:
            lines.append(f"Subsystem sftp {sftp}")
        Path(self.config_path).write_text("\n".join(lines) + "\n", encoding="ascii")

    # ------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start sshd and return once it answers with an SSH banner."""
        with self._lock:
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        if self._cleaned_up:
            # A helper thread restarting the "host" after the test ended must
            # not leave an orphan sshd behind.
            raise SSHServerError("this loopback sshd was cleaned up; it cannot be started again")
        if self.running:
            return
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        except OSError:
            pass  # not root: sshd says what it misses in its log
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open while sshd runs
        self._process = subprocess.Popen(
            [SSHD_BINARY, "-D", "-e", "-f", self.config_path],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._close_log()
                self._process = None
                raise SSHServerError(f"sshd exited at start on port {self._port}:\n{self.log_text()}")
            if self._answers_banner():
                return
            time.sleep(0.05)
        self.stop()
        raise SSHServerError(
            f"sshd did not answer on port {self._port} within {timeout}s:\n{self.log_text()}"
        )

    def _answers_banner(self) -> bool:
        try:
            with socket.create_connection((self.host, self._port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def _marked_processes(self) -> list[int]:
        """Processes whose environment carries this server's marker (orphans included)."""
        needle = f"{_MARKER_VAR}={self.marker}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if needle in handle.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def _descendants(self, pid: int) -> list[int]:
        """Every process below ``pid`` (sessions, the user's commands), deepest last."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    stat = handle.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def stop(self, timeout: float = 15.0) -> None:
        """Stop sshd and kill every session it started, as a reboot does."""
        with self._lock:
            self._stop(timeout)

    def _stop(self, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        # Freeze first so no process can tear down gracefully (no exit status,
        # no channel close reaches the client): a reboot is abrupt. Repeat
        # until no process forked in between. Killed children of killed
        # parents are reaped by PID 1.
        victims: list[int] = []
        for _ in range(10):
            found = list(dict.fromkeys([process.pid, *self._all_pids()]))
            self._signal_all(found, signal.SIGSTOP)
            if set(found) == set(victims):
                break
            victims = found
        self._signal_all(victims, signal.SIGKILL)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SSHServerError(f"sshd (pid {process.pid}) did not stop within {timeout}s") from exc
        self._process = None
        self._close_log()

    def _all_pids(self) -> list[int]:
        if self._process is None:
            return []
        pids = [self._process.pid, *self._descendants(self._process.pid), *self._marked_processes()]
        return list(dict.fromkeys(pids))

    @staticmethod
    def _signal_all(pids: list[int], signum: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def freeze(self) -> None:
        """SIGSTOP sshd and its sessions: a hung host. TCP still connects, nothing answers."""
        self._signal_all(self._all_pids(), signal.SIGSTOP)

    def thaw(self) -> None:
        """Undo :meth:`freeze`."""
        self._signal_all(self._all_pids(), signal.SIGCONT)

    def restart(self, timeout: float = 15.0) -> None:
        """Stop then start on the same port (a reboot)."""
        self.stop(timeout)
        self.start(timeout)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_text(self) -> str:
        """sshd's own log (``-e``), for assertion messages."""
        try:
            return Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Stop the server and remove the private directory when we created it."""
        with self._lock:
            self._cleaned_up = True
            self._stop(15.0)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LoopbackSSHServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
