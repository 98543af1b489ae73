"""xenapi-driver install-plugins against real OpenSSH servers on loopback.

Each "dom0" is a loopback sshd (tests/sshd.py) whose sessions see a fake
``xe`` on PATH; the installer writes below a per-host --target-root laid out
like a dom0 (/etc/xensource-inventory, /var/run/sr-mount/<local SR>).
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from pathlib import Path

import pytest

from tests.sshd import LoopbackSSHServer, sshd_available
from xenapi_driver import installer
from xenapi_driver.cli import main
from xenapi_driver.simulator.dom0 import plugin_files

pytestmark = pytest.mark.skipif(not sshd_available(), reason="OpenSSH server not installed")

FAKE_XE = """#!/bin/sh
# stands in for XAPI's xe on the test dom0: answers the one query the installer makes
if [ "$1" = "sr-list" ]; then cat "{sr_file}"; exit 0; fi
if [ "$1" = "host-param-get" ]; then echo 192.0.2.10; exit 0; fi
echo "unexpected xe call: $*" >&2; exit 1
"""


def session_path(server: LoopbackSSHServer, bindir: Path) -> None:
    """Give the sshd's sessions a PATH that finds the fake xe (sshd honours only its first SetEnv line)."""
    config = Path(server.config_path)
    text = config.read_text(encoding="ascii")
    path = f"PATH={bindir}:/usr/local/bin:/usr/bin:/bin"
    if re.search(r"^SetEnv ", text, re.M):
        text = re.sub(r"^SetEnv (.*)$", lambda m: f"SetEnv {path} {m.group(1)}", text, count=1, flags=re.M)
    else:
        text += f"SetEnv {path} SHLVL=1\n"
    config.write_text(text, encoding="ascii")


class Dom0:
    """A loopback sshd standing in for one dom0, with its root directory."""

    def __init__(self, base: Path, name: str, *, with_xe: bool = True, inventory: bool = True) -> None:
        self.server = LoopbackSSHServer(workdir=base / f"{name}-sshd")
        self.root = base / f"{name}-root"
        self.sr_uuid = str(uuid.uuid4())
        (self.root / f"var/run/sr-mount/{self.sr_uuid}").mkdir(parents=True)
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        if inventory:
            (self.root / "etc/xensource-inventory").write_text(f"INSTALLATION_UUID='{uuid.uuid4()}'\n")
        bindir = base / f"{name}-bin"
        bindir.mkdir()
        sr_file = base / f"{name}-sr"
        sr_file.write_text(self.sr_uuid + "\n")
        if with_xe:
            (bindir / "xe").write_text(FAKE_XE.format(sr_file=sr_file))
            (bindir / "xe").chmod(0o755)
        session_path(self.server, bindir)
        self.server.start()

    @property
    def target(self) -> str:
        return f"root@127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.cleanup()


@pytest.fixture
def dom0s(tmp_path):
    created = []

    def make(name="dom0", **kwargs) -> Dom0:
        dom0 = Dom0(tmp_path, name, **kwargs)
        created.append(dom0)
        return dom0

    yield make
    for dom0 in created:
        dom0.stop()


@pytest.fixture
def known_hosts(tmp_path):
    return tmp_path / "known_hosts"


def run_cli(dom0_list, known_hosts, *extra, roots=None) -> int:
    known_hosts.write_text("".join(d.server.known_hosts_line + "\n" for d in dom0_list))
    root = roots or str(dom0_list[0].root.parent / "{port}-root")
    return main(
        [
            "install-plugins",
            *[d.target for d in dom0_list],
            "--identity",
            dom0_list[0].server.client_key_path,
            "--known-hosts",
            str(known_hosts),
            "--target-root",
            root,
            *extra,
        ]
    )


def _link_roots(dom0_list):
    """--target-root uses {port}: point <port>-root at each dom0's root."""
    for dom0 in dom0_list:
        link = dom0.root.parent / f"{dom0.server.port}-root"
        if not link.exists():
            link.symlink_to(dom0.root)


