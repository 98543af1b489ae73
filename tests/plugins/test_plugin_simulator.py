"""The plug-ins driven through the simulator's XAPI (host.call_plugin), as the driver will use them."""

from __future__ import annotations

import json
import uuid

import pytest
import XenAPI
from test_plugin_migration import make_chain, read_chain

from xenapi_driver.simulator import api
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
        assert plugin(session, host, "dom0_plugin_version", "get_version") == "1.0"
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
    dst.sandbox.start_sshd(dst.address)
    src.sandbox.trust(dst.sandbox)
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
