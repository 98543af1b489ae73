"""XAPI's HTTP disk handlers: ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi``.

Both take ``session_id``, ``task_id`` and ``vdi`` (a reference or a UUID) in the query.  Export
streams ``format=raw`` (the flattened disk) or ``format=vhd`` (one dynamic VHD; with ``base=`` only
the blocks that changed since that earlier snapshot).  Import writes a raw image or applies a
(full or differential) VHD stream onto an existing VDI; the task's result is the VDI ref.  A host
that cannot see the VDI's SR answers 302 to one that can, like XAPI.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlencode

from xenapi_driver import vhd
from xenapi_driver.simulator import tasks
from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.registry import http_handler

FORMATS_OUT = ("raw", "vhd")
FORMATS_IN = ("raw", "vhd")


def _resolve_vdi(db, text: str) -> str:
    if not text:
        raise XapiError("INVALID_VALUE", "vdi", "")
    if text.startswith("OpaqueRef:"):
        db.get("VDI", text)
        return text
    return db.by_uuid("VDI", text)


def _redirect_if_blind(ctx, request, vdi_ref: str) -> bool:
    """Answer 302 to a host that has the VDI's SR plugged when this one has not."""
    db = ctx.db
    sr = db.get("VDI", vdi_ref)["SR"]
    pbds = [db.get("PBD", p) for p in db.get("SR", sr)["PBDs"]]
    if any(p["host"] == ctx.host and p["currently_attached"] for p in pbds):
        return False
    for pbd in pbds:
        host = ctx.pool.host_by_ref(pbd["host"])
        if pbd["currently_attached"] and host is not None and host.powered:
            request.redirect(f"{host.url.rstrip('/')}{request.path}?{urlencode(request.query)}")
            return True
    raise XapiError("SR_HAS_NO_PBDS", sr)


def _chain(path: Path) -> list[Path]:
    out = [path]
    while True:
        parent = vhd.info(str(out[-1])).parent_path
        if not parent:
            return out
        out.append(Path(parent))


def _base_member(leaf: Path, base: Path) -> Path:
    """The member of ``leaf``'s chain to diff against for ``base``.

    ``base`` is usually an earlier snapshot: a sibling leaf whose parent (the base copy created
    by that snapshot) is in ``leaf``'s chain.  Walk up from ``base`` to the first common member.
    """
    members = {p.resolve() for p in _chain(leaf)}
    for candidate in _chain(base):
        if candidate.resolve() in members:
            return candidate
    raise XapiError("VDI_INCOMPATIBLE_TYPE", str(base.stem), "base is not an ancestor of the exported VDI")


@http_handler("GET", "/export_raw_vdi")
def export_raw_vdi(ctx, request) -> None:
    db = ctx.db
    vdi_ref = _resolve_vdi(db, request.query.get("vdi", ""))
    fmt = request.query.get("format", "raw") or "raw"
    if fmt not in FORMATS_OUT:
        raise XapiError("INVALID_VALUE", "format", fmt)
    if _redirect_if_blind(ctx, request, vdi_ref):
        return None
    backend, vdi = storage.vdi_backend(ctx.pool, vdi_ref, ctx.world)
    path = storage.disk_path(ctx.pool, vdi_ref, ctx.world)
    headers = {"Content-Type": "application/octet-stream"}
    if ctx.task:
        headers["task-id"] = ctx.task
    is_vhd = isinstance(backend, storage.FileSR)
    base_text = request.query.get("base", "")
    if base_text:
        base_ref = _resolve_vdi(db, base_text)
        if (
            fmt != "vhd"
            or not is_vhd
            or not isinstance(storage.vdi_backend(ctx.pool, base_ref)[0], storage.FileSR)
        ):
            raise XapiError("VDI_INCOMPATIBLE_TYPE", base_ref, "base= needs format=vhd and VHD-backed VDIs")
        base_path = _base_member(path, storage.disk_path(ctx.pool, base_ref, ctx.world))
    else:
        base_path = None
    ctx.set_progress(0.0)
    if request.method == "HEAD":  # headers only (the length is known for raw exports)
        size = int(vdi["virtual_size"]) if is_vhd else path.stat().st_size
        request.start(200, headers, size if fmt == "raw" else 0)
        return None
    if fmt == "raw":
        if is_vhd:
            request.start(200, headers, int(vdi["virtual_size"]))
            vhd.export_raw(str(path), request.wfile)
        else:
            size = path.stat().st_size
            request.start(200, headers, size)
            with open(path, "rb") as handle:
                while chunk := handle.read(1024 * 1024):
                    request.wfile.write(chunk)
    else:
        if is_vhd:
            with backend.lock:
                request.start(200, headers)
                vhd.export_vhd_stream(str(path), request.wfile, str(base_path) if base_path else None)
        else:
            raise XapiError("VDI_INCOMPATIBLE_TYPE", vdi_ref, "format=vhd needs a VHD-backed VDI")
    if ctx.task:
        tasks.succeed(db, ctx.task, None)
    request.wfile.flush()
    return None


