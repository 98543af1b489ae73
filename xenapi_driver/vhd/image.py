"""One VHD file: parse and validate its metadata, read bitmaps, write sectors.

A :class:`VHDImage` knows nothing about parents beyond locating the parent
file; chains are assembled in :mod:`.chain`.  Every offset read from the file
is bounds-checked at open time, so later reads never go past the end.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from array import array

from . import format as fmt
from .errors import VHDChainError, VHDError, VHDFormatError, VHDMissingParentError, VHDNotFoundError

_ZERO_SECTOR = bytes(fmt.SECTOR_SIZE)
MAX_BAT_ENTRIES = (fmt.MAX_VIRTUAL_SIZE // fmt.SECTOR_SIZE) + 1  # bound for foreign files / fuzzing


def pwrite_all(fd: int, data, offset: int) -> None:
    """os.pwrite until everything is written (short writes are legal for pwrite)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def pwritev_all(fd: int, buffers: list, offset: int) -> None:
    """One pwritev for the common case; finish with pwrite_all if it came up short."""
    views = [memoryview(b).cast("B") for b in buffers]
    written = os.pwritev(fd, views, offset)
    for view in views:
        if written >= len(view):
            written -= len(view)
            offset += len(view)
            continue
        pwrite_all(fd, view[written:], offset + written)
        offset += len(view)
        written = 0


def pread_exact(fd: int, length: int, offset: int, *, what: str, path: str) -> bytes:
    if offset < 0 or length < 0 or offset + length > 1 << 62:
        raise VHDFormatError(f"{path}: {what} offset {offset} is impossible", path=path)
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise VHDFormatError(f"{path}: cannot read {what}: {exc.strerror}", path=path) from None
    if len(data) != length:
        raise VHDFormatError(
            f"{path}: {what} is truncated (wanted {length} bytes at offset {offset}, got {len(data)})",
            path=path,
        )
    return data


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_name_inside(text: str, child_dir: str, what: str, path: str) -> str:
    """Turn a locator's path into a bare file name in the child's directory, or refuse."""
    if text.startswith("file://"):
        text = text[len("file://") :]
    text = text.replace("\\", "/")
    if text.startswith("/"):
        parent_dir = os.path.dirname(os.path.normpath(text))
        if parent_dir != os.path.normpath(child_dir) and not _same_file(parent_dir, child_dir):
            raise VHDChainError(
                f"{path}: {what} points to {text!r}, outside the VHD's directory {child_dir}; "
                "parents must live in the same SR directory",
                path=path,
            )
        return os.path.basename(text)
    while text.startswith("./"):
        text = text[2:]
    if not text or "/" in text or text in (".", "..") or "\0" in text:
        raise VHDChainError(
            f"{path}: {what} {text!r} points outside the VHD's directory {child_dir}; "
            "parents must live in the same SR directory",
            path=path,
        )
    return text


