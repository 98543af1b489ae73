"""On-disk exactness: every byte blktap and XenServer's tooling look at, checked at its offset."""

import os
import struct
import time
import uuid

import pytest
from vhd_helpers import MiB

from xenapi_driver import vhd
from xenapi_driver.vhd import format as fmt

VHD_EPOCH = 946684800


def footer_bytes(path):
    with open(path, "rb") as f:
        f.seek(-512, os.SEEK_END)
        return f.read(512)


def header_bytes(path):
    with open(path, "rb") as f:
        f.seek(512)
        return f.read(1024)


def ones_complement_sum(raw, start):
    zeroed = raw[:start] + b"\0\0\0\0" + raw[start + 4 :]
    return (~sum(zeroed)) & 0xFFFFFFFF


def test_dynamic_footer_fields(sr):
    before = int(time.time()) - VHD_EPOCH
    path = sr / "a.vhd"
    vhd.create_dynamic(path, 3 * MiB)
    after = int(time.time()) - VHD_EPOCH
    raw = footer_bytes(path)
    assert raw[0:8] == b"conectix"
    assert struct.unpack(">I", raw[8:12])[0] == 2  # features: reserved bit only
    assert struct.unpack(">I", raw[12:16])[0] == 0x00010000
    assert struct.unpack(">Q", raw[16:24])[0] == 512  # header right after the footer copy
    timestamp = struct.unpack(">I", raw[24:28])[0]
    assert before <= timestamp <= after  # seconds since 2000, never in the future
    assert raw[28:32] == b"tap\0"
    assert struct.unpack(">I", raw[32:36])[0] < 0x00010002  # below 1.2: no batmap expected
    orig, cur = struct.unpack(">QQ", raw[40:56])
    assert orig == cur == 4 * MiB  # rounded up to 2 MiB
    assert struct.unpack(">HBB", raw[56:60]) == fmt.chs_geometry(4 * MiB)
    assert struct.unpack(">I", raw[60:64])[0] == 3
    assert struct.unpack(">I", raw[64:68])[0] == ones_complement_sum(raw, 64)
    assert raw[68:84] != bytes(16)
    uuid.UUID(bytes=raw[68:84])
    assert raw[84] == 0 and raw[85] == 0
    assert raw[86:] == bytes(426)
    with open(path, "rb") as f:
        assert f.read(512) == raw  # identical copy at offset 0


def test_dynamic_header_fields(sr):
    path = sr / "a.vhd"
    vhd.create_dynamic(path, 5 * MiB)
    raw = header_bytes(path)
    assert raw[0:8] == b"cxsparse"
    assert struct.unpack(">Q", raw[8:16])[0] == 0xFFFFFFFFFFFFFFFF
    table_offset = struct.unpack(">Q", raw[16:24])[0]
    assert table_offset == 1536
    assert struct.unpack(">I", raw[24:28])[0] == 0x00010000
    assert struct.unpack(">I", raw[28:32])[0] == 3  # 6 MiB / 2 MiB
    assert struct.unpack(">I", raw[32:36])[0] == 2 * MiB
    assert struct.unpack(">I", raw[36:40])[0] == ones_complement_sum(raw, 36)
    assert raw[40:] == bytes(len(raw) - 40)  # no parent fields, no locators
    with open(path, "rb") as f:
        f.seek(table_offset)
        assert f.read(12) == b"\xff" * 12


def test_fixed_layout(sr):
    path = sr / "f.vhd"
    info = vhd.create_fixed(path, 1)
    assert info.virtual_size == 2 * MiB
    assert os.path.getsize(path) == 2 * MiB + 512
    raw = footer_bytes(path)
    assert raw[0:8] == b"conectix"
    assert struct.unpack(">Q", raw[16:24])[0] == 0xFFFFFFFFFFFFFFFF
    assert struct.unpack(">I", raw[60:64])[0] == 2
    assert raw[28:32] == b"tap\0"


