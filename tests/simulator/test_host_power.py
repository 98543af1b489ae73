"""Host maintenance through the real SDK: disable, evacuate, reboot, shutdown, power_on.

XAPI's rules: a host must be disabled before it reboots or shuts down (``HOST_NOT_DISABLED``),
running guests keep it up (``HOST_IN_USE [host, "vm", vm]``), the call answers and then the
host goes away (connections refused, ``host_metrics.live`` false, its sessions invalid) and a
rebooted host comes back enabled with its state intact.
"""

from __future__ import annotations

import time
import xmlrpc.client

import pytest
import XenAPI

from tests.simulator.sim_records import fails, vm_record
from xenapi_driver.simulator import api

MiB = 1024**2
NULL = "OpaqueRef:NULL"


@pytest.fixture(scope="module")
def sim():
    s = api.start(hosts=3)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def x(sim):
    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "host-power-tests")
    try:
        yield s.xenapi
    finally:
        try:
            s.xenapi.session.logout()
        except Exception:  # noqa: BLE001 - the master may have rebooted under the session
            pass


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def answers(host) -> bool:
    try:
        xmlrpc.client.ServerProxy(host.url).session.slave_local_login_with_password("root", "x")
        return True
    except OSError:
        return False


def live(x, host_ref) -> bool:
    return x.host_metrics.get_live(x.host.get_metrics(host_ref))


def make_vm(x, name):
    return x.VM.create(vm_record(name))


def test_reboot_and_shutdown_need_a_disabled_host(sim, x):
    member = sim.pool.hosts[1].ref
    assert fails(x.host.reboot, member) == ["HOST_NOT_DISABLED"]
    assert fails(x.host.shutdown, member) == ["HOST_NOT_DISABLED"]
    assert "reboot" not in x.host.get_allowed_operations(member)
    x.host.disable(member)
    try:
        assert {"reboot", "shutdown"} <= set(x.host.get_allowed_operations(member))
        assert fails(x.host.power_on, member) == ["HOST_IS_LIVE", member]
    finally:
        x.host.enable(member)
    assert x.host.get_enabled(member)


def test_running_guest_refuses_reboot_until_evacuated(sim, x):
    member = sim.pool.hosts[1]
    vm = make_vm(x, "resident")
    x.VM.start_on(vm, member.ref, False, False)
    x.host.disable(member.ref)
    try:
        assert fails(x.host.reboot, member.ref) == ["HOST_IN_USE", member.ref, "vm", vm]
        # XAPI's evacuation plan: the VM's disks are none, so any enabled host will do
        assert x.host.get_vms_which_prevent_evacuation(member.ref) == {}
        x.host.evacuate(member.ref)
        assert x.VM.get_resident_on(vm) != member.ref
        assert x.VM.get_power_state(vm) == "Running"
    finally:
        x.host.enable(member.ref)
        x.VM.hard_shutdown(vm)
        x.VM.destroy(vm)


def test_evacuate_needs_another_enabled_host(sim, x):
    hosts = [h.ref for h in sim.pool.hosts]
    vm = make_vm(x, "stranded")
    x.VM.start_on(vm, hosts[2], False, False)
    for h in hosts:
        x.host.disable(h)
    try:
        assert x.host.get_vms_which_prevent_evacuation(hosts[2]) == {vm: ["NO_HOSTS_AVAILABLE", vm]}
        assert fails(x.host.assert_can_evacuate, hosts[2]) == [
            "CANNOT_EVACUATE_HOST",
            f"NO_HOSTS_AVAILABLE,{vm}",
        ]
        assert fails(x.host.evacuate, hosts[2]) == ["NO_HOSTS_AVAILABLE", vm]
        assert x.VM.get_resident_on(vm) == hosts[2]
    finally:
        for h in hosts:
            x.host.enable(h)
        x.VM.hard_shutdown(vm)
        x.VM.destroy(vm)


