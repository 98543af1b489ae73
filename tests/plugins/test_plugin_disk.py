"""kernel and partition_utils plug-ins, run as processes in a dom0 sandbox."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import uuid

import pytest
from plugin_helpers import call

from xenapi_driver import vhd
from xenapi_driver.simulator.dom0 import XapiError

MiB = 1024 * 1024


def sr_arg(sandbox) -> str:
    return f"/var/run/sr-mount/{sandbox.local_sr_uuid}"


@pytest.fixture
def kernel_vdi(dom0):
    """A two-level VHD chain whose first bytes are a 'kernel' written partly in each level."""
    rng = random.Random(4)
    kernel = rng.randbytes(3 * MiB + 1234)
    sr = dom0.sr_path()
    base, leaf = str(uuid.uuid4()), str(uuid.uuid4())
    vhd.create_dynamic(str(sr / f"{base}.vhd"), 8 * MiB)
    with vhd.open_chain(str(sr / f"{base}.vhd")) as chain:
        chain.write(0, kernel[: 2 * MiB])
    vhd.snapshot(str(sr / f"{leaf}.vhd"), str(sr / f"{base}.vhd"))
    with vhd.open_chain(str(sr / f"{leaf}.vhd")) as chain:
        chain.write(2 * MiB, kernel[2 * MiB :] + b"\0" * (4096 - len(kernel[2 * MiB :]) % 4096))
        chain.write(4096, kernel[4096:8192])
    return leaf, kernel


def test_copy_kernel_out_of_a_vhd_chain(dom0, kernel_vdi):
    leaf, kernel = kernel_vdi
    result = json.loads(
        call(
            dom0,
            "kernel",
            "copy_vdi",
            sr_path=sr_arg(dom0),
            vdi_uuid=leaf,
            size=str(len(kernel)),
            max_size=str(16 * MiB),
        )
    )
    assert result == {"filename": f"/boot/guest/{leaf}", "cached": False}
    assert dom0.path(result["filename"]).read_bytes() == kernel
    # the file is in the local SR's os-guest-kernels, as the deployment guide lays /boot/guest out
    assert (dom0.sr_path() / "os-guest-kernels" / leaf).exists()
    removed = json.loads(call(dom0, "kernel", "remove_kernel_ramdisk", kernel_file=result["filename"]))
    assert removed == {"removed": [result["filename"]]}
    assert not dom0.path(result["filename"]).exists()


def test_copy_raw_vdi_and_cached_image(dom0):
    vdi = str(uuid.uuid4())
    data = os.urandom(100_000)
    (dom0.sr_path() / f"{vdi}.raw").write_bytes(data + b"\0" * 1000)
    image = str(uuid.uuid4())
    args = dict(
        sr_path=sr_arg(dom0), vdi_uuid=vdi, size=str(len(data)), max_size="200000", cached_image=image
    )
    assert json.loads(call(dom0, "kernel", "copy_vdi", **args))["cached"] is False
    assert dom0.path(f"/boot/guest/{image}").read_bytes() == data
    assert json.loads(call(dom0, "kernel", "copy_vdi", **args))["cached"] is True


def test_kernel_larger_than_max_is_refused(dom0, kernel_vdi):
    leaf, kernel = kernel_vdi
    with pytest.raises(XapiError) as err:
        call(
            dom0,
            "kernel",
            "copy_vdi",
            sr_path=sr_arg(dom0),
            vdi_uuid=leaf,
            size=str(len(kernel)),
            max_size=str(MiB),
        )
    assert err.value.details == ["TOO_LARGE", "kernel/ramdisk", str(len(kernel)), str(MiB)]
    assert os.listdir(dom0.path("/boot/guest")) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vdi_uuid", "../x"),
        ("size", "0"),
        ("size", "-5"),
        ("max_size", "1e9"),
        ("cached_image", "../../etc/passwd"),
        ("cached_image", "a;b"),
        ("sr_path", "/boot/guest"),
    ],
)
def test_copy_vdi_bad_arguments(dom0, kernel_vdi, name, value):
    leaf, _ = kernel_vdi
    args = dict(sr_path=sr_arg(dom0), vdi_uuid=leaf, size="100", max_size="1000")
    args[name] = value
    with pytest.raises(XapiError) as err:
        call(dom0, "kernel", "copy_vdi", **args)
    assert err.value.code == "INVALID_ARGUMENT"
    assert os.listdir(dom0.path("/boot/guest")) == []


@pytest.mark.parametrize(
    "path", ["/boot/guest/../../etc/passwd", "/etc/passwd", "/boot/guest", "/boot/guest/a/b"]
)
def test_remove_refuses_paths_outside_boot_guest(dom0, path):
    victim = dom0.path("/etc/passwd")
    victim.write_text("root:x:0:0")
    with pytest.raises(XapiError) as err:
        call(dom0, "kernel", "remove_kernel_ramdisk", kernel_file=path)
    assert err.value.code == "INVALID_ARGUMENT"
    assert victim.exists()


# ------------------------------------------------------------------ partitions


@pytest.fixture
def disk(dom0):
    path = dom0.path("/dev/xvdb")
    with open(path, "wb") as handle:
        handle.truncate(64 * MiB)
        handle.seek(0)
        handle.write(b"\xeb\x63\x90" + b"BOOTCODE")  # boot code must survive table writes
    return path


def _sfdisk_view(path):
    """Parse the MBR independently of the plug-in."""
    data = path.read_bytes()[:512]
    assert data[510:] == b"\x55\xaa"
    parts = []
    for i in range(4):
        entry = data[446 + 16 * i : 462 + 16 * i]
        start, size = struct.unpack("<II", entry[8:16])
        if entry[4]:
            parts.append((i + 1, entry[4], start, size, entry[0]))
    return parts


def test_make_and_resize_partition(dom0, disk):
    total = 64 * MiB // 512
    parts = json.loads(call(dom0, "partition_utils", "make_partition", dev="xvdb"))
    assert parts == [
        {"number": 1, "start": 2048, "size": total - 2048, "end": total - 1, "type": "83", "bootable": False}
    ]
    assert _sfdisk_view(disk) == [(1, 0x83, 2048, total - 2048, 0)]
    assert disk.read_bytes()[:11] == b"\xeb\x63\x90BOOTCODE"
    parts = json.loads(
        call(dom0, "partition_utils", "resize_partition", dev="/dev/xvdb", number="1", size="40000")
    )
    assert parts[0]["size"] == 40000
    assert _sfdisk_view(disk) == [(1, 0x83, 2048, 40000, 0)]
    assert json.loads(call(dom0, "partition_utils", "get_partitions", dev="xvdb")) == parts


def test_make_partition_with_type_and_boot_flag(dom0, disk):
    call(
        dom0,
        "partition_utils",
        "make_partition",
        dev="xvdb",
        start="63",
        size="1000",
        type="0c",
        bootable="true",
    )
    assert _sfdisk_view(disk) == [(1, 0x0C, 63, 1000, 0x80)]


def test_partition_must_fit(dom0, disk):
    before = disk.read_bytes()[:512]
    with pytest.raises(XapiError) as err:
        call(dom0, "partition_utils", "make_partition", dev="xvdb", start="2048", size=str(64 * MiB))
    assert err.value.code == "INVALID_PARTITION"
    assert disk.read_bytes()[:512] == before
    call(dom0, "partition_utils", "make_partition", dev="xvdb")
    with pytest.raises(XapiError) as err:
        call(dom0, "partition_utils", "resize_partition", dev="xvdb", number="2", size="10")
    assert err.value.code == "NOT_FOUND"


@pytest.mark.parametrize(
    "dev", ["../etc/passwd", "/etc/passwd", "/dev/../etc/passwd", "xvdb; reboot", "/dev/nope"]
)
def test_partition_bad_device(dom0, disk, dev):
    with pytest.raises(XapiError) as err:
        call(dom0, "partition_utils", "make_partition", dev=dev)
    assert err.value.code in ("INVALID_ARGUMENT", "NOT_FOUND")


# ------------------------------------------------------------------ resize down (shrink_check, shrink_copy)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resize"))
import resize_down_helpers as rdh  # noqa: E402

SHRINK_DISK = 256 * MiB
SHRINK_TO = 128 * MiB


def _root_chain(dom0, pieces) -> str:
    """A two-level chain: the file system in the base, the MBR, the gap and a rewrite in the leaf."""
    sr = dom0.sr_path()
    base, leaf = str(uuid.uuid4()), str(uuid.uuid4())
    vhd.create_dynamic(str(sr / f"{base}.vhd"), SHRINK_DISK)
    rdh.write_disk(sr / f"{base}.vhd", [p for p in pieces if p[0] >= 2048 * 512])
    vhd.snapshot(str(sr / f"{leaf}.vhd"), str(sr / f"{base}.vhd"))
    leaf_pieces = [p for p in pieces if p[0] < 2048 * 512]
    fs = next((p[1] for p in pieces if p[0] == 2048 * 512 and not isinstance(p[1], bytes)), None)
    if fs is not None:  # the first 192 KiB of the file system again, so the leaf's bitmap is partial
        with open(fs, "rb") as handle:
            leaf_pieces.append((2048 * 512, handle.read(192 * 1024)))
    rdh.write_disk(sr / f"{leaf}.vhd", leaf_pieces)
    return leaf


def _sr_state(dom0) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dom0.sr_path().glob("*.vhd")}


def _shrink_args(dom0, leaf, **extra):
    return dict(sr_path=sr_arg(dom0), vdi_uuid=leaf, new_size=str(SHRINK_TO), **extra)


def test_shrink_copy_writes_a_smaller_disk_with_the_same_files(dom0, tmp_path):
    files = rdh.guest_files()
    leaf = _root_chain(dom0, rdh.ext4_disk_pieces(tmp_path, SHRINK_DISK, files))
    before = _sr_state(dom0)
    plan = json.loads(call(dom0, "partition_utils", "shrink_check", **_shrink_args(dom0, leaf)))
    assert plan["fs"] == "ext4" and plan["partition"]["number"] == 1
    assert plan["new_partition_size"] == SHRINK_TO // 512 - 2048
    new = str(uuid.uuid4())
    staging = str(uuid.uuid4())
    result = json.loads(
        call(dom0, "partition_utils", "shrink_copy", _timeout=120,
             **_shrink_args(dom0, leaf, new_vdi_uuid=new, instance_uuid=staging))
    )  # fmt: skip
    assert result["vdi_uuid"] == new and result["min_bytes"] <= SHRINK_TO
    target = dom0.sr_path() / f"{new}.vhd"
    info = vhd.info(str(target))
    assert (info.disk_type, info.virtual_size, info.depth) == ("dynamic", SHRINK_TO, 1)
    assert info.physical_size < 40 * MiB  # sparse: only the file system's data is allocated
    rdh.check_shrunk_disk(target, SHRINK_TO, files, tmp_path)
    # qemu-img, an independent reader, agrees on the format and size
    qemu = subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(target)],
                          capture_output=True, timeout=60, check=True)  # fmt: skip
    assert json.loads(qemu.stdout)["virtual-size"] >= SHRINK_TO - 8 * MiB  # vpc rounds to its CHS geometry
    # libvhdi, another independent reader, reads the same bytes as the project's VHD library
    import pyvhdi

    handle = pyvhdi.file()
    handle.open(str(target))
    try:
        assert handle.get_media_size() == SHRINK_TO
        with vhd.open_chain(str(target), writable=False) as chain:
            for offset in (0, 1 * MiB, 2 * MiB, 40 * MiB, SHRINK_TO - 4 * MiB):
                assert handle.read_buffer_at_offset(4 * MiB, offset) == chain.read(offset, 4 * MiB)
    finally:
        handle.close()
    # the original chain is untouched; nothing is left in /images
    after = _sr_state(dom0)
    assert {k: v for k, v in after.items() if k != f"{new}.vhd"} == before
    assert os.listdir(dom0.path("/images")) == []


def test_shrink_keeps_a_partition_that_already_fits(dom0, tmp_path):
    """A 64 MiB partition on a 256 MiB disk shrunk to 128 MiB: the disk shrinks, the partition stays."""
    files = {"etc/hostname": b"small\n", "data": os.urandom(2 * MiB)}
    leaf = _root_chain(dom0, rdh.ext4_disk_pieces(tmp_path, SHRINK_DISK, files, part_size=64 * MiB))
    new = str(uuid.uuid4())
    result = json.loads(
        call(dom0, "partition_utils", "shrink_copy",
             **_shrink_args(dom0, leaf, new_vdi_uuid=new, instance_uuid=str(uuid.uuid4())))
    )  # fmt: skip
    assert result["new_partition_size"] == 64 * MiB // 512 and result["new_blocks"] == result["blocks"]
    rdh.check_shrunk_disk(dom0.sr_path() / f"{new}.vhd", SHRINK_TO, files, tmp_path, part_size=64 * MiB)


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ("two-partitions", "has 2 partitions"),
        ("random-bytes", "no file system this driver recognises"),
        ("xfs", "holds xfs"),
        ("no-table", "no partition table"),
        ("gpt", "GPT"),
        ("extended", "extended"),
        ("ext2", "ext2 (no journal)"),
        ("does-not-fit", "needs about"),
    ],
)
def test_shrink_refusals_name_the_reason_and_write_nothing(dom0, tmp_path, layout, words):
    files = rdh.guest_files()
    if layout == "two-partitions":
        pieces = rdh.two_partition_pieces(tmp_path, SHRINK_DISK, files)
    elif layout == "random-bytes":
        pieces = rdh.random_partition_pieces(SHRINK_DISK)
    elif layout == "xfs":
        pieces = [(0, rdh.mbr([(2048, 100000, 0x83)])), (2048 * 512, b"XFSB" + os.urandom(8188))]
    elif layout == "no-table":
        pieces = [(0, b"\0" * 512), (1024, rdh.make_fs(tmp_path, 8 * MiB, {}).read_bytes()[1024:4096])]
    elif layout == "gpt":
        pieces = [(0, rdh.mbr([(1, SHRINK_DISK // 512 - 1, 0xEE)]))]
    elif layout == "extended":
        pieces = [(0, rdh.mbr([(2048, 1000, 0x83), (4096, 100000, 0x05)]))]
    elif layout == "ext2":
        fs = rdh.make_fs(tmp_path, SHRINK_DISK - MiB, files, fstype="ext2")
        pieces = [(0, rdh.mbr([(2048, SHRINK_DISK // 512 - 2048, 0x83)])), (2048 * 512, fs)]
    else:
        pieces = rdh.ext4_disk_pieces(tmp_path, SHRINK_DISK, files, fill_bytes=200 * MiB)
    leaf = _root_chain(dom0, pieces)
    before = _sr_state(dom0)
    copy_args = {"new_vdi_uuid": str(uuid.uuid4()), "instance_uuid": str(uuid.uuid4())}
    for fn, extra in (("shrink_check", {}), ("shrink_copy", copy_args)):
        with pytest.raises(XapiError) as err:
            call(dom0, "partition_utils", fn, _timeout=120, **_shrink_args(dom0, leaf, **extra))
        assert err.value.code == "SHRINK_REFUSED", err.value.details
        assert words in err.value.details[1]
        assert _sr_state(dom0) == before
        assert os.listdir(dom0.path("/images")) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("new_size", str(SHRINK_TO + 512)),
        ("new_size", "1024"),
        ("new_size", "-1"),
        ("vdi_uuid", "../../etc/passwd"),
        ("sr_path", "/images"),
        ("new_vdi_uuid", "x/../y"),
        ("instance_uuid", "../../var"),
    ],
)
def test_shrink_bad_arguments(dom0, name, value):
    leaf = _root_chain(dom0, rdh.random_partition_pieces(SHRINK_DISK))
    args = _shrink_args(dom0, leaf, new_vdi_uuid=str(uuid.uuid4()), instance_uuid=str(uuid.uuid4()))
    args[name] = value
    with pytest.raises(XapiError) as err:
        call(dom0, "partition_utils", "shrink_copy", **args)
    assert err.value.code == "INVALID_ARGUMENT", err.value.details


def test_shrink_of_a_missing_disk_and_onto_an_existing_file(dom0):
    leaf = _root_chain(dom0, rdh.random_partition_pieces(SHRINK_DISK))
    with pytest.raises(XapiError) as err:
        call(dom0, "partition_utils", "shrink_check", **_shrink_args(dom0, str(uuid.uuid4())))
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(XapiError) as err:
        call(dom0, "partition_utils", "shrink_copy",
             **_shrink_args(dom0, leaf, new_vdi_uuid=leaf, instance_uuid=str(uuid.uuid4())))  # fmt: skip
    assert err.value.code == "INVALID_ARGUMENT"
