"""A copy-on-write chain of VHD files, read and written as one disk.

A sector is read from the nearest layer whose block is allocated and whose
bitmap has the sector's bit set; below the base everything reads as zeros.
Writes go to the leaf.  Reads are assembled run by run with ``os.preadv``
straight into the caller's buffer, so whole blocks cost one system call.
"""

from __future__ import annotations

import io
import mmap
import os

from . import format as fmt
from .errors import VHDChainError, VHDError, VHDMissingParentError
from .image import VHDImage

MAX_CHAIN_DEPTH = 256
_ZEROS = bytes(fmt.BLOCK_SIZE)
BUFFER_SIZE = fmt.BLOCK_SIZE + mmap.PAGESIZE  # a block plus its bitmap, in whole pages
_POOL: list = []
# Scratch for bytes read only to merge system calls; concurrent use is harmless.
_TRASH = memoryview(mmap.mmap(-1, fmt.BLOCK_SIZE))
_MAX_GAP = 16 * 1024  # merging bigger holes copies more than a second system call costs
_MAX_IOV = 500
_SHIFT = fmt.SECTOR_SHIFT
_SECTOR_MASK = fmt.SECTOR_SIZE - 1


def take_buffer(size: int = BUFFER_SIZE):
    """A reusable, page-aligned scratch buffer of at least ``size`` bytes.

    Page-cache copies into a page-aligned destination run markedly faster than
    into a malloc'd bytearray (whose data starts mid-page), and reuse avoids
    zero-filling 2 MiB per block.  Slice it to the length you need.
    """
    if size <= BUFFER_SIZE:
        try:
            return _POOL.pop()  # atomic under the GIL: threads never share a buffer
        except IndexError:
            return mmap.mmap(-1, BUFFER_SIZE)
    return bytearray(size)


def give_buffer(buf) -> None:
    if isinstance(buf, mmap.mmap) and len(buf) == BUFFER_SIZE and len(_POOL) < 8:
        _POOL.append(buf)


def walk_chain(path: str, *, writable_leaf: bool = False, verify: bool = True, allow_missing: bool = False):
    """Open ``path`` and its ancestors; returns (layers, missing_parent_path or None).

    Detects loops (same file twice) and, with ``verify``, parent uuid mismatches.
    On any error every opened file is closed again.
    """
    layers: list[VHDImage] = []
    seen: set[tuple[int, int]] = set()
    try:
        image = VHDImage(path, writable=writable_leaf)
        while True:
            st = os.fstat(image.fd)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                image.close()
                raise VHDChainError(
                    f"{layers[0].path}: loop in the VHD chain: {image.path} appears twice",
                    path=layers[0].path,
                )
            seen.add(key)
            layers.append(image)
            if len(layers) > MAX_CHAIN_DEPTH:
                raise VHDChainError(f"{path}: chain is deeper than {MAX_CHAIN_DEPTH} layers", path=path)
            if not image.is_differencing:
                return layers, None
            try:
                parent_path = image.parent_path()
            except VHDMissingParentError:
                if allow_missing:
                    return layers, image.parent_path(must_exist=False)
                raise
            parent = VHDImage(parent_path)
            if verify and parent.footer.uuid != image.header.parent_uuid:
                expected = fmt.Footer(0, 0, 0, image.header.parent_uuid).uuid_str
                parent.close()
                raise VHDChainError(
                    f"{image.path}: parent {parent_path} has uuid {parent.uuid}, but the child expects "
                    f"{expected}; re-link it with 'vhd-util modify -p' if that file is the right parent",
                    path=image.path,
                )
            if (
                layers[0].block_size != parent.block_size
                and not parent.is_fixed
                and layers[0].bat is not None
            ):
                parent.close()
                raise VHDChainError(f"{image.path}: parent {parent_path} uses a different block size")
            image = parent
    except BaseException:
        for layer in layers:
            layer.close()
        raise


def run_plan(plan: list, block: int) -> None:
    """Carry out a :meth:`Chain.plan_block` plan; a short read (file shrank) is a VHDError.

    Only system calls and buffer copies, no metadata lookups: this is the part
    of a read whose cost the plain-file benchmark baseline also pays.
    """
    for fd, iov, offset, length, layer in plan:
        if fd < 0:
            iov[:] = _ZEROS[:length]
        elif os.preadv(fd, iov, offset) != length:
            raise VHDError(
                f"{layer.path}: short read in block {block} (file changed under us?)", path=layer.path
            )


