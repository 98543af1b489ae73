"""Chains read and written against an independent model: snapshot, re-parent, coalesce, resize."""

import io
import os
import random
import time

import pytest
from vhd_helpers import MiB, Model, random_writes

from xenapi_driver import vhd


def test_empty_disk_reads_zeros(sr):
    vhd.create_dynamic(sr / "a.vhd", 4 * MiB)
    with vhd.open_chain(sr / "a.vhd") as chain:
        assert chain.virtual_size == 4 * MiB
        assert chain.depth == 1
        assert chain.read(0, 4 * MiB) == bytes(4 * MiB)
        assert chain.read(4 * MiB, 0) == b""


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_unaligned_writes_against_model(sr, kind):
    path = sr / "a.vhd"
    (vhd.create_dynamic if kind == "dynamic" else vhd.create_fixed)(path, 6 * MiB)
    model = Model(6 * MiB)
    rng = random.Random(1)
    with vhd.open_chain(path) as chain:
        random_writes(chain, model, rng, 40, aligned=1, max_len=300_000)
        assert chain.read(0, 6 * MiB) == bytes(model.data)
        for _ in range(30):
            off = rng.randrange(0, 6 * MiB - 1)
            n = rng.randrange(0, min(6 * MiB - off, 3 * MiB))
            assert chain.read(off, n) == bytes(model.data[off : off + n])
    vhd.check(path)
    with vhd.open_chain(path, writable=False) as chain:
        assert chain.read(0, 6 * MiB) == bytes(model.data)


