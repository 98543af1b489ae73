"""The xapi transport's HTTP leg: stream a VHD from a host's export_raw_vdi into another's import_raw_vdi.

nova-compute relays the bytes itself, so the dom0s need no SSH trust
between them; each host is addressed directly (a pool master would
redirect, which is followed).
"""

from __future__ import annotations

import contextlib
import tempfile
import urllib.parse
from typing import Any

from xenapi_driver.migrateops.errors import ResizeStepFailed

MiB = 1024**2
COPY_CHUNK = 4 * MiB
HTTP_TIMEOUT = 120.0


def _session_id(session: Any) -> contextlib.AbstractContextManager[str]:
    from xenapi_driver.volumeops import session_id

    return session_id(session)


def _host_url(session: Any, host_ref: str) -> str:
    address = session.call_xenapi("host.get_address", host_ref)
    parts = urllib.parse.urlsplit(session.master_url)
    host = f"[{address}]" if ":" in address else address
    return f"{parts.scheme}://{host}:{parts.port}/" if parts.port else f"{parts.scheme}://{host}/"


def stream_vhd(src: Any, dst: Any, query: dict[str, str], dest_vdi_uuid: str) -> int:
    """GET export_raw_vdi on the source host, PUT import_raw_vdi on the destination host.

    The stream is spooled to a temporary file first: import_raw_vdi needs a
    Content-Length and a VHD stream's length is unknown until it ends.
    """
    with tempfile.TemporaryFile(prefix="xenapi-resize-") as spool, _session_id(src) as sid:
        conn = src.http_connection(_host_url(src, src.host_ref), HTTP_TIMEOUT)
        try:
            path = "/export_raw_vdi?" + urllib.parse.urlencode({"session_id": sid, **query})
            for _hop in range(4):
                conn.request("GET", path)
                resp = conn.getresponse()
                if resp.status not in (301, 302, 303, 307):
                    break
                location = urllib.parse.urlsplit(resp.getheader("location") or "")
                resp.read()
                conn.close()
                conn = src.http_connection(f"{location.scheme}://{location.netloc}/", HTTP_TIMEOUT)
                path = f"{location.path}?{location.query}"
            if resp.status != 200:
                raise ResizeStepFailed(f"export_raw_vdi of VDI {query['vdi']} answered HTTP {resp.status}")
            while chunk := resp.read(COPY_CHUNK):
                spool.write(chunk)
        finally:
            conn.close()
        length = spool.tell()
        spool.seek(0)
        with _session_id(dst) as dsid:
            out = dst.http_connection(_host_url(dst, dst.host_ref), HTTP_TIMEOUT)
            try:
                out.putrequest(
                    "PUT",
                    "/import_raw_vdi?"
                    + urllib.parse.urlencode({"session_id": dsid, "vdi": dest_vdi_uuid, "format": "vhd"}),
                )
                out.putheader("Content-Length", str(length))
                out.endheaders()
                while chunk := spool.read(COPY_CHUNK):
                    out.send(chunk)
                answer = out.getresponse()
                body = answer.read()
                if answer.status != 200:
                    raise ResizeStepFailed(
                        f"import_raw_vdi into VDI {dest_vdi_uuid} answered HTTP {answer.status}: "
                        f"{body[:300]!r}"
                    )
            finally:
                out.close()
    return length
