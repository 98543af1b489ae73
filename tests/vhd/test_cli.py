"""The vhd-util work-alike: output formats and exit codes plug-ins rely on."""

import os
import subprocess
import sys

import pytest

from xenapi_driver import vhd
from xenapi_driver.vhd import cli
from xenapi_driver.vhd import format as fmt

MiB = 1024 * 1024

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(capsys, *args):
    code = cli.main(list(args))
    return code, capsys.readouterr().out


def test_create_query_all_flags_in_fixed_order(sr, capsys):
    base = str(sr / "base.vhd")
    assert run(capsys, "create", "-n", base, "-s", "10") == (0, "")
    # Flags given in any order print in vhd-util's fixed order: v, s, p, f, d.
    code, out = run(capsys, "query", "-n", base, "-d", "-f", "-p", "-s", "-v")
    assert code == 0
    phys = vhd.info(base).physical_size
    assert out == f"10\n{phys}\n{base} has no parent\nhidden: 0\nchain depth: 1\n"
    code, out = run(capsys, "query", "-n", base, "-vspfd")
    assert out == f"10\n{phys}\n{base} has no parent\nhidden: 0\nchain depth: 1\n"


def test_snapshot_set_query_parent(sr, capsys):
    base = str(sr / "base.vhd")
    leaf = str(sr / "leaf.vhd")
    run(capsys, "create", "-n", base, "-s", "4")
    assert run(capsys, "snapshot", "-n", leaf, "-p", base) == (0, "")
    assert run(capsys, "set", "-n", base, "-f", "hidden", "-v", "1") == (0, "")
    assert run(capsys, "query", "-n", base, "-f") == (0, "hidden: 1\n")
    assert run(capsys, "query", "-n", leaf, "-p") == (0, f"{base}\n")
    assert run(capsys, "query", "-n", leaf, "-d") == (0, "chain depth: 2\n")
    assert run(capsys, "query", "-n", leaf, "-v") == (0, "4\n")


def test_relative_name_prints_absolute_parent(sr, capsys, monkeypatch):
    monkeypatch.chdir(sr)
    run(capsys, "create", "-n", "base.vhd", "-s", "2")
    run(capsys, "snapshot", "-n", "leaf.vhd", "-p", "base.vhd")
    assert run(capsys, "query", "-n", "leaf.vhd", "-p") == (0, f"{sr}/base.vhd\n")
    assert run(capsys, "query", "-n", "base.vhd", "-p") == (0, "base.vhd has no parent\n")


def test_query_missing_parent(sr, capsys):
    base = str(sr / "base.vhd")
    leaf = str(sr / "leaf.vhd")
    run(capsys, "create", "-n", base, "-s", "2")
    run(capsys, "snapshot", "-n", leaf, "-p", base)
    os.unlink(base)
    code, out = run(capsys, "query", "-n", leaf, "-p")
    assert (code, out) == (2, "query failed\n")
    code, out = run(capsys, "query", "-n", leaf, "-v", "-p")
    assert (code, out.splitlines()) == (2, ["2", "query failed"])


def test_query_missing_file(sr, capsys):
    code, out = run(capsys, "query", "-n", str(sr / "nope.vhd"), "-v")
    assert code == 2
    assert out == f"error opening {sr / 'nope.vhd'}: -2\n"


def test_check(sr, capsys):
    base = str(sr / "base.vhd")
    leaf = str(sr / "leaf.vhd")
    run(capsys, "create", "-n", base, "-s", "2")
    run(capsys, "snapshot", "-n", leaf, "-p", base)
    assert run(capsys, "check", "-n", leaf) == (0, f"{leaf} is valid\n")
    assert run(capsys, "check", "-n", leaf, "-p") == (0, f"{leaf} is valid\n{base} is valid\n")
    with open(base, "r+b") as f:
        f.seek(-512, os.SEEK_END)
        f.write(b"broken!!")
    code, out = run(capsys, "check", "-n", base)
    assert code == 22
    assert "cookie" in out and out.endswith(f"{base} appears invalid; dumping metadata\n")
    assert run(capsys, "repair", "-n", base) == (0, "")
    assert run(capsys, "check", "-n", leaf, "-p")[0] == 0


