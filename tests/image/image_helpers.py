"""Real images for tests: VHD chains, plain VHDs, raw disks and ISOs, with their expected bytes."""

from __future__ import annotations

import hashlib
import io
import itertools
import tarfile
import uuid
from pathlib import Path
from typing import Any

from nova import objects
from xenapi_driver import vhd

MiB = 1024**2
_ids = itertools.count(1)


def pattern(seed: str, length: int) -> bytes:
    """Deterministic, incompressible-ish bytes (so a wrong offset never matches by chance)."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:length])


def make_chain(directory: Path, size: int = 8 * MiB, depth: int = 3) -> tuple[list[Path], bytes]:
    """A chain of ``depth`` VHDs (leaf first) with data written at every level; its flattened bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / f"{uuid.uuid4()}.vhd"
    vhd.create_dynamic(str(base), size)
    paths = [base]
    for level in range(depth):
        if level:
            child = directory / f"{uuid.uuid4()}.vhd"
            vhd.snapshot(str(child), str(paths[0]))
            paths.insert(0, child)
        with vhd.open_chain(str(paths[0])) as chain:
            # 4 KiB-aligned writes at different places per level, some overlapping lower ones.
            chain.write(level * MiB, pattern(f"l{level}a", 64 * 1024))
            chain.write(3 * MiB + level * 8192, pattern(f"l{level}b", 8192))
    with vhd.open_chain(str(paths[0]), writable=False) as chain:
        expected = chain.read(0, size)
    return paths, expected


def tgz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def chain_tgz(paths: list[Path]) -> bytes:
    return tgz([(f"{n}.vhd", p.read_bytes()) for n, p in enumerate(paths)])


def plain_vhd(directory: Path, size: int = 8 * MiB) -> tuple[bytes, bytes]:
    paths, expected = make_chain(directory, size, depth=1)
    return paths[0].read_bytes(), expected


def raw_disk(size: int = 6 * MiB) -> bytes:
    return pattern("raw", MiB) + bytes(size - 2 * MiB) + pattern("raw-end", MiB)


def vdi_bytes(sr_dir: Path, vdi_uuid: str, length: int | None = None) -> bytes:
    path = sr_dir / f"{vdi_uuid}.vhd"
    with vhd.open_chain(str(path), writable=False) as chain:
        return chain.read(0, chain.virtual_size if length is None else length)


def sr_state(sim: Any, sr_ref: str, sr_dir: Path) -> tuple[frozenset, frozenset]:
    """The SR's VDI records (uuids) and files: equal before and after a failed operation."""
    db = sim.pool.db
    vdis = frozenset(db.get("VDI", ref)["uuid"] for ref in db.get("SR", sr_ref)["VDIs"])
    files = frozenset(p.name for p in sr_dir.iterdir())
    return vdis, files


def make_instance(**fields: Any) -> objects.Instance:
    fields.setdefault("id", next(_ids))
    fields.setdefault("uuid", str(uuid.uuid4()))
    fields.setdefault(
        "flavor", objects.Flavor(memory_mb=256, vcpus=1, root_gb=0, ephemeral_gb=0, swap=0, name="m1")
    )
    return objects.Instance(**fields)


def read_image_disk(data: bytes, disk_format: str, container_format: str, workdir: Path) -> bytes:
    """The disk bytes an uploaded image holds, read independently of the code under test."""
    workdir.mkdir(parents=True, exist_ok=True)
    if container_format in ("ovf", "tgz"):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            names = archive.getnames()
            archive.extractall(workdir, filter="data")
        if disk_format == "raw":
            assert names == ["disk.raw"], names
            return (workdir / "disk.raw").read_bytes()
        files = [workdir / f"{n}.vhd" for n in range(len(names))]
        assert sorted(names) == sorted(f.name for f in files), names
        for n in range(len(files) - 2, -1, -1):
            vhd.reparent(str(files[n]), str(files[n + 1]))
        leaf = files[0]
    else:
        assert disk_format == "vhd"
        leaf = workdir / "image.vhd"
        leaf.write_bytes(data)
    vhd.check(str(leaf), walk_parents=True)
    with vhd.open_chain(str(leaf), writable=False) as chain:
        return chain.read(0, chain.virtual_size)
