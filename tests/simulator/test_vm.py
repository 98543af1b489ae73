"""VM semantics through the real SDK: XAPI's power-state machine, allowed operations, memory."""

from __future__ import annotations

import time

import pytest
import XenAPI

from tests.simulator.sim_records import vm_record

MiB = 1024**2
GiB = 1024**3
NULL = "OpaqueRef:NULL"


def make_vm(x, name="vm", memory=128 * MiB, **extra):
    return x.VM.create(vm_record(name, memory, **{"VCPUs_max": "2", **extra}))


def add_disk(x, vm, sr, device="0", size=4 * MiB):
    vdi = x.VDI.create(
        {
            "SR": sr,
            "virtual_size": str(size),
            "type": "system",
            "sharable": False,
            "read_only": False,
            "other_config": {},
            "name_label": f"disk{device}",
            "name_description": "",
        }
    )
    x.VBD.create(
        {
            "VM": vm,
            "VDI": vdi,
            "userdevice": device,
            "bootable": device == "0",
            "mode": "RW",
            "type": "Disk",
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    return vdi


def add_vif(x, vm, device="0", mac=""):
    return x.VIF.create(
        {
            "device": device,
            "network": x.network.get_all()[0],
            "VM": vm,
            "MAC": mac,
            "MTU": "1500",
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )


def bad_state(vm, expected, actual):
    return ["VM_BAD_POWER_STATE", vm, expected, actual]


def test_power_state_machine(xapi, sim, failure):
    master = sim.pool.master.ref
    vm = make_vm(xapi, "states")
    add_disk(xapi, vm, sim.pool.master.local_sr)
    assert xapi.VM.get_power_state(vm) == "Halted"
    xapi.VM.start_on(vm, master, True, False)
    assert xapi.VM.get_power_state(vm) == "Paused" and xapi.VM.get_resident_on(vm) == master
    assert set(xapi.VM.get_allowed_operations(vm)) >= {"unpause", "hard_shutdown"}
    assert failure(xapi.VM.pause, vm) == bad_state(vm, "running", "paused")
    assert failure(xapi.VM.suspend, vm) == bad_state(vm, "running", "paused")
    xapi.VM.unpause(vm)
    assert xapi.VM.get_power_state(vm) == "Running"
    assert failure(xapi.VM.unpause, vm) == bad_state(vm, "paused", "running")
    domid = xapi.VM.get_domid(vm)
    xapi.VM.clean_reboot(vm)
    assert xapi.VM.get_power_state(vm) == "Running" and xapi.VM.get_domid(vm) != domid
    domid = xapi.VM.get_domid(vm)
    xapi.VM.hard_reboot(vm)
    assert xapi.VM.get_domid(vm) != domid
    xapi.VM.pause(vm)
    assert failure(xapi.VM.clean_reboot, vm) == bad_state(vm, "running", "paused")
    xapi.VM.hard_shutdown(vm)
    rec = xapi.VM.get_record(vm)
    assert rec["power_state"] == "Halted" and rec["domid"] == "-1" and rec["resident_on"] == NULL
    assert rec["consoles"] == [] and rec["guest_metrics"] == NULL
    assert failure(xapi.VM.hard_shutdown, vm)[0:2] == ["VM_BAD_POWER_STATE", vm]
    xapi.VM.start(vm, False, False)
    assert failure(xapi.VM.destroy, vm) == bad_state(vm, "halted", "running")
    xapi.VM.suspend(vm)
    other = sim.pool.hosts[1].ref
    assert failure(xapi.VM.resume_on, vm, other, False, False)[0] == "VM_REQUIRES_SR"
    xapi.VM.resume_on(vm, master, False, False)
    xapi.VM.suspend(vm)
    suspend_vdi = xapi.VM.get_suspend_VDI(vm)
    xapi.VM.hard_shutdown(vm)  # a suspended VM can be hard-shut down: its image is discarded
    assert xapi.VM.get_power_state(vm) == "Halted" and xapi.VM.get_suspend_VDI(vm) == NULL
    assert failure(xapi.VDI.get_record, suspend_vdi)[0] == "HANDLE_INVALID"
    xapi.VM.destroy(vm)
    assert failure(xapi.VM.get_record, vm) == ["HANDLE_INVALID", "VM", vm]


def test_records_while_running(xapi, sim):
    vm = make_vm(xapi, "records", VCPUs_at_startup="2")
    vif = add_vif(xapi, vm)
    xapi.VM.start_on(vm, sim.pool.master.ref, False, False)
    rec = xapi.VM.get_record(vm)
    metrics = xapi.VM_metrics.get_record(rec["metrics"])
    assert metrics["VCPUs_number"] == "2" and int(metrics["memory_actual"]) == 128 * MiB
    assert xapi.VM_guest_metrics.get_record(rec["guest_metrics"])["PV_drivers_detected"]
    rfb = [c for c in rec["consoles"] if xapi.console.get_protocol(c) == "rfb"]
    assert len(rfb) == 1
    location = xapi.console.get_location(rfb[0])
    assert location.endswith("/console?uuid=" + xapi.console.get_uuid(rfb[0]))
    assert sim.pool.master.address in location
    assert xapi.VIF.get_currently_attached(vif)
    assert int(rec["domid"]) > 0 and vm in xapi.host.get_resident_VMs(sim.pool.master.ref)
    xapi.VM.clean_shutdown(vm)
    assert xapi.VM_metrics.get_memory_actual(rec["metrics"]) == "0"
    xapi.VM.destroy(vm)
    assert failure_code(xapi.VM_metrics.get_record, rec["metrics"]) == "HANDLE_INVALID"


def failure_code(call, *args):
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details[0]


def test_allowed_operations_follow_state_and_blocked_operations(xapi, sim, failure):
    vm = make_vm(xapi, "blocked")
    ops = set(xapi.VM.get_allowed_operations(vm))
    assert {"start", "clone", "copy", "snapshot", "destroy"} <= ops and "clean_shutdown" not in ops
    xapi.VM.add_to_blocked_operations(vm, "start", "reason-code")
    assert "start" not in xapi.VM.get_allowed_operations(vm)
    assert failure(xapi.VM.start, vm, False, False) == ["OPERATION_BLOCKED", vm, "reason-code"]
    xapi.VM.remove_from_blocked_operations(vm, "start")
    xapi.VM.start(vm, False, False)
    ops = set(xapi.VM.get_allowed_operations(vm))
    assert {"clean_shutdown", "hard_shutdown", "suspend", "pause", "pool_migrate", "snapshot"} <= ops
    assert "start" not in ops and "destroy" not in ops
    xapi.VM.hard_shutdown(vm)
    template = make_vm(xapi, "template", is_a_template=True)
    assert failure(xapi.VM.start, template, False, False) == ["VM_IS_TEMPLATE", template]
    assert "start" not in xapi.VM.get_allowed_operations(template)


def test_free_memory_is_accounted_and_enforced(xapi, sim, failure):
    host = sim.pool.hosts[2].ref
    metrics = xapi.host.get_metrics(host)
    free = int(xapi.host_metrics.get_memory_free(metrics))
    assert int(xapi.host.compute_free_memory(host)) == free
    vm = make_vm(xapi, "memory", memory=GiB)
    xapi.VM.start_on(vm, host, False, False)
    assert int(xapi.host_metrics.get_memory_free(metrics)) == free - GiB
    huge = make_vm(xapi, "huge", memory=free)
    details = failure(xapi.VM.start_on, huge, host, False, False)
    assert details == ["HOST_NOT_ENOUGH_FREE_MEMORY", str(free), str(free - GiB)]
    too_big = make_vm(xapi, "too-big", memory=1024 * GiB)
    assert failure(xapi.VM.start, too_big, False, False)[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    xapi.VM.hard_shutdown(vm)
    assert int(xapi.host_metrics.get_memory_free(metrics)) == free


def test_memory_constraints(xapi):
    with pytest.raises(XenAPI.Failure) as info:
        make_vm(xapi, "bad", memory=GiB, memory_static_min=str(2 * GiB))
    assert info.value.details[0] == "MEMORY_CONSTRAINT_VIOLATION"
    assert not xapi.VM.get_by_name_label("bad")


def test_clone_copy_snapshot_revert(xapi, sim):
    sr = sim.pool.master.local_sr
    vm = make_vm(xapi, "origin")
    disk = add_disk(xapi, vm, sr)
    vif = add_vif(xapi, vm)
    clone = xapi.VM.clone(vm, "clone")
    crec = xapi.VM.get_record(clone)
    assert crec["power_state"] == "Halted" and crec["name_label"] == "clone"
    cdisk = xapi.VBD.get_VDI(crec["VBDs"][0])
    assert cdisk != disk and xapi.VDI.get_SR(cdisk) == sr
    assert xapi.VDI.get_sm_config(cdisk)["vhd-parent"] == xapi.VDI.get_sm_config(disk)["vhd-parent"]
    assert xapi.VIF.get_MAC(crec["VIFs"][0]) != xapi.VIF.get_MAC(vif)  # autogenerated MACs are renewed
    copy = xapi.VM.copy(vm, "copy", sr)
    kdisk = xapi.VBD.get_VDI(xapi.VM.get_VBDs(copy)[0])
    assert "vhd-parent" not in xapi.VDI.get_sm_config(kdisk)
    snap = xapi.VM.snapshot(vm, "snap")
    assert xapi.VM.get_is_a_snapshot(snap) and xapi.VM.get_snapshot_of(snap) == vm
    assert xapi.VIF.get_MAC(xapi.VM.get_VIFs(snap)[0]) == xapi.VIF.get_MAC(vif)
    xapi.VM.revert(snap)
    new_disk = xapi.VBD.get_VDI(xapi.VM.get_VBDs(vm)[0])
    assert new_disk != disk and xapi.VM.get_parent(vm) == snap


def test_provision_creates_template_disks(xapi, sim):
    sr_uuid = xapi.SR.get_uuid(sim.pool.master.local_sr)
    disk = f'<disk device="0" size="{8 * MiB}" sr="{sr_uuid}" bootable="true" type="system"/>'
    spec = f"<provision>{disk}</provision>"
    vm = make_vm(xapi, "provisioned", other_config={"disks": spec})
    xapi.VM.provision(vm)
    vbds = xapi.VM.get_VBDs(vm)
    assert len(vbds) == 1 and xapi.VBD.get_bootable(vbds[0])
    assert int(xapi.VDI.get_virtual_size(xapi.VBD.get_VDI(vbds[0]))) == 8 * MiB
    assert "disks" not in xapi.VM.get_other_config(vm)


def test_vif_lifecycle(xapi, sim, failure):
    vm = make_vm(xapi, "net")
    vif = add_vif(xapi, vm, mac="02:00:00:00:00:01")
    assert not xapi.VIF.get_MAC_autogenerated(vif)
    assert failure(add_vif, xapi, vm, "0") == ["DEVICE_ALREADY_EXISTS", "0"]
    assert failure(xapi.VIF.plug, vif) == bad_state(vm, "running", "halted")
    xapi.VM.start_on(vm, sim.pool.master.ref, False, False)
    assert failure(xapi.VIF.plug, vif) == ["DEVICE_ALREADY_ATTACHED", vif]
    assert failure(xapi.VIF.destroy, vif)[0] == "OPERATION_NOT_ALLOWED"
    xapi.VIF.unplug(vif)
    assert failure(xapi.VIF.unplug, vif) == ["DEVICE_ALREADY_DETACHED", vif]
    hot = add_vif(xapi, vm, "1")
    assert not xapi.VIF.get_currently_attached(hot)
    xapi.VIF.plug(hot)
    assert xapi.VIF.get_currently_attached(hot)
    xapi.VIF.destroy(vif)
    xapi.VM.hard_shutdown(vm)


def test_async_start_reports_through_task(xapi, sim):
    vm = make_vm(xapi, "async")
    task = xapi.Async.VM.start(vm, False, False)
    deadline = time.monotonic() + 30
    while xapi.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert xapi.task.get_status(task) == "success"
    bad = xapi.Async.VM.start(vm, False, False)
    while xapi.task.get_status(bad) == "pending" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert xapi.task.get_error_info(bad) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    xapi.VM.hard_shutdown(vm)


def test_other_operation_in_progress(xapi, failure):
    vm = make_vm(xapi, "slow", other_config={"simulator_operation_delay": "1"})
    task = xapi.Async.VM.start(vm, False, False)
    token = ""
    ops = {}
    for _ in range(200):  # wait (bounded) until the start is under way
        batch = xapi.event_from([f"vm/{vm}"], token, 5.0)
        token = batch["token"]
        ops = xapi.VM.get_current_operations(vm)
        if ops:
            break
    assert list(ops.values()) == ["start"] and xapi.VM.get_allowed_operations(vm) == []
    (op_ref,) = ops
    assert failure(xapi.VM.start, vm, False, False) == [
        "OTHER_OPERATION_IN_PROGRESS",
        "VM",
        vm,
        "start",
        op_ref,
    ]
    deadline = time.monotonic() + 30
    while xapi.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert xapi.task.get_status(task) == "success" and xapi.VM.get_current_operations(vm) == {}
    xapi.VM.remove_from_other_config(vm, "simulator_operation_delay")
    xapi.VM.hard_shutdown(vm)


def test_explicit_setters_and_device_helpers(xapi, failure):
    vm = make_vm(xapi, "setters")
    xapi.VM.set_VCPUs_max(vm, "4")
    xapi.VM.set_VCPUs_at_startup(vm, "3")
    assert xapi.VM.get_VCPUs_at_startup(vm) == "3"
    assert failure(xapi.VM.set_VCPUs_at_startup, vm, "5")[0] == "VCPU_CONSTRAINT_VIOLATION"
    xapi.VM.set_HVM_boot_policy(vm, "BIOS order")
    xapi.VM.set_domain_type(vm, "hvm")
    assert xapi.VM.get_domain_type(vm) == "hvm"
    xapi.VM.set_memory_limits(vm, str(64 * MiB), str(256 * MiB), str(128 * MiB), str(256 * MiB))
    assert xapi.VM.get_memory_static_max(vm) == str(256 * MiB)
    assert failure(xapi.VM.set_memory_dynamic_range, vm, str(512 * MiB), str(512 * MiB))[0] == (
        "MEMORY_CONSTRAINT_VIOLATION"
    )
    vif = add_vif(xapi, vm)
    assert xapi.VM.get_allowed_VIF_devices(vm) == ["1", "2", "3", "4", "5", "6"]
    assert xapi.VM.get_allowed_VBD_devices(vm)[0] == "0"
    xapi.VIF.configure_ipv4(vif, "Static", "10.0.0.5/24", "10.0.0.1")
    assert xapi.VIF.get_ipv4_addresses(vif) == ["10.0.0.5/24"]
    xapi.VIF.add_ipv4_allowed(vif, "10.0.0.5")
    xapi.VIF.set_locking_mode(vif, "locked")
    assert xapi.VIF.get_ipv4_allowed(vif) == ["10.0.0.5"] and xapi.VIF.get_locking_mode(vif) == "locked"


def test_host_evacuate_moves_guests(xapi, sim):
    h0, h1 = sim.pool.hosts[0].ref, sim.pool.hosts[1].ref
    shared = xapi.SR.create(h0, {}, "0", "evac", "", "nfs", "user", True, {})
    vm = make_vm(xapi, "evacuee")
    add_disk(xapi, vm, shared)
    xapi.VM.start_on(vm, h1, False, False)
    assert xapi.host.get_vms_which_prevent_evacuation(h1) == {}
    xapi.host.evacuate(h1)
    assert xapi.VM.get_resident_on(vm) not in (h1, NULL)
    xapi.VM.hard_shutdown(vm)


def test_concurrent_starts_never_overcommit_a_host(xapi, sim, session):
    import concurrent.futures

    host = sim.pool.hosts[2].ref
    free = int(xapi.host.compute_free_memory(host))
    size = free // 3 - MiB
    vms = [make_vm(xapi, f"race{i}", memory=size) for i in range(6)]

    def start(vm):
        s = XenAPI.Session(sim.url)
        s.xenapi.login_with_password(sim.username, sim.password, "1.0", "race")
        try:
            s.xenapi.VM.start_on(vm, host, False, False)
            return "ok"
        except XenAPI.Failure as exc:
            return exc.details[0]
        finally:
            s.xenapi.session.logout()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(start, vms))
    assert sorted(results) == ["HOST_NOT_ENOUGH_FREE_MEMORY"] * 3 + ["ok"] * 3
    assert int(xapi.host.compute_free_memory(host)) >= 0
    for vm in vms:
        if xapi.VM.get_power_state(vm) == "Running":
            xapi.VM.hard_shutdown(vm)
    assert int(xapi.host.compute_free_memory(host)) == free


def test_hvm_guest_without_tools_cannot_shut_down_cleanly(xapi, sim, failure):
    vm = make_vm(xapi, "no-tools", HVM_boot_policy="BIOS order", other_config={"simulator-agent": "false"})
    xapi.VM.start_on(vm, sim.pool.master.ref, False, False)
    ops = xapi.VM.get_allowed_operations(vm)
    assert "clean_shutdown" not in ops and "suspend" not in ops and "hard_shutdown" in ops
    assert failure(xapi.VM.clean_shutdown, vm) == ["VM_LACKS_FEATURE", vm]
    assert failure(xapi.VM.suspend, vm) == ["VM_LACKS_FEATURE", vm]
    xapi.VM.hard_shutdown(vm)


def test_live_memory_changes_are_accounted(xapi, sim):
    host = sim.pool.hosts[2].ref
    vm = make_vm(
        xapi, "balloon", memory=512 * MiB, memory_dynamic_min=str(128 * MiB), memory_static_min=str(128 * MiB)
    )
    xapi.VM.start_on(vm, host, False, False)
    free = int(xapi.host.compute_free_memory(host))
    xapi.VM.set_memory_dynamic_range(vm, str(128 * MiB), str(256 * MiB))
    assert int(xapi.host.compute_free_memory(host)) == free + 256 * MiB
    assert xapi.VM.get_memory_target(vm) == str(256 * MiB)
    xapi.VM.hard_shutdown(vm)
