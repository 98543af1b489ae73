"""Pools and hosts as a fresh XenServer install has them; HTTPS; subprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest
import XenAPI

from xenapi_driver.simulator import api

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_pools():
    s = api.start(hosts=[2, 1])
    try:
        yield s
    finally:
        s.stop()


def _login(url: str, sim) -> XenAPI.Session:
    s = XenAPI.Session(url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "pool-tests")
    return s


def test_pools_are_separate(two_pools):
    p0, p1 = two_pools.pools
    assert len(p0.hosts) == 2 and len(p1.hosts) == 1
    urls = {h.url for p in two_pools.pools for h in p.hosts}
    assert len(urls) == 3
    s0, s1 = _login(p0.url, two_pools), _login(p1.url, two_pools)
    try:
        assert len(s0.xenapi.host.get_all()) == 2
        assert len(s1.xenapi.host.get_all()) == 1
        assert s0.xenapi.pool.get_all() != s1.xenapi.pool.get_all()
        assert two_pools.world.host_by_address(p1.master.address) is p1.master
    finally:
        s0.xenapi.session.logout()
        s1.xenapi.session.logout()


def test_host_records_are_realistic(two_pools):
    pool = two_pools.pools[0]
    s = _login(pool.url, two_pools)
    x = s.xenapi
    try:
        for host in pool.hosts:
            rec = x.host.get_record(host.ref)
            assert rec["address"] == host.address
            assert rec["uuid"] == host.uuid
            assert rec["software_version"]["product_version"].startswith("8.")
            assert rec["API_version_major"] == "2"
            metrics = x.host_metrics.get_record(rec["metrics"])
            assert int(metrics["memory_total"]) > int(metrics["memory_free"]) > 0
            assert metrics["live"] is True
            assert len(rec["host_CPUs"]) == int(rec["cpu_info"]["cpu_count"])
            (pif,) = rec["PIFs"]
            pif_rec = x.PIF.get_record(pif)
            assert pif_rec["management"] is True and pif_rec["IP"] == host.address
            assert x.network.get_bridge(pif_rec["network"]) == "xenbr0"
            dom0 = [
                v
                for v in x.VM.get_all_records_where('field "is_control_domain"="true"').values()
                if v["resident_on"] == host.ref
            ]
            assert len(dom0) == 1 and dom0[0]["domid"] == "0" and dom0[0]["power_state"] == "Running"
            # local EXT SR with a PBD on this host, directory in the dom0 sandbox
            sr = x.SR.get_record(host.local_sr)
            assert (sr["type"], sr["content_type"], sr["shared"]) == ("ext", "user", False)
            assert [x.PBD.get_host(p) for p in sr["PBDs"]] == [host.ref]
            assert (host.root / "var" / "run" / "sr-mount" / sr["uuid"]).is_dir()
        pool_rec = x.pool.get_record(pool.ref)
        assert pool_rec["master"] == pool.master.ref
        assert pool_rec["default_SR"] == pool.master.local_sr
        # the ISO library is shared: a PBD per host, and every sandbox sees the same directory
        (iso,) = x.SR.get_by_name_label("ISO library")
        iso_rec = x.SR.get_record(iso)
        assert iso_rec["shared"] is True and len(iso_rec["PBDs"]) == len(pool.hosts)
        paths = {(h.root / "var/run/sr-mount" / iso_rec["uuid"]).resolve() for h in pool.hosts}
        assert len(paths) == 1 and paths.pop().is_dir()
        assert {x.SM.get_type(sm) for sm in x.SM.get_all()} >= {"ext", "nfs", "iso", "lvmoiscsi"}
    finally:
        s.xenapi.session.logout()


def test_port_address_mode():
    with api.start(hosts=2, address_mode="port") as sim:
        hosts = sim.pool.hosts
        assert {h.address for h in hosts} == {"127.0.0.1"}
        assert hosts[0].port != hosts[1].port
        proxy = xmlrpc.client.ServerProxy(hosts[1].url)
        out = proxy.session.login_with_password("root", sim.password)
        assert out["ErrorDescription"] == ["HOST_IS_SLAVE", f"127.0.0.1:{hosts[0].port}"]


def test_https_with_self_signed_certificate():
    with api.start(hosts=1, https=True) as sim:
        assert sim.url.startswith("https://")
        s = XenAPI.Session(sim.url, ignore_ssl=True)
        s.xenapi.login_with_password(sim.username, sim.password, "1.0", "tls")
        assert len(s.xenapi.host.get_all()) == 1
        cert = s.xenapi.host.get_server_certificate(sim.pool.master.ref)
        assert "BEGIN CERTIFICATE" in cert
        s.xenapi.session.logout()
        with pytest.raises(OSError):  # verification fails without the CA
            XenAPI.Session(sim.url).xenapi.login_with_password("root", sim.password, "1.0", "tls")


def test_subprocess_mode_and_remote_control():
    sim = api.start(hosts=2, subprocess=True, password="s3cret")
    try:
        assert sim.password == "s3cret"
        s = XenAPI.Session(sim.url)
        s.xenapi.login_with_password("root", "s3cret", "1.0", "sub")
        assert len(s.xenapi.host.get_all()) == 2
        sim.faults.fail_next("host.get_all", "INTERNAL_ERROR", "remote")
        with pytest.raises(XenAPI.Failure) as info:
            s.xenapi.host.get_all()
        assert info.value.details == ["INTERNAL_ERROR", "remote"]
        assert sim.call_counts["host.get_all"] == 2
        sim.restart_toolstack()
        proxy = xmlrpc.client.ServerProxy(sim.url)
        assert proxy.host.get_all(s._session)["ErrorDescription"][0] == "SESSION_INVALID"
        scsi = sim.create_lun("iqn.2010-10.org.openstack:remote", 2, 1024**2)
        target = Path(sim.info["state_dir"]) / "iscsi-targets" / "iqn.2010-10.org.openstack:remote"
        assert (target / "lun2").stat().st_size == 1024**2
        assert scsi.startswith("36")
        sim.set_agent_enabled(sim.pools[0].hosts[0], False)
        sim.set_agent_enabled(sim.pools[0].hosts[0].uuid, True)
        sim.power_off_host(sim.pools[0].hosts[1])
        with pytest.raises(ConnectionRefusedError):
            xmlrpc.client.ServerProxy(sim.pools[0].hosts[1].url).session.login_with_password("root", "x")
    finally:
        sim.stop()
    assert sim.proc.returncode is not None


def test_console_script_help():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "xenapi_driver.simulator.cli", "--help"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0
    assert "--hosts" in out.stdout
