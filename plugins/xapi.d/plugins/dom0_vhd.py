"""VHD chains in dom0: reading metadata and data, importing chains into an SR.

Python 3.6, standard library only. Metadata checks are done here (so a bad
chain is refused before anything changes); every change to an existing VHD
file goes through dom0's ``vhd-util`` as XenServer's storage manager does.
``write_dynamic`` writes a new, standalone dynamic VHD (a resize down's
shrunk root disk); its caller checks the result with ``vhd-util check``.
"""

import os
import re
import shutil
import struct
import time
import uuid as uuidlib

import dom0_utils
from dom0_utils import fail

SECTOR = 512
_SEQ_RE = re.compile(r"^(0|[1-9][0-9]{0,4})\.vhd$")
_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}


def _uuid_text(raw):
    h = raw.hex() if hasattr(raw, "hex") else raw.encode("hex")
    return "%s-%s-%s-%s-%s" % (h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])


class VHDMeta(object):
    """The parts of a VHD footer and dynamic header the plug-ins need."""

    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        if size < SECTOR:
            raise ValueError("%s is too small to be a VHD (%d bytes)" % (os.path.basename(path), size))
        with open(path, "rb") as handle:
            handle.seek(size - SECTOR)
            footer = handle.read(SECTOR)
            if footer[:8] != b"conectix":
                handle.seek(0)
                footer = handle.read(SECTOR)
                if footer[:8] != b"conectix":
                    raise ValueError("%s has no VHD footer" % os.path.basename(path))
            self.data_offset = struct.unpack(">Q", footer[16:24])[0]
            self.virtual_size = struct.unpack(">Q", footer[48:56])[0]
            disk_type = struct.unpack(">I", footer[60:64])[0]
            if disk_type not in _TYPES:
                raise ValueError("%s has unknown disk type %d" % (os.path.basename(path), disk_type))
            self.disk_type = _TYPES[disk_type]
            self.uuid = _uuid_text(footer[68:84])
            self.hidden = bool(footer[85])
            self.parent_uuid = None
            self.parent_name = None
            self.block_size = 0
            self.table_offset = 0
            self.max_entries = 0
            if self.disk_type != "fixed":
                handle.seek(self.data_offset)
                header = handle.read(1024)
                if header[:8] != b"cxsparse":
                    raise ValueError("%s has no dynamic disk header" % os.path.basename(path))
                self.table_offset = struct.unpack(">Q", header[16:24])[0]
                self.max_entries = struct.unpack(">I", header[28:32])[0]
                self.block_size = struct.unpack(">I", header[32:36])[0]
                if self.disk_type == "differencing":
                    self.parent_uuid = _uuid_text(header[40:56])
                    name = header[64:576].decode("utf-16-be", "replace")
                    self.parent_name = name.split("\x00", 1)[0]


def meta(path, label=None):
    try:
        return VHDMeta(path)
    except (ValueError, IOError, OSError) as exc:
        fail("VHD_CHAIN_INVALID", "%s is not a readable VHD: %s" % (label or os.path.basename(path), exc))


def _checksum(raw, start):
    """VHD checksum: one's complement of the byte sum with the 4-byte field at ``start`` zeroed."""
    total = sum(bytearray(raw[:start])) + sum(bytearray(raw[start + 4 :]))
    return ~total & 0xFFFFFFFF


def _footer_sound(footer):
    """The footer's checksum holds (also blktap's old habit: hidden byte set, checksum not updated)."""
    stored = struct.unpack(">I", footer[64:68])[0]
    if _checksum(footer, 64) == stored:
        return True
    return footer[85:86] == b"\x01" and _checksum(footer[:85] + b"\x00" + footer[86:], 64) == stored


