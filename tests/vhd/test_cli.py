"""The vhd-util work-alike: output formats and exit codes plug-ins rely on."""

import os
import subprocess
import sys

import pytest

from xenapi_driver import vhd
from xenapi_driver.vhd import cli

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
