"""Bad input gives a clear VHDError, never a crash or an out-of-bounds read; plus a bounded fuzz run."""

import os
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vhd_helpers import MiB

from xenapi_driver import vhd
from xenapi_driver.vhd import format as fmt
from xenapi_driver.vhd.image import VHDImage
from xenapi_driver.vhd.ops import _write_parent


def corrupt(path, offset, data):
    with open(path, "r+b") as f:
        if offset < 0:
            f.seek(offset, os.SEEK_END)
        else:
            f.seek(offset)
        f.write(data)


def refresh_footer_checksum(path, *, end=True):
    with open(path, "r+b") as f:
        if end:
            f.seek(-512, os.SEEK_END)
        pos = f.tell()
        raw = bytearray(f.read(512))
        raw[64:68] = b"\0\0\0\0"
        raw[64:68] = struct.pack(">I", (~sum(raw)) & 0xFFFFFFFF)
        f.seek(pos)
        f.write(raw)


def make_chain(sr):
    vhd.create_dynamic(sr / "base.vhd", 4 * MiB)
    with vhd.open_chain(sr / "base.vhd") as chain:
        chain.write(0, b"b" * 8192)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(2 * MiB + 4096, b"l" * 4096)
    return sr / "leaf.vhd"


def test_missing_and_empty_files(sr):
    with pytest.raises(vhd.VHDNotFoundError, match="no such"):
        vhd.info(sr / "nope.vhd")
    (sr / "empty.vhd").write_bytes(b"")
    with pytest.raises(vhd.VHDFormatError, match="truncated"):
        vhd.info(sr / "empty.vhd")
    (sr / "short.vhd").write_bytes(b"conectix")
    with pytest.raises(vhd.VHDFormatError, match="truncated"):
        vhd.open_chain(sr / "short.vhd")
    with pytest.raises(vhd.VHDError, match="directory"):
        vhd.info(sr)


def test_truncated_dynamic_file(sr):
    leaf = make_chain(sr)
    size = os.path.getsize(leaf)
    os.truncate(leaf, size - 4096)
    with pytest.raises(vhd.VHDFormatError, match="truncated|damaged"):
        vhd.info(leaf)
    with pytest.raises(vhd.VHDFormatError):
        vhd.check(leaf)


def test_truncated_inside_bat(sr):
    vhd.create_dynamic(sr / "a.vhd", 2040 * MiB)
    data = (sr / "a.vhd").read_bytes()
    (sr / "a.vhd").write_bytes(data[:1600] + data[-512:])  # BAT cut short, footer kept
    with pytest.raises(vhd.VHDFormatError, match="BAT"):
        vhd.info(sr / "a.vhd")


def test_wrong_cookie(sr):
    vhd.create_dynamic(sr / "a.vhd", 2 * MiB)
    corrupt(sr / "a.vhd", -512, b"notavhd!")
    with pytest.raises(vhd.VHDFormatError, match="cookie"):
        vhd.info(sr / "a.vhd")
    vhd.create_dynamic(sr / "b.vhd", 2 * MiB)
    corrupt(sr / "b.vhd", 512, b"xxsparse")
    with pytest.raises(vhd.VHDFormatError, match="cookie"):
        vhd.info(sr / "b.vhd")


def test_wrong_checksums(sr):
    vhd.create_dynamic(sr / "a.vhd", 2 * MiB)
    corrupt(sr / "a.vhd", -512 + 40, b"\x01")
    with pytest.raises(vhd.VHDFormatError, match="checksum"):
        vhd.info(sr / "a.vhd")
    vhd.create_dynamic(sr / "b.vhd", 2 * MiB)
    corrupt(sr / "b.vhd", 512 + 28, b"\x00\x00\x00\x07")  # max table entries
    with pytest.raises(vhd.VHDFormatError, match="checksum"):
        vhd.info(sr / "b.vhd")


def test_bat_entry_past_eof(sr):
    vhd.create_dynamic(sr / "a.vhd", 4 * MiB)
    corrupt(sr / "a.vhd", 1536 + 4, struct.pack(">I", 0x00100000))
    with pytest.raises(vhd.VHDFormatError, match="block 1 .*past the end"):
        vhd.open_chain(sr / "a.vhd")
    with pytest.raises(vhd.VHDFormatError, match="past the end"):
        vhd.check(sr / "a.vhd")