def test_member_reboot_goes_away_and_comes_back(sim, x):
    member = sim.pool.hosts[2]
    sim.world.reboot_downtime = 1.0
    vm = make_vm(x, "survivor")  # halted: database state survives the reboot
    paused = make_vm(x, "paused-guest")
    x.VM.start_on(paused, member.ref, True, False)
    assert int(x.VM.get_domid(paused)) >= 1
    proxy = xmlrpc.client.ServerProxy(member.url)
    local = proxy.session.slave_local_login_with_password("root", sim.password)["Value"]
    x.host.disable(member.ref)
    try:
        task = x.Async.host.reboot(member.ref)
        wait_until(lambda: x.task.get_status(task) != "pending", what="reboot task")
        assert x.task.get_status(task) == "success"
        wait_until(lambda: not answers(member), what="the host to stop answering")
        assert not live(x, member.ref)
        # a call through the master while the member is down
        assert fails(x.host.disable, member.ref) == ["HOST_OFFLINE", member.ref]
        wait_until(lambda: answers(member), what="the host to answer again")
        wait_until(lambda: live(x, member.ref), what="host_metrics.live")
    finally:
        sim.world.reboot_downtime = 0.5
    # back: enabled, its own sessions gone, the pool's session and the database intact
    assert x.host.get_enabled(member.ref)
    assert "reboot" not in x.host.get_allowed_operations(member.ref)
    # the member no longer knows its local session (it answers as to any unknown session)
    assert proxy.host.get_record(local, member.ref)["Status"] == "Failure"
    assert local not in sim.pool.sessions.infos
    assert x.VM.get_name_label(vm) == "survivor"
    # its paused guest died with it; the next guest it boots is domid 1 again
    assert x.VM.get_power_state(paused) == "Halted"
    x.VM.start_on(vm, member.ref, False, False)
    assert x.VM.get_domid(vm) == "1"
    for ref in (vm, paused):
        if x.VM.get_power_state(ref) != "Halted":
            x.VM.hard_shutdown(ref)
        x.VM.destroy(ref)


def test_a_second_reboot_while_going_down_is_refused(sim, x):
    member = sim.pool.hosts[1]
    sim.world.reboot_downtime = 0.2
    x.host.disable(member.ref)
    x.host.reboot(member.ref)
    error = fails(x.host.reboot, member.ref)
    assert error[0] in ("OTHER_OPERATION_IN_PROGRESS", "HOST_OFFLINE")  # the host may be gone already
    if error[0] == "OTHER_OPERATION_IN_PROGRESS":
        assert error[1:] == ["host", member.ref, "reboot"]
    wait_until(lambda: live(x, member.ref) and x.host.get_enabled(member.ref), what="the reboot")
    sim.world.reboot_downtime = 0.5


def test_shutdown_then_power_on(sim, x):
    member = sim.pool.hosts[1]
    x.host.disable(member.ref)
    x.host.shutdown(member.ref)
    wait_until(lambda: not live(x, member.ref), what="the host to go down")
    assert not answers(member)
    assert x.host.get_allowed_operations(member.ref) == []
    assert fails(x.host.power_on, member.ref) == ["HOST_POWER_ON_MODE_DISABLED"]
    x.host.set_power_on_mode(member.ref, "wake-on-lan", {})
    assert x.host.get_allowed_operations(member.ref) == ["power_on"]
    x.host.power_on(member.ref)
    assert answers(member)
    assert live(x, member.ref)
    assert x.host.get_enabled(member.ref)


def test_shut_down_host_boots_through_the_api(sim, x):
    member = sim.pool.hosts[2]
    x.host.disable(member.ref)
    x.host.shutdown(member.ref)
    wait_until(lambda: not live(x, member.ref), what="the host to go down")
    sim.power_on_host(member)
    assert answers(member)
    assert x.host.get_enabled(member.ref)


def test_master_reboot_invalidates_every_session(sim):
    master = sim.pool.master
    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "master-reboot")
    before = s._session
    net = s.xenapi.network.create(
        {"name_label": "kept", "name_description": "", "MTU": "1500", "other_config": {}, "bridge": "",
         "managed": True, "tags": []}
    )  # fmt: skip
    s.xenapi.host.disable(master.ref)
    s.xenapi.host.reboot(master.ref)
    wait_until(lambda: not answers(master), what="the master to go down")
    wait_until(lambda: answers(master), what="the master to come back")
    proxy = xmlrpc.client.ServerProxy(sim.url)
    assert proxy.network.get_record(before, net)["ErrorDescription"] == ["SESSION_INVALID", before]
    # the SDK logs in again by itself; the state survived
    assert s.xenapi.network.get_name_label(net) == "kept"
    assert s.xenapi.host.get_enabled(master.ref)
    s.xenapi.network.destroy(net)
    s.xenapi.session.logout()
