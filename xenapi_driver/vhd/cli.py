"""A ``vhd-util`` work-alike: the subset of XenServer's tool that plug-ins and SM call.

Output formats and exit codes follow blktap's ``vhd-util`` (exit status is the
errno: 22 for usage errors and bad files, 2 for missing files), because dom0
plug-ins parse its output.  Run as ``python -m xenapi_driver.vhd.cli`` or
``xenapi-vhd-util``.
"""

from __future__ import annotations

import errno
import getopt
import os
import sys

from . import format as fmt
from . import ops
from .chain import walk_chain
from .errors import VHDError
from .image import VHDImage

USAGE = (
    "usage: vhd-util COMMAND [OPTIONS]\n"
    "COMMAND := { create | snapshot | query | check | modify | repair | coalesce | set | resize }"
)

COMMAND_USAGE = {
    "create": "options: <-n name> <-s size (MB)> [-r reserve (fixed)] [-S max size (MB), ignored] [-h help]",
    "snapshot": "options: <-n name> <-p parent> [-l limit, ignored] [-h help]",
    "query": (
        "options: <-n name> [-v print virtual size (in MB)] [-s print physical utilization (bytes)] "
        "[-p print parent] [-f print fields] [-m print marker] [-d print chain depth] [-h help]"
    ),
    "check": "options: <-n name> [-p check parents] [-i ignore, accepted] [-h help]",
    "modify": "options: <-n name> <-p parent> [-h help]",
    "repair": "options: <-n name> [-h help]",
    "coalesce": "options: <-n name> [-h help]",
    "set": "options: <-n name> <-f field> <-v value> [-h help]",
    "resize": "options: <-n name> <-s size (MB)> [-j journal, ignored] [-h help]",
}

OPTSTRINGS = {
    "create": "n:s:rS:h",
    "snapshot": "n:p:l:S:h",
    "query": "n:vspfmdh",
    "check": "n:piIbh",
    "modify": "n:p:h",
    "repair": "n:h",
    "coalesce": "n:h",
    "set": "n:f:v:h",
    "resize": "n:s:j:fh",
}


# Where blktap keeps its one-byte "marker" when a VHD has no batmap to hold it.
MARKER_XATTR = "user.com.citrix.xenclient.backend.marker"
_BATMAP_COOKIE = b"tdbatmap"
_BATMAP_MARKER_OFFSET = 28  # cookie 8, batmap offset 8, size 4, version 4, checksum 4
_BATMAP_MAX_VERSION = 0x00010002


class UsageError(Exception):
    pass


def _has_batmap(image: VHDImage) -> bool:
    """blktap's test: "tap" dynamic disks from creator version 1.2 on always have a batmap;
    version 1.1 ones have one only if a valid batmap header follows the BAT."""
    footer = image.footer
    if image.header is None or footer.creator_app != fmt.CREATOR_APP or footer.creator_version <= 0x00000001:
        return False
    if footer.creator_version >= 0x00010002:
        return True
    raw = os.pread(image.fd, 16, _batmap_header_offset(image))
    return raw[:8] == _BATMAP_COOKIE and int.from_bytes(raw[12:16], "big") <= _BATMAP_MAX_VERSION


def _batmap_header_offset(image: VHDImage) -> int:
    return image.header.table_offset + fmt.round_up(4 * image.header.max_table_entries, fmt.SECTOR_SIZE)


def _marker(image: VHDImage) -> int:
    """The marker byte vhd-util -m prints (as a signed char): from the batmap header when the
    file has a batmap, else from the file's MARKER_XATTR (0 when unset or unsupported).
    Raises OSError as blktap fails: short batmap header, or an xattr longer than one byte."""
    if _has_batmap(image):
        raw = os.pread(image.fd, fmt.SECTOR_SIZE, _batmap_header_offset(image))
        if len(raw) != fmt.SECTOR_SIZE:
            raise OSError(errno.EIO, "short read of the batmap header")
        value = raw[_BATMAP_MARKER_OFFSET : _BATMAP_MARKER_OFFSET + 1]
    else:
        try:
            value = os.getxattr(image.fd, MARKER_XATTR)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP):
                return 0
            raise
        if len(value) > 1:
            raise OSError(errno.ERANGE, "marker attribute is longer than one byte")
    return int.from_bytes(value, "big", signed=True) if value else 0


