"""Whole-file VHD operations: create, snapshot, info, hide, re-parent, coalesce, resize, check, repair."""

from __future__ import annotations

import errno
import os
import uuid as _uuid
from dataclasses import dataclass

from . import format as fmt
from .chain import give_buffer, take_buffer, walk_chain
from .errors import VHDChainError, VHDError, VHDFormatError, VHDNotFoundError
from .image import VHDImage, pread_exact, pwrite_all

TIMESTAMP_SLACK = 1800  # blktap tolerates this much clock skew (NFS servers)


@dataclass(frozen=True)
class VHDInfo:
    """What ``vhd-util query`` tells about one VHD file."""

    path: str
    uuid: str
    disk_type: str
    virtual_size: int
    physical_size: int
    hidden: bool
    parent_uuid: str | None
    parent_path: str | None
    depth: int


def _uuid_str(raw: bytes) -> str:
    return str(_uuid.UUID(bytes=raw))


def _locators(name: str, offset: int) -> tuple[list[fmt.Locator], list[tuple[int, bytes]]]:
    """blktap's three locators for a parent in the same directory, placed from ``offset``."""
    entries = [
        (fmt.PLAT_MACX, f"file://./{name}".encode()),
        (fmt.PLAT_W2KU, f".\\{name}".encode("utf-16-le")),
        (fmt.PLAT_W2RU, f".\\{name}".encode("utf-16-le")),
    ]
    locs = []
    blobs = []
    for code, data in entries:
        space = fmt.round_up(max(len(data), 1), fmt.SECTOR_SIZE)
        locs.append(fmt.Locator(code, space, len(data), 0, offset))
        blobs.append((offset, data.ljust(space, b"\0")))
        offset += space
    locs += [fmt.Locator() for _ in range(8 - len(locs))]
    return locs, blobs


