"""The XenServer guest agent: passwords, files and networking through XenStore.

Guests built for XenServer clouds run an agent (nova-agent, or the Windows
agent) that watches ``/local/domain/<domid>/data/host/<id>`` for JSON requests
and answers at ``data/guest/<id>``. Dom0's ``agent`` plug-in does that
exchange; this module decides when to use the agent and speaks its protocol:

* ``version`` - is the agent there (waited for up to ``agent_version_timeout``
  after a boot, in ``agent_timeout`` slices);
* ``key_init`` - a Diffie-Hellman exchange (prime
  162259276829213363391578010288127, base 5; the agent answers ``D0`` and its
  public number);
* ``password`` - the new password plus a newline, encrypted as
  ``openssl enc -aes-128-cbc -a -A -nosalt -pass pass:<shared secret>`` does
  with MD5 key derivation (what the agents expect), base64;
* ``inject_file`` and ``resetnetwork`` (``agent_resetnetwork_timeout``).

When the agent is switched off (``[xenserver] disable_agent``, the image
property ``xenapi_use_agent=false``, or neither said and
``use_agent_default = false``) or the guest runs no PV tools, Nova gets
``InstanceAgentNotEnabled`` at once; an agent that does not answer gets
:class:`AgentTimeout` after at most ``agent_timeout`` seconds. Passwords
never reach a log or an exception.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
import uuid
from typing import Any

from oslo_utils import strutils

from nova import exception as nova_exception
from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils

LOG = logging.getLogger(__name__)

DH_PRIME = 162259276829213363391578010288127
DH_BASE = 5

#: Image property (Glance) and its copy in the instance's system metadata.
USE_AGENT_PROPERTY = "xenapi_use_agent"
_SYSMETA_KEYS = ("image_xenapi_use_agent", "image_img_use_agent")


class AgentError(nova_exception.NovaException):
    """The guest agent refused or failed a request (never carries the request's secrets)."""

    msg_fmt = "The guest agent of instance %(instance)s failed '%(method)s': %(reason)s"


class AgentTimeout(AgentError):
    msg_fmt = "The guest agent of instance %(instance)s did not answer '%(method)s' within %(timeout)s s"


class AgentNotImplemented(AgentError):
    msg_fmt = "The guest agent of instance %(instance)s does not implement '%(method)s'"


# -- when to use the agent -----------------------------------------------------


def _loaded(obj: Any, name: str) -> Any:
    is_set = getattr(obj, "obj_attr_is_set", None)
    if is_set is not None:
        return getattr(obj, name) if is_set(name) else None
    return getattr(obj, name, None)


def _image_says(instance: Any, image_meta: Any) -> bool | None:
    props = _loaded(image_meta, "properties") if image_meta is not None else None
    if props is not None:
        value = _loaded(props, "img_use_agent")
        if value is not None:
            return bool(value)
    sysmeta = _loaded(instance, "system_metadata") or {}
    for key in _SYSMETA_KEYS:
        if key in sysmeta:
            try:
                return strutils.bool_from_string(sysmeta[key], strict=True)
            except ValueError:
                LOG.warning(
                    "Instance %s: image property %s=%r is not a boolean; using [xenserver] use_agent_default",
                    getattr(instance, "uuid", "?"),
                    USE_AGENT_PROPERTY,
                    sysmeta[key],
                )
                return None
    return None


def should_use_agent(instance: Any, image_meta: Any = None) -> bool:
    """Whether this instance's guest is expected to run the agent."""
    opts = xconf.CONF.xenserver
    if opts.disable_agent:
        return False
    said = _image_says(instance, image_meta)
    return opts.use_agent_default if said is None else said


# -- the protocol ----------------------------------------------------------------


class DiffieHellman:
    """The agent's key exchange: fresh 80-bit private number per exchange."""

    def __init__(self) -> None:
        self._private = secrets.randbits(80) | 1
        self.public = pow(DH_BASE, self._private, DH_PRIME)

    def shared(self, other_public: int) -> int:
        if not 1 < other_public < DH_PRIME - 1:
            raise ValueError("the agent's public number is out of range")
        return pow(other_public, self._private, DH_PRIME)


def _evp_key_iv(secret: bytes) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey (MD5, one round, no salt): AES-128 key and IV."""
    derived, block = b"", b""
    while len(derived) < 32:
        block = hashlib.md5(block + secret, usedforsecurity=False).digest()
        derived += block
    return derived[:16], derived[16:32]


def encrypt_for_agent(text: str, shared_secret: int) -> str:
    """``text`` encrypted the way the agent decrypts it (base64, one line)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = _evp_key_iv(str(shared_secret).encode("ascii"))
    padder = padding.PKCS7(128).padder()
    padded = padder.update(text.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode("ascii")


class GuestAgent:
    """Requests to one VM's agent through dom0's ``agent`` plug-in."""

    def __init__(self, session: Any, instance: Any, vm_ref: str) -> None:
        self._session = session
        self._instance = instance
        self._vm_ref = vm_ref

    @property
    def _uuid(self) -> str:
        return getattr(self._instance, "uuid", "?")

    def _domid(self) -> int:
        record = self._session.get_rec("VM", self._vm_ref)
        if record is None:
            raise nova_exception.InstanceNotFound(instance_id=self._uuid)
        domid = int(record.get("domid", -1))
        if record.get("power_state") != "Running" or domid < 1:
            raise nova_exception.InstanceNotRunning(instance_id=self._uuid)
        return domid

    def call(
        self,
        method: str,
        args: dict[str, str] | None = None,
        *,
        timeout: int | None = None,
        success: str = "0",
    ) -> str:
        """One request; returns the agent's message. ``args`` may hold secrets: never logged."""
        timeout = int(timeout or xconf.CONF.xenserver.agent_timeout)
        wire = {"id": str(uuid.uuid4()), "dom_id": str(self._domid()), "timeout": str(timeout)}
        wire.update(args or {})
        LOG.debug("Agent request %s to instance %s (timeout %d s)", method, self._uuid, timeout)
        try:
            raw = self._session.call_plugin("agent", method, wire)
        except xexc.XenAPIError as exc:
            if exc.code == "AGENT_TIMEOUT":
                raise AgentTimeout(instance=self._uuid, method=method, timeout=timeout) from None
            raise AgentError(
                instance=self._uuid, method=method, reason=f"dom0 plug-in error {exc.code}"
            ) from None
        try:
            reply = json.loads(raw)
            code, message = str(reply["returncode"]), str(reply.get("message", ""))
        except (ValueError, KeyError, TypeError):
            raise AgentError(instance=self._uuid, method=method, reason="unreadable reply") from None
        if code != success:
            if code == "404" or message.upper().startswith("NOT IMPLEMENTED"):
                raise AgentNotImplemented(instance=self._uuid, method=method)
            raise AgentError(
                instance=self._uuid, method=method, reason=f"return code {code}: {message[:200]}"
            )
        # Old Windows agents append an escaped CRLF.
        return message.replace("\\r\\n", "")

    def version(self, wait: float | None = None) -> str:
        """The agent's version, retrying until ``wait`` seconds (default: one ``agent_timeout``)."""
        opts = xconf.CONF.xenserver
        deadline = time.monotonic() + (wait if wait is not None else opts.agent_timeout)
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.call("version", timeout=max(1, min(opts.agent_timeout, int(remaining) or 1)))
            except AgentTimeout:
                if time.monotonic() >= deadline:
                    raise

    def set_admin_password(self, new_pass: str) -> None:
        dh = DiffieHellman()
        reply = self.call("key_init", {"pub": str(dh.public)}, success="D0")
        try:
            shared = dh.shared(int(reply.strip()))
        except ValueError:
            raise AgentError(
                instance=self._uuid, method="key_init", reason="the agent's public number is invalid"
            ) from None
        # Agents expect the trailing newline (they feed the text to passwd tools).
        self.call("password", {"enc_pass": encrypt_for_agent(new_pass + "\n", shared)})

    def inject_file(self, path: str, contents: bytes | str) -> None:
        data = contents.encode("utf-8") if isinstance(contents, str) else bytes(contents)
        self.call(
            "inject_file",
            {
                "b64_path": base64.b64encode(path.encode("utf-8")).decode("ascii"),
                "b64_contents": base64.b64encode(data).decode("ascii"),
            },
        )

    def resetnetwork(self) -> None:
        self.call("resetnetwork", timeout=xconf.CONF.xenserver.agent_resetnetwork_timeout)


# -- what the driver calls ---------------------------------------------------------


class AgentOps:
    """Nova's agent-backed operations for instances on the managed host."""

    def __init__(self, session: Any, lookup: Any = None) -> None:
        self._session = session
        #: ``instance -> (vm_ref, record) | None``; the driver sets VMOps.lookup (cached refs).
        #: Without it the VM is found by its name label.
        self.lookup = lookup

    def _vm(self, instance: Any) -> tuple[str, dict[str, Any]]:
        if self.lookup is not None:
            found = self.lookup(instance)
        else:
            found = vm_utils.find_instance_vm(self._session, instance)
        if found is None:
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        return found

    def _agent(self, instance: Any, image_meta: Any = None) -> GuestAgent:
        """The instance's agent, or InstanceAgentNotEnabled at once when there can be none."""
        if not should_use_agent(instance, image_meta):
            raise nova_exception.InstanceAgentNotEnabled()
        vm_ref, record = self._vm(instance)
        if record.get("power_state") != "Running":
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)
        if record.get("guest_metrics") in (None, "", vm_utils.NULL_REF):
            # No PV tools have reported: no agent can be listening.
            LOG.info("Instance %s reports no guest tools: its agent is not running", instance.uuid)
            raise nova_exception.InstanceAgentNotEnabled()
        return GuestAgent(self._session, instance, vm_ref)

    def set_admin_password(self, instance: Any, new_pass: str) -> None:
        self._agent(instance).set_admin_password(new_pass)
        LOG.info("Admin password of instance %s set through the guest agent", instance.uuid)

    def inject_file(self, instance: Any, path: str, contents: bytes | str) -> None:
        self._agent(instance).inject_file(path, contents)

    def resetnetwork(self, instance: Any) -> None:
        self._agent(instance).resetnetwork()

    def agent_version(self, instance: Any) -> str:
        return self._agent(instance).version()

    def configure_new_instance(
        self,
        instance: Any,
        image_meta: Any,
        injected_files: Any = None,
        admin_password: str | None = None,
    ) -> bool:
        """After spawn boots the VM: wait for the agent, inject files, set the password, reset networking.

        Best effort, as a booted instance should not fail because its agent is
        slow: each failure is logged and the rest still tried. Returns whether
        the agent answered. Does nothing (False) when the agent is not used.
        """
        if not should_use_agent(instance, image_meta):
            return False
        vm_ref, record = self._vm(instance)
        agent = GuestAgent(self._session, instance, vm_ref)
        try:
            version = agent.version(wait=xconf.CONF.xenserver.agent_version_timeout)
        except (AgentError, nova_exception.InstanceNotRunning) as exc:
            LOG.warning(
                "Instance %s: the guest agent did not come up (%s); skipping its setup", instance.uuid, exc
            )
            return False
        LOG.info("Instance %s runs guest agent version %s", instance.uuid, version)
        steps = []
        for path, contents in injected_files or []:
            steps.append((f"inject {path}", lambda p=path, c=contents: agent.inject_file(p, c)))
        if admin_password:
            steps.append(("set the admin password", lambda: agent.set_admin_password(admin_password)))
        steps.append(("reset networking", agent.resetnetwork))
        for what, step in steps:
            try:
                step()
            except AgentError as exc:
                LOG.warning("Instance %s: could not %s through the guest agent: %s", instance.uuid, what, exc)
        return True