class VHDImage:
    """An open VHD file (fixed, dynamic or differencing)."""

    def __init__(self, path: str, *, writable: bool = False):
        self.path = os.path.abspath(path)
        self.writable = writable
        try:
            self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise VHDNotFoundError(f"{self.path}: no such VHD file", path=self.path) from None
        except IsADirectoryError:
            raise VHDError(f"{self.path}: is a directory, not a VHD file", path=self.path) from None
        except OSError as exc:
            err = VHDError(f"{self.path}: cannot open: {exc.strerror}", path=self.path)
            err.errno = exc.errno or errno.EIO
            raise err from None
        self._bitmaps: dict[int, int] = {}
        try:
            self._load()
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    # -- parsing -----------------------------------------------------------------
    def _load(self) -> None:
        path = self.path
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise VHDError(f"{path}: is {kind}, not a VHD file", path=path)
        size = st.st_size
        self.file_size = size
        if size < fmt.FOOTER_SIZE:
            raise VHDFormatError(
                f"{path}: file is truncated ({size} bytes, smaller than a 512-byte VHD footer)", path=path
            )
        raw = pread_exact(self.fd, fmt.FOOTER_SIZE, size - fmt.FOOTER_SIZE, what="footer", path=path)
        try:
            footer = fmt.Footer.unpack(raw, what="footer")
            footer.validate()
        except VHDFormatError as exc:
            raise VHDFormatError(
                f"{path}: {exc} (file size {size}); the file may be truncated or damaged, "
                "'vhd-util repair' can restore the footer from its backup copy",
                path=path,
            ) from None
        self.footer = footer
        self.header: fmt.Header | None = None
        self.bat: array | None = None
        self.block_size = fmt.BLOCK_SIZE
        self.bitmap_size = fmt.BITMAP_SIZE
        if footer.disk_type == fmt.TYPE_FIXED:
            if footer.current_size + fmt.FOOTER_SIZE != size:
                raise VHDFormatError(
                    f"{path}: fixed VHD of {footer.current_size} bytes needs a file of "
                    f"{footer.current_size + fmt.FOOTER_SIZE} bytes, found {size} (truncated or extended)",
                    path=path,
                )
            self.spb = self.block_size // fmt.SECTOR_SIZE
            self.full_bits = (1 << self.spb) - 1
            self.next_free = footer.current_size
            return
        limit = size - fmt.FOOTER_SIZE
        if footer.data_offset % fmt.SECTOR_SIZE or footer.data_offset + fmt.HEADER_SIZE > limit:
            raise VHDFormatError(
                f"{path}: footer's header offset {footer.data_offset} lies outside the file ({size} bytes)",
                path=path,
            )
        hraw = pread_exact(self.fd, fmt.HEADER_SIZE, footer.data_offset, what="dynamic header", path=path)
        try:
            header = fmt.Header.unpack(hraw)
            header.validate()
        except VHDFormatError as exc:
            raise VHDFormatError(f"{path}: {exc}", path=path) from None
        self.header = header
        bs = header.block_size
        self.block_size = bs
        self.spb = bs // fmt.SECTOR_SIZE
        self.full_bits = (1 << self.spb) - 1
        self.bitmap_size = fmt.round_up(-(-self.spb // 8), fmt.SECTOR_SIZE)
        self._full_bitmap = fmt.int_to_bitmap(self.full_bits, self.bitmap_size)
        entries = header.max_table_entries
        needed = -(-footer.current_size // bs)
        if entries < needed:
            raise VHDFormatError(
                f"{path}: BAT has {entries} entries but the disk needs {needed} for "
                f"{footer.current_size} bytes",
                path=path,
            )
        if entries > MAX_BAT_ENTRIES or header.table_offset + 4 * entries > limit:
            raise VHDFormatError(
                f"{path}: BAT ({entries} entries at offset {header.table_offset}) extends past the end "
                f"of the file ({size} bytes)",
                path=path,
            )
        bat = array("I")
        bat.frombytes(pread_exact(self.fd, 4 * entries, header.table_offset, what="BAT", path=path))
        if sys.byteorder == "little":
            bat.byteswap()
        self.bat = bat
        self.meta_end = self._metadata_end()
        span = self.bitmap_size + bs
        used = set(bat)  # C-speed even for the 1M entries of a 2040 GiB disk
        used.discard(fmt.UNUSED)
        end = self.meta_end
        if used:
            highest = max(used)
            if highest * fmt.SECTOR_SIZE + span > limit:
                block = bat.index(highest)
                raise VHDFormatError(
                    f"{path}: BAT entry for block {block} points to offset {highest * fmt.SECTOR_SIZE}, "
                    f"past the end of the file ({size} bytes): the file is truncated",
                    path=path,
                )
            lowest = min(used)
            if lowest * fmt.SECTOR_SIZE < fmt.FOOTER_SIZE + fmt.HEADER_SIZE:
                block = bat.index(lowest)
                raise VHDFormatError(
                    f"{path}: BAT entry for block {block} points into the VHD headers (sector {lowest})",
                    path=path,
                )
            end = max(end, highest * fmt.SECTOR_SIZE + span)
        self.next_free = end
        if footer.disk_type == fmt.TYPE_DIFFERENCING:
            header.parent_name  # noqa: B018 - decodes and validates the UTF-16BE name

    def _metadata_end(self) -> int:
        header = self.header
        end = max(
            fmt.FOOTER_SIZE,
            self.footer.data_offset + fmt.HEADER_SIZE,
            header.table_offset + fmt.round_up(4 * header.max_table_entries, fmt.SECTOR_SIZE),
        )
        for loc in header.locators:
            if loc.code != fmt.PLAT_NONE and loc.data_offset + loc.size <= self.file_size:
                end = max(end, loc.data_offset + loc.size)
        return end

    # -- properties --------------------------------------------------------------
    @property
    def disk_type(self) -> int:
        return self.footer.disk_type

    @property
    def is_fixed(self) -> bool:
        return self.footer.disk_type == fmt.TYPE_FIXED

    @property
    def is_differencing(self) -> bool:
        return self.footer.disk_type == fmt.TYPE_DIFFERENCING

    @property
    def virtual_size(self) -> int:
        return self.footer.current_size

    @property
    def uuid(self) -> str:
        return self.footer.uuid_str

    @property
    def physical_size(self) -> int:
        """End of data plus the footer, as blktap's vhd_get_phys_size computes it."""
        return self.next_free + fmt.FOOTER_SIZE

    # -- parent location ---------------------------------------------------------
    def read_locator(self, index: int) -> str | None:
        """Decoded text of parent locator ``index`` (None for unused/unsupported kinds)."""
        loc = self.header.locators[index]
        if loc.code == fmt.PLAT_NONE:
            return None
        limit = self.file_size - fmt.FOOTER_SIZE
        if (
            loc.data_offset < fmt.FOOTER_SIZE
            or loc.data_length > 8192
            or loc.data_length > loc.size
            or loc.data_offset + loc.data_length > limit
        ):
            raise VHDFormatError(
                f"{self.path}: parent locator {index} (offset {loc.data_offset}, length {loc.data_length}) "
                f"lies outside the file ({self.file_size} bytes)",
                path=self.path,
            )
        raw = os.pread(self.fd, loc.data_length, loc.data_offset)
        try:
            if loc.code == fmt.PLAT_MACX:
                return raw.decode("utf-8").rstrip("\0")
            if loc.code in (fmt.PLAT_W2KU, fmt.PLAT_W2RU):
                return raw.decode("utf-16-le").rstrip("\0")
        except UnicodeDecodeError:
            raise VHDFormatError(
                f"{self.path}: parent locator {index} is not valid text", path=self.path
            ) from None
        return None

    def parent_names(self) -> list[tuple[str, str]]:
        """(what, bare file name) for every locator in blktap's order, then the header name.

        Any locator pointing outside the VHD's directory is refused outright.
        """
        if not self.is_differencing:
            return []
        child_dir = os.path.dirname(self.path)
        names = []
        order = {fmt.PLAT_MACX: 0, fmt.PLAT_W2KU: 1, fmt.PLAT_W2RU: 2}
        indexed = sorted(
            (order[loc.code], i) for i, loc in enumerate(self.header.locators) if loc.code in order
        )
        for _, i in indexed:
            text = self.read_locator(i)
            if text is None:
                continue
            what = f"parent locator {i}"
            names.append((what, _check_name_inside(text, child_dir, what, self.path)))
        header_name = self.header.parent_name
        if header_name:
            names.append(
                ("parent name", _check_name_inside(header_name, child_dir, "parent name", self.path))
            )
        return names

    def parent_path(self, *, must_exist: bool = True) -> str | None:
        """Absolute path of the parent file, found the way blktap does (locators, then name)."""
        if not self.is_differencing:
            return None
        names = self.parent_names()
        if not names:
            raise VHDChainError(
                f"{self.path}: differencing disk has no parent locator and no parent name", path=self.path
            )
        child_dir = os.path.dirname(self.path)
        for _, name in names:
            candidate = os.path.join(child_dir, name)
            if os.path.isfile(candidate):
                return candidate
        expected = os.path.join(child_dir, names[0][1])
        if not must_exist:
            return expected
        raise VHDMissingParentError(
            f"{self.path}: parent {expected} is missing (parent uuid "
            f"{fmt.Footer(0, 0, 0, self.header.parent_uuid).uuid_str})",
            path=self.path,
        )

    # -- block access ------------------------------------------------------------
    def block_bits(self, block: int) -> int:
        """Sectors of ``block`` this file holds, as an int (bit N = sector N of the block)."""
        if self.bat is None:
            start = block * self.spb
            total = self.footer.current_size // fmt.SECTOR_SIZE
            if start >= total:
                return 0
            count = min(self.spb, total - start)
            return self.full_bits if count == self.spb else (1 << count) - 1
        bits = self._bitmaps.get(block)
        if bits is None:
            bat = self.bat
            if block >= len(bat) or (entry := bat[block]) == fmt.UNUSED:
                return 0
            raw = os.pread(self.fd, self.bitmap_size, entry * fmt.SECTOR_SIZE)
            if raw == self._full_bitmap:  # the usual case: no decoding
                bits = self.full_bits
            elif len(raw) != self.bitmap_size:
                raise VHDError(
                    f"{self.path}: short read of the bitmap of block {block} (file changed under us?)",
                    path=self.path,
                )
            else:
                bits = fmt.bitmap_to_int(raw) & self.full_bits
            if len(self._bitmaps) > 4096:
                self._bitmaps.clear()
            self._bitmaps[block] = bits
        return bits

    def block_allocated(self, block: int) -> bool:
        if self.bat is None:
            return block * self.block_size < self.footer.current_size
        return block < len(self.bat) and self.bat[block] != fmt.UNUSED

    def allocated_blocks(self) -> list[int]:
        if self.bat is None:
            return list(range(-(-self.footer.current_size // self.block_size)))
        return [i for i, entry in enumerate(self.bat) if entry != fmt.UNUSED]

    def data_offset(self, block: int) -> int:
        """File offset of sector 0 of ``block`` (the block must be allocated)."""
        if self.bat is None:
            return block * self.block_size
        return self.bat[block] * fmt.SECTOR_SIZE + self.bitmap_size

    # -- writing -----------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise VHDError(f"{self.path}: opened read-only", path=self.path)

    def write_footer(self) -> None:
        """Write the footer at the end (and its copy at 0 for dynamic/differencing disks)."""
        self._require_writable()
        self.footer.timestamp = min(self.footer.timestamp, fmt.vhd_now())
        raw = self.footer.pack()
        pwrite_all(self.fd, raw, self.file_size - fmt.FOOTER_SIZE)
        if not self.is_fixed:
            pwrite_all(self.fd, raw, 0)

    def write_header(self) -> None:
        self._require_writable()
        pwrite_all(self.fd, self.header.pack(), self.footer.data_offset)

    def _set_bat(self, block: int, sector: int) -> None:
        self.bat[block] = sector
        pwrite_all(self.fd, sector.to_bytes(4, "big"), self.header.table_offset + 4 * block)

    def _reserve(self, length: int, align_data: bool = True) -> int:
        """Claim ``length`` bytes at the end of data, moving the footer after them."""
        if align_data:
            # Put block data (after its 512-byte bitmap) on a 4 KiB boundary.
            off = fmt.round_up(self.next_free + self.bitmap_size, 4096) - self.bitmap_size
        else:
            off = fmt.round_up(self.next_free, fmt.SECTOR_SIZE)
        new_end = off + length
        old_size = self.file_size
        old_footer = old_size - fmt.FOOTER_SIZE
        self.file_size = new_end + fmt.FOOTER_SIZE
        self.footer.timestamp = min(self.footer.timestamp, fmt.vhd_now())
        pwrite_all(self.fd, self.footer.pack(), new_end)
        # Whatever lay between the old end of data and the old end of file (the old
        # footer, perhaps junk) is now inside the new region or the gap: zero it.
        start = min(self.next_free, old_footer)
        if start < old_size:
            pwrite_all(self.fd, bytes(old_size - start), start)
        self.next_free = new_end
        return off

    def write_sectors(self, sector: int, data) -> None:
        """Write whole sectors at virtual sector ``sector`` into this file only."""
        self._require_writable()
        view = memoryview(data).cast("B")
        if len(view) % fmt.SECTOR_SIZE:
            raise VHDError("write_sectors needs a whole number of sectors")
        if (sector * fmt.SECTOR_SIZE) + len(view) > self.footer.current_size:
            raise VHDError(
                f"{self.path}: write of {len(view)} bytes at sector {sector} goes past the virtual size "
                f"{self.footer.current_size}",
                path=self.path,
            )
        if self.bat is None:
            pwrite_all(self.fd, view, sector * fmt.SECTOR_SIZE)
            return
        spb = self.spb
        pos = 0
        total = len(view)
        while pos < total:
            block, first = divmod(sector + pos // fmt.SECTOR_SIZE, spb)
            count = min(spb - first, (total - pos) // fmt.SECTOR_SIZE)
            chunk = view[pos : pos + count * fmt.SECTOR_SIZE]
            bits = ((1 << count) - 1) << first
            if self.bat[block] == fmt.UNUSED:
                # Dynamic disks own every sector of an allocated block (unwritten ones
                # read as the zeros we leave there); differencing disks only those written.
                new_bits = bits if self.is_differencing else self.full_bits
                off = self._reserve(self.bitmap_size + self.block_size)
                bitmap = fmt.int_to_bitmap(new_bits, self.bitmap_size)
                if first == 0:
                    pwritev_all(self.fd, [bitmap, chunk], off)
                else:
                    pwrite_all(self.fd, bitmap, off)
                    pwrite_all(self.fd, chunk, off + self.bitmap_size + first * fmt.SECTOR_SIZE)
                self._set_bat(block, off // fmt.SECTOR_SIZE)
                self._bitmaps[block] = new_bits
            else:
                base = self.bat[block] * fmt.SECTOR_SIZE
                pwrite_all(self.fd, chunk, base + self.bitmap_size + first * fmt.SECTOR_SIZE)
                old = self.block_bits(block)
                if old | bits != old:
                    new_bits = old | bits
                    pwrite_all(self.fd, fmt.int_to_bitmap(new_bits, self.bitmap_size), base)
                    self._bitmaps[block] = new_bits
            pos += count * fmt.SECTOR_SIZE

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> VHDImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