def test_modify_reparents_and_coalesce(sr, capsys):
    a, b, c = (str(sr / n) for n in ("a.vhd", "b.vhd", "c.vhd"))
    run(capsys, "create", "-n", a, "-s", "4")
    run(capsys, "snapshot", "-n", b, "-p", a)
    with vhd.open_chain(b) as chain:
        chain.write(0, b"b" * 4096)
    run(capsys, "snapshot", "-n", c, "-p", b)
    assert run(capsys, "coalesce", "-n", b) == (0, "")
    assert run(capsys, "modify", "-n", c, "-p", a) == (0, "")
    assert run(capsys, "query", "-n", c, "-p", "-d") == (0, f"{a}\nchain depth: 2\n")
    with vhd.open_chain(c) as chain:
        assert chain.read(0, 4096) == b"b" * 4096


def test_create_fixed_and_resize(sr, capsys):
    path = str(sr / "f.vhd")
    assert run(capsys, "create", "-n", path, "-s", "3", "-r") == (0, "")
    assert vhd.info(path).disk_type == "fixed"
    assert run(capsys, "query", "-n", path, "-v") == (0, "4\n")
    assert run(capsys, "resize", "-n", path, "-s", "8", "-j", "/tmp/journal") == (0, "")
    assert run(capsys, "query", "-n", path, "-v") == (0, "8\n")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["query"],
        ["query", "-n"],
        ["query", "-n", "x.vhd", "-z"],
        ["query", "-n", "x.vhd", "extra"],
        ["create", "-n", "x.vhd"],
        ["create", "-n", "x.vhd", "-s", "ten"],
        ["snapshot", "-n", "x.vhd"],
        ["set", "-n", "x.vhd", "-f", "hidden"],
        ["set", "-n", "x.vhd", "-f", "hidden", "-v", "2"],
        ["modify", "-n", "x.vhd"],
    ],
)
def test_usage_errors_exit_22(sr, capsys, monkeypatch, args):
    monkeypatch.chdir(sr)
    code, out = run(capsys, *args)
    assert code == 22
    assert out
    assert not (sr / "x.vhd").exists()


def test_errors_are_messages_not_tracebacks(sr, capsys):
    path = str(sr / "a.vhd")
    run(capsys, "create", "-n", path, "-s", "2")
    code, out = run(capsys, "create", "-n", path, "-s", "2")
    assert code == 17 and "already exists" in out
    code, out = run(capsys, "coalesce", "-n", path)
    assert code == 22 and "not a differencing" in out


def test_module_entry_point(sr):
    path = str(sr / "a.vhd")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "xenapi_driver.vhd.cli", "create", "-n", path, "-s", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "xenapi_driver.vhd.cli", "query", "-n", path, "-v", "-f"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, "2\nhidden: 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "xenapi_driver.vhd.cli", "bogus"], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 22


# -- query -m: blktap's marker byte ------------------------------------------------
def _xattrs_supported(path) -> bool:
    try:
        os.setxattr(path, "user.xenapi-driver-probe", b"1")
    except OSError:
        return False
    os.removexattr(path, "user.xenapi-driver-probe")
    return True


def test_query_marker_defaults_to_zero_in_vhd_util_order(sr, capsys):
    base = str(sr / "base.vhd")
    run(capsys, "create", "-n", base, "-s", "2")
    assert run(capsys, "query", "-n", base, "-m") == (0, "marker: 0\n")
    # -m sits between -f and -d in vhd-util's fixed order, whatever order it is given in.
    phys = vhd.info(base).physical_size
    expected = f"2\n{phys}\n{base} has no parent\nhidden: 0\nmarker: 0\nchain depth: 1\n"
    assert run(capsys, "query", "-n", base, "-dmfpsv") == (0, expected)
    assert run(capsys, "query", "-n", base, "-m", "-d", "-v") == (0, "2\nmarker: 0\nchain depth: 1\n")
    assert "-m print marker" in run(capsys, "query", "-h")[1]


