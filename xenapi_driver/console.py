"""Instance consoles: the text console log and the VNC console for Nova's proxy.

* ``get_console_output``: xenconsoled writes each guest's console to
  ``/var/log/xen/guest/console.<domid>`` in dom0 (once the operator enabled
  guest console logging); dom0's ``console`` plug-in returns its last
  100 KiB (Nova's own limit for console logs), zlib-compressed and base64.
  Nova receives them as Latin-1 text (byte for byte) and decodes them itself.
* ``get_vnc_console``: XAPI serves a running VM's VNC (``rfb``) console over
  HTTP at the console record's ``location``; Nova's noVNC proxy connects to
  ``host:port`` and sends ``CONNECT <internal_access_path>``. The host is
  ``[vnc] server_proxyclient_address`` (the XenServer host's address as the
  proxy reaches it), the port that of the location (80/443 by default), and
  the path is the location's path and query plus a ``session_id``: XAPI
  only serves consoles to logged-in clients. That session is a dedicated
  one (originator ``<[xenserver] originator>-console``), never one of the
  driver's pooled sessions, so it can be logged out without disturbing the
  driver; it is created once and renewed when XAPI has dropped it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import ssl
import threading
import urllib.parse
import xmlrpc.client
import zlib
from typing import Any

import nova.conf
from nova.console import type as ctype

from nova import exception as nova_exception
from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF

#: Nova's limit for console logs (the libvirt driver's MAX_CONSOLE_BYTES).
MAX_CONSOLE_BYTES = 100 * 1024


class ConsoleOps:
    """Console log and VNC console of the managed host's instances."""

    def __init__(self, session: Any, lookup: Any = None) -> None:
        self._session = session
        #: ``instance -> (vm_ref, record) | None``; the driver sets VMOps.lookup (cached refs).
        #: Without it the VM is found by its name label.
        self.lookup = lookup
        self._console_session: Any = None
        self._console_lock = threading.Lock()

    def _vm(self, instance: Any) -> tuple[str, dict[str, Any]]:
        if self.lookup is not None:
            found = self.lookup(instance)
        else:
            found = vm_utils.find_instance_vm(self._session, instance)
        if found is None:
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        return found

    # -- console log ---------------------------------------------------------

    def get_console_output(self, instance: Any) -> str:
        """The tail (at most 100 KiB) of the instance's console log.

        Returned as text decoded as Latin-1, so every byte survives: Nova's
        compute manager encodes a string back with Latin-1 before it cuts the
        tail and decodes for the API. A running instance without a log yet (or
        with guest console logging disabled on the host) gives "" and a
        warning, as Nova's libvirt driver does for a missing console file.
        """
        _vm_ref, record = self._vm(instance)
        domid = int(record.get("domid", -1))
        if record.get("power_state") not in ("Running", "Paused") or domid < 1:
            raise nova_exception.ConsoleNotAvailable()
        try:
            encoded = self._session.call_plugin(
                "console", "get_console_log", {"dom_id": str(domid), "max_bytes": str(MAX_CONSOLE_BYTES)}
            )
        except xexc.XenAPIError as exc:
            if exc.code == "NOT_FOUND":
                LOG.warning(
                    "Instance %s (domain %d) has no console log in dom0 yet; if it stays empty, enable "
                    "guest console logging on host %s (xenstore-write /local/logconsole/@ "
                    "/var/log/xen/guest/console.%%d)",
                    instance.uuid,
                    domid,
                    self._session.host_address,
                )
                return ""
            raise nova_exception.ConsoleLogOutputException(
                instance_id=instance.uuid, reason=f"dom0 console plug-in failed: {exc.code}"
            ) from None
        try:
            data = zlib.decompress(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError, zlib.error):
            raise nova_exception.ConsoleLogOutputException(
                instance_id=instance.uuid, reason="the console plug-in returned undecodable data"
            ) from None
        return data[-MAX_CONSOLE_BYTES:].decode("latin-1")

    # -- VNC -----------------------------------------------------------------

    def get_vnc_console(self, instance: Any) -> ctype.ConsoleVNC:
        vm_ref, record = self._vm(instance)
        if record.get("power_state") not in ("Running", "Paused"):
            raise nova_exception.InstanceNotReady(instance_id=instance.uuid)
        location = None
        for console in self._session.call_xenapi("VM.get_consoles", vm_ref):
            rec = self._session.get_rec("console", console)
            if rec is not None and rec.get("protocol") == "rfb" and rec.get("location"):
                location = rec["location"]
                break
        if location is None:
            raise nova_exception.ConsoleTypeUnavailable(console_type="vnc")
        parts = urllib.parse.urlsplit(location)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, v) for k, v in query if k != "session_id"]
        query.append(("session_id", self._console_session_id()))
        path = f"{parts.path or '/console'}?{urllib.parse.urlencode(query)}"
        return ctype.ConsoleVNC(
            host=CONF.vnc.server_proxyclient_address, port=port, internal_access_path=path
        )

    def _console_session_id(self) -> str:
        """The dedicated console session's id (logged in on first use, renewed when dropped)."""
        with self._console_lock:
            sdk = self._console_session
            if sdk is not None:
                try:
                    sdk.xenapi.session.get_this_host(sdk._session)
                    return sdk._session
                except Exception:  # noqa: BLE001 - expired or unreachable: log in again
                    self._console_session = None
            sdk = _new_sdk_session(self._session.master_url)
            opts = xconf.CONF.xenserver
            try:
                sdk.xenapi.login_with_password(
                    opts.connection_username or "root",
                    opts.connection_password or "",
                    "1.0",
                    f"{opts.originator}-console",
                )
            except Exception as exc:  # noqa: BLE001 - never echo the password
                code = getattr(exc, "details", ["LOGIN_FAILED"])[0]
                raise nova_exception.ConsoleTypeUnavailable(
                    console_type=f"vnc (XAPI login failed: {code})"
                ) from None
            self._console_session = sdk
            return sdk._session

    def close(self) -> None:
        """Log the console session out (cleanup_host)."""
        with self._console_lock:
            sdk, self._console_session = self._console_session, None
        if sdk is not None:
            try:
                sdk.xenapi.session.logout()
            except Exception:  # noqa: BLE001
                LOG.debug("Logging out the console session failed (ignored)")


class _TimeoutTransport(xmlrpc.client.Transport):
    timeout = 30.0

    def make_connection(self, host):  # type: ignore[no-untyped-def]
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


class _TimeoutSafeTransport(xmlrpc.client.SafeTransport):
    timeout = 30.0

    def make_connection(self, host):  # type: ignore[no-untyped-def]
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        return conn


def _new_sdk_session(url: str) -> Any:
    """An SDK session on ``url`` whose calls cannot hang (30 s socket timeout)."""
    import XenAPI

    opts = xconf.CONF.xenserver
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=opts.ca_file or None)
        if opts.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return XenAPI.Session(url, transport=_TimeoutSafeTransport(context=context))
    return XenAPI.Session(url, transport=_TimeoutTransport())
