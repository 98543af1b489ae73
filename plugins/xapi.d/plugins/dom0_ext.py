"""Resize down in dom0: shrink a copy of a root disk whose only partition holds ext3/ext4.

Python 3.6, standard library only, plus dom0's e2fsprogs (``e2fsck``,
``resize2fs``) run as argument lists, never through a shell.

Why this shape: XAPI cannot shrink a VDI, so a resize down writes a NEW disk.
The original disk is only ever read (through its VHD chain), so every refusal
or failure leaves it exactly as it was. The work happens in the staging area
``/images/instance<id>/`` (the local SR, where resize copies are staged):

1. ``inspect``: the disk must have an MBR with exactly one partition, of type
   0x83, holding ext3 or ext4 (superblock magic 0xEF53 and a journal). Several
   partitions, GPT, an extended partition, no partition table, xfs, ntfs,
   swap, LVM, LUKS, ext2 or unknown bytes are refused with the reason. The
   superblock's counters give a first estimate of whether the data fits.
2. ``shrink_to_vhd``: copy the partition out of the chain into a sparse raw
   file, ``e2fsck -f -y`` it (the guest was powered off, perhaps not
   cleanly), ``resize2fs -P`` for the exact minimum (refused when it does not
   fit), ``resize2fs`` to the new partition size, ``e2fsck -f -n`` must then
   be clean. Then write a single dynamic VHD of exactly the new size: the
   original's sectors before the partition (MBR boot code, boot loader gap)
   with partition 1's size changed, the shrunk file system, zeros (left
   unallocated) after it.

The new partition keeps its start and ends on the last 1 MiB boundary of the
new disk (the whole disk when its size is a multiple of 1 MiB), rounded down
to whole file-system blocks. A partition that already ends within the new
disk is kept as it is (never grown: as after a resize up, growing the
partition is the guest's business, e.g. cloud-init's growpart).
"""

import errno
import json
import os
import re
import struct

import dom0_utils
import dom0_vhd
from dom0_utils import fail

SECTOR = 512
ALIGN_SECTORS = 2048  # 1 MiB: where partitions start and end on today's disks
MiB = 1024 * 1024
LINUX_TYPE = 0x83
EXTENDED_TYPES = {0x05: "extended", 0x0F: "extended (LBA)", 0x85: "Linux extended"}
TYPE_NAMES = {
    0x07: "NTFS/exFAT",
    0x0B: "FAT32",
    0x0C: "FAT32 (LBA)",
    0x82: "Linux swap",
    0x8E: "Linux LVM",
    0xFD: "Linux RAID",
    0xEE: "GPT protective",
    0xEF: "EFI system",
    0x83: "Linux",
}
E2FS_TIMEOUT = 3600  # seconds for one e2fsck/resize2fs run (large file systems take minutes)

# ext2/3/4 superblock (1024 bytes at offset 1024 of the file system)
_COMPAT_HAS_JOURNAL = 0x4
_INCOMPAT_JOURNAL_DEV = 0x8
_INCOMPAT_64BIT = 0x80
_EXT4_INCOMPAT = 0x40 | 0x80 | 0x200 | 0x400  # extents, 64bit, flex_bg, ea_inode...
# huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum
_EXT4_RO_COMPAT = 0x8 | 0x10 | 0x20 | 0x40 | 0x400


def refuse(reason):
    """The one failure code the driver shows to the user as the resize's reason."""
    fail("SHRINK_REFUSED", reason)