def test_bat_entry_into_headers_and_overlapping_blocks(sr):
    vhd.create_dynamic(sr / "a.vhd", 4 * MiB)
    corrupt(sr / "a.vhd", 1536, struct.pack(">I", 1))
    with pytest.raises(vhd.VHDFormatError, match="headers"):
        vhd.info(sr / "a.vhd")
    vhd.create_dynamic(sr / "b.vhd", 4 * MiB)
    with vhd.open_chain(sr / "b.vhd") as chain:
        chain.write(0, b"x" * 512)
        chain.write(2 * MiB, b"y" * 512)
    with open(sr / "b.vhd", "rb") as f:
        f.seek(1536)
        first = f.read(4)
    corrupt(sr / "b.vhd", 1540, first)  # both blocks share one place
    with pytest.raises(vhd.VHDFormatError, match="overlaps"):
        vhd.check(sr / "b.vhd")


@pytest.mark.parametrize(
    "target",
    ["file:///etc/passwd", "file://../other/base.vhd", "..\\base.vhd", "C:\\images\\base.vhd", "./a/../../x"],
)
def test_locator_outside_sr_directory(sr, target):
    leaf = make_chain(sr)
    with VHDImage(str(leaf)) as image:
        loc = image.header.locators[0]
    data = target.encode()
    assert len(data) <= loc.size
    corrupt(leaf, loc.data_offset, data.ljust(loc.size, b"\0"))
    header = bytearray((leaf).read_bytes()[512:1536])
    struct.pack_into(">I", header, 576 + 8, len(data))
    header[36:40] = b"\0\0\0\0"
    struct.pack_into(">I", header, 36, (~sum(header)) & 0xFFFFFFFF)
    corrupt(leaf, 512, bytes(header))
    with pytest.raises(vhd.VHDChainError, match="outside"):
        vhd.open_chain(leaf)
    with pytest.raises(vhd.VHDChainError, match="outside"):
        vhd.info(leaf)
    with pytest.raises(vhd.VHDChainError, match="outside"):
        vhd.check(leaf)


def test_parent_name_outside_sr_directory(sr):
    leaf = make_chain(sr)
    with VHDImage(str(leaf), writable=True) as image:
        image.header.locators = [fmt.Locator() for _ in range(8)]
        image.header.set_parent_name("../base.vhd")
        image.write_header()
    with pytest.raises(vhd.VHDChainError, match="outside"):
        vhd.open_chain(leaf)


def test_chain_loop(sr):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    vhd.snapshot(sr / "x.vhd", sr / "base.vhd")
    vhd.snapshot(sr / "y.vhd", sr / "x.vhd")
    with VHDImage(str(sr / "x.vhd"), writable=True) as image:
        _write_parent(image, str(sr / "y.vhd"))  # bypasses reparent's own loop guard
    with pytest.raises(vhd.VHDChainError, match="loop"):
        vhd.open_chain(sr / "y.vhd")
    with pytest.raises(vhd.VHDChainError, match="loop"):
        vhd.info(sr / "x.vhd")
    with pytest.raises(vhd.VHDChainError, match="loop"):
        vhd.check(sr / "y.vhd", walk_parents=True)


def test_self_parent_loop(sr):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    vhd.snapshot(sr / "x.vhd", sr / "base.vhd")
    with VHDImage(str(sr / "x.vhd"), writable=True) as image:
        _write_parent(image, str(sr / "x.vhd"))
    with pytest.raises(vhd.VHDChainError, match="loop"):
        vhd.open_chain(sr / "x.vhd")


def test_repair_restores_primary_footer_from_backup(sr):
    leaf = make_chain(sr)
    with vhd.open_chain(leaf, writable=False) as chain:
        expected = chain.read(0, 4 * MiB)
    corrupt(leaf, -512, b"\0" * 512)
    with pytest.raises(vhd.VHDFormatError, match="repair"):
        vhd.info(leaf)
    vhd.repair(leaf)
    vhd.check(leaf, walk_parents=True)
    with vhd.open_chain(leaf, writable=False) as chain:
        assert chain.read(0, 4 * MiB) == expected


