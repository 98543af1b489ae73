"""On-disk structures of the VHD format as blktap writes them.

Only encoding and decoding lives here (no file I/O), so the parser can be
fuzzed and reused by the stream code.  All integers are big-endian.
"""

from __future__ import annotations

import struct
import time
import uuid as _uuid
from dataclasses import dataclass, field, replace

from .errors import VHDFormatError

SECTOR_SIZE = 512
SECTOR_SHIFT = 9
BLOCK_SIZE = 2 * 1024 * 1024
SECTORS_PER_BLOCK = BLOCK_SIZE // SECTOR_SIZE
BITMAP_SIZE = 512  # one sector holds the 4096-bit bitmap of a 2 MiB block
MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_VIRTUAL_SIZE = 2040 * GiB

FOOTER_SIZE = 512
HEADER_SIZE = 1024
FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FEATURES_RESERVED = 0x2
FEATURES_TEMPORARY = 0x1
FILE_FORMAT_VERSION = 0x00010000
HEADER_VERSION = 0x00010000
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
UNUSED = 0xFFFFFFFF  # BAT entry of an unallocated block

CREATOR_APP = b"tap\0"
# blktap assumes a batmap once a "tap" creator version reaches 1.2; we write none.
CREATOR_VERSION = 0x00010001
CREATOR_OS = b"\0\0\0\0"

TYPE_FIXED = 2
TYPE_DYNAMIC = 3
TYPE_DIFFERENCING = 4
TYPE_NAMES = {TYPE_FIXED: "fixed", TYPE_DYNAMIC: "dynamic", TYPE_DIFFERENCING: "differencing"}

PLAT_NONE = 0
PLAT_WI2R = 0x57693272
PLAT_WI2K = 0x5769326B
PLAT_W2RU = 0x57327275
PLAT_W2KU = 0x57326B75
PLAT_MAC = 0x4D616320
PLAT_MACX = 0x4D616358
KNOWN_PLATFORMS = {PLAT_NONE, PLAT_WI2R, PLAT_WI2K, PLAT_W2RU, PLAT_W2KU, PLAT_MAC, PLAT_MACX}

VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z as a Unix time
HIDDEN_OFFSET = 85

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sBB426s")
_HEADER = struct.Struct(">8sQQIIII16sII512s")
_LOCATOR = struct.Struct(">IIIIQ")
assert _FOOTER.size == FOOTER_SIZE
assert _HEADER.size + 8 * _LOCATOR.size + 256 == HEADER_SIZE

# Bit order: the MSB of bitmap byte 0 is sector 0.  Reversing the bits of each
# byte and reading little-endian gives an int whose bit N is sector N.
_REVERSE_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
FULL_BITMAP = (1 << SECTORS_PER_BLOCK) - 1


def bitmap_to_int(raw: bytes) -> int:
    """Decode a 512-byte sector bitmap into an int (bit N = sector N)."""
    return int.from_bytes(raw.translate(_REVERSE_BITS), "little")


def int_to_bitmap(bits: int, size: int = BITMAP_SIZE) -> bytes:
    """Encode an int (bit N = sector N) as an on-disk sector bitmap."""
    return bits.to_bytes(size, "little").translate(_REVERSE_BITS)


def bit_runs(bits: int):
    """Yield (start, end) of each run of set bits, lowest first (no per-bit loop)."""
    while bits:
        low = bits & -bits
        start = low.bit_length() - 1
        carried = bits + low
        end = (carried & -carried).bit_length() - 1
        yield start, end
        bits &= carried


def checksum(data: bytes) -> int:
    """One's complement of the byte sum (the checksum field must already be zero)."""
    return ~sum(data) & 0xFFFFFFFF


def vhd_now() -> int:
    """Current time in VHD seconds (since 2000-01-01 UTC); floored so never in the future."""
    return max(0, int(time.time()) - VHD_EPOCH)


def vhd_time(unix_time: float) -> int:
    """Convert a Unix time (e.g. a file's mtime) to VHD seconds, clamped to [0, now]."""
    return min(max(0, int(unix_time) - VHD_EPOCH), vhd_now())


def chs_geometry(size: int) -> tuple[int, int, int]:
    """CHS geometry for a disk of ``size`` bytes, per the VHD specification's algorithm."""
    total = size // SECTOR_SIZE
    if total > 65535 * 16 * 255:
        total = 65535 * 16 * 255
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


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def normalize_size(virtual_size: int) -> int:
    """Round a requested size up to whole 2 MiB blocks and enforce blktap's limits."""
    if not isinstance(virtual_size, int) or isinstance(virtual_size, bool):
        raise VHDFormatError(f"virtual size must be an integer number of bytes, got {virtual_size!r}")
    if virtual_size <= 0:
        raise VHDFormatError(f"virtual size must be positive, got {virtual_size}")
    size = round_up(virtual_size, BLOCK_SIZE)
    if size > MAX_VIRTUAL_SIZE:
        raise VHDFormatError(f"virtual size {virtual_size} bytes exceeds the VHD maximum of 2040 GiB")
    return size