def _mib(value):
    return "%d MiB" % (value // MiB) if value % MiB == 0 else "%.1f MiB" % (value / float(MiB))


def _mbr_entries(mbr):
    entries = []
    for number in range(1, 5):
        raw = mbr[446 + 16 * (number - 1) : 446 + 16 * number]
        ptype = raw[4]
        start, size = struct.unpack("<II", raw[8:16])
        if ptype or size:
            entries.append(
                {"number": number, "type": ptype, "start": start, "size": size, "bootable": raw[0] == 0x80}
            )
    return entries


def _type_name(ptype):
    return "0x%02x (%s)" % (ptype, TYPE_NAMES.get(ptype) or EXTENDED_TYPES.get(ptype) or "unknown")


def parse_superblock(raw):
    """The ext2/3/4 superblock fields a shrink needs, or None when ``raw`` is not one."""
    if len(raw) < 1024 or raw[56:58] != b"\x53\xef":
        return None
    (
        inodes,
        blocks_lo,
        _r,
        free_lo,
        free_inodes,
        _first,
        log_bs,
        _lc,
        blocks_per_group,
        _cpg,
        inodes_per_group,
    ) = struct.unpack("<11I", raw[0:44])
    rev = struct.unpack("<I", raw[76:80])[0]
    inode_size = struct.unpack("<H", raw[88:90])[0] if rev >= 1 else 128
    compat, incompat, ro_compat = struct.unpack("<III", raw[92:104])
    blocks, free = blocks_lo, free_lo
    if incompat & _INCOMPAT_64BIT:
        blocks |= struct.unpack("<I", raw[0x150:0x154])[0] << 32
        free |= struct.unpack("<I", raw[0x158:0x15C])[0] << 32
    if compat & _COMPAT_HAS_JOURNAL:
        kind = "ext4" if (incompat & _EXT4_INCOMPAT or ro_compat & _EXT4_RO_COMPAT) else "ext3"
    else:
        kind = "ext2"
    return {
        "kind": kind,
        "block_size": 1024 << log_bs if log_bs < 7 else 0,
        "blocks": blocks,
        "free_blocks": free,
        "inodes": inodes,
        "free_inodes": free_inodes,
        "blocks_per_group": blocks_per_group,
        "inodes_per_group": inodes_per_group,
        "inode_size": inode_size or 128,
        "external_journal": bool(incompat & _INCOMPAT_JOURNAL_DEV),
        "label": raw[120:136].split(b"\0", 1)[0].decode("utf-8", "replace"),
    }


def identify(head):
    """What the first 68 KiB of a partition (or disk) hold, as words for a message."""
    if parse_superblock(head[1024:2048]):
        return parse_superblock(head[1024:2048])["kind"]
    checks = (
        (0, b"XFSB", "xfs"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (3, b"NTFS    ", "ntfs"),
        (3, b"EXFAT   ", "exfat"),
        (0x52, b"FAT32   ", "vfat"),
        (0x36, b"FAT1", "vfat"),
        (4086, b"SWAPSPACE2", "Linux swap"),
        (4086, b"SWAP-SPACE", "Linux swap"),
        (512, b"LABELONE", "an LVM physical volume"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (0x8001, b"CD001", "an ISO 9660 file system"),
    )
    for offset, magic, name in checks:
        if head[offset : offset + len(magic)] == magic:
            return name
    if not any(bytearray(head)):
        return "no file system (its first sectors are empty)"
    return "no file system this driver recognises"


def inspect(reader, new_size):
    """Check that the disk behind ``reader`` can be shrunk to ``new_size`` bytes; the plan.

    Reads only: the MBR, the partition's first 68 KiB. Refuses (SHRINK_REFUSED)
    anything but one ext3/ext4 partition, and data that clearly cannot fit.
    """
    disk_size = reader.virtual_size
    if new_size >= disk_size:
        refuse(
            "the new root disk (%s) is not smaller than the current one (%s)"
            % (_mib(new_size), _mib(disk_size))
        )
    mbr = reader.read(0, SECTOR)
    if mbr[510:512] != b"\x55\xaa":
        found = identify(reader.read(0, 68 * 1024))
        refuse(
            "the root disk has no partition table (found %s on the whole disk); resize down "
            "needs an MBR with exactly one ext3/ext4 partition" % found
        )
    entries = _mbr_entries(mbr)
    for entry in entries:
        if entry["type"] == 0xEE:
            refuse(
                "the root disk has a GPT partition table; resize down supports MBR disks with "
                "exactly one ext3/ext4 partition"
            )
        if entry["type"] in EXTENDED_TYPES:
            refuse(
                "partition %d is an %s partition (logical partitions are not supported); resize "
                "down needs exactly one primary ext3/ext4 partition"
                % (entry["number"], EXTENDED_TYPES[entry["type"]])
            )
    if not entries:
        refuse("the root disk's partition table is empty")
    if len(entries) > 1:
        refuse(
            "the root disk has %d partitions (%s); resize down supports exactly one ext3/ext4 "
            "partition"
            % (len(entries), ", ".join("%d: %s" % (e["number"], _type_name(e["type"])) for e in entries))
        )
    part = entries[0]
    disk_sectors = disk_size // SECTOR
    if part["start"] < 1 or part["start"] + part["size"] > disk_sectors:
        refuse(
            "partition %d (sectors %d..%d) does not lie within the %d-sector disk"
            % (part["number"], part["start"], part["start"] + part["size"] - 1, disk_sectors)
        )
    found = identify(reader.read(part["start"] * SECTOR, 68 * 1024))
    if found not in ("ext3", "ext4"):
        refuse(
            "partition %d holds %s, not ext3/ext4; resize down can only shrink an ext3/ext4 "
            "file system" % (part["number"], "ext2 (no journal)" if found == "ext2" else found)
        )
    if part["type"] != LINUX_TYPE:
        refuse("partition %d has type %s, not 0x83 (Linux)" % (part["number"], _type_name(part["type"])))
    sb = parse_superblock(reader.read(part["start"] * SECTOR + 1024, 1024))
    if sb["external_journal"]:
        refuse("the ext file system on partition %d uses an external journal" % part["number"])
    bs = sb["block_size"]
    if not bs or not sb["blocks_per_group"] or not sb["inodes_per_group"]:
        refuse("the ext superblock of partition %d is damaged" % part["number"])
    new_sectors = new_size // SECTOR
    end = new_sectors // ALIGN_SECTORS * ALIGN_SECTORS or new_sectors
    per_block = bs // SECTOR
    if part["start"] + part["size"] <= end:
        new_part_size = part["size"]  # already within the new disk: kept as it is, never grown
    else:
        new_part_size = (end - part["start"]) // per_block * per_block if end > part["start"] else 0
    new_blocks = min(sb["blocks"], new_part_size // per_block)
    if new_blocks < 1024:
        refuse(
            "partition %d starts at %s: the new root disk of %s leaves no room for its file system"
            % (part["number"], _mib(part["start"] * SECTOR), _mib(new_size))
        )
    estimate = _estimated_min_blocks(sb, new_blocks)
    plan = {
        "disk_size": disk_size,
        "new_size": new_size,
        "partition": part,
        "new_partition_size": new_part_size,
        "fs": sb["kind"],
        "block_size": bs,
        "blocks": sb["blocks"],
        "new_blocks": new_blocks,
        "used_bytes": (sb["blocks"] - sb["free_blocks"]) * bs,
        "estimated_min_bytes": estimate * bs,
        "label": sb["label"],
    }
    if estimate > new_blocks:
        refuse(
            "the %s file system on partition %d needs about %s (data and metadata) but the new "
            "root disk leaves %s for it; choose a larger flavor or free space in the guest first"
            % (sb["kind"], part["number"], _mib(estimate * bs), _mib(new_blocks * bs))
        )
    used_inodes = sb["inodes"] - sb["free_inodes"]
    groups = -(-new_blocks // sb["blocks_per_group"])
    if used_inodes > groups * sb["inodes_per_group"]:
        refuse(
            "the %s file system on partition %d has %d files but a %s file system holds at most %d"
            % (
                sb["kind"],
                part["number"],
                used_inodes,
                _mib(new_blocks * bs),
                groups * sb["inodes_per_group"],
            )
        )
    return plan


def _estimated_min_blocks(sb, new_blocks):
    """Blocks in use minus the per-group metadata of the groups a shrink removes (an estimate).

    The superblock's free count of a file system that was not unmounted
    cleanly may lag: this only refuses the clear cases before the guest is
    powered off; resize2fs -P decides afterwards.
    """
    used = sb["blocks"] - sb["free_blocks"]
    bpg = sb["blocks_per_group"]
    removed = max(0, -(-sb["blocks"] // bpg) - -(-new_blocks // bpg))
    table = sb["inodes_per_group"] * sb["inode_size"] // sb["block_size"]
    return max(0, used - removed * (table + 2))


# ------------------------------------------------------------------ the shrink


def _tool(name):
    """e2fsprogs live in /sbin or /usr/sbin, which a plug-in's PATH may lack."""
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]:
        candidate = os.path.join(directory, name)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    fail("COMMAND_FAILED", name, "not installed", "resize down needs e2fsprogs (%s) in dom0" % name)


def _e2fs(argv):
    status, out, err = dom0_utils.run_command([_tool(argv[0])] + argv[1:], timeout=E2FS_TIMEOUT, check=False)
    return status, (out + "\n" + err).strip()


def _last_lines(text, count=4):
    lines = [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith(("e2fsck 1.", "resize2fs 1."))
    ]
    return " / ".join(lines[-count:])[-600:]


def _extract_partition(reader, part, path):
    """Copy the partition's bytes out of the chain into a sparse file (holes where the chain has none)."""
    start = part["start"] * SECTOR
    length = part["size"] * SECTOR
    block_size = dom0_vhd.BLOCK_SIZE
    with open(path, "wb") as out:
        out.truncate(length)
        first, last = start // block_size, (start + length - 1) // block_size
        for block in range(first, last + 1):
            data = dom0_vhd.read_block(reader, block)
            if data is None:
                continue
            lo = max(start, block * block_size)
            hi = min(start + length, (block + 1) * block_size)
            piece = data[lo - block * block_size : hi - block * block_size]
            if piece.count(0) != len(piece):
                out.seek(lo - start)
                out.write(piece)
        out.flush()
        os.fsync(out.fileno())


def _new_blocks(reader, plan, raw_path):
    """(index, 2 MiB) blocks of the new disk: head of the old disk + new MBR entry + shrunk fs."""
    part = plan["partition"]
    block_size = dom0_vhd.BLOCK_SIZE
    start = part["start"] * SECTOR
    fs_end = start + plan["new_partition_size"] * SECTOR
    entries = -(-plan["new_size"] // block_size)
    with open(raw_path, "rb") as raw:
        for block in range(entries):
            lo, hi = block * block_size, (block + 1) * block_size
            if lo >= fs_end:
                break
            data = bytearray(block_size)
            if lo < start:
                head = dom0_vhd.read_block(reader, block)
                if head is not None:
                    keep = min(start, hi) - lo
                    data[:keep] = head[:keep]
                if lo == 0:
                    _patch_mbr(data, part, plan["new_partition_size"])
            if hi > start:
                begin = max(lo, start)
                end = min(hi, fs_end)
                if _has_data(raw.fileno(), begin - start, end - start):
                    raw.seek(begin - start)
                    chunk = raw.read(end - begin)
                    data[begin - lo : begin - lo + len(chunk)] = chunk
            yield block, bytes(data)


def _has_data(fd, begin, end):
    """Whether the sparse file has data (not a hole) between ``begin`` and ``end``."""
    try:
        return os.lseek(fd, begin, os.SEEK_DATA) < end
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole up to the end of the file
            return False
        return True  # no SEEK_DATA here: read it


def _chs(lba):
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = divmod(rest, 63)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    return struct.pack("<BBB", head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF)


def _patch_mbr(first_block, part, new_size):
    """Partition ``part``'s entry in the MBR at the start of ``first_block`` gets ``new_size`` sectors."""
    offset = 446 + 16 * (part["number"] - 1)
    entry = first_block[offset : offset + 16]
    entry[5:8] = _chs(part["start"] + new_size - 1)
    entry[12:16] = struct.pack("<I", new_size)
    first_block[offset : offset + 16] = entry


def shrink_to_vhd(reader, new_size, workdir, target, log):
    """Build the shrunk disk as a dynamic VHD at ``target`` (in ``workdir``); returns the plan.

    ``workdir`` must exist and be empty; the caller removes it. Refusals are
    SHRINK_REFUSED failures; nothing outside ``workdir`` is written.
    """
    plan = inspect(reader, new_size)
    part = plan["partition"]
    raw_path = os.path.join(workdir, "partition.raw")
    log.info(
        "resize down: copying partition %d (%s, %d sectors) out of the chain",
        part["number"],
        plan["fs"],
        part["size"],
    )
    _extract_partition(reader, part, raw_path)
    status, text = _e2fs(["e2fsck", "-f", "-y", raw_path])
    log.info("e2fsck -f -y: exit %d: %s", status, _last_lines(text))
    if status >= 4:
        if "unsupported feature" in text or "newer version of e2fsck" in text:
            refuse(
                "dom0's e2fsprogs are too old for the features of the %s file system on partition %d: %s"
                % (plan["fs"], part["number"], _last_lines(text))
            )
        refuse(
            "e2fsck could not repair the %s file system on partition %d (exit %d): %s"
            % (plan["fs"], part["number"], status, _last_lines(text))
        )
    status, text = _e2fs(["resize2fs", "-P", raw_path])
    match = re.search(r"minimum size of the filesystem: *([0-9]+)", text)
    if status != 0 or not match:
        refuse(
            "resize2fs could not estimate the minimum size of the %s file system: %s"
            % (plan["fs"], _last_lines(text))
        )
    minimum = int(match.group(1))
    plan["min_bytes"] = minimum * plan["block_size"]
    if minimum > plan["new_blocks"]:
        refuse(
            "the %s file system on partition %d needs at least %s (resize2fs -P) but the new root "
            "disk leaves %s for it; choose a larger flavor or free space in the guest first"
            % (
                plan["fs"],
                part["number"],
                _mib(plan["min_bytes"]),
                _mib(plan["new_blocks"] * plan["block_size"]),
            )
        )
    if plan["new_blocks"] < plan["blocks"]:
        status, text = _e2fs(["resize2fs", raw_path, str(plan["new_blocks"])])
        log.info("resize2fs to %d blocks: exit %d: %s", plan["new_blocks"], status, _last_lines(text))
        if status != 0:
            refuse(
                "resize2fs could not shrink the %s file system to %s: %s"
                % (plan["fs"], _mib(plan["new_blocks"] * plan["block_size"]), _last_lines(text))
            )
    else:
        log.info("the file system already fits the new disk: not resized")
    status, text = _e2fs(["e2fsck", "-f", "-n", raw_path])
    if status != 0:
        fail(
            "SHRINK_FAILED",
            "the shrunk file system is not clean (e2fsck -f -n exit %d): %s" % (status, _last_lines(text)),
        )
    with open(raw_path, "rb") as handle:
        handle.seek(1024)
        sb = parse_superblock(handle.read(1024))
    if sb is None or sb["blocks"] != plan["new_blocks"]:
        fail(
            "SHRINK_FAILED",
            "the shrunk file system does not have the expected %d blocks" % plan["new_blocks"],
        )
    allocated = dom0_vhd.write_dynamic(target, new_size, _new_blocks(reader, plan, raw_path))
    dom0_vhd.vhd_util("check", "-n", target)
    plan["allocated_blocks"] = allocated
    log.info(
        "resize down: %s written (%d MiB virtual, %d blocks allocated)",
        os.path.basename(target),
        new_size // MiB,
        allocated,
    )
    return plan


def to_json(plan):
    return json.dumps(plan, sort_keys=True)
