"""The plug-ins driven through the simulator's XAPI (host.call_plugin), as the driver will use them."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import XenAPI
from test_plugin_migration import make_chain, read_chain

from xenapi_driver.simulator import api
from xenapi_driver.simulator.dom0 import ssh_mesh
from xenapi_driver.simulator.handlers import xenstore as sim_xenstore


@pytest.fixture
def sim(tmp_path):
    simulator = api.start(hosts=2, state_dir=tmp_path / "sim")
    session = XenAPI.Session(simulator.url)
    session.xenapi.login_with_password(simulator.username, simulator.password, "1.0", "plugin-tests")
    try:
        yield simulator, session
    finally:
        for host in simulator.pool.hosts:
            host.sandbox.stop_sshd()
        try:
            session.xenapi.session.logout()
        finally:
            simulator.stop()


def plugin(session, sim_host, name, fn, **args):
    return session.xenapi.host.call_plugin(sim_host.ref, name, fn, {k: str(v) for k, v in args.items()})


def test_version_and_host_data_on_master_and_member(sim):
    simulator, session = sim
    for host in simulator.pool.hosts:
        assert plugin(session, host, "dom0_plugin_version", "get_version") == "1.1"
        data = json.loads(plugin(session, host, "xenhost", "host_data"))
        assert data["host_uuid"] == host.uuid and data["host_address"] == host.address
        assert data["disk"]["sr_uuid"] == host.local_sr_uuid
        assert data["host_memory"]["total"] > 0


def test_missing_plugin_and_bad_argument_through_xapi(sim):
    simulator, session = sim
    host = simulator.pool.hosts[0]
    with pytest.raises(XenAPI.Failure) as err:
        plugin(session, host, "nope", "x")
    assert err.value.details == ["XENAPI_MISSING_PLUGIN", "nope"]
    with pytest.raises(XenAPI.Failure) as err:
        plugin(session, host, "console", "get_console_log", dom_id="1;reboot")
    assert err.value.details[:2] == ["INVALID_ARGUMENT", "dom_id"]


def test_xenstore_through_the_simulators_endpoint(sim):
    simulator, session = sim
    member = simulator.pool.hosts[1]
    plugin(session, member, "xenstore", "write_record", dom_id="3", path="vm-data/hostname", value="vm1")
    assert sim_xenstore.store_for(member).read("/local/domain/3/vm-data/hostname") == "vm1"
    assert (
        json.loads(plugin(session, member, "xenstore", "read_record", dom_id="3", path="vm-data/hostname"))
        == "vm1"
    )
    assert not sim_xenstore.store_for(simulator.pool.hosts[0]).exists("/local/domain/3/vm-data/hostname")


def test_chain_moves_between_simulated_hosts_over_openssh(sim):
    simulator, session = sim
    src, dst = simulator.pool.hosts
    ssh_mesh([(host.sandbox, host.address) for host in simulator.pool.hosts])
    uuids, content = make_chain(src.sandbox, seed=31)
    instance = str(uuid.uuid4())
    for seq, vdi in enumerate(uuids):
        stats = json.loads(
            plugin(session, src, "migration", "transfer_vhd", instance_uuid=instance, host=dst.address,
                   vdi_uuid=vdi, sr_path=f"/var/run/sr-mount/{src.local_sr_uuid}", seq_num=seq)
        )  # fmt: skip
        assert stats["local"] is False
    result = json.loads(
        plugin(session, dst, "migration", "move_vhds_into_sr", instance_uuid=instance,
               sr_path=f"/var/run/sr-mount/{dst.local_sr_uuid}")
    )  # fmt: skip
    leaf = dst.sandbox.sr_path() / f"{result['root']['uuid']}.vhd"
    assert read_chain(leaf) == content
    sr = session.xenapi.SR.get_by_uuid(dst.local_sr_uuid)
    session.xenapi.SR.scan(sr)
    vdi = session.xenapi.VDI.get_by_uuid(result["root"]["uuid"])
    assert session.xenapi.VDI.get_SR(vdi) == sr


def test_local_transfer_is_detected_through_xapi(sim):
    simulator, session = sim
    member = simulator.pool.hosts[1]
    uuids, content = make_chain(member.sandbox, levels=2, seed=32)
    instance = str(uuid.uuid4())
    for seq, vdi in enumerate(uuids):
        stats = json.loads(
            plugin(session, member, "migration", "transfer_vhd", instance_uuid=instance, host=member.address,
                   vdi_uuid=vdi, sr_path=f"/var/run/sr-mount/{member.local_sr_uuid}", seq_num=seq)
        )  # fmt: skip
        assert stats["local"] is True
    result = json.loads(
        plugin(session, member, "migration", "move_vhds_into_sr", instance_uuid=instance,
               sr_path=f"/var/run/sr-mount/{member.local_sr_uuid}")
    )  # fmt: skip
    assert read_chain(member.sandbox.sr_path() / f"{result['root']['uuid']}.vhd") == content


def test_set_host_enabled_through_xapi(sim):
    simulator, session = sim
    member = simulator.pool.hosts[1]
    assert json.loads(plugin(session, member, "xenhost", "set_host_enabled", enabled="false")) == {
        "status": "disabled"
    }
    assert session.xenapi.host.get_enabled(member.ref) is False
    plugin(session, member, "xenhost", "set_host_enabled", enabled="true")
    assert session.xenapi.host.get_enabled(member.ref) is True


def _make_vm(x, name):
    mib128 = str(128 * 1024**2)
    return x.VM.create(
        {
            "name_label": name, "name_description": "", "user_version": "1", "is_a_template": False,
            "affinity": "OpaqueRef:NULL", "memory_static_max": mib128, "memory_dynamic_max": mib128,
            "memory_dynamic_min": mib128, "memory_static_min": mib128, "VCPUs_params": {}, "VCPUs_max": "1",
            "VCPUs_at_startup": "1", "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
            "actions_after_crash": "destroy", "PV_bootloader": "pygrub", "PV_kernel": "", "PV_ramdisk": "",
            "PV_args": "", "PV_bootloader_args": "", "PV_legacy_args": "", "HVM_boot_policy": "",
            "HVM_boot_params": {}, "platform": {}, "PCI_bus": "", "other_config": {}, "recommendations": "",
            "xenstore_data": {},
        }
    )  # fmt: skip


def test_host_join_moves_the_compute_vm_with_its_host(tmp_path):
    simulator = api.start(hosts=[1, 1], state_dir=tmp_path / "sim")
    try:
        master_pool, joiner_pool = simulator.pools
        master, joiner = master_pool.master, joiner_pool.master
        sessions = []
        for url in (master_pool.url, joiner_pool.url):
            session = XenAPI.Session(url)
            session.xenapi.login_with_password(simulator.username, simulator.password, "1.0", "plugin-tests")
            sessions.append(session)
        x, y = (s.xenapi for s in sessions)
        compute = _make_vm(y, "nova-compute")
        y.VM.start(compute, False, False)
        compute_uuid = y.VM.get_uuid(compute)
        result = json.loads(
            plugin(sessions[0], master, "xenhost", "host_join", url=joiner.url, user=simulator.username,
                   password=simulator.password, compute_uuid=compute_uuid, master_addr=master.address,
                   master_user=simulator.username, master_pass=simulator.password, timeout="30")
        )  # fmt: skip
        assert result["joined"] is True
        assert len(x.host.get_all()) == 2
        vm = x.VM.get_by_uuid(compute_uuid)
        assert x.VM.get_power_state(vm) == "Running"
        assert x.VM.get_resident_on(vm) == x.host.get_by_uuid(joiner.uuid)
        log = master.sandbox.path("/var/log/xenapi-driver-plugins.log").read_text()
        assert simulator.password not in log
    finally:
        simulator.stop()


def test_host_join_refused_leaves_the_compute_vm_running(tmp_path):
    simulator = api.start(hosts=[1, 1], state_dir=tmp_path / "sim")
    try:
        master_pool, joiner_pool = simulator.pools
        master, joiner = master_pool.master, joiner_pool.master
        session = XenAPI.Session(master_pool.url)
        session.xenapi.login_with_password(simulator.username, simulator.password, "1.0", "plugin-tests")
        remote = XenAPI.Session(joiner_pool.url)
        remote.xenapi.login_with_password(simulator.username, simulator.password, "1.0", "plugin-tests")
        compute = _make_vm(remote.xenapi, "nova-compute")
        remote.xenapi.VM.start(compute, False, False)
        args = dict(url=joiner.url, user=simulator.username, password=simulator.password,
                    compute_uuid=remote.xenapi.VM.get_uuid(compute), master_addr=master.address,
                    master_user="root", master_pass="wrong-master-pw")  # fmt: skip
        with pytest.raises(XenAPI.Failure) as err:
            plugin(session, master, "xenhost", "host_join", **args)
        assert err.value.details[0] == "SESSION_AUTHENTICATION_FAILED"
        assert "wrong-master-pw" not in str(err.value.details)
        assert len(simulator.pools) == 2
        assert remote.xenapi.VM.get_power_state(compute) == "Running"
        args["compute_uuid"] = str(uuid.uuid4())
        with pytest.raises(XenAPI.Failure) as err:
            plugin(session, master, "xenhost", "host_join", **args)
        assert err.value.details[0] == "UUID_INVALID"
    finally:
        simulator.stop()


def test_plugins_reach_their_host_over_https(tmp_path):
    """With an HTTPS simulator the plug-ins' XAPI session and xenstore tools still reach their host."""
    simulator = api.start(hosts=2, https=True, state_dir=tmp_path / "sim")
    try:
        session = XenAPI.Session(simulator.url, ignore_ssl=True)
        session.xenapi.login_with_password(simulator.username, simulator.password, "1.0", "plugin-tests")
        member = simulator.pool.hosts[1]
        assert json.loads(plugin(session, member, "xenhost", "host_data"))["host_uuid"] == member.uuid
        plugin(session, member, "xenstore", "write_record", dom_id="2", path="k", value="v")
        assert json.loads(plugin(session, member, "xenstore", "read_record", dom_id="2", path="k")) == "v"
    finally:
        simulator.stop()


def test_power_actions_through_the_simulators_xapi(sim):
    simulator, session = sim
    member = simulator.pool.hosts[1]
    x = session.xenapi
    vm = _make_vm(x, "busy")
    x.VM.start_on(vm, member.ref, False, False)
    with pytest.raises(XenAPI.Failure) as err:
        plugin(session, member, "xenhost", "host_shutdown")
    assert err.value.details[0] == "HOST_IN_USE", err.value.details
    assert x.host.get_enabled(member.ref) is True  # re-enabled after XAPI's refusal
    x.VM.hard_shutdown(vm)
    assert json.loads(plugin(session, member, "xenhost", "host_shutdown")) == {"power_action": "shutdown"}
    deadline = time.monotonic() + 30  # the host goes away shortly after XAPI accepted
    while member.powered and time.monotonic() < deadline:
        time.sleep(0.05)
    assert member.powered is False