def _same_directory(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _same_dir_parent(child: str, parent: str) -> str:
    parent = os.path.abspath(parent)
    parent_dir = os.path.dirname(parent)
    child_dir = os.path.dirname(os.path.abspath(child))
    if parent_dir != child_dir and not _same_directory(parent_dir, child_dir):
        raise VHDChainError(
            f"parent {parent} must be in the same directory (SR) as {child}: blktap's locators are relative",
            path=child,
        )
    return parent


def _create_file(path: str, contents: list[tuple[int, bytes]], total_size: int) -> None:
    path = os.path.abspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        err = VHDError(f"{path} already exists; refusing to overwrite it", path=path)
        err.errno = errno.EEXIST
        raise err from None
    except OSError as exc:
        err = VHDError(f"{path}: cannot create: {exc.strerror}", path=path)
        err.errno = exc.errno or errno.EIO
        raise err from None
    try:
        os.ftruncate(fd, total_size)
        for offset, data in contents:
            pwrite_all(fd, data, offset)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _create_sparse(
    path: str,
    disk_type: int,
    size: int,
    parent: tuple[bytes, int, str] | None = None,
) -> None:
    entries = -(-size // fmt.BLOCK_SIZE)
    table_offset = fmt.FOOTER_SIZE + fmt.HEADER_SIZE
    meta_end = table_offset + fmt.round_up(4 * entries, fmt.SECTOR_SIZE)
    header = fmt.Header(table_offset=table_offset, max_table_entries=entries)
    blobs: list[tuple[int, bytes]] = []
    if parent is not None:
        header.parent_uuid, header.parent_timestamp, name = parent
        header.set_parent_name(name)
        header.locators, blobs = _locators(name, meta_end)
        meta_end = blobs[-1][0] + len(blobs[-1][1])
    footer = fmt.Footer(
        disk_type=disk_type,
        current_size=size,
        original_size=size,
        uuid=_uuid.uuid4().bytes,
        data_offset=fmt.FOOTER_SIZE,
        geometry=fmt.chs_geometry(size),
    )
    raw_footer = footer.pack()
    contents = [
        (0, raw_footer),
        (fmt.FOOTER_SIZE, header.pack()),
        (table_offset, b"\xff" * fmt.round_up(4 * entries, fmt.SECTOR_SIZE)),
        *blobs,
        (meta_end, raw_footer),
    ]
    _create_file(path, contents, meta_end + fmt.FOOTER_SIZE)


def create_dynamic(path: str, virtual_size: int) -> VHDInfo:
    """Create an empty dynamic VHD (size rounded up to 2 MiB); refuses to overwrite a file."""
    _create_sparse(os.fspath(path), fmt.TYPE_DYNAMIC, fmt.normalize_size(virtual_size))
    return info(path)


def create_fixed(path: str, virtual_size: int) -> VHDInfo:
    """Create a fixed VHD (a sparse file of the rounded size plus the footer)."""
    size = fmt.normalize_size(virtual_size)
    footer = fmt.Footer(
        disk_type=fmt.TYPE_FIXED,
        current_size=size,
        original_size=size,
        uuid=_uuid.uuid4().bytes,
        geometry=fmt.chs_geometry(size),
    )
    _create_file(os.fspath(path), [(size, footer.pack())], size + fmt.FOOTER_SIZE)
    return info(path)


def _parent_identity(parent_path: str) -> tuple[bytes, int, str, int]:
    with VHDImage(parent_path) as parent:
        uid = parent.footer.uuid
        size = parent.virtual_size
    mtime = os.stat(parent_path).st_mtime
    return uid, fmt.vhd_time(mtime), os.path.basename(parent_path), size


def snapshot(child_path: str, parent_path: str) -> VHDInfo:
    """Create an empty differencing VHD ``child_path`` on top of ``parent_path``."""
    child_path = os.path.abspath(child_path)
    parent_path = _same_dir_parent(child_path, parent_path)
    # The whole parent chain must be sound before we build on it.
    layers, _ = walk_chain(parent_path)
    for layer in layers:
        layer.close()
    uid, ts, name, size = _parent_identity(parent_path)
    _create_sparse(child_path, fmt.TYPE_DIFFERENCING, size, (uid, ts, name))
    return info(child_path)


def info(path: str, *, require_parents: bool = True) -> VHDInfo:
    """Describe one VHD.  ``depth`` counts the file itself and needs every parent present,
    unless ``require_parents=False`` (then it counts the layers that exist)."""
    path = os.path.abspath(os.fspath(path))
    layers, missing = walk_chain(path, verify=False, allow_missing=not require_parents)
    try:
        leaf = layers[0]
        parent_path = None
        if leaf.is_differencing:
            parent_path = layers[1].path if len(layers) > 1 else missing
        return VHDInfo(
            path=leaf.path,
            uuid=leaf.uuid,
            disk_type=fmt.TYPE_NAMES[leaf.disk_type],
            virtual_size=leaf.virtual_size,
            physical_size=leaf.physical_size,
            hidden=bool(leaf.footer.hidden),
            parent_uuid=_uuid_str(leaf.header.parent_uuid) if leaf.is_differencing else None,
            parent_path=parent_path,
            depth=len(layers),
        )
    finally:
        for layer in layers:
            layer.close()


def set_hidden(path: str, hidden: bool) -> None:
    """Set blktap's hidden flag (footer byte 85) in both footer copies."""
    with VHDImage(path, writable=True) as image:
        image.footer.hidden = 1 if hidden else 0
        image.write_footer()


def set_uuid(path: str, uuid: str) -> None:
    """Give the VHD a new unique id (children must then be re-parented onto it)."""
    try:
        raw = _uuid.UUID(str(uuid)).bytes
    except ValueError:
        raise VHDError(f"{uuid!r} is not a valid UUID") from None
    if raw == bytes(16):
        raise VHDError("the VHD unique id must not be the null UUID")
    with VHDImage(path, writable=True) as image:
        image.footer.uuid = raw
        image.write_footer()


def _write_parent(image: VHDImage, parent_path: str) -> None:
    uid, ts, name, _ = _parent_identity(parent_path)
    header = image.header
    header.parent_uuid = uid
    header.parent_timestamp = ts
    header.set_parent_name(name)
    old = sorted(
        (loc for loc in header.locators if loc.code != fmt.PLAT_NONE), key=lambda loc: loc.data_offset
    )
    # Reuse the old locator area when it is contiguous and the new names fit; else append.
    contiguous = all(b.data_offset == a.data_offset + a.size for a, b in zip(old, old[1:], strict=False))
    start = old[0].data_offset if old else 0
    room = sum(loc.size for loc in old)
    locs, blobs = _locators(name, start)
    needed = sum(len(data) for _, data in blobs)
    if not old or not contiguous or needed > room:
        area = image._reserve(needed, align_data=False)
        locs, blobs = _locators(name, area)
    for offset, data in blobs:
        pwrite_all(image.fd, data, offset)
    header.locators = locs
    image.write_header()
    image.meta_end = image._metadata_end()


def reparent(path: str, new_parent_path: str) -> None:
    """Point a differencing VHD at a new parent (uuid, name, timestamp and locators)."""
    path = os.path.abspath(path)
    new_parent_path = _same_dir_parent(path, new_parent_path)
    layers, _ = walk_chain(new_parent_path)
    try:
        st = os.stat(path)
        for layer in layers:
            lst = os.fstat(layer.fd)
            if (lst.st_dev, lst.st_ino) == (st.st_dev, st.st_ino):
                raise VHDChainError(
                    f"re-parenting {path} onto {new_parent_path} would create a loop", path=path
                )
    finally:
        for layer in layers:
            layer.close()
    with VHDImage(path, writable=True) as image:
        if not image.is_differencing:
            raise VHDError(f"{path} is not a differencing VHD; it has no parent to change", path=path)
        _write_parent(image, new_parent_path)


def coalesce(path: str) -> int:
    """Copy the child's sectors into its parent (no relink, no delete); returns bytes copied.

    A parent smaller than the child (the child was resized) is grown first.
    """
    path = os.path.abspath(path)
    with VHDImage(path) as child:
        if not child.is_differencing:
            raise VHDError(
                f"{path} is not a differencing VHD; there is no parent to coalesce into", path=path
            )
        parent_path = child.parent_path()
        with VHDImage(parent_path) as probe:
            if probe.footer.uuid != child.header.parent_uuid:
                raise VHDChainError(
                    f"{path}: parent {parent_path} has uuid {probe.uuid}, not the one the child expects",
                    path=path,
                )
            grow = probe.virtual_size < child.virtual_size
        if grow:
            resize(parent_path, child.virtual_size)
        copied = 0
        buf = take_buffer(child.block_size)
        with VHDImage(parent_path, writable=True) as parent:
            for block in child.allocated_blocks():
                bits = child.block_bits(block)
                base = child.data_offset(block)
                for start, end in ((0, child.spb),) if bits == child.full_bits else fmt.bit_runs(bits):
                    n = (end - start) * fmt.SECTOR_SIZE
                    view = memoryview(buf)[:n]
                    got = os.preadv(child.fd, [view], base + start * fmt.SECTOR_SIZE)
                    if got != n:
                        raise VHDFormatError(f"{path}: short read in block {block}", path=path)
                    parent.write_sectors(block * child.spb + start, view)
                    copied += n
            parent.fsync()
        give_buffer(buf)
        return copied


def resize(path: str, new_virtual_size: int) -> None:
    """Grow the virtual size (rounded up to 2 MiB).  Shrinking is refused: it loses data."""
    size = fmt.normalize_size(new_virtual_size)
    with VHDImage(path, writable=True) as image:
        if size < image.virtual_size:
            raise VHDError(
                f"{image.path}: cannot shrink from {image.virtual_size} to {size} bytes", path=image.path
            )
        if size == image.virtual_size:
            return
        if image.is_fixed:
            old = image.virtual_size
            os.ftruncate(image.fd, size + fmt.FOOTER_SIZE)
            pwrite_all(image.fd, bytes(fmt.FOOTER_SIZE), old)
            image.file_size = size + fmt.FOOTER_SIZE
        else:
            header = image.header
            entries = -(-size // image.block_size)
            capacity = fmt.round_up(4 * header.max_table_entries, fmt.SECTOR_SIZE) // 4
            if entries > capacity:
                # No room after the BAT: move it to the end of the data.
                old = image.bat
                new_bytes = fmt.round_up(4 * entries, fmt.SECTOR_SIZE)
                offset = image._reserve(new_bytes, align_data=False)
                table = bytearray(b"\xff" * new_bytes)
                table[: 4 * len(old)] = b"".join(e.to_bytes(4, "big") for e in old)
                pwrite_all(image.fd, table, offset)
                header.table_offset = offset
            else:
                pwrite_all(
                    image.fd,
                    b"\xff" * (4 * (entries - header.max_table_entries)),
                    header.table_offset + 4 * header.max_table_entries,
                )
            image.bat.extend([fmt.UNUSED] * (entries - header.max_table_entries))
            header.max_table_entries = entries
            image.write_header()
        image.footer.current_size = size
        image.footer.geometry = fmt.chs_geometry(size)
        image.write_footer()


# -- check / repair --------------------------------------------------------------
def _check_one(path: str) -> VHDImage:
    """Deep structural check of one file (beyond what opening it verifies)."""
    image = VHDImage(path)
    try:
        footer = image.footer
        now = fmt.vhd_now()
        if footer.timestamp > now + TIMESTAMP_SLACK:
            raise VHDFormatError(f"{image.path}: footer creation time is in the future", path=image.path)
        if footer.creator_app[:3] == b"tap" and footer.creator_version > 0x00010003:
            raise VHDFormatError(f"{image.path}: unsupported tap creator version", path=image.path)
        if footer.reserved.strip(b"\0"):
            raise VHDFormatError(f"{image.path}: footer reserved bytes are not zero", path=image.path)
        if footer.saved_state not in (0, 1):
            raise VHDFormatError(f"{image.path}: invalid saved state", path=image.path)
        if footer.uuid == bytes(16):
            raise VHDFormatError(f"{image.path}: unique id is null", path=image.path)
        if image.is_fixed:
            return image
        backup = pread_exact(image.fd, fmt.FOOTER_SIZE, 0, what="backup footer", path=image.path)
        primary = os.pread(image.fd, fmt.FOOTER_SIZE, image.file_size - fmt.FOOTER_SIZE)
        if backup != primary:
            try:
                fmt.Footer.unpack(backup, what="backup footer")
                problem = "primary and backup footers do not match"
            except VHDFormatError as exc:
                problem = str(exc)
            raise VHDFormatError(f"{image.path}: {problem}; 'vhd-util repair' rewrites them", path=image.path)
        header = image.header
        if header.data_offset != fmt.NO_DATA_OFFSET:
            raise VHDFormatError(f"{image.path}: dynamic header has a data offset", path=image.path)
        if header.reserved1 or header.reserved2.strip(b"\0"):
            raise VHDFormatError(f"{image.path}: dynamic header reserved bits are not zero", path=image.path)
        span = image.bitmap_size + image.block_size
        regions = [
            (0, fmt.FOOTER_SIZE, "footer copy"),
            (image.footer.data_offset, fmt.HEADER_SIZE, "dynamic header"),
            (header.table_offset, fmt.round_up(4 * header.max_table_entries, fmt.SECTOR_SIZE), "BAT"),
        ]
        regions += [
            (loc.data_offset, loc.size, f"parent locator {i}")
            for i, loc in enumerate(header.locators)
            if loc.code != fmt.PLAT_NONE
        ]
        regions += [
            (entry * fmt.SECTOR_SIZE, span, f"block {i}")
            for i, entry in enumerate(image.bat)
            if entry != fmt.UNUSED
        ]
        regions.sort()
        for (a, alen, aname), (b, _, bname) in zip(regions, regions[1:], strict=False):
            if b < a + alen:
                raise VHDFormatError(
                    f"{image.path}: {aname} (offset {a}) overlaps {bname} (offset {b})", path=image.path
                )
        if image.is_differencing:
            if header.parent_timestamp > now + TIMESTAMP_SLACK:
                raise VHDFormatError(f"{image.path}: parent timestamp is in the future", path=image.path)
            seen = set()
            for i, loc in enumerate(header.locators):
                if loc.code == fmt.PLAT_NONE:
                    continue
                if loc.code in seen:
                    raise VHDFormatError(
                        f"{image.path}: duplicate parent locator kind in {i}", path=image.path
                    )
                seen.add(loc.code)
                if loc.data_offset + loc.size > image.file_size - fmt.FOOTER_SIZE or not loc.data_length:
                    raise VHDFormatError(
                        f"{image.path}: parent locator {i} has an invalid size", path=image.path
                    )
            pname = header.parent_name
            for what, name in image.parent_names():
                if name != pname:
                    raise VHDFormatError(
                        f"{image.path}: {what} names {name!r} but the header names {pname!r}", path=image.path
                    )
        else:
            if (
                header.parent_uuid != bytes(16)
                or header.parent_timestamp
                or header.parent_name_raw.strip(b"\0")
            ):
                raise VHDFormatError(
                    f"{image.path}: non-differencing disk has parent fields", path=image.path
                )
            if any(loc.code != fmt.PLAT_NONE for loc in header.locators):
                raise VHDFormatError(
                    f"{image.path}: non-differencing disk has parent locators", path=image.path
                )
        return image
    except BaseException:
        image.close()
        raise


def check(path: str, walk_parents: bool = False) -> list[str]:
    """Validate structure and checksums; with walk_parents, every ancestor too.

    Chain consistency: the parent must exist, carry the uuid the child recorded,
    and not be older than the timestamp the child recorded (which would mean the
    parent was replaced).  Returns the absolute paths checked, leaf first.
    """
    checked: list[str] = []
    seen: set[tuple[int, int]] = set()
    current = os.path.abspath(os.fspath(path))
    while True:
        image = _check_one(current)
        try:
            st = os.fstat(image.fd)
            if (st.st_dev, st.st_ino) in seen:
                raise VHDChainError(f"{path}: loop in the VHD chain at {current}", path=path)
            seen.add((st.st_dev, st.st_ino))
            if len(seen) > 256:
                raise VHDChainError(f"{path}: chain deeper than 256", path=path)
            checked.append(image.path)
            if not image.is_differencing:
                return checked
            parent_path = image.parent_path()
            with VHDImage(parent_path) as parent:
                if parent.footer.uuid != image.header.parent_uuid:
                    raise VHDChainError(
                        f"{image.path}: invalid parent uuid: {parent_path} is {parent.uuid}, expected "
                        f"{_uuid_str(image.header.parent_uuid)}",
                        path=image.path,
                    )
                mtime = fmt.vhd_time(os.fstat(parent.fd).st_mtime)
            if image.header.parent_timestamp > mtime + 2:
                raise VHDChainError(
                    f"{image.path}: parent {parent_path} is older (mtime {mtime}) than the timestamp the "
                    f"child recorded ({image.header.parent_timestamp}): the parent was replaced",
                    path=image.path,
                )
        finally:
            image.close()
        if not walk_parents:
            return checked
        current = parent_path


def repair(path: str) -> None:
    """Rewrite both footers from whichever copy is intact, at the true end of data."""
    path = os.path.abspath(os.fspath(path))
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise VHDNotFoundError(f"{path}: no such VHD file", path=path) from None
    except OSError as exc:
        raise VHDError(f"{path}: cannot open for repair: {exc.strerror}", path=path) from None
    try:
        size = os.fstat(fd).st_size
        candidates = []
        for offset in (size - fmt.FOOTER_SIZE, size - fmt.FOOTER_SIZE + 1, 0):
            if offset < 0:
                continue
            raw = os.pread(fd, fmt.FOOTER_SIZE, offset)
            if len(raw) < fmt.FOOTER_SIZE:
                raw = raw.ljust(fmt.FOOTER_SIZE, b"\0")
            try:
                footer = fmt.Footer.unpack(raw)
                footer.validate()
            except VHDFormatError:
                continue
            if offset == 0 and footer.disk_type == fmt.TYPE_FIXED:
                continue
            candidates.append(footer)
        if not candidates:
            raise VHDFormatError(f"{path}: neither footer copy is valid; cannot repair", path=path)
        footer = candidates[0]
        if footer.disk_type == fmt.TYPE_FIXED:
            end = footer.current_size
        else:
            hraw = pread_exact(fd, fmt.HEADER_SIZE, footer.data_offset, what="dynamic header", path=path)
            header = fmt.Header.unpack(hraw)
            header.validate()
            entries = header.max_table_entries
            if entries > (1 << 24):
                raise VHDFormatError(f"{path}: BAT too large ({entries} entries); cannot repair", path=path)
            raw_bat = pread_exact(fd, 4 * entries, header.table_offset, what="BAT", path=path)
            bitmap = fmt.round_up(-(-header.block_size // fmt.SECTOR_SIZE // 8), fmt.SECTOR_SIZE)
            end = max(
                footer.data_offset + fmt.HEADER_SIZE,
                header.table_offset + fmt.round_up(4 * entries, fmt.SECTOR_SIZE),
            )
            for loc in header.locators:
                if loc.code != fmt.PLAT_NONE:
                    end = max(end, loc.data_offset + loc.size)
            for i in range(entries):
                entry = int.from_bytes(raw_bat[4 * i : 4 * i + 4], "big")
                if entry != fmt.UNUSED:
                    end = max(end, entry * fmt.SECTOR_SIZE + bitmap + header.block_size)
        if end > size + fmt.BLOCK_SIZE + 2 * fmt.FOOTER_SIZE:
            raise VHDFormatError(
                f"{path}: metadata points {end - size} bytes past the end of the file; "
                "the BAT or locators are damaged, cannot repair safely",
                path=path,
            )
        footer.timestamp = min(footer.timestamp, fmt.vhd_now())
        raw = footer.pack()
        os.ftruncate(fd, end + fmt.FOOTER_SIZE)
        pwrite_all(fd, raw, end)
        if footer.disk_type != fmt.TYPE_FIXED:
            pwrite_all(fd, raw, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
