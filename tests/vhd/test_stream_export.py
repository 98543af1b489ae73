"""The streaming export's own paths: piece by piece, early close, short files, a partial last block."""

import io
import os
import random

import pytest
from vhd_helpers import MiB, Model, random_writes

from xenapi_driver import vhd
from xenapi_driver.vhd import format as fmt
from xenapi_driver.vhd import stream
from xenapi_driver.vhd.image import VHDImage


def _chain(sr, size=8 * MiB, seed=3):
    """base (every block written) <- leaf (a few writes); returns the model of the leaf."""
    model = Model(size)
    rng = random.Random(seed)
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        data = rng.randbytes(size)
        chain.write(0, data)
        model.write(0, data)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        random_writes(chain, model, rng, 6, max_len=600 * 1024)
    return model


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _restore(stream_bytes: bytes, path) -> bytes:
    """Import a full stream into a fresh VHD and read it back."""
    size = fmt.Footer.unpack(stream_bytes[: fmt.FOOTER_SIZE]).current_size
    vhd.create_dynamic(path, size)
    vhd.import_vhd_stream(io.BytesIO(stream_bytes), path)
    with vhd.open_chain(path, writable=False) as chain:
        return chain.read(0, chain.virtual_size)


@pytest.mark.parametrize("batch", [1, 2, 64])
def test_pieces_make_the_same_stream_as_export(sr, monkeypatch, batch):
    """However many blocks are planned at a time, the pieces add up to the exported stream."""
    monkeypatch.setattr(stream, "_PLAN_BATCH", batch)
    model = _chain(sr)
    out = io.BytesIO()
    total = vhd.export_vhd_stream(sr / "leaf.vhd", out)
    assert total == len(out.getvalue())
    pieces = b"".join(bytes(p) for p in stream.iter_vhd_stream(str(sr / "leaf.vhd")))
    assert pieces == out.getvalue()
    assert _restore(pieces, sr / "copy.vhd") == bytes(model.data)


def test_each_block_piece_is_full_bitmap_then_data(sr):
    model = _chain(sr, size=4 * MiB)
    pieces = stream.iter_vhd_stream(str(sr / "leaf.vhd"))
    next(pieces)  # footer copy, header, BAT
    block0 = bytes(next(pieces))
    assert len(block0) == fmt.BITMAP_SIZE + fmt.BLOCK_SIZE
    assert block0[: fmt.BITMAP_SIZE] == b"\xff" * fmt.BITMAP_SIZE
    assert block0[fmt.BITMAP_SIZE :] == bytes(model.data[: fmt.BLOCK_SIZE])
    pieces.close()


def test_closing_the_generator_early_closes_the_chain(sr):
    _chain(sr)
    before = _open_fds()
    pieces = stream.iter_vhd_stream(str(sr / "leaf.vhd"))
    next(pieces)
    next(pieces)
    assert _open_fds() == before + 2  # leaf and base are open while streaming
    pieces.close()
    assert _open_fds() == before


def test_a_failing_writer_leaves_nothing_open(sr):
    _chain(sr)

    class Broken:
        def __init__(self):
            self.calls = 0

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                raise BrokenPipeError("peer went away")
            return len(data)

    before = _open_fds()
    with pytest.raises(BrokenPipeError):
        vhd.export_vhd_stream(sr / "leaf.vhd", Broken())
    assert _open_fds() == before


@pytest.mark.parametrize("victim", ["base.vhd", "leaf.vhd"])
@pytest.mark.parametrize("batch", [1, 64])
def test_file_truncated_mid_export_is_a_vhd_error(sr, monkeypatch, victim, batch):
    """A layer cut short while we stream it (bitmaps or data gone) fails loudly, never silently."""
    monkeypatch.setattr(stream, "_PLAN_BATCH", batch)
    _chain(sr)
    path = sr / victim

    class Truncating:
        def __init__(self):
            self.calls = 0

        def write(self, data):
            self.calls += 1
            if self.calls == 2:  # after the first block went out
                os.truncate(path, 3 * MiB)
            return len(data)

    before = _open_fds()
    with pytest.raises(vhd.VHDError, match="short read"):
        vhd.export_vhd_stream(sr / "leaf.vhd", Truncating())
    assert _open_fds() == before


def test_bitmap_of_truncated_file_is_a_vhd_error(sr):
    """Reading a block whose bitmap vanished is an error, not 'unallocated' (which would hide data)."""
    _chain(sr)
    with vhd.open_chain(sr / "leaf.vhd", writable=False) as chain:
        base = chain.layers[-1]
        last = max(base.allocated_blocks())
        os.truncate(sr / "base.vhd", base.bat[last] * fmt.SECTOR_SIZE)
        with pytest.raises(vhd.VHDError, match="short read of the bitmap"):
            chain.read(last * fmt.BLOCK_SIZE, 4096)


def test_partial_last_block_is_padded_with_zeros(sr):
    """A foreign disk whose size is not whole 2 MiB blocks: bytes past the end go out as zeros."""
    path = sr / "odd.vhd"
    vhd.create_dynamic(path, 4 * MiB)
    data = random.Random(5).randbytes(4 * MiB)
    with vhd.open_chain(path) as chain:
        chain.write(0, data)
    size = 4 * MiB - 3 * fmt.SECTOR_SIZE
    with VHDImage(str(path), writable=True) as image:
        image.footer.current_size = size
        image.footer.original_size = size
        image.write_footer()
    vhd.check(path)
    out = io.BytesIO()
    vhd.export_vhd_stream(path, out)
    raw = out.getvalue()
    header = fmt.Header.unpack(raw[fmt.FOOTER_SIZE : fmt.FOOTER_SIZE + fmt.HEADER_SIZE])
    entry = int.from_bytes(raw[header.table_offset + 4 : header.table_offset + 8], "big")
    block1 = raw[entry * fmt.SECTOR_SIZE + fmt.BITMAP_SIZE :][: fmt.BLOCK_SIZE]
    tail = size - fmt.BLOCK_SIZE
    assert block1[:tail] == data[fmt.BLOCK_SIZE : size]
    assert block1[tail:] == bytes(fmt.BLOCK_SIZE - tail)
    out_raw = io.BytesIO()
    assert vhd.export_raw(path, out_raw) == size
    assert out_raw.getvalue() == data[:size]


def test_differential_stream_carries_only_blocks_above_the_base(sr):
    model = _chain(sr)
    with vhd.open_chain(sr / "leaf.vhd", writable=False) as chain:
        changed = sorted(chain.leaf.allocated_blocks())
    delta = b"".join(bytes(p) for p in stream.iter_vhd_stream(str(sr / "leaf.vhd"), str(sr / "base.vhd")))
    span = fmt.BITMAP_SIZE + fmt.BLOCK_SIZE
    nblocks = len(model.data) // fmt.BLOCK_SIZE
    head = fmt.FOOTER_SIZE + fmt.HEADER_SIZE + fmt.round_up(4 * nblocks, fmt.SECTOR_SIZE)
    assert len(delta) == head + len(changed) * span + fmt.FOOTER_SIZE
    for i, block in enumerate(changed):
        start = head + i * span + fmt.BITMAP_SIZE
        expected = model.data[block * fmt.BLOCK_SIZE : (block + 1) * fmt.BLOCK_SIZE]
        assert delta[start : start + fmt.BLOCK_SIZE] == expected
