"""A simulated XenServer guest agent and the per-host XenStore it talks through.

Real guests run an agent (nova-agent / XenServer tools) that watches
``/local/domain/<domid>/data/host/<request-id>`` for JSON requests ``{"name": ..., "value": ...}``
written by dom0's ``agent`` plug-in and answers at ``data/guest/<request-id>`` with
``{"returncode": "...", "message": "..."}``.  This module gives each simulated host a XenStore
tree and runs such an agent in every running domain so agent features (version, key exchange,
password, resetnetwork) can be tested end to end.  The agent can be switched off per host or per
domain to test timeouts.

Protocol facts (from the old Nova xenapi driver): ``key_init`` (also spelled ``keyinit``) carries
the host's Diffie-Hellman public number, prime 162259276829213363391578010288127, base 5; the
agent answers return code ``D0`` with its own public number.  ``password`` carries the password
encrypted as ``openssl aes-128-cbc -a -A -nosalt -pass pass:<shared secret>`` (the shared secret
as a decimal string); success is return code ``0``.  The received password is recorded so tests
can check it but never logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

DH_PRIME = 162259276829213363391578010288127
DH_BASE = 5
AGENT_VERSION = "1.0.0"


class XenStoreError(Exception):
    """A xenstore operation failed (e.g. ENOENT on a missing path)."""


def _norm(path: str) -> str:
    if not path or not path.startswith("/"):
        raise XenStoreError(f"EINVAL: xenstore paths are absolute, got {path!r}")
    parts = [p for p in path.split("/") if p]
    return "/" + "/".join(parts)


class XenStore:
    """One host's XenStore: a thread-safe tree of string values.

    Like xenstored, writing a path creates its parents (with empty values) and removing a path
    removes its whole subtree.  Write hooks let the simulated guest agent react to requests.
    """

    def __init__(self) -> None:
        self._data: dict[str, str] = {"/local": "", "/local/domain": ""}
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._hooks: list[Callable[[str, str], None]] = []

    def add_write_hook(self, hook: Callable[[str, str], None]) -> None:
        self._hooks.append(hook)

    def read(self, path: str) -> str:
        path = _norm(path)
        with self.lock:
            if path not in self._data:
                raise XenStoreError(f"ENOENT: {path}")
            return self._data[path]

    def exists(self, path: str) -> bool:
        with self.lock:
            return _norm(path) in self._data

    def write(self, path: str, value: str) -> None:
        path = _norm(path)
        with self.lock:
            parts = path.split("/")[1:]
            for i in range(1, len(parts)):
                self._data.setdefault("/" + "/".join(parts[:i]), "")
            self._data[path] = str(value)
            self.changed.notify_all()
        for hook in list(self._hooks):
            hook(path, str(value))

    def rm(self, path: str) -> None:
        path = _norm(path)
        with self.lock:
            for key in [k for k in self._data if k == path or k.startswith(path + "/")]:
                del self._data[key]
            self.changed.notify_all()

    def ls(self, path: str) -> list[str]:
        path = _norm(path)
        with self.lock:
            if path not in self._data and path != "/":
                raise XenStoreError(f"ENOENT: {path}")
            prefix = "" if path == "/" else path
            depth = prefix.count("/") + 1
            below = (k for k in self._data if k.startswith(prefix + "/") and k.count("/") >= depth)
            return sorted({k.split("/")[depth] for k in below})

    def list(self, path: str) -> dict[str, str]:
        """Every path under ``path`` (inclusive) with its value, like ``xenstore-ls -f``."""
        path = _norm(path)
        with self.lock:
            return {k: v for k, v in sorted(self._data.items()) if k == path or k.startswith(path + "/")}

    def wait(self, path: str, timeout: float) -> bool:
        """Block until ``path`` exists or ``timeout`` seconds pass; True when it exists."""
        path = _norm(path)
        with self.lock:
            return self.changed.wait_for(lambda: path in self._data, timeout=timeout)


@dataclass
class AgentState:
    """What one domain's agent has negotiated and received (for test assertions)."""

    private: int = field(default_factory=lambda: secrets.randbits(80) | 1)
    shared: int | None = None
    password: str | None = field(default=None, repr=False)
    passwords_set: int = 0
    resetnetwork_calls: int = 0
    injected_files: dict[str, bytes] = field(default_factory=dict, repr=False)
    updates: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class GuestAgents:
    """The agents of every running domain on one host, answering through that host's XenStore."""

    def __init__(self, store: XenStore) -> None:
        self.store = store
        self.enabled = True
        self.disabled_domids: set[int] = set()
        self.running: set[int] = set()
        self.states: dict[int, AgentState] = {}
        store.add_write_hook(self._on_write)

    def domain_started(self, domid: int, *, agent: bool = True) -> None:
        """A domain booted: its agent (if any) starts and advertises itself in XenStore."""
        self.running.add(domid)
        self.states[domid] = AgentState()
        if not agent:
            self.disabled_domids.add(domid)
        else:
            self.disabled_domids.discard(domid)
            self.store.write(f"/local/domain/{domid}/data/agent-version", AGENT_VERSION)

    def domain_stopped(self, domid: int) -> None:
        self.running.discard(domid)
        self.disabled_domids.discard(domid)

    def state(self, domid: int) -> AgentState:
        return self.states.setdefault(domid, AgentState())

    def _on_write(self, path: str, value: str) -> None:
        parts = path.split("/")
        # /local/domain/<domid>/data/host/<request-id>
        if len(parts) != 7 or parts[1:3] != ["local", "domain"] or parts[4:6] != ["data", "host"]:
            return
        try:
            domid = int(parts[3])
        except ValueError:
            return
        if not self.enabled or domid not in self.running or domid in self.disabled_domids:
            return  # no agent listening: the request stays unanswered, as with a dead agent
        reply = self.handle(domid, value)
        self.store.rm(path)
        self.store.write(f"/local/domain/{domid}/data/guest/{parts[6]}", json.dumps(reply))

    def handle(self, domid: int, raw: str) -> dict[str, str]:
        """Answer one request the way nova-agent does."""
        state = self.state(domid)
        try:
            request = json.loads(raw)
            name = str(request.get("name", ""))
            value = request.get("value", "")
        except (ValueError, AttributeError):
            return {"returncode": "500", "message": "invalid request: not a JSON object"}
        state.requests.append(name)
        if name == "version":
            return {"returncode": "0", "message": AGENT_VERSION}
        if name in ("key_init", "keyinit"):
            try:
                host_public = int(str(value).strip())
            except ValueError:
                return {"returncode": "500", "message": "key_init: public key is not an integer"}
            state.shared = pow(host_public, state.private, DH_PRIME)
            return {"returncode": "D0", "message": str(pow(DH_BASE, state.private, DH_PRIME))}
        if name == "password":
            if state.shared is None:
                return {"returncode": "500", "message": "password: no key exchanged (send key_init first)"}
            password = decrypt_password(str(value), str(state.shared))
            if password is None:
                return {"returncode": "500", "message": "password: could not decrypt with the agreed key"}
            state.password = password.rstrip("\n")
            state.passwords_set += 1
            return {"returncode": "0", "message": ""}
        if name == "resetnetwork":
            state.resetnetwork_calls += 1
            return {"returncode": "0", "message": ""}
        if name == "inject_file":
            try:
                path, _, contents = base64.b64decode(str(value), validate=True).partition(b",")
            except ValueError:
                return {"returncode": "500", "message": "inject_file: value is not base64"}
            state.injected_files[path.decode("utf-8", "replace")] = contents
            return {"returncode": "0", "message": ""}
        if name == "agentupdate":
            state.updates.append(str(value))
            return {"returncode": "0", "message": ""}
        return {"returncode": "404", "message": f"NOT IMPLEMENTED: {name}"}