def test_install_lays_out_dom0_and_is_idempotent(dom0s, known_hosts, capsys):
    dom0 = dom0s()
    _link_roots([dom0])
    assert run_cli([dom0], known_hosts) == 0
    out = capsys.readouterr().out
    assert f"local SR {dom0.sr_uuid}" in out
    plugins = dom0.root / "etc/xapi.d/plugins"
    for source in plugin_files():
        installed = plugins / source.name
        assert installed.read_bytes() == source.read_bytes()
        mode = stat.S_IMODE(installed.stat().st_mode)
        assert mode == (0o644 if source.name.endswith(".py") else 0o755), source.name
    assert os.readlink(dom0.root / "images") == f"var/run/sr-mount/{dom0.sr_uuid}/os-images"
    assert (dom0.root / "images").resolve() == dom0.root / f"var/run/sr-mount/{dom0.sr_uuid}/os-images"
    assert (
        dom0.root / "boot/guest"
    ).resolve() == dom0.root / f"var/run/sr-mount/{dom0.sr_uuid}/os-guest-kernels"
    # second run: nothing to do
    assert run_cli([dom0], known_hosts) == 0
    assert "up to date" in capsys.readouterr().out
    # a changed plug-in is put back
    (plugins / "migration").write_text("tampered")
    (plugins / "agent").chmod(0o644)
    assert run_cli([dom0], known_hosts) == 0
    out = capsys.readouterr().out
    assert "update" in out and "set mode 755" in out
    assert os.access(plugins / "agent", os.X_OK)