def identity(path):
    """What says a VHD is the very same file on two hosts, if it is sound and immutable.

    Returns ``{"unique_id", "virtual_size", "physical_size", "hidden",
    "disk_type", "parent_unique_id", "parent_name"}``; raises ValueError
    with the reason when the file is damaged: trailing footer missing or its
    checksum wrong, leading copy differing from it, dynamic header checksum
    wrong, or a block table entry pointing outside the file. Reads metadata
    only (footer, header, block table), never changes the file.
    """
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size < SECTOR:
        raise ValueError("%s is too small to be a VHD" % name)
    with open(path, "rb") as handle:
        handle.seek(size - SECTOR)
        footer = handle.read(SECTOR)
        if footer[:8] != b"conectix":
            raise ValueError("%s has no footer at its end" % name)
        if not _footer_sound(footer):
            raise ValueError("%s: footer checksum mismatch" % name)
        disk_type = struct.unpack(">I", footer[60:64])[0]
        if disk_type not in _TYPES:
            raise ValueError("%s has unknown disk type %d" % (name, disk_type))
        if footer[68:84] == b"\x00" * 16:
            raise ValueError("%s has a null unique id" % name)
        result = {
            "unique_id": _uuid_text(footer[68:84]),
            "virtual_size": struct.unpack(">Q", footer[48:56])[0],
            "physical_size": size,
            "hidden": footer[85:86] == b"\x01",
            "disk_type": _TYPES[disk_type],
            "parent_unique_id": None,
            "parent_name": None,
        }
        if disk_type == 2:
            return result
        handle.seek(0)
        if handle.read(SECTOR) != footer:
            raise ValueError("%s: the footer copy at offset 0 differs from the footer" % name)
        data_offset = struct.unpack(">Q", footer[16:24])[0]
        if data_offset + 1024 > size - SECTOR:
            raise ValueError("%s: dynamic header offset %d is outside the file" % (name, data_offset))
        handle.seek(data_offset)
        header = handle.read(1024)
        if header[:8] != b"cxsparse":
            raise ValueError("%s has no dynamic disk header" % name)
        if _checksum(header, 36) != struct.unpack(">I", header[36:40])[0]:
            raise ValueError("%s: dynamic header checksum mismatch" % name)
        table_offset = struct.unpack(">Q", header[16:24])[0]
        entries = struct.unpack(">I", header[28:32])[0]
        block_size = struct.unpack(">I", header[32:36])[0]
        if block_size < SECTOR or block_size % SECTOR or table_offset + 4 * entries > size - SECTOR:
            raise ValueError("%s: block table or block size out of range" % name)
        handle.seek(table_offset)
        bat = struct.unpack(">%dI" % entries, handle.read(4 * entries))
        bitmap = ((block_size // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
        limit = size - SECTOR - bitmap - block_size
        for entry in bat:
            if entry != 0xFFFFFFFF and entry * SECTOR > limit:
                raise ValueError("%s: a block table entry points outside the file" % name)
        if disk_type == 4:
            result["parent_unique_id"] = _uuid_text(header[40:56])
            result["parent_name"] = header[64:576].decode("utf-16-be", "replace").split("\x00", 1)[0]
    return result


class ChainReader(object):
    """Read virtual-disk bytes through a VHD chain (or a raw file)."""

    def __init__(self, path):
        self.levels = []
        self._handles = []
        seen = set()
        current = path
        while current is not None:
            info = VHDMeta(current)
            if info.uuid in seen or len(self.levels) > 64:
                raise ValueError("VHD chain loops at %s" % current)
            seen.add(info.uuid)
            handle = open(current, "rb")
            self._handles.append(handle)
            bat = None
            if info.disk_type != "fixed":
                handle.seek(info.table_offset)
                raw = handle.read(4 * info.max_entries)
                bat = struct.unpack(">%dI" % info.max_entries, raw)
            self.levels.append((info, handle, bat))
            if info.disk_type == "differencing":
                parent = os.path.join(os.path.dirname(current), os.path.basename(info.parent_name or ""))
                if not info.parent_name or not os.path.isfile(parent):
                    raise ValueError("parent %r of %s is missing" % (info.parent_name, current))
                if VHDMeta(parent).uuid != info.parent_uuid:
                    raise ValueError("parent %s of %s has the wrong UUID" % (parent, current))
                current = parent
            else:
                current = None
        self.virtual_size = self.levels[0][0].virtual_size

    def close(self):
        for handle in self._handles:
            handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _sector(self, level, sector):
        """The 512 bytes of ``sector`` as seen from chain level ``level``."""
        info, handle, bat = self.levels[level]
        if info.disk_type == "fixed":
            handle.seek(sector * SECTOR)
            return handle.read(SECTOR).ljust(SECTOR, b"\0")
        per_block = info.block_size // SECTOR
        block, index = divmod(sector, per_block)
        entry = bat[block] if block < len(bat) else 0xFFFFFFFF
        if entry != 0xFFFFFFFF:
            bitmap_bytes = ((per_block + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
            present = True
            if info.disk_type == "differencing":
                handle.seek(entry * SECTOR + index // 8)
                present = bool(ord(handle.read(1)) & (0x80 >> (index % 8)))
            if present:
                handle.seek(entry * SECTOR + bitmap_bytes + index * SECTOR)
                return handle.read(SECTOR).ljust(SECTOR, b"\0")
        if info.disk_type == "differencing" and level + 1 < len(self.levels):
            return self._sector(level + 1, sector)
        return b"\0" * SECTOR

    def read(self, offset, length):
        end = min(offset + length, self.virtual_size)
        out = bytearray()
        position = offset
        while position < end:
            sector, skip = divmod(position, SECTOR)
            data = self._sector(0, sector)[skip:]
            take = min(len(data), end - position)
            out += data[:take]
            position += take
        return bytes(out)


def vhd_util(*args):
    return dom0_utils.run_command(["vhd-util"] + [str(a) for a in args])[1]


def _chain_tool(names, *args):
    """vhd-util on the staged chain: its failures mean the received chain is bad."""
    status, out, err = dom0_utils.run_command(["vhd-util"] + [str(a) for a in args], check=False)
    if status != 0:
        message = (err or out).strip()
        for path, label in names:
            message = message.replace(path, label)
        fail("VHD_CHAIN_INVALID", "vhd-util %s failed: %s" % (args[0], message[-1000:]))
    return out


def collect_sequence(staging):
    """The ``<n>.vhd`` files of a staging directory as a list indexed by n; refuses gaps/strays."""
    found = {}
    for name in sorted(os.listdir(staging)):
        if name.startswith(".") and name.endswith(".tmp"):
            continue
        match = _SEQ_RE.match(name)
        path = os.path.join(staging, name)
        if not match:
            fail("VHD_CHAIN_INVALID", "unexpected file %r in the staging area (only <n>.vhd allowed)" % name)
        if os.path.islink(path) or not os.path.isfile(path):
            fail("VHD_CHAIN_INVALID", "%s is not a regular file" % name)
        found[int(match.group(1))] = path
    if not found:
        fail("VHD_CHAIN_INVALID", "no VHD files were received")
    missing = [str(n) for n in range(max(found) + 1) if n not in found]
    if missing:
        fail(
            "VHD_CHAIN_INVALID", "the sequence has gaps: missing %s" % ", ".join(m + ".vhd" for m in missing)
        )
    return [found[n] for n in range(len(found))]


def _place(source, target):
    """Move ``source`` to ``target`` (same file system: rename; else copy then rename)."""
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV
            raise
    partial = os.path.join(os.path.dirname(target), "." + os.path.basename(target) + ".tmp")
    try:
        shutil.copy2(source, partial)
        os.rename(partial, target)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)


def held_base(sr_dir, sr_path, base_uuid, physical_size=None):
    """The path and identity of ``<base_uuid>.vhd``, a VHD of the SR a received chain may sit on.

    It must be a regular file, sound (:func:`identity`) and hidden (an
    immutable base copy, never a leaf someone may write); ``physical_size``,
    when given, must still be its size (what the source was told it held).
    """
    path = os.path.join(sr_dir, base_uuid + ".vhd")
    label = "%s/%s.vhd" % (sr_path, base_uuid)
    if os.path.islink(path) or not os.path.isfile(path):
        fail("NOT_FOUND", "held base VHD", label)
    try:
        found = identity(path)
    except (ValueError, IOError, OSError) as exc:
        fail("VHD_CHAIN_INVALID", "the held base %s is not intact: %s" % (label, exc))
    if not found["hidden"]:
        fail("VHD_CHAIN_INVALID", "the held base %s is not a hidden base copy" % label)
    if physical_size is not None and found["physical_size"] != physical_size:
        fail(
            "VHD_CHAIN_INVALID",
            "the held base %s changed: %d bytes, the source was told %d"
            % (label, found["physical_size"], physical_size),
        )
    return path, found


def ancestry(path, info):
    """``[path, its parent's path, ...]`` down to the base; each parent present with the right id."""
    paths = [path]
    while info["parent_unique_id"] is not None:
        parent = os.path.join(os.path.dirname(path), os.path.basename(info["parent_name"] or ""))
        if len(paths) > 64 or not info["parent_name"] or not os.path.isfile(parent):
            fail("VHD_CHAIN_INVALID", "the parent %r of %s is missing" % (info["parent_name"], paths[-1]))
        expected = info["parent_unique_id"]
        try:
            info = identity(parent)
        except (ValueError, IOError, OSError) as exc:
            fail("VHD_CHAIN_INVALID", "the parent %s is not intact: %s" % (os.path.basename(parent), exc))
        if info["unique_id"] != expected:
            fail("VHD_CHAIN_INVALID", "%s is not the parent its child names" % os.path.basename(parent))
        paths.append(parent)
        path = parent
    return paths


def import_chain(staging, sr_path, new_uuids=None, log=None, base_uuid=None, base_physical_size=None):
    """Import the ``0.vhd`` (leaf) .. ``n.vhd`` (base) chain in ``staging`` into an SR.

    ``staging`` is a real (root-mapped) directory; ``sr_path`` the dom0 SR path.
    Each file gets a fresh UUID (``new_uuids`` leaf first, generated when
    None); children are re-linked to their parents with ``vhd-util modify -p``,
    the chain is checked with ``vhd-util check -p``, then moved into the SR.
    With ``base_uuid`` the received chain is incomplete on purpose: ``n.vhd``'s
    parent is the SR's ``<base_uuid>.vhd`` (a parent this host already held,
    see :func:`held_base`), which is only read: never moved, renamed or written.
    On any failure the SR is left as it was. Returns the new UUIDs, leaf first.
    """
    sr_dir = dom0_utils.dom0_path(sr_path)
    if not os.path.isdir(sr_dir):
        fail("NOT_FOUND", "SR directory", sr_path)
    base = None
    if base_uuid is not None:
        base = held_base(sr_dir, sr_path, base_uuid, base_physical_size)
    files = collect_sequence(staging)
    count = len(files)
    if new_uuids is None:
        new_uuids = [dom0_utils.new_uuid() for _ in files]
    elif len(new_uuids) != count:
        fail(
            "VHD_CHAIN_INVALID",
            "received %d VHD files but %d new UUIDs were given" % (count, len(new_uuids)),
        )
    infos = [meta(path, "%d.vhd" % n) for n, path in enumerate(files)]
    for n, info in enumerate(infos):
        if n + 1 < count:
            if info.disk_type != "differencing":
                fail(
                    "VHD_CHAIN_INVALID",
                    "%d.vhd is a %s disk but %d.vhd follows it" % (n, info.disk_type, n + 1),
                )
            if info.parent_uuid != infos[n + 1].uuid:
                fail(
                    "VHD_CHAIN_INVALID",
                    "%d.vhd's parent is %s, not %d.vhd (%s)"
                    % (n, info.parent_uuid, n + 1, infos[n + 1].uuid),
                )
        elif base is not None:
            if info.disk_type != "differencing" or info.parent_uuid != base[1]["unique_id"]:
                fail(
                    "VHD_CHAIN_INVALID",
                    "%d.vhd's parent is %s, not the held base %s (%s)"
                    % (n, info.parent_uuid, base_uuid, base[1]["unique_id"]),
                )
        elif info.disk_type == "differencing":
            fail("VHD_CHAIN_INVALID", "the chain is incomplete: its base %d.vhd has a parent" % n)
    staged_names = [(path, "%d.vhd" % n) for n, path in enumerate(files)]
    if "hidden: 1" in _chain_tool(staged_names, "query", "-n", files[0], "-f"):
        fail("VHD_CHAIN_INVALID", "the leaf 0.vhd is hidden: refusing to import a base copy as a disk")
    for vdi_uuid in new_uuids:
        for ext in (".vhd", ".raw"):
            if os.path.lexists(os.path.join(sr_dir, vdi_uuid + ext)):
                fail("ALREADY_EXISTS", "%s/%s%s" % (sr_path, vdi_uuid, ext))
    work = os.path.join(staging, ".import")
    dom0_utils.remove_tree(work)
    os.mkdir(work)
    moved = []
    try:
        named = []
        for index, path in enumerate(files):
            target = os.path.join(work, new_uuids[index] + ".vhd")
            os.link(path, target)
            named.append(target)
        labels = [(named[n], "%d.vhd" % n) for n in range(count)] + [(work + "/", "")]
        for n in range(1, count):
            if not infos[n].hidden:
                _chain_tool(labels, "set", "-n", named[n], "-f", "hidden", "-v", "1")
        if base is not None:
            # Symbolic links beside the received files to the held base and its own parents:
            # blktap's parent locators are relative (same directory), and the links let vhd-util
            # read the held files where they are. First, as each re-link records its parent's
            # modification time.
            for held in ancestry(*base):
                os.symlink(held, os.path.join(work, os.path.basename(held)))
            link = os.path.join(work, base_uuid + ".vhd")
            _chain_tool(labels, "modify", "-n", named[count - 1], "-p", link)
        for n in range(count - 2, -1, -1):
            _chain_tool(labels, "modify", "-n", named[n], "-p", named[n + 1])
        _chain_tool(labels, "check", "-n", named[0], "-p")
        for path in reversed(named):
            target = os.path.join(sr_dir, os.path.basename(path))
            _place(path, target)
            moved.append(target)
        if log:
            log.info("imported chain %s into %s", new_uuids, sr_path)
    except BaseException:
        for target in moved:
            try:
                os.unlink(target)
            except OSError:
                pass
        raise
    finally:
        dom0_utils.remove_tree(work)
    return new_uuids


# ---------------------------------------------------------------- block reads and writes
# (resize down: read a chain a block at a time, write a new sparse dynamic VHD)

BLOCK_SIZE = 2 * 1024 * 1024
_UNUSED = 0xFFFFFFFF
_ZERO_BLOCK = b"\0" * BLOCK_SIZE


def _bitmap_bytes(block_size):
    return ((block_size // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR


def read_block(reader, block):
    """``ChainReader``: the virtual bytes of 2 MiB block ``block``, or None when no level holds any.

    Reads whole blocks (one seek per level) instead of ChainReader.read's
    sector at a time: a resize down reads every allocated block of a disk.
    A sector comes from the first level (leaf first) whose block is allocated
    and, for a differencing level, whose bitmap bit is set.
    """
    per_block = BLOCK_SIZE // SECTOR
    need = bytearray(b"\xff" * (per_block // 8))  # sectors still to find (VHD bit order)
    out = None
    for info, handle, bat in reader.levels:
        if info.disk_type == "fixed":
            handle.seek(block * BLOCK_SIZE)
            data = handle.read(BLOCK_SIZE).ljust(BLOCK_SIZE, b"\0")
            out = _merge(out, data, need, None)
            break
        if info.block_size != BLOCK_SIZE:
            raise ValueError("%s has %d-byte blocks, not 2 MiB" % (info.path, info.block_size))
        entry = bat[block] if block < len(bat) else _UNUSED
        if entry == _UNUSED:
            if info.disk_type == "differencing":
                continue
            break  # a dynamic base: the rest reads as zeros
        bitmap_size = _bitmap_bytes(BLOCK_SIZE)
        handle.seek(entry * SECTOR)
        raw = handle.read(bitmap_size + BLOCK_SIZE)
        data = raw[bitmap_size:].ljust(BLOCK_SIZE, b"\0")
        present = raw[: per_block // 8] if info.disk_type == "differencing" else None
        out = _merge(out, data, need, present)
        if info.disk_type != "differencing" or not any(need):
            break
    return None if out is None else bytes(out)


def _merge(out, data, need, present):
    """Copy into ``out`` the sectors of ``data`` still needed and present; update ``need``."""
    if present is None and all(b == 0xFF for b in need):
        for index in range(len(need)):
            need[index] = 0
        return bytearray(data)
    for index, wanted in enumerate(need):
        take = wanted & (0xFF if present is None else present[index])
        if not take:
            continue
        if out is None:
            out = bytearray(BLOCK_SIZE)
        base = index * 8 * SECTOR
        if take == 0xFF:
            out[base : base + 8 * SECTOR] = data[base : base + 8 * SECTOR]
        else:
            for bit in range(8):
                if take & (0x80 >> bit):
                    lo = base + bit * SECTOR
                    out[lo : lo + SECTOR] = data[lo : lo + SECTOR]
        need[index] = wanted & ~take & 0xFF
    return out


def _vhd_now():
    return max(0, int(time.time()) - 946684800)  # seconds since 2000-01-01 UTC


def _chs(size):
    """CHS geometry of a ``size``-byte disk, the VHD specification's algorithm."""
    total = min(size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def _footer(size, unique_id, timestamp):
    cyl, heads, spt = _chs(size)
    fields = [
        b"conectix", 2, 0x00010000, 512, timestamp, b"tap\0",
        0x00010001,  # creator version below 1.2: blktap then expects no batmap
        b"\0\0\0\0", size, size, cyl, heads, spt, 3, 0, unique_id, 0, 0, b"\0" * 426,
    ]  # fmt: skip
    layout = ">8sIIQI4sI4sQQHBBII16sBB426s"
    fields[14] = _checksum(struct.pack(layout, *fields), 64)
    return struct.pack(layout, *fields)


def _dynamic_header(table_offset, entries):
    layout = ">8sQQIIII16sII512s"
    fields = [b"cxsparse", 0xFFFFFFFFFFFFFFFF, table_offset, 0x00010000, entries, BLOCK_SIZE, 0,
              b"\0" * 16, 0, 0, b"\0" * 512]  # fmt: skip
    raw = struct.pack(layout, *fields) + b"\0" * (8 * 24 + 256)
    fields[6] = _checksum(raw, 36)
    return struct.pack(layout, *fields) + b"\0" * (8 * 24 + 256)


def write_dynamic(path, virtual_size, blocks):
    """Write a new dynamic VHD of ``virtual_size`` bytes at ``path`` (which must not exist).

    ``blocks`` yields ``(index, data)`` with 2 MiB ``data``, in any order;
    all-zero blocks are left unallocated, so the file holds only the data.
    Block data is 4 KiB aligned (its bitmap sector just before). Returns the
    number of allocated blocks.
    """
    if virtual_size <= 0 or virtual_size % SECTOR:
        raise ValueError("virtual size %d is not a positive multiple of 512" % virtual_size)
    entries = -(-virtual_size // BLOCK_SIZE)
    table_offset = 512 + 1024
    table_size = (4 * entries + SECTOR - 1) // SECTOR * SECTOR
    bat = [_UNUSED] * entries
    bitmap = b"\xff" * _bitmap_bytes(BLOCK_SIZE)
    footer = _footer(virtual_size, uuidlib.uuid4().bytes, _vhd_now())
    next_free = table_offset + table_size
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for index, data in blocks:
            if not 0 <= index < entries or bat[index] != _UNUSED:
                raise ValueError("block %d is out of range or written twice" % index)
            if len(data) != BLOCK_SIZE:
                raise ValueError("block %d has %d bytes, not 2 MiB" % (index, len(data)))
            if data == _ZERO_BLOCK:
                continue
            offset = (next_free + len(bitmap) + 4095) // 4096 * 4096 - len(bitmap)
            os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, bitmap + data)
            bat[index] = offset // SECTOR
            next_free = offset + len(bitmap) + BLOCK_SIZE
        table = struct.pack(">%dI" % entries, *bat).ljust(table_size, b"\xff")
        for offset, raw in ((0, footer), (512, _dynamic_header(table_offset, entries)),
                            (table_offset, table), (next_free, footer)):  # fmt: skip
            os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, raw)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return sum(1 for entry in bat if entry != _UNUSED)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
