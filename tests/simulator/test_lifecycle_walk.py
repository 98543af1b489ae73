"""The simulator's proof: one VM walks its whole life through the real XenAPI SDK over HTTP.

create -> start -> snapshot -> suspend -> resume -> migrate between hosts of a pool ->
Storage XenMotion to another pool, checking records, events and XAPI's error codes at each step.
Nothing here touches the simulator's internals: only URLs and credentials come from ``api``.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
from urllib.parse import urlencode

import pytest
import XenAPI

from tests.simulator.sim_records import fails, vm_record
from xenapi_driver.simulator import api

MiB = 1024**2
NULL = "OpaqueRef:NULL"


@pytest.fixture(scope="module")
def two_pools():
    sim = api.start(hosts=[2, 1])
    try:
        yield sim
    finally:
        sim.stop()


def login(url, sim):
    session = XenAPI.Session(url)
    session.xenapi.login_with_password(sim.username, sim.password, "1.0", "lifecycle-walk")
    return session


class Events:
    """Follows ``event.from`` like a client would, collecting (class, operation, ref)."""

    def __init__(self, x, classes):
        self.x = x
        self.classes = classes
        self.token = x.event_from(classes, "", 0.0)["token"]

    def take(self):
        out = []
        while True:
            batch = self.x.event_from(self.classes, self.token, 0.0)
            self.token = batch["token"]
            if not batch["events"]:
                return out
            out += [(e["class"], e["operation"], e["ref"], e.get("snapshot", {})) for e in batch["events"]]

    def seen(self, events, cls, op, ref):
        return any(c == cls and o == op and r == ref for c, o, r, _ in events)


def http(url, method, session_ref, body=None, **query):
    query = {"session_id": session_ref, **query}
    req = urllib.request.Request(
        f"{url.rstrip('/')}/{method[1]}?{urlencode(query)}", data=body, method=method[0]
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read(), resp.headers


def new_vm(x, name, memory=256 * MiB):
    return x.VM.create(
        vm_record(
            name,
            memory,
            name_description="lifecycle walk",
            memory_static_min=str(memory // 2),
            VCPUs_max="2",
            VCPUs_at_startup="2",
            actions_after_crash="restart",
            xenstore_data={"vm-data/hostname": name},
        )
    )


def test_vm_lifecycle_walk(two_pools):
    sim = two_pools
    src = login(sim.pools[0].url, sim)
    dst = login(sim.pools[1].url, sim)
    a, b = src.xenapi, dst.xenapi
    try:
        walk(sim, src, dst, a, b)
    finally:
        for s in (src, dst):
            with contextlib.suppress(Exception):
                s.xenapi.session.logout()


def walk(sim, src, dst, a, b):
    hosts = a.host.get_all()
    assert len(hosts) == 2
    events = Events(a, ["vm", "vdi", "vbd", "task"])
    network = a.network.get_all()[0]

    # A shared SR so the VM can move between the pool's hosts.
    shared = a.SR.create(hosts[0], {}, "0", "shared", "", "nfs", "user", True, {})
    assert a.SR.get_shared(shared) and len(a.SR.get_PBDs(shared)) == 2

    # --- create ---------------------------------------------------------------------------
    disk = a.VDI.create(
        {
            "SR": shared,
            "virtual_size": str(8 * MiB),
            "type": "system",
            "sharable": False,
            "read_only": False,
            "other_config": {},
            "name_label": "root",
            "name_description": "",
        }
    )
    disk_uuid = a.VDI.get_uuid(disk)
    payload = os.urandom(4096) * 8  # 32 KiB of data at the start of the disk
    task = a.task.create("import", "")
    status, _, _ = http(
        sim.pools[0].url,
        ("PUT", "import_raw_vdi"),
        src._session,
        payload,
        vdi=disk,
        format="raw",
        task_id=task,
    )
    assert status == 200
    assert a.task.get_status(task) == "success"
    assert disk in a.task.get_result(task)
    vm = new_vm(a, "walker")
    vbd = a.VBD.create(
        {
            "VM": vm,
            "VDI": disk,
            "userdevice": "0",
            "bootable": True,
            "mode": "RW",
            "type": "Disk",
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    vif = a.VIF.create(
        {
            "device": "0",
            "network": network,
            "VM": vm,
            "MAC": "",
            "MTU": "1500",
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    rec = a.VM.get_record(vm)
    assert rec["power_state"] == "Halted" and rec["domid"] == "-1" and rec["resident_on"] == NULL
    assert "start" in rec["allowed_operations"] and "suspend" not in rec["allowed_operations"]
    assert rec["VBDs"] == [vbd] and rec["VIFs"] == [vif]
    mac = a.VIF.get_MAC(vif)
    assert mac
    seen = events.take()
    assert events.seen(seen, "vm", "add", vm) and events.seen(seen, "vdi", "add", disk)
    assert fails(a.VM.clean_shutdown, vm) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert fails(a.VM.resume, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "suspended", "halted"]

    # --- start ------------------------------------------------------------------------------
    task = a.Async.VM.start(vm, False, False)
    wait_task(a, task)
    rec = a.VM.get_record(vm)
    assert rec["power_state"] == "Running" and int(rec["domid"]) > 0 and rec["resident_on"] in hosts
    assert a.VBD.get_currently_attached(vbd) and a.VIF.get_currently_attached(vif)
    assert "clean_shutdown" in rec["allowed_operations"] and "start" not in rec["allowed_operations"]
    consoles = [a.console.get_record(c) for c in rec["consoles"]]
    assert any(c["protocol"] == "rfb" and "/console?uuid=" in c["location"] for c in consoles)
    assert a.VM_metrics.get_VCPUs_number(rec["metrics"]) == "2"
    assert a.VM_guest_metrics.get_PV_drivers_detected(rec["guest_metrics"])
    free = int(a.host.compute_free_memory(rec["resident_on"]))
    assert free <= int(a.host_metrics.get_memory_total(a.host.get_metrics(rec["resident_on"]))) - 256 * MiB
    seen = events.take()
    assert any(c == "vm" and r == vm and s.get("power_state") == "Running" for c, _, r, s in seen)
    assert fails(a.VM.start, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert fails(a.VDI.destroy, disk) == ["VDI_IN_USE", disk, "destroy"]
    assert fails(a.VBD.plug, vbd)[0] == "DEVICE_ALREADY_ATTACHED"

    # --- snapshot ---------------------------------------------------------------------------
    snap = a.VM.snapshot(vm, "walker-snap")
    srec = a.VM.get_record(snap)
    assert srec["is_a_snapshot"] and srec["is_a_template"] and srec["snapshot_of"] == vm
    assert a.VM.get_snapshots(vm) == [snap]
    assert fails(a.VM.start, snap, False, False) == ["VM_IS_TEMPLATE", snap]
    snap_disk = a.VBD.get_VDI(srec["VBDs"][0])
    assert a.VDI.get_snapshot_of(snap_disk) == disk and a.VDI.get_is_a_snapshot(snap_disk)
    assert a.VDI.get_uuid(disk) == disk_uuid  # the user's disk keeps its identity
    base_uuid = a.VDI.get_sm_config(disk)["vhd-parent"]
    assert a.VDI.get_sm_config(snap_disk)["vhd-parent"] == base_uuid
    base = a.VDI.get_by_uuid(base_uuid)
    assert not a.VDI.get_managed(base) and a.VDI.get_read_only(base)
    seen = events.take()
    assert events.seen(seen, "vm", "add", snap) and events.seen(seen, "vdi", "add", snap_disk)

    # --- suspend ----------------------------------------------------------------------------
    a.VM.suspend(vm)
    rec = a.VM.get_record(vm)
    assert rec["power_state"] == "Suspended" and rec["domid"] == "-1" and rec["resident_on"] == NULL
    suspend_vdi = rec["suspend_VDI"]
    assert a.VDI.get_type(suspend_vdi) == "suspend"
    assert int(a.VDI.get_virtual_size(suspend_vdi)) >= 256 * MiB
    assert rec["allowed_operations"] and "resume" in rec["allowed_operations"]
    assert fails(a.VM.start, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "suspended"]
    assert fails(a.VM.pause, vm) == ["VM_BAD_POWER_STATE", vm, "running", "suspended"]
    seen = events.take()
    assert any(c == "vm" and r == vm and s.get("power_state") == "Suspended" for c, _, r, s in seen)

    # --- resume -----------------------------------------------------------------------------
    a.VM.resume(vm, False, False)
    rec = a.VM.get_record(vm)
    assert rec["power_state"] == "Running" and int(rec["domid"]) > 0 and rec["suspend_VDI"] == NULL
    assert fails(a.VDI.get_record, suspend_vdi) == ["HANDLE_INVALID", "VDI", suspend_vdi]
    seen = events.take()
    assert events.seen(seen, "vdi", "del", suspend_vdi)
    assert fails(a.VM.resume, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "suspended", "running"]

    # --- migrate between the pool's hosts ---------------------------------------------------
    here = rec["resident_on"]
    there = [h for h in hosts if h != here][0]
    assert fails(a.VM.pool_migrate, snap, there, {}) == ["VM_IS_TEMPLATE", snap]
    assert fails(a.VM.pool_migrate, vm, "OpaqueRef:nowhere", {}) == [
        "HANDLE_INVALID",
        "host",
        "OpaqueRef:nowhere",
    ]
    old_domid = rec["domid"]
    a.VM.pool_migrate(vm, there, {"live": "true"})
    rec = a.VM.get_record(vm)
    assert rec["resident_on"] == there and rec["power_state"] == "Running"
    assert vm in a.host.get_resident_VMs(there) and vm not in a.host.get_resident_VMs(here)
    assert rec["domid"] != "-1" and (rec["domid"], here) != (old_domid, there)
    seen = events.take()
    assert any(c == "vm" and r == vm and s.get("resident_on") == there for c, _, r, s in seen)

    # --- Storage XenMotion to the other pool ------------------------------------------------
    started = a.VM_metrics.get_start_time(rec["metrics"])
    dest_host = b.host.get_all()[0]
    dest_sr = b.pool.get_default_SR(b.pool.get_all()[0])
    dest_net = b.network.get_all()[0]
    dest = b.host.migrate_receive(dest_host, dest_net, {})
    assert dest["host"] == dest_host and {"session_id", "master", "xenops", "SM"} <= set(dest)
    assert fails(a.VM.assert_can_migrate, vm, dest, True, {}, {vif: dest_net}, {}) == ["VDI_NOT_IN_MAP", disk]
    assert fails(a.VM.assert_can_migrate, vm, dest, True, {disk: dest_sr}, {}, {}) == ["VIF_NOT_IN_MAP", vif]
    a.VM.assert_can_migrate(vm, dest, True, {disk: dest_sr}, {vif: dest_net}, {})
    devents = Events(b, ["vm", "vdi"])
    task = a.Async.VM.migrate_send(vm, dest, True, {disk: dest_sr}, {vif: dest_net}, {})
    result = wait_task(a, task)
    new_vm_ref = result.replace("<value>", "").replace("</value>", "")
    brec = b.VM.get_record(new_vm_ref)
    assert b.VM_metrics.get_start_time(brec["metrics"]) == started
    assert brec["uuid"] == rec["uuid"] and brec["power_state"] == "Running"
    assert brec["resident_on"] == dest_host and int(brec["domid"]) > 0
    new_disk = b.VBD.get_VDI(brec["VBDs"][0])
    assert b.VDI.get_SR(new_disk) == dest_sr
    assert b.VIF.get_network(brec["VIFs"][0]) == dest_net and b.VIF.get_MAC(brec["VIFs"][0]) == mac
    assert [b.VM.get_snapshot_of(s) for s in brec["snapshots"]] == [new_vm_ref]
    status, data, headers = http(
        sim.pools[1].url, ("GET", "export_raw_vdi"), dst._session, vdi=new_disk, format="raw"
    )
    assert status == 200 and data[: len(payload)] == payload and len(data) == 8 * MiB
    assert fails(a.VM.get_by_uuid, rec["uuid"]) == ["UUID_INVALID", "VM", rec["uuid"]]
    assert fails(a.VDI.get_record, disk) == ["HANDLE_INVALID", "VDI", disk]
    seen = events.take()
    assert events.seen(seen, "vm", "del", vm) and events.seen(seen, "vdi", "del", disk)
    dseen = devents.take()
    assert events.seen(dseen, "vm", "add", new_vm_ref) and events.seen(dseen, "vdi", "add", new_disk)

    # The migrated VM keeps working in its new pool.
    b.VM.clean_shutdown(new_vm_ref)
    assert b.VM.get_power_state(new_vm_ref) == "Halted"


def wait_task(x, task):
    deadline = time.monotonic() + 60
    while (status := x.task.get_status(task)) == "pending" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert status == "success", x.task.get_error_info(task)
    result = x.task.get_result(task)
    x.task.destroy(task)
    return result