def test_dry_run_changes_nothing(dom0s, known_hosts, capsys):
    dom0 = dom0s()
    _link_roots([dom0])
    before = sorted(p.relative_to(dom0.root) for p in dom0.root.rglob("*"))
    assert run_cli([dom0], known_hosts, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would install" in out and "would link /images" in out and "change(s) would be made" in out
    assert sorted(p.relative_to(dom0.root) for p in dom0.root.rglob("*")) == before


def test_root_ssh_trust_between_dom0s(dom0s, known_hosts, capsys):
    first, second = dom0s("a"), dom0s("b")
    _link_roots([first, second])
    with open(second.server.authorized_keys_path, "a", encoding="ascii") as keys:
        keys.write(Path(first.server.client_key_path + ".pub").read_text())
    assert run_cli([first, second], known_hosts) == 0
    for src, dst in ((first, second), (second, first)):
        key = (src.root / "root/.ssh/id_ed25519.pub").read_text().split()[:2]
        assert " ".join(key) in (dst.root / "root/.ssh/authorized_keys").read_text()
        known = (src.root / "root/.ssh/known_hosts").read_text()
        # under the name used here and the management address XAPI reports (what migration uses)
        assert f"{dst.server.known_hosts_name},[192.0.2.10]:{dst.server.port} " in known
        assert dst.server.host_public_key_line in known
    capsys.readouterr()
    assert run_cli([first, second], known_hosts) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_unknown_host_key_is_refused(dom0s, tmp_path, capsys):
    dom0 = dom0s()
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    code = main(
        [
            "install-plugins",
            dom0.target,
            "-i",
            dom0.server.client_key_path,
            "--known-hosts",
            str(empty),
            "--target-root",
            str(dom0.root),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "host key unknown" in err and "ssh-keyscan" in err
    assert not (dom0.root / "etc/xapi.d").exists()


def test_changed_host_key_is_refused(dom0s, known_hosts, capsys):
    dom0 = dom0s()
    known_hosts.write_text(dom0.server.known_hosts_line + "\n")
    dom0.server.regenerate_host_key()
    code = main(
        [
            "install-plugins",
            dom0.target,
            "-i",
            dom0.server.client_key_path,
            "--known-hosts",
            str(known_hosts),
            "--target-root",
            str(dom0.root),
        ]
    )
    assert code == 1
    assert "host key changed" in capsys.readouterr().err


def test_refused_key(dom0s, known_hosts, tmp_path, capsys):
    dom0 = dom0s()
    other = LoopbackSSHServer(workdir=tmp_path / "other-keys")  # only used for its client key
    known_hosts.write_text(dom0.server.known_hosts_line + "\n")
    code = main(
        [
            "install-plugins",
            dom0.target,
            "-i",
            other.client_key_path,
            "--known-hosts",
            str(known_hosts),
            "--target-root",
            str(dom0.root),
        ]
    )
    other.cleanup()
    assert code == 1
    assert "key was refused" in capsys.readouterr().err


def test_unreachable_host(tmp_path, known_hosts, capsys):
    from tests.sshd import free_port

    known_hosts.write_text("")
    code = main(
        [
            "install-plugins",
            f"root@127.0.0.1:{free_port()}",
            "--known-hosts",
            str(known_hosts),
            "--timeout",
            "5",
        ]
    )
    assert code == 1
    assert "unreachable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"inventory": False}, "xensource-inventory"), ({"with_xe": False}, "'xe' command is missing")],
)
def test_not_a_xapi_dom0(dom0s, known_hosts, capsys, kwargs, message):
    dom0 = dom0s(**kwargs)
    _link_roots([dom0])
    assert run_cli([dom0], known_hosts) == 1
    err = capsys.readouterr().err
    assert "not a XAPI dom0" in err and message in err
    assert not (dom0.root / "etc/xapi.d").exists()


def test_non_empty_images_directory_is_kept(dom0s, known_hosts, capsys):
    dom0 = dom0s()
    _link_roots([dom0])
    (dom0.root / "images").mkdir()
    (dom0.root / "images/precious").write_text("data")
    assert run_cli([dom0], known_hosts) == 1
    assert "non-empty directory" in capsys.readouterr().err
    assert (dom0.root / "images/precious").read_text() == "data"


def test_target_parsing():
    assert installer.Target.parse("root@h:2222") == installer.Target("h", "root", 2222)
    assert installer.Target.parse("h", 22) == installer.Target("h", "root", 22)
    assert installer.Target.parse("[::1]:23") == installer.Target("::1", "root", 23)
    for bad in ("-oProxyCommand=x", "a b", "h:x"):
        with pytest.raises(installer.InstallerError):
            installer.Target.parse(bad)


def test_verify_version_through_the_simulators_xapi(tmp_path, capsys):
    """Install into a simulated host's dom0 sandbox, then XAPI runs the version plug-in from there."""
    from xenapi_driver.simulator import api

    with api.start(hosts=1, state_dir=tmp_path / "sim") as sim:
        host = sim.pool.hosts[0]
        for plugin in (host.root / "etc/xapi.d/plugins").iterdir():
            plugin.unlink()  # start from a dom0 without our plug-ins
        dom0 = Dom0.__new__(Dom0)
        dom0.server = LoopbackSSHServer(workdir=tmp_path / "sim-sshd")
        dom0.root = host.root
        dom0.sr_uuid = host.local_sr_uuid
        bindir = tmp_path / "sim-bin"
        bindir.mkdir()
        (tmp_path / "sim-sr").write_text(host.local_sr_uuid)
        (bindir / "xe").write_text(FAKE_XE.format(sr_file=tmp_path / "sim-sr"))
        (bindir / "xe").chmod(0o755)
        session_path(dom0.server, bindir)
        dom0.server.start()
        try:
            password_file = tmp_path / "pw"
            password_file.write_text(sim.password)
            known = tmp_path / "kh"
            code = run_cli(
                [dom0],
                known,
                "--xapi-url",
                sim.url,
                "--xapi-password-file",
                str(password_file),
                roots=str(host.root),
            )
            out = capsys.readouterr()
            assert code == 0, out.err
            assert f"XAPI reports plug-in version {installer.plugin_version()}" in out.out
            assert sim.password not in out.out + out.err
        finally:
            dom0.server.cleanup()
