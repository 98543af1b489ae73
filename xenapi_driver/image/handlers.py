"""Image handlers: how an image's bytes move between Glance and an SR (``[xenserver] image_handler``).

``direct_vhd``
    dom0 fetches and uploads images itself through the ``glance`` plug-in
    (VHD chains checked and relinked by ``vhd-util`` in dom0). nova-compute
    only passes it Glance's URL and the user's token. Raw and ISO images go
    through ``vdi_remote_stream``: file SRs hold VHDs only, so dom0 cannot
    place a raw file where XAPI would see it.
``vdi_remote_stream``
    nova-compute streams bytes from Nova's image API into XAPI's HTTP
    ``import_raw_vdi`` (and from ``export_raw_vdi`` back to Glance). dom0
    needs no route to Glance. A tgz chain is spooled to a local temporary
    directory (its members come leaf first, XAPI needs them base first),
    checked, then imported base first into one VDI.
``vdi_local_dev``
    The deployment guide's "VdiThroughDevStore": nova-compute attaches the
    disk to its own VM and uploads it as a raw disk in a tgz. See
    :class:`LocalDevHandler`.

Every download creates exactly one new visible VDI and returns it; on any
failure everything it created is destroyed and the SR scanned, so the SR is
left as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import nova.conf

from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver import vhd
from xenapi_driver.image import errors, formats, sr, xapi_http
from xenapi_driver.image.formats import Kind
from xenapi_driver.image.glance import ImageAPI
from xenapi_driver.image.pipeline import ReadAhead
from xenapi_driver.image.progress import Progress

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF
SECTOR = 512
_MEMBER_RE = re.compile(r"^(?:\./)?(0|[1-9][0-9]{0,4})\.vhd$")


class _ChunkReader:
    """A file object over an iterator of chunks (what ``tarfile``'s stream mode reads).

    ``tarfile`` reads 10 KiB at a time: each read is a slice of the current
    chunk, never a copy of what is left of it (that made a 1 MiB chunk cost
    ~50 MiB of copying). A read may return less than asked (up to the end of
    the current chunk); only the end of the data returns ``b""``.
    """

    def __init__(self, chunks: Iterator[bytes], progress: Progress | None = None) -> None:
        self._chunks = chunks
        self._piece = b""
        self._pos = 0
        self._progress = progress

    def _next(self) -> bool:
        for chunk in self._chunks:
            if self._progress:
                self._progress.add(len(chunk))
            if chunk:
                self._piece, self._pos = chunk, 0
                return True
        self._piece, self._pos = b"", 0
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._piece[self._pos :]]
            while self._next():
                parts.append(self._piece)
            return b"".join(parts)
        if self._pos >= len(self._piece) and not self._next():
            return b""
        start = self._pos
        self._pos = min(len(self._piece), start + n)
        if start == 0 and self._pos == len(self._piece):
            return self._piece
        return self._piece[start : self._pos]


class StreamHandler:
    """``vdi_remote_stream``: bytes flow through nova-compute and XAPI's HTTP handlers."""

    name = "vdi_remote_stream"

    def __init__(self, session: Any, image_api: ImageAPI) -> None:
        self.session = session
        self.image_api = image_api

    # -- download ------------------------------------------------------------------------
    def download(self, context: Any, image_id: str, meta: dict[str, Any], sr_ref: str, name: str) -> str:
        kind = formats.kind_of(meta)
        size = int(meta.get("size") or 0)
        if size <= 0:
            raise errors.bad_image(image_id, "Glance reports no data for it (size 0)")
        reader = ReadAhead(self.image_api.chunks(context, image_id, meta))
        chunks = iter(reader)
        progress = Progress(f"download of image {image_id}", size)
        made: list[str] = []
        try:
            if kind is Kind.TGZ_VHD:
                vdi = self._tgz(image_id, chunks, progress, sr_ref, name, made)
            elif kind is Kind.VHD:
                vdi = self._vhd(image_id, chunks, size, progress, sr_ref, name, made)
            elif kind is Kind.RAW_TGZ:
                vdi = self._raw_tgz(image_id, chunks, progress, sr_ref, name, made)
            else:  # raw, iso, kernel, ramdisk: the bytes are the disk
                vdi = sr.create_vdi(self.session, sr_ref, size, name)
                made.append(vdi)
                xapi_http.put_vdi(self.session, sr_ref, vdi, "raw", size, chunks, progress)
        except Exception as exc:
            sr.discard(self.session, sr_ref, made)
            raise errors.translate(exc, image_id) from exc
        finally:
            reader.close()
        progress.finish()
        return vdi

    def _vhd(self, image_id, chunks, size, progress, sr_ref, name, made) -> str:
        """A plain VHD: its leading footer copy gives the size; the file itself is a VHD stream."""
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= SECTOR:
                break
        if len(head) < SECTOR:
            raise errors.bad_image(
                image_id, f"a VHD needs at least {SECTOR} bytes, the image has {len(head)}"
            )

        def rest() -> Iterator[bytes]:
            yield head
            yield from chunks

        try:
            footer = vhd.format.Footer.unpack(head[:SECTOR], what="leading footer copy")
            footer.validate(what="leading footer copy")
        except vhd.VHDError:
            footer = None
        if footer is None:
            return self._fixed_vhd(image_id, rest(), size, progress, sr_ref, name, made)
        if footer.disk_type == vhd.format.TYPE_DIFFERENCING:
            raise errors.bad_image(image_id, "a plain VHD image must not have a parent (use a tgz chain)")
        vdi = sr.create_vdi(self.session, sr_ref, footer.current_size, name)
        made.append(vdi)
        xapi_http.put_vdi(self.session, sr_ref, vdi, "vhd", size, rest(), progress)
        return vdi

    def _fixed_vhd(self, image_id, chunks, size, progress, sr_ref, name, made) -> str:
        """A fixed VHD: raw data then a footer; the footer is checked before the VDI is kept."""
        data_len = size - SECTOR
        if data_len <= 0:
            raise errors.bad_image(image_id, "not a VHD: no footer")
        tail = bytearray()

        def data() -> Iterator[bytes]:
            sent = 0
            for chunk in chunks:
                take = max(0, min(len(chunk), data_len - sent))
                if take:
                    yield chunk[:take]
                    sent += take
                tail.extend(chunk[take:])

        vdi = sr.create_vdi(self.session, sr_ref, data_len, name)
        made.append(vdi)
        xapi_http.put_vdi(self.session, sr_ref, vdi, "raw", data_len, data(), progress)
        try:
            footer = vhd.format.Footer.unpack(bytes(tail[-SECTOR:]), what="footer")
            footer.validate(what="footer")
            if footer.disk_type != vhd.format.TYPE_FIXED:
                raise vhd.VHDFormatError("trailing footer is not a fixed disk's")
        except vhd.VHDError as exc:
            raise errors.bad_image(image_id, f"not a VHD: {exc}") from None
        return vdi

    def _tgz(self, image_id, chunks, progress, sr_ref, name, made) -> str:
        staging = tempfile.mkdtemp(prefix=f"xenapi-image-{image_id}-", dir=CONF.tempdir or None)
        try:
            files = _spool_tgz(image_id, _ChunkReader(chunks, progress), staging)
            infos = _check_chain(image_id, files)
            vdi = sr.create_vdi(self.session, sr_ref, infos[0].virtual_size, name)
            made.append(vdi)
            for path, info in reversed(list(zip(files, infos, strict=True))):
                length = os.path.getsize(path)
                with open(path, "rb") as handle:
                    body = iter(lambda h=handle: h.read(xapi_http.CHUNK), b"")
                    if info.disk_type == "fixed":
                        xapi_http.put_vdi(self.session, sr_ref, vdi, "raw", length - SECTOR, body)
                    else:
                        xapi_http.put_vdi(self.session, sr_ref, vdi, "vhd", length, body)
            return vdi
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _raw_tgz(self, image_id, chunks, progress, sr_ref, name, made) -> str:
        """A tgz holding one raw disk file: streamed from the archive straight into the VDI."""
        reader = _ChunkReader(chunks, progress)
        try:
            archive = tarfile.open(fileobj=reader, mode="r|gz")
            member = archive.next()
        except (tarfile.TarError, zlib.error, EOFError) as exc:
            raise errors.bad_image(image_id, f"not a valid gzip'd tar: {exc}") from None
        if member is None or not member.isfile() or member.size <= 0:
            raise errors.bad_image(image_id, "the tgz holds no disk file")
        source = archive.extractfile(member)
        vdi = sr.create_vdi(self.session, sr_ref, member.size, name)
        made.append(vdi)
        body = iter(lambda: source.read(xapi_http.CHUNK), b"")
        try:
            xapi_http.put_vdi(self.session, sr_ref, vdi, "raw", member.size, body)
        except (tarfile.TarError, zlib.error, EOFError) as exc:
            raise errors.bad_image(image_id, f"the tgz is damaged: {exc}") from None
        return vdi

    # -- upload --------------------------------------------------------------------------
    def upload(self, context: Any, image_id: str, sr_ref: str, vdi_ref: str, properties: dict) -> None:
        """The VDI's whole chain, flattened by XAPI into one VHD, as a ``vhd``/``bare`` image."""
        physical = sum(
            int(rec.get("physical_utilisation") or 0)
            for rec in sr.vdi_records(self.session, sr_ref).values()
            if rec["uuid"] in set(sr.chain_uuids(self.session, sr_ref, vdi_ref))
        )
        export = xapi_http.Export(self.session, sr_ref, vdi_ref, "vhd")
        progress = Progress(f"upload of image {image_id}", export.length or physical)
        ahead = ReadAhead(export)
        try:
            meta = {"disk_format": "vhd", "container_format": "bare", "properties": dict(properties)}
            self.image_api.upload(context, image_id, meta, progress.wrap(ahead))
        finally:
            ahead.cancel()
            export.close()
            ahead.close()
        progress.finish()


def _spool_tgz(image_id: str, reader: _ChunkReader, staging: str) -> list[str]:
    """Extract ``<n>.vhd`` members into ``staging``; refuse anything else; return 0.vhd .. n.vhd."""
    found: dict[int, str] = {}
    try:
        with tarfile.open(fileobj=reader, mode="r|gz") as archive:
            for member in archive:
                match = _MEMBER_RE.match(member.name)
                if not match or not member.isfile():
                    raise errors.bad_image(
                        image_id, f"unexpected member {member.name!r} in the tgz (only <n>.vhd files allowed)"
                    )
                index = int(match.group(1))
                if index in found:
                    raise errors.bad_image(image_id, f"{index}.vhd appears twice in the tgz")
                path = os.path.join(staging, f"{index}.vhd")
                source = archive.extractfile(member)
                with open(path, "wb") as out:
                    shutil.copyfileobj(source, out, xapi_http.CHUNK)
                found[index] = path
        while reader.read(xapi_http.CHUNK):
            pass
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise errors.bad_image(image_id, f"not a valid gzip'd tar of VHDs: {exc}") from None
    if 0 not in found:
        raise errors.bad_image(image_id, "the tgz has no 0.vhd (the chain's leaf)")
    missing = [f"{n}.vhd" for n in range(max(found) + 1) if n not in found]
    if missing:
        raise errors.bad_image(image_id, f"the chain in the tgz has gaps: {', '.join(missing)} missing")
    return [found[n] for n in range(len(found))]


def _check_chain(image_id: str, files: list[str]) -> list[vhd.VHDInfo]:
    """Each member is a sound VHD and each is the parent of the one before: else ImageUnacceptable.

    Children are relinked to the staged files (their locators name the files
    they were made from) so the whole chain can be checked like ``vhd-util check -p``.
    """
    infos = []
    for n, path in enumerate(files):
        try:
            infos.append(vhd.info(path, require_parents=False))
        except vhd.VHDError as exc:
            raise errors.bad_image(image_id, f"{n}.vhd is not a valid VHD: {exc}") from None
    for n, info in enumerate(infos):
        if n + 1 < len(infos):
            if info.disk_type != "differencing":
                raise errors.bad_image(
                    image_id, f"{n}.vhd is a {info.disk_type} disk but {n + 1}.vhd follows it"
                )
            if info.parent_uuid != infos[n + 1].uuid:
                raise errors.bad_image(
                    image_id, f"broken chain: {n}.vhd's parent is {info.parent_uuid}, not {n + 1}.vhd"
                )
        elif info.disk_type == "differencing":
            raise errors.bad_image(image_id, f"broken chain: the base {n}.vhd has a parent that is missing")
    try:
        for n in range(len(files) - 2, -1, -1):
            vhd.reparent(files[n], files[n + 1])
        vhd.check(files[0], walk_parents=True)
    except vhd.VHDError as exc:
        raise errors.bad_image(image_id, f"the VHD chain is not valid: {exc}") from None
    return infos


class DirectVHDHandler:
    """``direct_vhd``: dom0's ``glance`` plug-in talks to Glance; nova-compute only orchestrates."""

    name = "direct_vhd"

    def __init__(self, session: Any, image_api: ImageAPI) -> None:
        self.session = session
        self.image_api = image_api
        self._stream = StreamHandler(session, image_api)

    def _endpoint_args(self, context: Any) -> tuple[str, dict[str, str]]:
        url, token = self.image_api.dom0_endpoint(context)
        args = {"endpoint": url, "verify": "false" if CONF.glance.insecure else "true"}
        if token:
            args["token"] = token
        return url, args

    def download(self, context: Any, image_id: str, meta: dict[str, Any], sr_ref: str, name: str) -> str:
        kind = formats.kind_of(meta)
        if kind not in (Kind.TGZ_VHD, Kind.VHD):
            return self._stream.download(context, image_id, meta, sr_ref, name)
        url, args = self._endpoint_args(context)
        args.update(image_id=image_id, sr_path=sr.sr_path(self.session, sr_ref))
        LOG.info("dom0 downloads image %s from %s", image_id, url)
        try:
            result = json.loads(sr.call_plugin_async(self.session, "glance", "download_vhd", args))
        except xexc.XenAPIError as exc:
            if exc.code == "COMMAND_FAILED" and str(exc.params[:1]).startswith("['vhd-util"):
                # Only the received image is examined with vhd-util before it enters the SR.
                raise errors.bad_image(image_id, f"dom0's vhd-util refused it: {exc.params[-1]}") from exc
            raise errors.translate(exc, image_id, url) from exc
        LOG.info(
            "dom0 downloaded image %s (%s bytes) as chain %s", image_id, result.get("size"), result["chain"]
        )
        made: list[str] = []
        try:
            sr.scan(self.session, sr_ref)
            vdi = self.session.call_xenapi("VDI.get_by_uuid", result["root"]["uuid"])
            made.append(vdi)
            self.session.call_xenapi("VDI.set_name_label", vdi, name)
            return vdi
        except Exception:
            if not made:  # the files are in the SR but XAPI never saw them: a scan introduces them
                try:
                    made.append(self.session.call_xenapi("VDI.get_by_uuid", result["root"]["uuid"]))
                except Exception:  # noqa: BLE001
                    pass
            sr.discard(self.session, sr_ref, made)
            raise

    def upload(self, context: Any, image_id: str, sr_ref: str, vdi_ref: str, properties: dict) -> None:
        url, args = self._endpoint_args(context)
        self.image_api.set_formats(context, image_id, "vhd", "ovf", properties)
        level = xconf.CONF.xenserver.image_compression_level
        args.update(
            image_id=image_id,
            sr_path=sr.sr_path(self.session, sr_ref),
            vdi_uuids=json.dumps(sr.chain_uuids(self.session, sr_ref, vdi_ref)),
            compression_level=str(level or 1),
        )
        LOG.info("dom0 uploads the chain of VDI %s to image %s at %s", vdi_ref, image_id, url)
        try:
            result = json.loads(sr.call_plugin_async(self.session, "glance", "upload_vhd", args))
        except xexc.XenAPIError as exc:
            raise errors.translate(exc, image_id, url) from exc
        LOG.info("dom0 uploaded image %s: 100%% (%s bytes)", image_id, result.get("size"))


class LocalDevHandler(StreamHandler):
    """``vdi_local_dev`` ("VdiThroughDevStore"): raw disks in a tgz, through nova-compute.

    Uploads are a gzip'd tar holding the disk's raw bytes (``disk_format=raw``,
    ``container_format=tgz``, as the deployment guide's store writes them);
    downloads accept every format the stream handler accepts (which includes
    raw tgz images).
    The bytes are read with XAPI's ``export_raw_vdi?format=raw`` rather than
    from a block device plugged into the compute VM: the result in Glance is
    the same, and nothing depends on the compute VM's device names.
    """

    name = "vdi_local_dev"

    def upload(self, context: Any, image_id: str, sr_ref: str, vdi_ref: str, properties: dict) -> None:
        export = xapi_http.Export(self.session, sr_ref, vdi_ref, "raw")
        size = export.length or int(self.session.call_xenapi("VDI.get_virtual_size", vdi_ref))
        progress = Progress(f"upload of image {image_id}", size)
        level = xconf.CONF.xenserver.image_compression_level or 1
        ahead = ReadAhead(export)
        try:
            meta = {"disk_format": "raw", "container_format": "tgz", "properties": dict(properties)}
            self.image_api.upload(
                context, image_id, meta, _tgz_stream("disk.raw", size, progress.wrap(ahead), level)
            )
        finally:
            ahead.cancel()
            export.close()
            ahead.close()
        progress.finish()


def _tgz_stream(name: str, size: int, chunks: Iterator[bytes], level: int) -> Iterator[bytes]:
    """A gzip'd tar of one member ``name`` of ``size`` bytes, produced while ``chunks`` are read."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    yield compressor.compress(info.tobuf(format=tarfile.GNU_FORMAT))
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        out = compressor.compress(chunk)
        if out:
            yield out
    if sent != size:
        raise OSError(f"the disk gave {sent} bytes, {size} expected")
    padding = (-size) % tarfile.BLOCKSIZE
    yield compressor.compress(b"\0" * padding + b"\0" * (2 * tarfile.BLOCKSIZE))
    yield compressor.flush()


HANDLERS = {h.name: h for h in (DirectVHDHandler, StreamHandler, LocalDevHandler)}


def handler_for(session: Any, image_api: ImageAPI, name: str | None = None) -> Any:
    """The handler ``[xenserver] image_handler`` names."""
    name = name or xconf.CONF.xenserver.image_handler
    try:
        return HANDLERS[name](session, image_api)
    except KeyError:
        raise ValueError(
            f"unknown [xenserver] image_handler {name!r}; choose one of {sorted(HANDLERS)}"
        ) from None