def test_chain_of_depth_three_unaligned(sr):
    size = 8 * MiB
    rng = random.Random(2)
    model = Model(size)
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, model, rng, 20, aligned=1)
    vhd.snapshot(sr / "mid.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "mid.vhd") as chain:
        random_writes(chain, model, rng, 20, aligned=1)
    vhd.snapshot(sr / "leaf.vhd", sr / "mid.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        assert chain.depth == 3
        random_writes(chain, model, rng, 30, aligned=1, max_len=5000)
        assert chain.read(0, size) == bytes(model.data)
        buf = bytearray(size)
        assert chain.readinto(0, buf) == size
        assert buf == model.data
    assert vhd.info(sr / "leaf.vhd").depth == 3
    assert vhd.check(sr / "leaf.vhd", walk_parents=True) == [
        str(sr / n) for n in ("leaf.vhd", "mid.vhd", "base.vhd")
    ]


def test_writes_do_not_touch_parents(sr):
    vhd.create_dynamic(sr / "base.vhd", 4 * MiB)
    with vhd.open_chain(sr / "base.vhd") as chain:
        chain.write(0, b"A" * 4096)
    before = (sr / "base.vhd").read_bytes()
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(100, b"B" * 10)
        assert chain.read(0, 200) == b"A" * 100 + b"B" * 10 + b"A" * 90
    assert (sr / "base.vhd").read_bytes() == before


def test_snapshot_on_fixed_parent(sr):
    vhd.create_fixed(sr / "base.vhd", 4 * MiB)
    model = Model(4 * MiB)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, model, random.Random(3), 10, aligned=1)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        random_writes(chain, model, random.Random(4), 10, aligned=1)
        assert chain.read(0, 4 * MiB) == bytes(model.data)
    vhd.check(sr / "leaf.vhd", walk_parents=True)


def test_snapshot_requires_same_directory(sr, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    vhd.create_dynamic(other / "base.vhd", 2 * MiB)
    with pytest.raises(vhd.VHDChainError, match="same directory"):
        vhd.snapshot(sr / "leaf.vhd", other / "base.vhd")
    assert not (sr / "leaf.vhd").exists()


def test_read_past_end_is_refused(sr):
    vhd.create_dynamic(sr / "a.vhd", 2 * MiB)
    with vhd.open_chain(sr / "a.vhd") as chain:
        with pytest.raises(vhd.VHDError):
            chain.read(2 * MiB - 10, 11)
        with pytest.raises(vhd.VHDError):
            chain.write(2 * MiB, b"x")
        with pytest.raises(vhd.VHDError):
            chain.read(-1, 1)


def test_read_only_chain(sr):
    vhd.create_dynamic(sr / "a.vhd", 2 * MiB)
    with vhd.open_chain(sr / "a.vhd", writable=False) as chain:
        with pytest.raises(vhd.VHDError, match="read-only"):
            chain.write(0, b"x")


def test_reparent(sr):
    size = 4 * MiB
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        chain.write(0, b"1" * 8192)
    vhd.snapshot(sr / "mid.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "mid.vhd") as chain:
        chain.write(4096, b"2" * 4096)
    vhd.snapshot(sr / "leaf.vhd", sr / "mid.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(MiB, b"3" * 512)
    # Coalesce mid into base, then re-link the leaf onto base (what SM's GC does).
    vhd.coalesce(sr / "mid.vhd")
    vhd.reparent(sr / "leaf.vhd", sr / "base.vhd")
    os.unlink(sr / "mid.vhd")
    info = vhd.info(sr / "leaf.vhd")
    assert info.parent_path == str(sr / "base.vhd")
    assert info.parent_uuid == vhd.info(sr / "base.vhd").uuid
    assert info.depth == 2
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        assert chain.read(0, 8192) == b"1" * 4096 + b"2" * 4096
        assert chain.read(MiB, 1024) == b"3" * 512 + bytes(512)
    vhd.check(sr / "leaf.vhd", walk_parents=True)


def test_reparent_with_longer_name_moves_locators(sr):
    vhd.create_dynamic(sr / "b.vhd", 2 * MiB)
    long_name = "p" * 251 + ".vhd"  # W2ku needs 514 bytes: more than the 512 reserved
    vhd.create_dynamic(sr / long_name, 2 * MiB)
    vhd.snapshot(sr / "leaf.vhd", sr / "b.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(0, b"x" * 512)
    vhd.reparent(sr / "leaf.vhd", sr / long_name)
    assert vhd.info(sr / "leaf.vhd").parent_path == str(sr / long_name)
    vhd.check(sr / "leaf.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        assert chain.read(0, 1024) == b"x" * 512 + bytes(512)
        chain.write(MiB * 2 - 512, b"y" * 512)
    vhd.check(sr / "leaf.vhd")


def test_reparent_refuses_loops_and_non_differencing(sr):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    vhd.snapshot(sr / "leaf2.vhd", sr / "leaf.vhd")
    with pytest.raises(vhd.VHDChainError, match="loop"):
        vhd.reparent(sr / "leaf.vhd", sr / "leaf2.vhd")
    vhd.create_dynamic(sr / "other.vhd", 2 * MiB)
    with pytest.raises(vhd.VHDError, match="not a differencing"):
        vhd.reparent(sr / "base.vhd", sr / "other.vhd")


def test_coalesce_copies_child_into_parent(sr):
    size = 6 * MiB
    rng = random.Random(5)
    model = Model(size)
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, model, rng, 10, aligned=1)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        random_writes(chain, model, rng, 20, aligned=1)
    leaf_before = (sr / "leaf.vhd").read_bytes()
    vhd.coalesce(sr / "leaf.vhd")
    assert (sr / "leaf.vhd").read_bytes() == leaf_before  # no relink, no delete
    with vhd.open_chain(sr / "base.vhd") as chain:
        assert chain.read(0, size) == bytes(model.data)
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        assert chain.read(0, size) == bytes(model.data)
    vhd.check(sr / "leaf.vhd", walk_parents=True)


def test_coalesce_into_differencing_parent(sr):
    size = 4 * MiB
    model = Model(size)
    rng = random.Random(6)
    vhd.create_dynamic(sr / "a.vhd", size)
    with vhd.open_chain(sr / "a.vhd") as chain:
        random_writes(chain, model, rng, 5, aligned=1)
    vhd.snapshot(sr / "b.vhd", sr / "a.vhd")
    with vhd.open_chain(sr / "b.vhd") as chain:
        random_writes(chain, model, rng, 5, aligned=1)
    vhd.snapshot(sr / "c.vhd", sr / "b.vhd")
    with vhd.open_chain(sr / "c.vhd") as chain:
        random_writes(chain, model, rng, 5, aligned=1)
    vhd.coalesce(sr / "c.vhd")
    with vhd.open_chain(sr / "b.vhd") as chain:
        assert chain.read(0, size) == bytes(model.data)


def test_coalesce_refuses_non_differencing(sr):
    vhd.create_dynamic(sr / "a.vhd", 2 * MiB)
    with pytest.raises(vhd.VHDError, match="not a differencing"):
        vhd.coalesce(sr / "a.vhd")


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_resize_grow_keeps_data(sr, kind):
    path = sr / "a.vhd"
    (vhd.create_dynamic if kind == "dynamic" else vhd.create_fixed)(path, 4 * MiB)
    with vhd.open_chain(path) as chain:
        chain.write(4 * MiB - 512, b"z" * 512)
    vhd.resize(path, 10 * MiB + 1)
    info = vhd.info(path)
    assert info.virtual_size == 12 * MiB
    with vhd.open_chain(path) as chain:
        assert chain.read(4 * MiB - 512, 1024) == b"z" * 512 + bytes(512)
        chain.write(12 * MiB - 512, b"w" * 512)
        assert chain.read(12 * MiB - 1024, 1024) == bytes(512) + b"w" * 512
    vhd.check(path)
    with pytest.raises(vhd.VHDError, match="shrink"):
        vhd.resize(path, 2 * MiB)


def test_resize_moves_bat_when_full(sr):
    path = sr / "a.vhd"
    vhd.create_dynamic(path, 2 * MiB)  # BAT sector holds 128 entries
    model = Model(2 * MiB)
    with vhd.open_chain(path) as chain:
        chain.write(0, b"q" * 4096)
        model.write(0, b"q" * 4096)
    vhd.resize(path, 600 * MiB)
    model.data.extend(bytes(598 * MiB))
    with vhd.open_chain(path) as chain:
        chain.write(599 * MiB, b"r" * 4096)
        model.write(599 * MiB, b"r" * 4096)
        assert chain.read(0, 8192) == bytes(model.data[:8192])
        assert chain.read(599 * MiB - 4096, 12288) == bytes(model.data[599 * MiB - 4096 : 599 * MiB + 8192])
    vhd.check(path)
    import subprocess

    out = subprocess.run(
        ["qemu-img", "info", "-f", "vpc", str(path)], capture_output=True, text=True, timeout=30
    )
    assert "600 MiB" in out.stdout, out.stdout + out.stderr


def test_resized_leaf_over_smaller_parent(sr):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    with vhd.open_chain(sr / "base.vhd") as chain:
        chain.write(0, b"b" * 1024)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    vhd.resize(sr / "leaf.vhd", 6 * MiB)
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        assert chain.read(0, 2048) == b"b" * 1024 + bytes(1024)
        assert chain.read(2 * MiB, 4 * MiB) == bytes(4 * MiB)
        chain.write(5 * MiB, b"l" * 100)
    vhd.coalesce(sr / "leaf.vhd")  # grows the parent first
    assert vhd.info(sr / "base.vhd").virtual_size == 6 * MiB
    with vhd.open_chain(sr / "base.vhd") as chain:
        assert chain.read(5 * MiB, 200) == b"l" * 100 + bytes(100)


def test_parent_timestamp_tracks_mtime_and_check_detects_replaced_parent(sr):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    vhd.set_hidden(sr / "base.vhd", True)  # later parent changes are legitimate
    vhd.check(sr / "leaf.vhd", walk_parents=True)
    old = time.time() - 7 * 86400
    os.utime(sr / "base.vhd", (old, old))  # an older file put in the parent's place
    with pytest.raises(vhd.VHDChainError, match="older"):
        vhd.check(sr / "leaf.vhd")


def test_info_of_orphan(sr):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    os.unlink(sr / "base.vhd")
    with pytest.raises(vhd.VHDMissingParentError, match="missing"):
        vhd.info(sr / "leaf.vhd")
    info = vhd.info(sr / "leaf.vhd", require_parents=False)
    assert info.depth == 1
    assert info.parent_path == str(sr / "base.vhd")
    with pytest.raises(vhd.VHDMissingParentError):
        vhd.open_chain(sr / "leaf.vhd")


def test_uuid_mismatch_is_detected(sr):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    os.unlink(sr / "base.vhd")
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    with pytest.raises(vhd.VHDChainError, match="uuid"):
        vhd.open_chain(sr / "leaf.vhd")
    with pytest.raises(vhd.VHDChainError, match="uuid"):
        vhd.check(sr / "leaf.vhd")


def test_set_uuid_then_reparent_rebuilds_chain(sr):
    import uuid

    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    new = str(uuid.uuid4())
    vhd.set_uuid(sr / "base.vhd", new)
    with pytest.raises(vhd.VHDChainError):
        vhd.check(sr / "leaf.vhd")
    vhd.reparent(sr / "leaf.vhd", sr / "base.vhd")
    assert vhd.info(sr / "leaf.vhd").parent_uuid == new
    vhd.check(sr / "leaf.vhd")


# -- streams ---------------------------------------------------------------------
def _build_chain(sr, size, rng, model):
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, model, rng, 8)
    vhd.snapshot(sr / "mid.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "mid.vhd") as chain:
        random_writes(chain, model, rng, 8)
    vhd.snapshot(sr / "leaf.vhd", sr / "mid.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        random_writes(chain, model, rng, 8)


def test_full_stream_round_trip(sr, tmp_path):
    size = 10 * MiB
    model = Model(size)
    _build_chain(sr, size, random.Random(7), model)
    out = io.BytesIO()
    total = vhd.export_vhd_stream(sr / "leaf.vhd", out)
    assert total == len(out.getvalue())
    stream_file = tmp_path / "stream.vhd"
    stream_file.write_bytes(out.getvalue())
    assert vhd.info(stream_file).disk_type == "dynamic"
    vhd.check(stream_file)
    with vhd.open_chain(stream_file) as chain:
        assert chain.read(0, size) == bytes(model.data)
    # import onto a fresh empty disk
    vhd.create_dynamic(sr / "copy.vhd", size)
    vhd.import_vhd_stream(io.BytesIO(out.getvalue()), sr / "copy.vhd")
    with vhd.open_chain(sr / "copy.vhd") as chain:
        assert chain.read(0, size) == bytes(model.data)
    vhd.check(sr / "copy.vhd")


def test_differential_stream_restores_chain(sr, tmp_path):
    size = 10 * MiB
    rng = random.Random(8)
    base_model = Model(size)
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, base_model, rng, 10)
    model = base_model.copy()
    vhd.snapshot(sr / "mid.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "mid.vhd") as chain:
        chain.write(3 * MiB, b"m" * 4096)
        model.write(3 * MiB, b"m" * 4096)
    vhd.snapshot(sr / "leaf.vhd", sr / "mid.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(9 * MiB + 512, b"l" * 1000)
        model.write(9 * MiB + 512, b"l" * 1000)
    delta = io.BytesIO()
    vhd.export_vhd_stream(sr / "leaf.vhd", delta, base_path=sr / "base.vhd")
    # Only the two blocks touched above the base travel.
    assert len(delta.getvalue()) == 512 + 1024 + 512 + 2 * (512 + 2 * MiB) + 512
    full = io.BytesIO()
    vhd.export_vhd_stream(sr / "base.vhd", full)
    # Restore: full base into a new VDI, then the delta into the same VDI.
    vhd.create_dynamic(sr / "restored.vhd", size)
    vhd.import_vhd_stream(io.BytesIO(full.getvalue()), sr / "restored.vhd")
    with vhd.open_chain(sr / "restored.vhd") as chain:
        assert chain.read(0, size) == bytes(base_model.data)
    vhd.import_vhd_stream(io.BytesIO(delta.getvalue()), sr / "restored.vhd")
    with vhd.open_chain(sr / "restored.vhd") as chain:
        assert chain.read(0, size) == bytes(model.data)
    # Delta against the leaf itself is empty; a non-member base is refused.
    empty = io.BytesIO()
    vhd.export_vhd_stream(sr / "leaf.vhd", empty, base_path=sr / "leaf.vhd")
    assert len(empty.getvalue()) == 512 + 1024 + 512 + 512
    with pytest.raises(vhd.VHDChainError, match="not a member"):
        vhd.export_vhd_stream(sr / "leaf.vhd", io.BytesIO(), base_path=sr / "restored.vhd")


def test_import_stream_onto_differencing_leaf_and_grow(sr):
    vhd.create_dynamic(sr / "src.vhd", 8 * MiB)
    with vhd.open_chain(sr / "src.vhd") as chain:
        chain.write(7 * MiB, b"s" * 4096)
    stream = io.BytesIO()
    vhd.export_vhd_stream(sr / "src.vhd", stream)
    vhd.create_dynamic(sr / "base.vhd", 4 * MiB)
    with vhd.open_chain(sr / "base.vhd") as chain:
        chain.write(0, b"b" * 4096)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    vhd.import_vhd_stream(io.BytesIO(stream.getvalue()), sr / "leaf.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        assert chain.virtual_size == 8 * MiB
        assert chain.read(0, 4096) == b"b" * 4096  # block not in the stream: untouched
        assert chain.read(7 * MiB, 4096) == b"s" * 4096


def test_import_stream_rejects_garbage(sr):
    vhd.create_dynamic(sr / "a.vhd", 2 * MiB)
    with pytest.raises(vhd.VHDFormatError):
        vhd.import_vhd_stream(io.BytesIO(b"x" * 4096), sr / "a.vhd")
    stream = io.BytesIO()
    vhd.export_vhd_stream(sr / "a.vhd", stream)
    with pytest.raises(vhd.VHDFormatError, match="truncated"):
        vhd.import_vhd_stream(io.BytesIO(stream.getvalue()[:-100]), sr / "a.vhd")


def test_raw_round_trip(sr):
    size = 6 * MiB
    model = Model(size)
    _build_chain(sr, size, random.Random(9), model)
    out = io.BytesIO()
    assert vhd.export_raw(sr / "leaf.vhd", out) == size
    assert out.getvalue() == bytes(model.data)
    vhd.create_dynamic(sr / "copy.vhd", size)
    assert vhd.import_raw(io.BytesIO(out.getvalue()), sr / "copy.vhd") == size
    with vhd.open_chain(sr / "copy.vhd") as chain:
        assert chain.read(0, size) == bytes(model.data)
    # Sparse: all-zero blocks were not allocated.
    vhd.create_dynamic(sr / "zero.vhd", size)
    vhd.import_raw(io.BytesIO(bytes(size)), sr / "zero.vhd")
    assert vhd.info(sr / "zero.vhd").physical_size < MiB
    with pytest.raises(vhd.VHDError, match="larger"):
        vhd.import_raw(io.BytesIO(bytes(size + 1)), sr / "zero.vhd")


def test_snapshot_through_a_symlinked_sr_directory(sr, tmp_path):
    """Simulator sandboxes see shared SRs through a symlink: both spellings are one directory."""
    link = tmp_path / "sr-link"
    link.symlink_to(sr)
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    info = vhd.snapshot(link / "leaf.vhd", sr / "base.vhd")
    assert info.parent_path == str(link / "base.vhd")
    vhd.check(link / "leaf.vhd", walk_parents=True)


def test_stream_import_from_a_socket_like_source_without_eof(sr):
    """The importer stops after the trailing footer; it must not wait for end-of-stream."""
    vhd.create_dynamic(sr / "src.vhd", 4 * MiB)
    with vhd.open_chain(sr / "src.vhd") as chain:
        chain.write(MiB, b"k" * 4096)
    out = io.BytesIO()
    vhd.export_vhd_stream(sr / "src.vhd", out)
    data = out.getvalue()

    class NoEOF(io.RawIOBase):
        def __init__(self):
            self.pos = 0

        def readable(self):
            return True

        def readinto(self, b):
            if self.pos >= len(data):
                raise AssertionError("read past the end of the stream: would block on a socket")
            n = min(len(b), len(data) - self.pos)
            b[:n] = data[self.pos : self.pos + n]
            self.pos += n
            return n

    vhd.create_dynamic(sr / "dst.vhd", 4 * MiB)
    vhd.import_vhd_stream(NoEOF(), sr / "dst.vhd")
    with vhd.open_chain(sr / "dst.vhd") as chain:
        assert chain.read(MiB, 4096) == b"k" * 4096
