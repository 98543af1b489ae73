"""Streaming a chain as one VHD (full or differential) or as raw bytes, and importing back.

The VHD stream is laid out so it can be written to a pipe or socket in one
pass: footer copy, header, BAT, then the allocated blocks in order, then the
footer.  A differential stream (``base_path`` given) carries only the blocks
allocated in the layers above the base, flattened through the chain, which is
what XAPI's ``export_raw_vdi?format=vhd&base=`` produces; importing it onto a
copy of the base gives the leaf's contents.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator

from . import format as fmt
from .chain import Chain, give_buffer, open_chain, run_plan, take_buffer
from .errors import VHDError, VHDFormatError
from .ops import resize

_FULL_BITMAP = fmt.int_to_bitmap(fmt.FULL_BITMAP)
_ZERO_BLOCK = bytes(fmt.BLOCK_SIZE)
# Block data starts one page into the (page-aligned) buffer, so the kernel copies
# into page-aligned memory; the full sector bitmap sits in the 512 bytes before it.
_DATA_START = mmap.PAGESIZE
_PLAN_BATCH = 64


def _write_all(out, data) -> int:
    view = memoryview(data).cast("B")
    total = len(view)
    while view:
        written = out.write(view)
        if written is None:  # raw non-blocking object: retry
            continue
        view = view[written:]
    return total


def _read_exact(src, length: int, *, what: str) -> memoryview:
    buf = bytearray(length)
    view = memoryview(buf)
    got = 0
    readinto = getattr(src, "readinto", None)
    while got < length:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = src.read(length - got)
            n = len(chunk) if chunk else 0
            view[got : got + n] = chunk
        if not n:
            raise VHDFormatError(f"VHD stream is truncated: {what} needs {length} bytes, got {got}")
        got += n
    return view


def _skip(src, length: int, *, what: str) -> None:
    while length > 0:
        n = min(length, fmt.BLOCK_SIZE)
        _read_exact(src, n, what=what)
        length -= n


def _check_trailer(src, pos: int, expected: int) -> None:
    """The footer normally sits right after the data; otherwise the stream's last 512 bytes."""
    if expected >= pos:
        _skip(src, expected - pos, what="gap before the footer")
        tail = bytes(_read_exact(src, fmt.FOOTER_SIZE, what="trailing footer"))
        try:
            fmt.Footer.unpack(tail, what="stream trailing footer")
            return
        except VHDFormatError:
            pass  # extra structures (e.g. a batmap) before the footer: read to the end
    else:
        tail = b""
    while True:
        chunk = src.read(fmt.BLOCK_SIZE)
        if not chunk:
            break
        tail = (tail + bytes(chunk))[-fmt.FOOTER_SIZE :]
    if len(tail) < fmt.FOOTER_SIZE:
        raise VHDFormatError("VHD stream is truncated: the trailing footer is missing")
    try:
        fmt.Footer.unpack(tail, what="stream trailing footer")
    except VHDFormatError as exc:
        raise VHDFormatError(f"VHD stream is truncated or damaged: {exc}") from None


def _fill_blocks(chain: Chain, blocks: list[int], data: memoryview) -> Iterator[int]:
    """Read each of ``blocks`` in turn into ``data`` (one block long); yield after each.

    Bytes past the virtual size in the last block are zeros.  Blocks are
    planned a batch at a time (bitmaps, run lists) before their reads: each
    2 MiB copy evicts the CPU caches, so planning between copies would run cold.
    """
    bs = chain.block_size
    size = chain.virtual_size
    plan_block = chain.plan_block
    for i in range(0, len(blocks), _PLAN_BATCH):
        batch = blocks[i : i + _PLAN_BATCH]
        plans = []
        for block in batch:
            n = min(bs, size - block * bs)
            plan = plan_block(block, 0, n, data[:n])
            if n < bs:
                plan.append((-1, data[n:], 0, bs - n, None))
            plans.append(plan)
        for block, plan in zip(batch, plans, strict=True):
            run_plan(plan, block)
            yield block


