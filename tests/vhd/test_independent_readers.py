"""What we write, read back by readers nobody here wrote: qemu-img and libvhdi.

qemu-img ignores parents, so it reads single fixed/dynamic files only.  libvhdi
reads whole differencing chains (``set_parent`` per level).  Writes in the
libvhdi cross-checks stay 4 KiB aligned because of a known libvhdi defect with
smaller writes inside a child; unaligned writes are covered against our own
model in test_chain.py.
"""

import io
import json
import random
import shutil
import subprocess

import pytest
from vhd_helpers import MiB, Model, pyvhdi_read_chain, random_writes

from xenapi_driver import vhd

pyvhdi = pytest.importorskip("pyvhdi")
QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img (qemu-utils) is not installed")


def qemu_info(path):
    out = subprocess.run(
        [QEMU_IMG, "info", "-f", "vpc", "--output=json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def qemu_raw(path, tmp_path):
    raw = tmp_path / "out.raw"
    subprocess.run(
        [QEMU_IMG, "convert", "-f", "vpc", "-O", "raw", str(path), str(raw)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    data = raw.read_bytes()
    raw.unlink()
    return data


@needs_qemu
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_qemu_img_reads_single_file(sr, tmp_path, kind):
    size = 8 * MiB
    path = sr / f"{kind}.vhd"
    (vhd.create_dynamic if kind == "dynamic" else vhd.create_fixed)(path, size - 5)
    model = Model(size)
    with vhd.open_chain(path) as chain:
        random_writes(chain, model, random.Random(11), 25, aligned=1, max_len=600_000)
    info = qemu_info(path)
    assert info["format"] == "vpc"
    assert info["virtual-size"] == size
    assert qemu_raw(path, tmp_path) == bytes(model.data)


@needs_qemu
def test_qemu_img_reads_flattened_stream(sr, tmp_path):
    size = 6 * MiB
    model = Model(size)
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, model, random.Random(12), 10, aligned=1)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        random_writes(chain, model, random.Random(13), 10, aligned=1)
    stream = tmp_path / "stream.vhd"
    with open(stream, "wb") as out:
        vhd.export_vhd_stream(sr / "leaf.vhd", out)
    assert qemu_info(stream)["virtual-size"] == size
    assert qemu_raw(stream, tmp_path) == bytes(model.data)


@needs_qemu
def test_qemu_img_reads_resized_and_coalesced(sr, tmp_path):
    vhd.create_dynamic(sr / "base.vhd", 2 * MiB)
    model = Model(2 * MiB)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, model, random.Random(14), 5, aligned=1)
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    vhd.resize(sr / "leaf.vhd", 300 * MiB)
    model.data.extend(bytes(298 * MiB))
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(299 * MiB, b"\x5a" * 4096)
        model.write(299 * MiB, b"\x5a" * 4096)
    vhd.coalesce(sr / "leaf.vhd")
    assert qemu_info(sr / "base.vhd")["virtual-size"] == 300 * MiB
    assert qemu_raw(sr / "base.vhd", tmp_path) == bytes(model.data)


def test_libvhdi_reads_chain_of_depth_four(sr):
    size = 12 * MiB
    rng = random.Random(21)
    model = Model(size)
    names = ["l0.vhd", "l1.vhd", "l2.vhd", "l3.vhd"]
    vhd.create_dynamic(sr / names[0], size)
    expected_per_level = []
    for i, name in enumerate(names):
        if i:
            vhd.snapshot(sr / name, sr / names[i - 1])
        with vhd.open_chain(sr / name) as chain:
            random_writes(chain, model, rng, 12, aligned=4096, max_len=3 * MiB)
        expected_per_level.append(bytes(model.data))
    for i in range(len(names)):
        chain_paths = [sr / n for n in reversed(names[: i + 1])]
        assert pyvhdi_read_chain(chain_paths) == expected_per_level[i], f"level {i}"


def test_libvhdi_sees_our_metadata(sr):
    vhd.create_dynamic(sr / "base.vhd", 4 * MiB)
    info = vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    handle = pyvhdi.file()
    handle.open(str(sr / "leaf.vhd"))
    try:
        assert handle.get_media_size() == 4 * MiB
        assert handle.get_disk_type() == 4
        assert handle.get_parent_filename().replace("\\", "/").endswith("base.vhd")
        assert handle.get_parent_identifier() == info.parent_uuid
        assert handle.get_identifier() == info.uuid
    finally:
        handle.close()


def test_libvhdi_reads_chain_after_coalesce_and_reparent(sr):
    size = 6 * MiB
    rng = random.Random(22)
    model = Model(size)
    vhd.create_dynamic(sr / "a.vhd", size)
    with vhd.open_chain(sr / "a.vhd") as chain:
        random_writes(chain, model, rng, 6, aligned=4096)
    vhd.snapshot(sr / "b.vhd", sr / "a.vhd")
    with vhd.open_chain(sr / "b.vhd") as chain:
        random_writes(chain, model, rng, 6, aligned=4096)
    vhd.snapshot(sr / "c.vhd", sr / "b.vhd")
    with vhd.open_chain(sr / "c.vhd") as chain:
        random_writes(chain, model, rng, 6, aligned=4096)
    vhd.coalesce(sr / "b.vhd")
    vhd.reparent(sr / "c.vhd", sr / "a.vhd")
    assert pyvhdi_read_chain([sr / "c.vhd", sr / "a.vhd"]) == bytes(model.data)


def test_libvhdi_reads_imported_differential_stream(sr):
    size = 8 * MiB
    rng = random.Random(23)
    base_model = Model(size)
    vhd.create_dynamic(sr / "base.vhd", size)
    with vhd.open_chain(sr / "base.vhd") as chain:
        random_writes(chain, base_model, rng, 8, aligned=4096)
    model = base_model.copy()
    vhd.snapshot(sr / "leaf.vhd", sr / "base.vhd")
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        random_writes(chain, model, rng, 8, aligned=4096)
    full = io.BytesIO()
    vhd.export_vhd_stream(sr / "base.vhd", full)
    delta = io.BytesIO()
    vhd.export_vhd_stream(sr / "leaf.vhd", delta, base_path=sr / "base.vhd")
    vhd.create_dynamic(sr / "target.vhd", size)
    vhd.import_vhd_stream(io.BytesIO(full.getvalue()), sr / "target.vhd")
    assert pyvhdi_read_chain([sr / "target.vhd"]) == bytes(base_model.data)
    vhd.import_vhd_stream(io.BytesIO(delta.getvalue()), sr / "target.vhd")
    assert pyvhdi_read_chain([sr / "target.vhd"]) == bytes(model.data)


@needs_qemu
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_we_read_what_qemu_img_writes(sr, tmp_path, subformat):
    """The other direction: a VHD written by qemu-img reads back byte for byte, and can be a parent."""
    size = 6 * MiB
    rng = random.Random(31)
    model = Model(size)
    for _ in range(6):
        off = rng.randrange(0, size - 300_000)
        model.write(off, rng.randbytes(rng.randrange(1, 300_000)))
    raw = tmp_path / "in.raw"
    raw.write_bytes(bytes(model.data))
    path = sr / "qemu.vhd"
    subprocess.run(
        [
            QEMU_IMG,
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            f"subformat={subformat},force_size=on",
            str(raw),
            str(path),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    info = vhd.info(path)
    assert info.disk_type == subformat
    assert info.virtual_size == size
    vhd.check(path)
    with vhd.open_chain(path, writable=False) as chain:
        assert chain.read(0, size) == bytes(model.data)
    vhd.snapshot(sr / "leaf.vhd", path)
    with vhd.open_chain(sr / "leaf.vhd") as chain:
        chain.write(4096, b"c" * 4096)
        model.write(4096, b"c" * 4096)
        assert chain.read(0, size) == bytes(model.data)
    vhd.check(sr / "leaf.vhd", walk_parents=True)
