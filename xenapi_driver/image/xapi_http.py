"""XAPI's HTTP disk handlers (``PUT /import_raw_vdi``, ``GET /export_raw_vdi``) from nova-compute.

Bytes flow over their own HTTP connection to the host that has the SR
plugged. The XML-RPC session pool is only used for the short calls around the
transfer (task create / status / destroy): no pooled session is held while
bytes flow, so other operations of this compute proceed meanwhile. Each
transfer runs under its own XAPI task so a failure inside XAPI is reported
with XAPI's error code.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

from xenapi_driver import exception as xexc
from xenapi_driver.image.progress import Progress

LOG = logging.getLogger(__name__)
CHUNK = 1024 * 1024
#: Reads of export streams: small enough that progress of small disks is still seen in steps.
EXPORT_CHUNK = 256 * 1024
TIMEOUT = 600.0


def session_id(session: Any) -> str:
    """A XAPI session reference usable in an HTTP query (not held busy by the transfer).

    XAPI sessions may serve concurrent requests; only the XML-RPC connection
    of a pooled session is single-use, and it is returned to the pool at once.
    """
    with session.borrow_session_id() as sid:
        return sid


def host_url_for_sr(session: Any, sr_ref: str) -> str:
    """Base URL of a host that has ``sr_ref`` plugged (the managed host when it does)."""
    pbds = session.get_all_records_where("PBD", f'field "SR" = "{_quote(sr_ref)}"')
    hosts = [p["host"] for p in pbds.values() if p.get("currently_attached")]
    if not hosts:
        raise xexc.XenAPIError("SR_HAS_NO_PBDS", [sr_ref], message=f"SR {sr_ref} is not plugged on any host")
    host = session.host_ref if session.host_ref in hosts else hosts[0]
    address = (
        session.host_address if host == session.host_ref else session.call_xenapi("host.get_address", host)
    )
    master = urllib.parse.urlsplit(session.master_url)
    if ":" in address and not address.startswith("["):
        netloc = address  # address already names a port
    else:
        netloc = f"{address}:{master.port}" if master.port else address
    return f"{master.scheme}://{netloc}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _connection(url: str, session: Any) -> tuple[http.client.HTTPConnection, str]:
    conn = session.http_connection(url, TIMEOUT)
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return conn, path


def _coalesce(chunks: Iterable[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """Join small chunks (glanceclient yields 64 KiB) into ``size``-byte sends: fewer syscalls."""
    buf = bytearray()
    for chunk in chunks:
        if not buf and len(chunk) >= size:
            yield chunk
            continue
        buf += chunk
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _answered_early(conn: http.client.HTTPConnection) -> bool:
    """Whether the server already answered (and so will not wait for the rest of the body)."""
    import select

    sock = conn.sock
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class _Task:
    """A XAPI task that an HTTP transfer reports into."""

    def __init__(self, session: Any, label: str) -> None:
        self.session = session
        self.ref = session.call_xenapi("task.create", label, "xenapi-driver image transfer")

    def check(self, what: str) -> None:
        """Raise XAPI's error when the task failed."""
        rec = self.session.get_rec("task", self.ref) or {}
        if rec.get("status") == "failure":
            info = [str(x) for x in rec.get("error_info") or []] or ["TASK_FAILED"]
            raise xexc.XenAPIError(info[0], info[1:], message=f"{what} failed in XAPI: {' '.join(info)}")

    def destroy(self) -> None:
        try:
            self.session.call_xenapi("task.destroy", self.ref)
        except xexc.XenAPIError as exc:
            LOG.debug("Destroying task %s failed (ignored): %s", self.ref, exc)


def put_vdi(session: Any, sr_ref: str, vdi_ref: str, fmt: str, length: int, chunks: Iterable[bytes],
            progress: Progress | None = None) -> None:  # fmt: skip
    """Send exactly ``length`` bytes of ``chunks`` to ``PUT /import_raw_vdi`` (``fmt`` raw or vhd)."""
    task = _Task(session, f"import {fmt} into VDI {vdi_ref}")
    try:
        query = urllib.parse.urlencode(
            {"session_id": session_id(session), "task_id": task.ref, "vdi": vdi_ref, "format": fmt}
        )
        conn, _ = _connection(host_url_for_sr(session, sr_ref), session)
        try:
            conn.putrequest("PUT", f"/import_raw_vdi?{query}", skip_accept_encoding=True)
            conn.putheader("Content-Length", str(length))
            conn.putheader("Content-Type", "application/octet-stream")
            conn.endheaders()
            sent = 0
            try:
                for chunk in _coalesce(chunks):
                    if sent + len(chunk) > length:
                        raise xexc.XenAPIError(
                            "VDI_IO_ERROR",
                            [f"more than the announced {length} bytes"],
                            message=f"the image is longer than its announced {length} bytes",
                        )
                    conn.send(chunk)
                    sent += len(chunk)
                    if progress:
                        progress.add(len(chunk))
            except (BrokenPipeError, ConnectionResetError):
                pass  # XAPI refused early: its answer below says why
            if sent < length and not _answered_early(conn):
                raise xexc.XenAPIError(
                    "VDI_IO_ERROR",
                    [f"sent {sent} of {length} bytes"],
                    message=f"the image ended after {sent} of its {length} bytes",
                )
            response = conn.getresponse()
            body = response.read(4096).decode("utf-8", "replace")
        finally:
            conn.close()
        task.check("import_raw_vdi")
        if response.status != 200:
            raise xexc.XenAPIError(
                "VDI_IO_ERROR",
                [f"HTTP {response.status}", body.strip()[:500]],
                message=f"import_raw_vdi answered HTTP {response.status}: {body.strip()[:500]}",
            )
    finally:
        task.destroy()


class Export:
    """``GET /export_raw_vdi`` as an iterator of chunks; ``length`` when XAPI sent one."""

    def __init__(self, session: Any, sr_ref: str, vdi_ref: str, fmt: str) -> None:
        self._session = session
        self._task = _Task(session, f"export {fmt} of VDI {vdi_ref}")
        query = urllib.parse.urlencode(
            {"session_id": session_id(session), "task_id": self._task.ref, "vdi": vdi_ref, "format": fmt}
        )
        url = f"{host_url_for_sr(session, sr_ref)}/export_raw_vdi?{query}"
        for _ in range(3):  # follow XAPI's redirect to the host that sees the SR
            self._conn, path = _connection(url, session)
            self._conn.request("GET", path)
            self._response = self._conn.getresponse()
            if self._response.status in (301, 302, 303, 307) and self._response.getheader("Location"):
                self._response.read()
                self._conn.close()
                url = self._response.getheader("Location")
                continue
            break
        if self._response.status != 200:
            body = self._response.read(4096).decode("utf-8", "replace")
            self.close()
            raise xexc.XenAPIError(
                "VDI_IO_ERROR",
                [f"HTTP {self._response.status}", body.strip()[:500]],
                message=f"export_raw_vdi answered HTTP {self._response.status}: {body.strip()[:500]}",
            )
        length = self._response.getheader("Content-Length")
        self.length = int(length) if length else None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self._response.read(EXPORT_CHUNK)
            if not chunk:
                break
            yield chunk
        self._task.check("export_raw_vdi")

    def read(self, n: int = -1) -> bytes:
        return self._response.read(n if n and n > 0 else CHUNK)

    def close(self) -> None:
        """Drop the connection (so XAPI stops sending at once) and the task."""
        try:
            sock = self._conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._response.close()
            self._conn.close()
        finally:
            self._task.destroy()