@dataclass
class Footer:
    """The 512-byte VHD footer (also copied at offset 0 of dynamic disks)."""

    disk_type: int
    current_size: int
    original_size: int
    uuid: bytes
    data_offset: int = NO_DATA_OFFSET
    timestamp: int = field(default_factory=vhd_now)
    features: int = FEATURES_RESERVED
    version: int = FILE_FORMAT_VERSION
    creator_app: bytes = CREATOR_APP
    creator_version: int = CREATOR_VERSION
    creator_os: bytes = CREATOR_OS
    geometry: tuple[int, int, int] = (0, 0, 0)
    saved_state: int = 0
    hidden: int = 0
    checksum: int = 0
    reserved: bytes = b"\0" * 426

    def pack(self) -> bytes:
        """Encode with a freshly computed checksum (also stored back in ``self.checksum``)."""
        cyl, heads, spt = self.geometry
        fields = [
            FOOTER_COOKIE,
            self.features,
            self.version,
            self.data_offset,
            self.timestamp,
            self.creator_app,
            self.creator_version,
            self.creator_os,
            self.original_size,
            self.current_size,
            cyl,
            heads,
            spt,
            self.disk_type,
            0,
            self.uuid,
            self.saved_state,
            self.hidden,
            self.reserved,
        ]
        raw = _FOOTER.pack(*fields)
        self.checksum = checksum(raw)
        fields[14] = self.checksum
        return _FOOTER.pack(*fields)

    @classmethod
    def unpack(cls, raw: bytes, *, what: str = "footer") -> Footer:
        """Decode and validate cookie and checksum; raises VHDFormatError with details."""
        if len(raw) != FOOTER_SIZE:
            raise VHDFormatError(f"{what} is truncated: {len(raw)} of {FOOTER_SIZE} bytes")
        (cookie, features, version, data_offset, timestamp, app, app_ver, app_os, orig, cur, cyl, heads,
         spt, dtype, csum, uid, saved, hidden, reserved) = _FOOTER.unpack(raw)  # fmt: skip
        if cookie != FOOTER_COOKIE:
            raise VHDFormatError(f"{what} has a wrong cookie {cookie!r} (expected {FOOTER_COOKIE!r})")
        zeroed = raw[:64] + b"\0\0\0\0" + raw[68:]
        computed = checksum(zeroed)
        if computed != csum:
            # Old tapdisks set the hidden byte without updating the checksum.
            legacy = zeroed[:HIDDEN_OFFSET] + b"\0" + zeroed[HIDDEN_OFFSET + 1 :]
            if not (hidden and app[:3] == b"tap" and checksum(legacy) == csum):
                raise VHDFormatError(
                    f"{what} checksum mismatch (stored 0x{csum:08x}, computed 0x{computed:08x})"
                )
        return cls(
            disk_type=dtype,
            current_size=cur,
            original_size=orig,
            uuid=uid,
            data_offset=data_offset,
            timestamp=timestamp,
            features=features,
            version=version,
            creator_app=app,
            creator_version=app_ver,
            creator_os=app_os,
            geometry=(cyl, heads, spt),
            saved_state=saved,
            hidden=hidden,
            checksum=csum,
            reserved=reserved,
        )

    def validate(self, *, what: str = "footer") -> None:
        """Semantic checks shared by open and check."""
        if not self.features & FEATURES_RESERVED:
            raise VHDFormatError(f"{what}: 'features' lacks the required reserved bit (0x2)")
        if self.version != FILE_FORMAT_VERSION:
            raise VHDFormatError(f"{what}: unsupported file format version 0x{self.version:08x}")
        if self.disk_type not in TYPE_NAMES:
            raise VHDFormatError(f"{what}: unsupported disk type {self.disk_type}")
        if self.disk_type == TYPE_FIXED and self.data_offset != NO_DATA_OFFSET:
            raise VHDFormatError(f"{what}: fixed disk with a data offset")
        if self.current_size % SECTOR_SIZE:
            raise VHDFormatError(f"{what}: current size {self.current_size} is not a multiple of 512")
        if self.hidden not in (0, 1):
            raise VHDFormatError(f"{what}: invalid hidden byte {self.hidden}")

    def copy(self, **changes) -> Footer:
        return replace(self, **changes)

    @property
    def uuid_str(self) -> str:
        return str(_uuid.UUID(bytes=self.uuid))


