"""Guest disks for resize-down tests: an MBR and ext4 (or other) partitions, built without mounting.

``mke2fs -d DIR`` populates a file system from a directory; ``debugfs``
reads it back (``rdump``) and ``fallocate`` fills it without writing data, so
every image stays sparse and fast. Disks are written into VHD files through
the project's VHD library (only the non-zero 64 KiB pieces), and read back
the same way into sparse raw files.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

from xenapi_driver import vhd

MiB = 1024**2
GiB = 1024**3
SECTOR = 512
CHUNK = 64 * 1024
TIMEOUT = 120
#: Boot code and a "boot loader" in the gap before the partition: a shrink must keep both.
BOOT_CODE = b"\xeb\x63\x90" + b"XENAPI-SHRINK-TEST-BOOT".ljust(437, b"\x90")
GAP = bytes(random.Random(7).randbytes(64 * 1024))

E2FS = {name: shutil.which(name) or f"/usr/sbin/{name}" for name in ("mke2fs", "e2fsck", "debugfs")}


def guest_files(seed: int = 1) -> dict[str, bytes]:
    """A small root file system: text, binaries of several sizes, nested directories, an empty file."""
    rng = random.Random(seed)
    return {
        "etc/hostname": b"resized-guest\n",
        "etc/fstab": b"LABEL=cloudimg-rootfs / ext4 defaults 0 1\n",
        "usr/bin/tool": rng.randbytes(700 * 1024 + 123),
        "var/lib/app/data.bin": rng.randbytes(3 * MiB + 17),
        "home/user/notes/deep/file.txt": b"x" * 5000,
        "home/user/empty": b"",
        "opt/big/blob": rng.randbytes(9 * MiB),
    }


def _run(argv: list[str], ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode not in ok:
        raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc


def make_fs(
    workdir: Path, size: int, files: dict[str, bytes], fstype: str = "ext4", features: str = ""
) -> Path:
    """A sparse file of ``size`` bytes holding a new ``fstype`` file system with ``files``."""
    src = workdir / f"tree-{fstype}-{size}"
    src.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    image = workdir / f"fs-{fstype}-{size}.raw"
    with open(image, "wb") as handle:
        handle.truncate(size)
    options = ["-O", features] if features else []
    _run([E2FS["mke2fs"], "-q", "-F", "-t", fstype, "-L", "cloudimg-rootfs", *options,
          "-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", str(src), str(image)])  # fmt: skip
    return image


def stale_free_count(image: Path) -> None:
    """Make the superblock claim the file system is almost empty, as a running guest's may lag.

    Only for file systems without metadata_csum (the superblock is then not checksummed);
    e2fsck -f -y corrects the count from the group descriptors.
    """
    with open(image, "r+b") as handle:
        handle.seek(1024)
        sb = bytearray(handle.read(1024))
        blocks = struct.unpack("<I", sb[4:8])[0]
        sb[12:16] = struct.pack("<I", blocks - 1000)
        handle.seek(1024)
        handle.write(sb)


def fill(image: Path, nbytes: int) -> None:
    """Allocate ``nbytes`` more in the file system (debugfs fallocate: no data written, still sparse)."""
    with open(image, "rb") as handle:
        handle.seek(1024 + 24)
        block_size = 1024 << struct.unpack("<I", handle.read(4))[0]
    blocks = nbytes // block_size
    _run([E2FS["debugfs"], "-w", "-R", "write /dev/null /filler", str(image)])
    _run([E2FS["debugfs"], "-w", "-R", f"fallocate /filler 0 {blocks - 1}", str(image)])


def mbr(entries: list[tuple[int, int, int]]) -> bytes:
    """Sector 0: boot code, disk signature, ``(start, size, type)`` entries, 0x55AA."""
    table = bytearray(BOOT_CODE[:440] + b"\x12\x34\x56\x78\0\0" + b"\0" * 64 + b"\x55\xaa")
    for index, (start, size, ptype) in enumerate(entries):
        off = 446 + 16 * index
        table[off : off + 16] = struct.pack("<B3sB3sII", 0x80 if index == 0 else 0, b"\xfe\xff\xff", ptype,
                                            b"\xfe\xff\xff", start, size)  # fmt: skip
    return bytes(table)


def write_disk(vhd_path: Path, pieces: list[tuple[int, bytes | Path]]) -> None:
    """Write ``(offset, bytes or sparse file)`` pieces into the VHD (chain) at ``vhd_path``."""
    with vhd.open_chain(str(vhd_path)) as chain:
        for offset, piece in pieces:
            if isinstance(piece, bytes):
                chain.write(offset, piece)
                continue
            with open(piece, "rb") as handle:
                for pos, data in _data_chunks(handle):
                    chain.write(offset + pos, data)


def _data_chunks(handle):
    """(offset, 64 KiB) non-zero chunks of a sparse file, skipping holes."""
    fd = handle.fileno()
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, pos, os.SEEK_HOLE)
        pos -= pos % CHUNK
        while pos < end:
            data = os.pread(fd, CHUNK, pos)
            if data.count(0) != len(data):
                yield pos, data.ljust(CHUNK, b"\0") if pos + CHUNK <= size else data
            pos += CHUNK


def ext4_disk_pieces(
    workdir: Path, disk_size: int, files: dict[str, bytes], fill_bytes: int = 0, part_size: int | None = None,
    stale: bool = False,
):  # fmt: skip
    """MBR + one ext4 partition from 1 MiB to the end of a ``disk_size`` disk (or of ``part_size`` bytes).

    ``stale``: the superblock under-reports the used blocks (see ``stale_free_count``).
    """
    start = 2048
    size = part_size or disk_size - start * SECTOR
    fs = make_fs(workdir, size, files, features="^metadata_csum" if stale else "")
    if fill_bytes:
        fill(fs, fill_bytes)
    if stale:
        stale_free_count(fs)
    return [(0, mbr([(start, size // SECTOR, 0x83)])), (SECTOR, GAP), (start * SECTOR, fs)]


def two_partition_pieces(workdir: Path, disk_size: int, files: dict[str, bytes]):
    half = disk_size // SECTOR // 2
    fs = make_fs(workdir, (half - 2048) * SECTOR, files)
    return [(0, mbr([(2048, half - 2048, 0x83), (half, half, 0x82)])), (2048 * SECTOR, fs)]


def random_partition_pieces(disk_size: int, seed: int = 3):
    """One type-0x83 partition whose bytes are random: no file system anyone knows."""
    rng = random.Random(seed)
    return [(0, mbr([(2048, disk_size // SECTOR - 2048, 0x83)])), (2048 * SECTOR, rng.randbytes(4 * MiB))]


def dump(vhd_path: Path, out: Path) -> int:
    """The virtual disk read through its chain into a sparse raw file; returns the virtual size."""
    with vhd.open_chain(str(vhd_path), writable=False) as chain, open(out, "wb") as handle:
        size = chain.virtual_size
        handle.truncate(size)
        for block in range(-(-size // (2 * MiB))):
            if not chain.block_allocated_anywhere(block):
                continue
            data = chain.read(block * 2 * MiB, min(2 * MiB, size - block * 2 * MiB))
            if data.count(0) != len(data):
                handle.seek(block * 2 * MiB)
                handle.write(data)
    return size


def partitions(raw: Path) -> list[tuple[int, int, int]]:
    """(start, size, type) of each used MBR entry (parsed here, independently of the plug-in)."""
    with open(raw, "rb") as handle:
        sector = handle.read(SECTOR)
    assert sector[510:] == b"\x55\xaa"
    found = []
    for index in range(4):
        entry = sector[446 + 16 * index : 462 + 16 * index]
        start, size = struct.unpack("<II", entry[8:16])
        if entry[4]:
            found.append((start, size, entry[4]))
    return found


def extract(raw: Path, start: int, size: int, out: Path) -> Path:
    with open(raw, "rb") as src, open(out, "wb") as dst:
        dst.truncate(size * SECTOR)
        src.seek(start * SECTOR)
        left = size * SECTOR
        pos = 0
        while left:
            data = src.read(min(4 * MiB, left))
            if not data:
                break
            if data.count(0) != len(data):
                dst.seek(pos)
                dst.write(data)
            pos += len(data)
            left -= len(data)
    return out


def fsck_clean(image: Path) -> str:
    """``e2fsck -f -n``: exit 0 means clean (its output is returned for the assertion message)."""
    proc = _run([E2FS["e2fsck"], "-f", "-n", str(image)])
    return proc.stdout.decode(errors="replace")


def read_files(image: Path, workdir: Path) -> dict[str, bytes]:
    """Every regular file of an ext file system, read back with ``debugfs rdump`` (no mount)."""
    out = workdir / f"rdump-{image.name}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    _run([E2FS["debugfs"], "-R", f"rdump / {out}", str(image)])
    found = {}
    for path in out.rglob("*"):
        if path.is_file() and path.relative_to(out).parts[0] not in ("lost+found", "filler"):
            found[str(path.relative_to(out))] = path.read_bytes()
    return found


def digest_allocated(vhd_path: Path) -> str:
    """SHA-256 over every allocated block of a disk read through its chain (unallocated = zeros)."""
    h = hashlib.sha256()
    with vhd.open_chain(str(vhd_path), writable=False) as chain:
        size = chain.virtual_size
        h.update(str(size).encode())
        for block in range(-(-size // (2 * MiB))):
            if chain.block_allocated_anywhere(block):
                data = chain.read(block * 2 * MiB, min(2 * MiB, size - block * 2 * MiB))
                if data.count(0) != len(data):
                    h.update(block.to_bytes(4, "big") + data)
    return h.hexdigest()


def check_shrunk_disk(
    vhd_path: Path, new_size: int, files: dict[str, bytes], workdir: Path, part_size: int | None = None
) -> None:
    """The resize-down result: exact size, one partition within it, clean ext4, same files, boot bytes.

    ``part_size``: the partition's expected size in bytes (default: up to the end of the new disk).
    """
    raw = workdir / "shrunk-disk.raw"
    assert dump(vhd_path, raw) == new_size
    (part,) = partitions(raw)
    start, size, ptype = part
    assert ptype == 0x83 and start == 2048
    assert start + size <= new_size // SECTOR, "the partition must end within the new disk"
    assert size * SECTOR == (part_size or new_size - start * SECTOR)
    with open(raw, "rb") as handle:
        head = handle.read(2048 * SECTOR)
    assert head[:440] == BOOT_CODE[:440], "the MBR boot code must be kept"
    assert head[SECTOR : SECTOR + len(GAP)] == GAP, "the boot loader gap must be kept"
    fs = extract(raw, start, size, workdir / "shrunk-partition.raw")
    fsck_clean(fs)
    assert read_files(fs, workdir) == files


class DiskImageSource:
    """An instance's root disk: a new VDI of ``size`` with the given guest disk pieces written in."""

    def __init__(self, compute, pieces, size: int = 2 * GiB) -> None:
        self.compute = compute
        self.pieces = pieces
        self.size = size

    def root_vdi(self, context, instance, image_meta, sr_ref):
        from resize_helpers import disk_path

        record = {"name_label": "guest disk", "SR": sr_ref, "virtual_size": str(self.size), "type": "user",
                  "sharable": False, "read_only": False, "other_config": {}}  # fmt: skip
        vdi = self.compute.session.call_xenapi("VDI.create", record)
        write_disk(disk_path(self.compute.pool, vdi), self.pieces)
        return vdi