def test_differencing_parent_fields(sr):
    parent = sr / "parent.vhd"
    vhd.create_dynamic(parent, 4 * MiB)
    past = time.time() - 86400 * 3
    os.utime(parent, (past, past))
    child = sr / "child.vhd"
    info = vhd.snapshot(child, parent)
    assert info.disk_type == "differencing"
    assert info.parent_path == str(parent)
    assert info.parent_uuid == vhd.info(parent).uuid
    assert info.depth == 2
    raw = header_bytes(child)
    assert uuid.UUID(bytes=raw[40:56]) == uuid.UUID(vhd.info(parent).uuid)
    assert struct.unpack(">I", raw[56:60])[0] == int(past) - VHD_EPOCH  # parent's mtime
    name = raw[64:576]
    assert name.rstrip(b"\0").decode("utf-16-be") == "parent.vhd"
    locators = [struct.unpack(">IIIIQ", raw[576 + 24 * i : 600 + 24 * i]) for i in range(8)]
    codes = [loc[0] for loc in locators]
    assert codes[:3] == [fmt.PLAT_MACX, fmt.PLAT_W2KU, fmt.PLAT_W2RU]
    assert codes[3:] == [0] * 5
    assert all(loc == (0, 0, 0, 0, 0) for loc in locators[3:])
    with open(child, "rb") as f:
        blob = f.read()
    expected = [
        b"file://./parent.vhd",
        ".\\parent.vhd".encode("utf-16-le"),
        ".\\parent.vhd".encode("utf-16-le"),
    ]
    for (_code, space, length, reserved, offset), text in zip(locators[:3], expected, strict=True):
        assert space == 512  # bytes, as blktap writes it
        assert reserved == 0
        assert offset % 512 == 0
        assert blob[offset : offset + length] == text
    footer = footer_bytes(child)
    assert struct.unpack(">I", footer[60:64])[0] == 4
    assert blob[:512] == footer


def test_hidden_byte_and_checksum(sr):
    path = sr / "a.vhd"
    vhd.create_dynamic(path, 2 * MiB)
    vhd.set_hidden(path, True)
    raw = footer_bytes(path)
    assert raw[85] == 1
    assert struct.unpack(">I", raw[64:68])[0] == ones_complement_sum(raw, 64)
    with open(path, "rb") as f:
        assert f.read(512) == raw
    assert vhd.info(path).hidden is True
    vhd.set_hidden(path, False)
    assert footer_bytes(path)[85] == 0
    assert vhd.info(path).hidden is False


def test_sizes_rounded_and_limited(sr):
    assert vhd.create_dynamic(sr / "a.vhd", 1).virtual_size == 2 * MiB
    assert vhd.create_dynamic(sr / "b.vhd", 2 * MiB + 1).virtual_size == 4 * MiB
    big = vhd.create_dynamic(sr / "max.vhd", 2040 * 1024 * MiB)
    assert big.virtual_size == 2040 * 1024 * MiB
    with pytest.raises(vhd.VHDError, match="2040 GiB"):
        vhd.create_dynamic(sr / "c.vhd", 2040 * 1024 * MiB + 1)
    with pytest.raises(vhd.VHDError):
        vhd.create_dynamic(sr / "d.vhd", 0)
    assert not (sr / "c.vhd").exists()


def test_create_refuses_to_overwrite(sr):
    path = sr / "a.vhd"
    vhd.create_dynamic(path, 2 * MiB)
    with pytest.raises(vhd.VHDError, match="already exists"):
        vhd.create_dynamic(path, 4 * MiB)
    assert vhd.info(path).virtual_size == 2 * MiB


def test_unique_ids_differ(sr):
    ids = {vhd.create_dynamic(sr / f"{i}.vhd", 2 * MiB).uuid for i in range(5)}
    assert len(ids) == 5


def test_set_uuid(sr):
    path = sr / "a.vhd"
    vhd.create_dynamic(path, 2 * MiB)
    new = str(uuid.uuid4())
    vhd.set_uuid(path, new)
    assert vhd.info(path).uuid == new
    vhd.check(path)
    with pytest.raises(vhd.VHDError):
        vhd.set_uuid(path, "not-a-uuid")
    with pytest.raises(vhd.VHDError):
        vhd.set_uuid(path, str(uuid.UUID(int=0)))


def test_chs_geometry_known_values():
    c, h, s = fmt.chs_geometry(127 * 1024 * MiB)
    assert (h, s) == (16, 255) and c * h * s <= 127 * 1024 * MiB // 512
    assert fmt.chs_geometry(3000 * 1024 * MiB) == (65535, 16, 255)
    c, h, s = fmt.chs_geometry(10 * MiB)
    assert c * h * s <= 10 * MiB // 512


def test_bitmap_encoding_msb_first():
    assert fmt.int_to_bitmap(1)[0] == 0x80  # sector 0 is the MSB of byte 0
    assert fmt.int_to_bitmap(1 << 9)[1] == 0x40
    for bits in (0, 1, 0b1011, fmt.FULL_BITMAP, 1 << 4095):
        assert fmt.bitmap_to_int(fmt.int_to_bitmap(bits)) == bits
    assert list(fmt.bit_runs(0b0111_0011)) == [(0, 2), (4, 7)]
