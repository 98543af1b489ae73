"""kernel and partition_utils plug-ins, run as processes in a dom0 sandbox."""

from __future__ import annotations

import json
import os
import random
import struct
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