@dataclass
class Locator:
    code: int = PLAT_NONE
    data_space: int = 0
    data_length: int = 0
    reserved: int = 0
    data_offset: int = 0

    @property
    def size(self) -> int:
        """Bytes reserved for the locator data; blktap accepts sectors (<512) or bytes."""
        if self.data_space < SECTOR_SIZE:
            return self.data_space * SECTOR_SIZE
        return self.data_space


@dataclass
class Header:
    """The 1024-byte dynamic disk header."""

    table_offset: int
    max_table_entries: int
    block_size: int = BLOCK_SIZE
    data_offset: int = NO_DATA_OFFSET
    version: int = HEADER_VERSION
    parent_uuid: bytes = b"\0" * 16
    parent_timestamp: int = 0
    reserved1: int = 0
    parent_name_raw: bytes = b"\0" * 512
    locators: list[Locator] = field(default_factory=lambda: [Locator() for _ in range(8)])
    reserved2: bytes = b"\0" * 256
    checksum: int = 0

    @property
    def parent_name(self) -> str:
        raw = self.parent_name_raw
        end = len(raw)
        for i in range(0, len(raw) - 1, 2):
            if raw[i] == 0 and raw[i + 1] == 0:
                end = i
                break
        try:
            return raw[:end].decode("utf-16-be")
        except UnicodeDecodeError as exc:
            raise VHDFormatError(f"parent name is not valid UTF-16BE: {exc}") from None

    def set_parent_name(self, name: str) -> None:
        raw = name.encode("utf-16-be")
        if len(raw) > 512:
            raise VHDFormatError(f"parent name {name!r} is longer than 256 UTF-16 characters")
        self.parent_name_raw = raw.ljust(512, b"\0")

    def pack(self) -> bytes:
        def build(csum: int) -> bytes:
            head = _HEADER.pack(
                HEADER_COOKIE,
                self.data_offset,
                self.table_offset,
                self.version,
                self.max_table_entries,
                self.block_size,
                csum,
                self.parent_uuid,
                self.parent_timestamp,
                self.reserved1,
                self.parent_name_raw,
            )
            locs = b"".join(
                _LOCATOR.pack(loc.code, loc.data_space, loc.data_length, loc.reserved, loc.data_offset)
                for loc in self.locators
            )
            return head + locs + self.reserved2

        self.checksum = checksum(build(0))
        return build(self.checksum)

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        if len(raw) != HEADER_SIZE:
            raise VHDFormatError(f"dynamic header is truncated: {len(raw)} of {HEADER_SIZE} bytes")
        (cookie, data_offset, table_offset, version, entries, block_size, csum, puuid, pts, res1,
         pname) = _HEADER.unpack_from(raw)  # fmt: skip
        if cookie != HEADER_COOKIE:
            raise VHDFormatError(f"dynamic header has a wrong cookie {cookie!r} (expected {HEADER_COOKIE!r})")
        computed = checksum(raw[:36] + b"\0\0\0\0" + raw[40:])
        if computed != csum:
            raise VHDFormatError(
                f"dynamic header checksum mismatch (stored 0x{csum:08x}, computed 0x{computed:08x})"
            )
        locators = [Locator(*_LOCATOR.unpack_from(raw, _HEADER.size + i * _LOCATOR.size)) for i in range(8)]
        return cls(
            table_offset=table_offset,
            max_table_entries=entries,
            block_size=block_size,
            data_offset=data_offset,
            version=version,
            parent_uuid=puuid,
            parent_timestamp=pts,
            reserved1=res1,
            parent_name_raw=pname,
            locators=locators,
            reserved2=raw[768:],
            checksum=csum,
        )

    def validate(self) -> None:
        if self.version != HEADER_VERSION:
            raise VHDFormatError(f"dynamic header: unsupported version 0x{self.version:08x}")
        bs = self.block_size
        if bs < SECTOR_SIZE or bs & (bs - 1) or bs > 256 * MiB:
            raise VHDFormatError(f"dynamic header: invalid block size {bs}")
        if self.table_offset % SECTOR_SIZE or self.table_offset == 0:
            raise VHDFormatError(f"dynamic header: invalid table offset {self.table_offset}")
        for i, loc in enumerate(self.locators):
            if loc.code not in KNOWN_PLATFORMS:
                raise VHDFormatError(f"parent locator {i}: invalid platform code 0x{loc.code:08x}")
