"""Host-key trust across reboots and reinstalls.

Why: a reboot keeps the host key, a reinstall makes a new one, and an attacker
presents a different one. The checker pins the first key it sees (or the one
in ``known_hosts``) and treats any later difference as a hard failure unless
the operator explicitly accepts a new key after a reinstall. Unknown hosts
are trusted on first use by default (reported, recorded) because fresh CI
nodes have no recorded key; ``reject_unknown`` turns that off.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from xenapi_driver.readiness.errors import HostKeyMismatch, UsageError

_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:<base64>`` fingerprint, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH uses for ``host:port`` in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class HostKeyOutcome:
    """What verification concluded: ``known``, ``new`` (first use) or ``replaced``."""

    status: str
    name: str
    fingerprint: str
    previous_fingerprint: str | None = None


def _entry_matches(hosts_field: str, name: str) -> bool:
    for entry in hosts_field.split(","):
        if entry.startswith("|1|"):
            if paramiko.HostKeys.hash_host(name, entry) == entry:
                return True
        elif entry == name:
            return True
    return False


class HostKeyVerifier:
    """Decides whether a presented host key is trusted; thread-safe.

    :param known_hosts: OpenSSH known_hosts file to read and update, or
        ``None`` to pin keys in memory only (for the life of this object).
    :param accept_new_host_key: accept (and record) a key that differs from
        the recorded one, as after a reinstall. Always reported, never silent.
    :param reject_unknown: refuse hosts with no recorded key instead of
        trusting them on first use.
    """

    def __init__(
        self,
        known_hosts: str | os.PathLike | None = None,
        accept_new_host_key: bool = False,
        reject_unknown: bool = False,
    ) -> None:
        self.known_hosts = os.fspath(known_hosts) if known_hosts is not None else None
        self.accept_new_host_key = accept_new_host_key
        self.reject_unknown = reject_unknown
        self._pinned: dict[str, paramiko.PKey] = {}
        self._lock = threading.Lock()
        self._file_keys = paramiko.HostKeys()
        self._revoked: set[bytes] = set()
        if self.known_hosts and os.path.exists(self.known_hosts):
            self._load(self.known_hosts)

    def _load(self, path: str) -> None:
        """Read known_hosts as OpenSSH does: plain and hashed names, ``@revoked``
        honoured, ``@cert-authority`` and unparsable lines skipped (paramiko's
        own loader gives up on the whole file at the first marker)."""
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read known_hosts file {path}: {exc.strerror or exc}") from exc
        for line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if text.startswith("@"):
                fields = text.split()
                if fields[0] == "@revoked" and len(fields) >= 4:
                    try:
                        self._revoked.add(base64.b64decode(fields[3]))
                    except ValueError:
                        pass
                continue
            try:
                entry = HostKeyEntry.from_line(text)
            except (InvalidHostKey, paramiko.SSHException, ValueError):
                entry = None
            if entry is None or entry.key is None:
                continue
            for hostname in entry.hostnames:
                self._file_keys.add(hostname, entry.key.get_name(), entry.key)

    def expected_keys(self, host: str, port: int) -> list[paramiko.PKey]:
        """Keys currently trusted for ``host:port`` (pinned first, then known_hosts)."""
        name = known_hosts_name(host, port)
        with self._lock:
            if name in self._pinned:
                return [self._pinned[name]]
            entry = self._file_keys.lookup(name)
            return list(entry.values()) if entry else []

    def preferred_key_types(self, host: str, port: int, offered: tuple[str, ...]) -> tuple[str, ...]:
        """``offered`` reordered so the type of the trusted key is negotiated first.

        Without this the server may pick another key type and a perfectly
        known host would look "changed".
        """
        first: list[str] = []
        for key in self.expected_keys(host, port):
            names = _RSA_ALGORITHMS if key.get_name() == "ssh-rsa" else (key.get_name(),)
            first.extend(n for n in names if n in offered and n not in first)
        return tuple(first) + tuple(n for n in offered if n not in first)

    def verify(self, host: str, port: int, key: paramiko.PKey) -> HostKeyOutcome:
        """Accept ``key`` for ``host:port`` or raise :class:`HostKeyMismatch`."""
        name = known_hosts_name(host, port)
        actual = fingerprint(key)
        if key.asbytes() in self._revoked:
            raise HostKeyMismatch(
                f"host key {actual} presented by {name} is marked @revoked in {self.known_hosts}",
                name=name,
                expected=None,
                actual=actual,
            )
        expected = self.expected_keys(host, port)
        if any(k.get_name() == key.get_name() and k.asbytes() == key.asbytes() for k in expected):
            with self._lock:
                self._pinned[name] = key
            return HostKeyOutcome("known", name, actual)
        source = f"recorded in {self.known_hosts}" if self.known_hosts else "first seen earlier in this run"
        if not expected:
            if self.reject_unknown:
                where = self.known_hosts or "(no known_hosts file given)"
                raise HostKeyMismatch(
                    f"no recorded host key for {name} in {where}; the host presented {key.get_name()} "
                    f"{actual}. Record it first (ssh-keyscan) or allow trust on first use.",
                    name=name,
                    expected=None,
                    actual=actual,
                )
            self._record(name, key)
            return HostKeyOutcome("new", name, actual)
        previous = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in expected)
        if not self.accept_new_host_key:
            raise HostKeyMismatch(
                f"HOST KEY CHANGED for {name}: expected {previous} ({source}), got {key.get_name()} "
                f"{actual}. If the host was reinstalled, rerun with --accept-new-host-key "
                f"(accept_new_host_key=True); otherwise someone may be intercepting the connection.",
                name=name,
                expected=fingerprint(expected[0]),
                actual=actual,
            )
        self._record(name, key)
        return HostKeyOutcome("replaced", name, actual, fingerprint(expected[0]))

    def _record(self, name: str, key: paramiko.PKey) -> None:
        with self._lock:
            self._pinned[name] = key
            if self.known_hosts:
                _replace_known_hosts_entry(self.known_hosts, name, key)


def _replace_known_hosts_entry(path: str, name: str, key: paramiko.PKey) -> None:
    """Drop every line for ``name`` from ``path`` and append the new key, atomically."""
    lines: list[str] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if fields and not line.startswith(("#", "@")) and _entry_matches(fields[0], name):
                    continue
                lines.append(line if line.endswith("\n") else line + "\n")
    lines.append(f"{name} {key.get_name()} {key.get_base64()}\n")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