def test_repair_fixes_backup_and_extended_file(sr):
    vhd.create_dynamic(sr / "a.vhd", 4 * MiB)
    with vhd.open_chain(sr / "a.vhd") as chain:
        chain.write(0, b"a" * 4096)
    corrupt(sr / "a.vhd", 0, b"garbage!")
    with pytest.raises(vhd.VHDFormatError, match="backup footer"):
        vhd.check(sr / "a.vhd")
    vhd.repair(sr / "a.vhd")
    vhd.check(sr / "a.vhd")
    with open(sr / "a.vhd", "ab") as f:  # a torn extension: no footer at the end
        f.write(b"\x07" * 3000)
    with pytest.raises(vhd.VHDFormatError):
        vhd.info(sr / "a.vhd")
    vhd.repair(sr / "a.vhd")
    vhd.check(sr / "a.vhd")
    with vhd.open_chain(sr / "a.vhd") as chain:
        assert chain.read(0, 4096) == b"a" * 4096


def test_repair_gives_up_clearly(sr):
    (sr / "junk.vhd").write_bytes(b"\x01" * 4096)
    with pytest.raises(vhd.VHDFormatError, match="cannot repair"):
        vhd.repair(sr / "junk.vhd")


def test_legacy_hidden_checksum_is_accepted(sr):
    """Old tapdisks set the hidden byte without updating the checksum; blktap accepts that."""
    vhd.create_dynamic(sr / "a.vhd", 2 * MiB)
    corrupt(sr / "a.vhd", -512 + 85, b"\x01")
    corrupt(sr / "a.vhd", 85, b"\x01")
    assert vhd.info(sr / "a.vhd").hidden is True


# -- fuzzing -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_seed(tmp_path_factory):
    sr = tmp_path_factory.mktemp("fuzzsr")
    vhd.create_dynamic(sr / "base.vhd", 4 * MiB)
    with vhd.open_chain(sr / "base.vhd") as chain:
        chain.write(4096, b"B" * 8192)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(2 * MiB + 512, b"L" * 1024)
    return sr, (sr / "leaf.vhd").read_bytes()


def _exercise(path):
    """Every read-side entry point; only VHDError may escape."""
    try:
        vhd.info(path, require_parents=False)
    except vhd.VHDError:
        pass
    try:
        vhd.check(path, walk_parents=True)
    except vhd.VHDError:
        pass
    try:
        with vhd.open_chain(path, writable=False) as chain:
            chain.read(0, chain.virtual_size)
    except vhd.VHDError:
        pass


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutations=st.lists(st.tuples(st.integers(0, 3583), st.integers(0, 255)), min_size=1, max_size=8),
    fix_checksums=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 5 * MiB)),
)
def test_fuzz_parser(fuzz_seed, mutations, fix_checksums, cut):
    sr, seed = fuzz_seed
    data = bytearray(seed)
    for pos, value in mutations:
        # Metadata lives in the first 3.5 KiB; mutate it and its end-of-file footer twin.
        data[pos] = value
        if pos < 512:
            data[len(data) - 512 + pos] = value
    if fix_checksums:
        for start, csum_at, length in ((0, 64, 512), (512, 36, 1024), (len(data) - 512, 64, 512)):
            block = data[start : start + length]
            block[csum_at : csum_at + 4] = b"\0\0\0\0"
            block[csum_at : csum_at + 4] = struct.pack(">I", (~sum(block)) & 0xFFFFFFFF)
            data[start : start + length] = block
    if cut is not None:
        del data[cut:]
    target = sr / "fuzz.vhd"
    target.write_bytes(data)
    _exercise(target)


def test_fuzz_stream_import(fuzz_seed, tmp_path):
    """Damaged streams fail cleanly too (a few fixed corruptions, kept deterministic)."""
    import io

    sr, _ = fuzz_seed
    stream = io.BytesIO()
    vhd.export_vhd_stream(sr / "leaf.vhd", stream)
    raw = stream.getvalue()
    target = tmp_path / "t.vhd"
    for pos in (0, 20, 520, 560, 1536, 2048, len(raw) - 600, len(raw) - 10):
        damaged = bytearray(raw)
        damaged[pos] ^= 0xFF
        if target.exists():
            target.unlink()
        vhd.create_dynamic(target, 4 * MiB)
        try:
            vhd.import_vhd_stream(io.BytesIO(bytes(damaged)), target)
        except vhd.VHDError:
            pass
    shutil.rmtree(tmp_path, ignore_errors=True)