def _fail(exc: VHDError) -> int:
    print(str(exc))
    return exc.errno or errno.EINVAL


def _megabytes(value: str) -> int:
    try:
        mb = int(value)
    except ValueError:
        raise UsageError(f"invalid size {value!r}: expected an integer number of MiB") from None
    if mb <= 0:
        raise UsageError(f"invalid size {value!r}")
    return mb * fmt.MiB


def _query(name: str, opts: dict[str, str]) -> int:
    try:
        image = VHDImage(name)
    except VHDError as exc:
        print(f"error opening {name}: {-(exc.errno or errno.EINVAL)}")
        return exc.errno or errno.EINVAL
    err = 0
    with image:
        if "-v" in opts:
            print(image.virtual_size >> 20)
        if "-s" in opts:
            print(image.physical_size)
        if "-p" in opts:
            if not image.is_differencing:
                print(f"{name} has no parent")
            else:
                try:
                    print(image.parent_path())
                except VHDError as exc:
                    print("query failed")
                    err = err or exc.errno or errno.EINVAL
        if "-f" in opts:
            print(f"hidden: {image.footer.hidden}")
        if "-m" in opts:
            try:
                print(f"marker: {_marker(image)}")
            except OSError as exc:
                code = exc.errno or errno.EIO
                print(f"error checking 'marker' field: {-code}")
                err = err or code
        if "-d" in opts:
            try:
                layers, _ = walk_chain(name, verify=False)
                for layer in layers:
                    layer.close()
                print(f"chain depth: {len(layers)}")
            except VHDError as exc:
                print(f"error checking chain depth: {-(exc.errno or errno.EINVAL)}")
                err = err or exc.errno or errno.EINVAL
    return err


def _run(command: str, opts: dict[str, str]) -> int:
    name = opts.get("-n")
    if not name:
        raise UsageError("missing -n name")
    if command == "query":
        return _query(name, opts)
    if command == "create":
        if "-s" not in opts:
            raise UsageError("missing -s size")
        size = _megabytes(opts["-s"])
        (ops.create_fixed if "-r" in opts else ops.create_dynamic)(name, size)
        return 0
    if command == "snapshot":
        if "-p" not in opts:
            raise UsageError("missing -p parent")
        ops.snapshot(name, opts["-p"])
        return 0
    if command == "check":
        try:
            checked = ops.check(name, walk_parents="-p" in opts)
        except VHDError as exc:
            print(str(exc))
            print(f"{name} appears invalid; dumping metadata")
            return exc.errno or errno.EINVAL
        for i, path in enumerate(checked):
            print(f"{name if i == 0 else path} is valid")
        return 0
    if command == "modify":
        if "-p" not in opts:
            raise UsageError("missing -p parent (only re-parenting is supported)")
        ops.reparent(name, opts["-p"])
        return 0
    if command == "repair":
        ops.repair(name)
        return 0
    if command == "coalesce":
        ops.coalesce(name)
        return 0
    if command == "set":
        field = opts.get("-f")
        value = opts.get("-v")
        if field is None or value is None:
            raise UsageError("missing -f field or -v value")
        if field != "hidden":
            print(f"invalid field {field}")
            return errno.EINVAL
        if value not in ("0", "1"):
            raise UsageError(f"invalid value {value!r} for hidden: expected 0 or 1")
        ops.set_hidden(name, value == "1")
        return 0
    if command == "resize":
        if "-s" not in opts:
            raise UsageError("missing -s size")
        ops.resize(name, _megabytes(opts["-s"]))
        return 0
    raise UsageError(f"unknown command {command}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (the errno, as vhd-util does)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] not in OPTSTRINGS:
        print(USAGE)
        return errno.EINVAL
    command = args[0]
    try:
        pairs, rest = getopt.getopt(args[1:], OPTSTRINGS[command])
        if rest:
            raise UsageError(f"unexpected argument {rest[0]!r}")
        opts = dict(pairs)
        if "-h" in opts:
            print(COMMAND_USAGE[command])
            return 0
        return _run(command, opts)
    except (getopt.GetoptError, UsageError) as exc:
        print(f"{command}: {exc}")
        print(COMMAND_USAGE[command])
        return errno.EINVAL
    except VHDError as exc:
        return _fail(exc)
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