class _Bounded:
    """A file-like view of exactly ``length`` bytes of the request body (EOF after them)."""

    def __init__(self, raw, length: int) -> None:
        self.raw = raw
        self.left = length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.raw.read(n)
        self.left -= len(data)
        if not data:
            raise XapiError(
                "INTERNAL_ERROR", "the client closed the connection before the whole body arrived"
            )
        return data

    def readinto(self, buf) -> int:
        """Straight into the caller's buffer (a 2 MiB VHD block is not copied twice)."""
        if self.left <= 0:
            return 0
        view = memoryview(buf).cast("B")
        n = self.raw.readinto(view[: self.left] if len(view) > self.left else view)
        if not n:
            raise XapiError(
                "INTERNAL_ERROR", "the client closed the connection before the whole body arrived"
            )
        self.left -= n
        return n


class _Chunks:
    """A file-like view of a chunked request body."""

    def __init__(self, request) -> None:
        self.it = request.iter_chunks()
        self.buf = b""
        self.done = False

    def read(self, n: int = -1) -> bytes:
        while not self.done and (n is None or n < 0 or len(self.buf) < n):
            try:
                self.buf += next(self.it)
            except StopIteration:
                self.done = True
        if n is None or n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _write_lun(body, path: str) -> None:
    """Raw data straight onto a LUN file, which never grows (like a block device)."""
    with open(path, "r+b") as lun:
        size = os.fstat(lun.fileno()).st_size
        written = 0
        while chunk := body.read(1024 * 1024):
            if written + len(chunk) > size:
                raise ValueError(f"the image is larger than the LUN ({size} bytes)")
            lun.write(chunk)
            written += len(chunk)


def _fail_after_partial_read(ctx, request, body, error: XapiError) -> None:
    """Drain what is left of the body and answer 500 ourselves, so the connection stays sane.

    The task fails first: a client that sees the response must find the task finished.
    """
    try:
        while body.read(1024 * 1024):
            pass
    except XapiError:
        pass
    if ctx.task:
        tasks.fail(ctx.db, ctx.task, error.details)
    request.respond(500, " ".join(error.details))


@http_handler("PUT", "/import_raw_vdi")
def import_raw_vdi(ctx, request) -> str | None:
    db = ctx.db
    vdi_ref = _resolve_vdi(db, request.query.get("vdi", ""))
    fmt = request.query.get("format", "raw") or "raw"
    if fmt not in FORMATS_IN:
        raise XapiError("INVALID_VALUE", "format", fmt)
    chunked = "chunked" in (request.headers.get("Transfer-Encoding") or "").lower()
    if chunked and not (fmt == "raw" and "chunked" in request.query):
        raise XapiError("INVALID_VALUE", "Transfer-Encoding", "chunked bodies need format=raw and ?chunked")
    if _redirect_if_blind(ctx, request, vdi_ref):
        return None
    backend, vdi = storage.vdi_backend(ctx.pool, vdi_ref, ctx.world)
    is_vhd = isinstance(backend, storage.FileSR)
    if not is_vhd and (fmt != "raw" or not isinstance(backend, storage.LunSR)):
        raise XapiError("VDI_INCOMPATIBLE_TYPE", vdi_ref, "only raw data can be imported into a LUN")
    if vdi["read_only"] or not vdi["managed"]:
        raise XapiError("VDI_READONLY", vdi_ref)
    if any(db.get("VBD", v)["currently_attached"] and db.get("VBD", v)["mode"] == "RW" for v in vdi["VBDs"]):
        raise XapiError("VDI_IN_USE", vdi_ref, "import")
    length = request.content_length
    if chunked:
        body = _Chunks(request)
    elif length is None:
        raise XapiError("INVALID_VALUE", "Content-Length", "missing")
    else:
        body = _Bounded(request.rfile, length)
    path = str(storage.disk_path(ctx.pool, vdi_ref, ctx.world))
    ctx.set_progress(0.0)
    with backend.lock:
        try:
            if fmt == "vhd":
                vhd.import_vhd_stream(body, path)
            elif is_vhd:
                vhd.import_raw(body, path)
            else:
                _write_lun(body, path)
        except (vhd.VHDError, ValueError, OSError) as exc:
            error = XapiError("VDI_IO_ERROR", f"import of {fmt} data into the VDI failed: {exc}")
            _fail_after_partial_read(ctx, request, body, error)
            raise error from None
    if is_vhd:
        storage.record_disk(db, vdi["SR"], backend.info(vdi["location"]))
    storage.refresh_sr(ctx.pool, vdi["SR"], ctx.world)
    if ctx.task:  # finished before the client sees the response, as XAPI does
        tasks.succeed(db, ctx.task, vdi_ref)
    request.respond(200, b"", headers={"task-id": ctx.task} if ctx.task else None)
    return vdi_ref