@pytest.mark.parametrize(("value", "printed"), [(b"\x01", 1), (b"\x7f", 127), (b"\xff", -1), (b"", 0)])
def test_query_marker_from_the_xattr_without_a_batmap(sr, capsys, value, printed):
    """Our files carry no batmap (creator version 1.1), so blktap keeps the marker in an xattr."""
    path = str(sr / "a.vhd")
    run(capsys, "create", "-n", path, "-s", "2")
    if not _xattrs_supported(path):
        pytest.skip("filesystem without user xattrs")
    os.setxattr(path, cli.MARKER_XATTR, value)
    assert run(capsys, "query", "-n", path, "-m") == (0, f"marker: {printed}\n")


def test_query_marker_xattr_too_long_is_an_error(sr, capsys):
    path = str(sr / "a.vhd")
    run(capsys, "create", "-n", path, "-s", "2")
    if not _xattrs_supported(path):
        pytest.skip("filesystem without user xattrs")
    os.setxattr(path, cli.MARKER_XATTR, b"\x01\x02")
    code, out = run(capsys, "query", "-n", path, "-v", "-m", "-d")
    assert (code, out) == (34, "2\nerror checking 'marker' field: -34\nchain depth: 1\n")


def _with_batmap(sr, name: str, creator_version: int, marker: int, cookie: bytes = b"tdbatmap") -> str:
    """A 4 MiB dynamic VHD whose BAT is followed by a blktap batmap header (marker at byte 28)."""
    path = sr / name
    vhd.create_dynamic(path, 4 * MiB)
    raw = path.read_bytes()
    footer = fmt.Footer.unpack(raw[: fmt.FOOTER_SIZE])
    header = fmt.Header.unpack(raw[fmt.FOOTER_SIZE : fmt.FOOTER_SIZE + fmt.HEADER_SIZE])
    bat_end = header.table_offset + fmt.round_up(4 * header.max_table_entries, fmt.SECTOR_SIZE)
    assert len(raw) == bat_end + fmt.FOOTER_SIZE  # empty disk: the trailing footer follows the BAT
    footer.creator_version = creator_version
    packed = footer.pack()
    batmap = (
        cookie
        + (bat_end + fmt.SECTOR_SIZE).to_bytes(8, "big")  # the map follows its header
        + (1).to_bytes(4, "big")  # one sector
        + (0x00010002).to_bytes(4, "big")
        + (0xFFFFFFFF).to_bytes(4, "big")  # ~sum of an all-zero map
        + marker.to_bytes(1, "big", signed=True)
    ).ljust(fmt.SECTOR_SIZE, b"\0")
    path.write_bytes(packed + raw[fmt.FOOTER_SIZE : bat_end] + batmap + bytes(fmt.SECTOR_SIZE) + packed)
    return str(path)


@pytest.mark.parametrize(
    ("version", "cookie", "expected"),
    [
        (0x00010002, b"tdbatmap", "marker: 5"),  # 1.2 and later: the batmap is assumed
        (0x00010003, b"tdbatmap", "marker: -3"),
        (0x00010001, b"tdbatmap", "marker: 5"),  # 1.1: used when a valid batmap header is there
        (0x00010001, b"notbatmp", "marker: 0"),  # 1.1 without one: the (unset) xattr
    ],
)
def test_query_marker_from_the_batmap_header(sr, capsys, version, cookie, expected):
    marker = -3 if version == 0x00010003 else 5
    path = _with_batmap(sr, "m.vhd", version, marker, cookie)
    assert run(capsys, "query", "-n", path, "-m", "-v") == (0, f"4\n{expected}\n")