def _evp_bytes_to_key(secret: bytes, digest: str) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey without salt: 16-byte AES-128 key + 16-byte IV."""
    out, block = b"", b""
    while len(out) < 32:
        block = hashlib.new(digest, block + secret).digest()
        out += block
    return out[:16], out[16:32]


def decrypt_password(ciphertext_b64: str, shared_secret: str) -> str | None:
    """Decrypt ``openssl aes-128-cbc -a -A -nosalt -pass pass:<secret>`` output.

    OpenSSL < 1.1 derived the key with MD5, later versions with SHA-256; both are tried so a
    client using either openssl (or a Python equivalent) works.  Returns None when neither fits.
    """
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:
        data = base64.b64decode("".join(ciphertext_b64.split()), validate=True)
    except ValueError:
        return None
    if not data or len(data) % 16:
        return None
    for digest in ("sha256", "md5"):
        key, iv = _evp_bytes_to_key(shared_secret.encode(), digest)
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        try:
            unpadder = padding.PKCS7(128).unpadder()
            plain = unpadder.update(padded) + unpadder.finalize()
            return plain.decode("utf-8")
        except ValueError:
            continue
    return None


def encrypt_password(password: str, shared_secret: str, digest: str = "sha256") -> str:
    """The host side of the exchange (what the driver sends); used by tests and the demo."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = _evp_bytes_to_key(shared_secret.encode(), digest)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(password.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()