def iter_vhd_stream(path: str, base_path: str | None = None) -> Iterator[memoryview | bytes]:
    """Yield the chain ending at ``path`` as one dynamic VHD stream, piece by piece.

    With ``base_path`` (a member of the chain) only blocks allocated above the
    base are sent, each with its full flattened contents.  Each piece is
    valid only until the next is requested (the block buffer is reused), so
    write it out before asking for more.
    """
    with open_chain(path, writable=False) as chain:
        bs = chain.block_size
        if bs != fmt.BLOCK_SIZE:
            raise VHDError(f"{path}: only 2 MiB blocks can be streamed, chain uses {bs}")
        size = chain.virtual_size
        nblocks = -(-size // bs)
        if base_path is None:
            upper = chain.layers
        else:
            upper = chain.layers[: chain.layer_index(os.fspath(base_path))]
        allocated: set[int] = set()
        for layer in upper:
            allocated.update(layer.allocated_blocks())
        blocks = sorted(b for b in allocated if b < nblocks)
        bat_bytes = fmt.round_up(4 * nblocks, fmt.SECTOR_SIZE)
        data_start = fmt.FOOTER_SIZE + fmt.HEADER_SIZE + bat_bytes
        span = fmt.BITMAP_SIZE + bs
        bat = bytearray(b"\xff" * bat_bytes)
        for i, block in enumerate(blocks):
            bat[4 * block : 4 * block + 4] = ((data_start + i * span) // fmt.SECTOR_SIZE).to_bytes(4, "big")
        header = fmt.Header(table_offset=fmt.FOOTER_SIZE + fmt.HEADER_SIZE, max_table_entries=nblocks)
        footer = fmt.Footer(
            disk_type=fmt.TYPE_DYNAMIC,
            current_size=size,
            original_size=size,
            uuid=chain.leaf.footer.uuid,
            data_offset=fmt.FOOTER_SIZE,
            geometry=fmt.chs_geometry(size),
        )
        raw_footer = footer.pack()
        bat[:0] = raw_footer + header.pack()
        yield bat
        buf = take_buffer()
        try:
            # Each piece is the block's (full) sector bitmap followed by its data.
            buf[_DATA_START - fmt.BITMAP_SIZE : _DATA_START] = _FULL_BITMAP
            with memoryview(buf) as whole:
                piece = whole[_DATA_START - fmt.BITMAP_SIZE : _DATA_START + bs]
                for _ in _fill_blocks(chain, blocks, whole[_DATA_START : _DATA_START + bs]):
                    yield piece
        finally:
            give_buffer(buf)
        yield raw_footer


def export_vhd_stream(path: str, out_fileobj, base_path: str | None = None) -> int:
    """Write the chain ending at ``path`` as one dynamic VHD stream; returns bytes written.

    With ``base_path`` (a member of the chain) only blocks allocated above the base
    are sent, each with its full flattened contents.
    """
    total = 0
    with contextlib.closing(iter_vhd_stream(path, base_path)) as pieces:
        for piece in pieces:
            total += _write_all(out_fileobj, piece)
    flush = getattr(out_fileobj, "flush", None)
    if flush:
        flush()
    return total


def import_vhd_stream(in_fileobj, path: str) -> int:
    """Apply a VHD stream (full or differential) onto the existing VHD ``path``'s leaf.

    Returns the number of data bytes written.  The target is grown when the
    stream's disk is larger.  Fixed-VHD streams are refused (no leading footer).
    """
    head = _read_exact(in_fileobj, fmt.FOOTER_SIZE, what="footer copy")
    try:
        footer = fmt.Footer.unpack(bytes(head), what="stream footer copy")
        footer.validate(what="stream footer copy")
    except VHDFormatError as exc:
        raise VHDFormatError(
            f"not a dynamic VHD stream ({exc}); fixed VHDs and raw images need import_raw"
        ) from None
    if footer.disk_type == fmt.TYPE_FIXED:
        raise VHDFormatError("a VHD stream must be dynamic or differencing, not fixed")
    pos = fmt.FOOTER_SIZE
    if footer.data_offset < pos or footer.data_offset > (1 << 40):
        raise VHDFormatError(f"VHD stream: header offset {footer.data_offset} is not streamable")
    _skip(in_fileobj, footer.data_offset - pos, what="gap before header")
    header = fmt.Header.unpack(bytes(_read_exact(in_fileobj, fmt.HEADER_SIZE, what="dynamic header")))
    header.validate()
    pos = footer.data_offset + fmt.HEADER_SIZE
    bs = header.block_size
    spb = bs // fmt.SECTOR_SIZE
    bitmap_size = fmt.round_up(-(-spb // 8), fmt.SECTOR_SIZE)
    entries = header.max_table_entries
    size = footer.current_size
    if entries < -(-size // bs) or entries > (1 << 24):
        raise VHDFormatError(f"VHD stream: BAT of {entries} entries does not fit a {size}-byte disk")
    if header.table_offset < pos:
        raise VHDFormatError("VHD stream: BAT precedes the header; not streamable")
    _skip(in_fileobj, header.table_offset - pos, what="gap before BAT")
    raw_bat = bytes(_read_exact(in_fileobj, 4 * entries, what="BAT"))
    pos = header.table_offset + 4 * entries
    blocks = sorted(
        (entry * fmt.SECTOR_SIZE, i)
        for i in range(entries)
        if (entry := int.from_bytes(raw_bat[4 * i : 4 * i + 4], "big")) != fmt.UNUSED
    )
    written = 0
    chain = open_chain(path)
    try:
        if size > chain.virtual_size:
            chain.close()
            resize(path, size)
            chain = open_chain(path)
        limit = min(size, chain.virtual_size)
        full = (1 << spb) - 1
        for offset, block in blocks:
            if offset < pos:
                raise VHDFormatError(f"VHD stream: block {block} overlaps earlier data; not streamable")
            _skip(in_fileobj, offset - pos, what=f"gap before block {block}")
            data = _read_exact(in_fileobj, bitmap_size + bs, what=f"block {block}")
            pos = offset + bitmap_size + bs
            bits = fmt.bitmap_to_int(bytes(data[:bitmap_size])) & full
            start = block * bs
            if start >= limit:
                continue
            runs = ((0, spb),) if bits == full else fmt.bit_runs(bits)
            for first, last in runs:
                a = start + first * fmt.SECTOR_SIZE
                b = min(start + last * fmt.SECTOR_SIZE, limit)
                if a >= b:
                    continue
                lo = bitmap_size + first * fmt.SECTOR_SIZE
                chain.write(a, data[lo : lo + b - a])
                written += b - a
        bat_end = header.table_offset + fmt.round_up(4 * entries, fmt.SECTOR_SIZE)
        _check_trailer(in_fileobj, pos, max(pos, bat_end))
        chain.flush()
    finally:
        chain.close()
    return written


def export_raw(path: str, out) -> int:
    """Write the flattened chain as raw bytes; returns the virtual size."""
    with open_chain(path, writable=False) as chain:
        size = chain.virtual_size
        buf = bytearray(chain.block_size)
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = min(len(buf), size - pos)
            chain.readinto(pos, view[:n])
            _write_all(out, view[:n])
            pos += n
        flush = getattr(out, "flush", None)
        if flush:
            flush()
        return size


def import_raw(in_fileobj, path: str) -> int:
    """Write a raw image into the VHD's leaf; all-zero blocks over unallocated space are skipped.

    Returns the number of bytes read.  A raw image larger than the disk is refused.
    """
    with open_chain(path) as chain:
        bs = chain.block_size
        size = chain.virtual_size
        pos = 0
        buf = bytearray(bs)
        view = memoryview(buf)
        readinto = getattr(in_fileobj, "readinto", None)
        while True:
            got = 0
            while got < bs:
                if readinto is not None:
                    n = readinto(view[got:])
                else:
                    chunk = in_fileobj.read(bs - got)
                    n = len(chunk) if chunk else 0
                    view[got : got + n] = chunk
                if not n:
                    break
                got += n
            if not got:
                break
            if pos + got > size:
                raise VHDError(f"{path}: raw image is larger than the disk's {size} bytes", path=path)
            block = pos // bs
            if not (got == bs and buf == _ZERO_BLOCK and not chain.block_allocated_anywhere(block)):
                chain.write(pos, view[:got])
            pos += got
            if got < bs:
                break
        chain.flush()
        return pos