class Chain:
    """An open chain (leaf first).  Use as a context manager, or call close().

    BAT and bitmaps are cached at open: keep one writer per leaf file, and
    reopen a chain to see blocks another writer allocated since.
    """

    def __init__(self, path: str, *, writable: bool = True):
        self.layers, _ = walk_chain(path, writable_leaf=writable)
        self.leaf = self.layers[0]
        self.path = self.leaf.path
        self.writable = writable
        dynamic = [layer for layer in self.layers if not layer.is_fixed]
        self.block_size = dynamic[0].block_size if dynamic else fmt.BLOCK_SIZE
        self.spb = self.block_size // fmt.SECTOR_SIZE

    @property
    def virtual_size(self) -> int:
        return self.leaf.virtual_size

    @property
    def depth(self) -> int:
        return len(self.layers)

    def layer_index(self, path: str) -> int:
        """Position of ``path`` in the chain (0 = leaf); raises if it is not a member."""
        try:
            st = os.stat(path)
        except OSError:
            raise VHDChainError(f"{path}: base is not a file", path=path) from None
        for i, layer in enumerate(self.layers):
            lst = os.fstat(layer.fd)
            if (lst.st_dev, lst.st_ino) == (st.st_dev, st.st_ino):
                return i
        raise VHDChainError(f"{path} is not a member of the chain of {self.path}", path=path)

    # -- reading -----------------------------------------------------------------
    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise VHDError(
                f"{self.path}: range {offset}+{length} is outside the virtual size {self.virtual_size}",
                path=self.path,
            )

    def _block_sources(self, block: int, want: int):
        """Yield (layer, sectors) pairs for ``want`` in ``block``, nearest layer first."""
        for layer in self.layers:
            bits = layer.block_bits(block)
            if not bits:
                continue
            take = want & bits
            if take:
                yield layer, take
                want &= ~bits
                if not want:
                    return
        if want:
            yield None, want

    def plan_block(self, block: int, lo: int, hi: int, out: memoryview) -> list:
        """The reads that fill ``out`` (hi - lo bytes) with bytes [lo, hi) of ``block``.

        Returns a list of ``(fd, iov, file_offset, length, layer)`` for
        :func:`run_plan`; ``fd`` -1 marks a run of zeros (``iov`` is then the
        view to clear).  Keeping the planning (bitmaps, run lists) apart from
        the copies lets a streaming export plan a batch of blocks while their
        metadata is hot in the CPU caches.  The common cases (the whole range
        held by one layer, or one run per layer) cost one preadv per layer.
        Sector masks are 4096-bit ints, so each operation on them counts:
        whole-block bitmaps skip the masking.
        """
        first = lo >> _SHIFT
        last = (hi + _SECTOR_MASK) >> _SHIFT
        want = whole = ((1 << (last - first)) - 1) << first
        plan = []
        for layer in self.layers:
            bits = layer.block_bits(block)
            if not bits:
                continue
            if bits == layer.full_bits:
                take = want  # the layer holds every sector still wanted
            else:
                take = want & bits
                if not take:
                    continue
            base = layer.data_offset(block)
            if take == whole:
                return [(layer.fd, [out], base + lo, hi - lo, layer)]
            low = take & -take
            top = take + low
            if not top & take:
                # A single run of sectors (the usual case): no run list to build.
                a = (low.bit_length() - 1) << _SHIFT
                b = (top.bit_length() - 1) << _SHIFT
                if a < lo:
                    a = lo
                if b > hi:
                    b = hi
                plan.append((layer.fd, [out[a - lo : b - lo]], base + a, b - a, layer))
            else:
                runs = [
                    (max(start << _SHIFT, lo), min(end << _SHIFT, hi)) for start, end in fmt.bit_runs(take)
                ]
                span_start, span_end = runs[0][0], runs[-1][1]
                gaps = span_end - span_start - sum(b - a for a, b in runs)
                if len(runs) <= _MAX_IOV and gaps <= _MAX_GAP:
                    # One system call for this layer: the holes between its runs (held by
                    # nearer layers) are read into a throw-away buffer.
                    iov = []
                    pos = span_start
                    for a, b in runs:
                        if a > pos:
                            iov.append(_TRASH[: a - pos])
                        iov.append(out[a - lo : b - lo])
                        pos = b
                    plan.append((layer.fd, iov, base + span_start, span_end - span_start, layer))
                else:
                    plan.extend((layer.fd, [out[a - lo : b - lo]], base + a, b - a, layer) for a, b in runs)
            if take is want:
                return plan
            want ^= take
            if not want:
                return plan
        for start, end in fmt.bit_runs(want):
            a = max(start << _SHIFT, lo)
            b = min(end << _SHIFT, hi)
            plan.append((-1, out[a - lo : b - lo], 0, b - a, None))
        return plan

    def _fill_block(self, block: int, lo: int, hi: int, out: memoryview) -> None:
        """Fill ``out`` (hi - lo bytes) with bytes [lo, hi) of ``block``."""
        run_plan(self.plan_block(block, lo, hi, out), block)

    def readinto(self, offset: int, buffer) -> int:
        """Read len(buffer) bytes at ``offset`` into a writable buffer; returns the count."""
        out = memoryview(buffer).cast("B")
        length = len(out)
        self._check_range(offset, length)
        bs = self.block_size
        pos = offset
        end = offset + length
        while pos < end:
            block, lo = divmod(pos, bs)
            hi = min(bs, lo + end - pos)
            self._fill_block(block, lo, hi, out[pos - offset : pos - offset + hi - lo])
            pos += hi - lo
        return length

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the virtual disk.

        A range held by one layer costs one pread and no copy.  Otherwise the
        bytes object that is returned is filled in place (through
        ``io.BytesIO.getbuffer``, which hands out the buffer of the sole
        reference it holds), so the kernel copies each byte once and Python
        never copies it again.
        """
        self._check_range(offset, length)
        if not length:
            return b""
        bs = self.block_size
        block, lo = divmod(offset, bs)
        hi = lo + length
        if hi <= bs:
            first = lo >> fmt.SECTOR_SHIFT
            last = (hi + fmt.SECTOR_SIZE - 1) >> fmt.SECTOR_SHIFT
            want = ((1 << (last - first)) - 1) << first
            for layer in self.layers:
                take = want & layer.block_bits(block)
                if not take:
                    continue
                if take == want:
                    data = os.pread(layer.fd, length, layer.data_offset(block) + lo)
                    if len(data) != length:
                        raise VHDError(f"{layer.path}: short read in block {block} (file changed under us?)")
                    return data
                break
            else:
                return bytes(length)
        # A fresh bytes object comes zeroed by calloc, which is cheaper than
        # reading sparse holes or copying a scratch buffer afterwards.
        bio = io.BytesIO(bytes(length))
        with bio.getbuffer() as view:
            if hi <= bs:
                self._fill_block(block, lo, hi, view)
            else:
                self.readinto(offset, view)
        return bio.getvalue()

    # -- writing -----------------------------------------------------------------
    def write(self, offset: int, data) -> None:
        """Write ``data`` at ``offset`` into the leaf (partial sectors are merged via the chain)."""
        if not self.writable:
            raise VHDError(f"{self.path}: chain opened read-only", path=self.path)
        view = memoryview(data).cast("B")
        length = len(view)
        self._check_range(offset, length)
        if not length:
            return
        start = offset - offset % fmt.SECTOR_SIZE
        end = fmt.round_up(offset + length, fmt.SECTOR_SIZE)
        if start != offset or end != offset + length:
            buf = bytearray(end - start)
            if start != offset:
                self.readinto(start, memoryview(buf)[: fmt.SECTOR_SIZE])
            if end != offset + length:
                self.readinto(end - fmt.SECTOR_SIZE, memoryview(buf)[-fmt.SECTOR_SIZE :])
            buf[offset - start : offset - start + length] = view
            view = memoryview(buf)
        self.leaf.write_sectors(start >> fmt.SECTOR_SHIFT, view)

    def block_allocated_anywhere(self, block: int, layers: list[VHDImage] | None = None) -> bool:
        return any(layer.block_allocated(block) for layer in (self.layers if layers is None else layers))

    def flush(self) -> None:
        if self.writable:
            self.leaf.fsync()

    def close(self) -> None:
        for layer in self.layers:
            layer.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_chain(path: str, *, writable: bool = True) -> Chain:
    """Open a VHD and all its parents for reading (and writing the leaf, unless writable=False)."""
    return Chain(os.fspath(path), writable=writable)
