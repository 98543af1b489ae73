"""A failure at every step of a resize leaves the source intact, revertible, and the destination clean.

Each case injects one failure at one step (the step hook fires just before the
step runs) and then checks the same invariants: the source instance VM is
back under its name with its Nova UUID, powered on, its root disk's bytes
unchanged (read through the VHD chain); a revert (Nova's
finish_revert_migration, also its crash recovery) works; the destination has
no VM, no VHD file left in its SR after a scan (GC), and nothing in /images.

Steps covered (``STEPS_COVERED`` is asserted against ``migrateops.STEP_HOOKS``):
source: snapshot, copy_parent, power_off, rename, copy_leaf;
destination: import, create_vm, power_on.
Failures: a XAPI error returned by the simulator, rsync dying (destination
sshd gone), a toolstack restart (all sessions invalidated), a full
destination SR (xapi transport), and the compute process killed (the
operation stops dead; a fresh compute then recovers as Nova's init_host does).
"""

from __future__ import annotations

import json

import pytest
from resize_helpers import Compute, digest, flavor, make_instance

from nova import exception as nova_exception
from xenapi_driver import migrateops

SOURCE_STEPS = ["snapshot", "copy_parent", "power_off", "rename", "copy_leaf"]
DEST_STEPS = ["import", "create_vm", "power_on"]
STEPS_COVERED = SOURCE_STEPS + DEST_STEPS

# The XAPI call each step makes first, failed through the simulator's fault injection.
FAILING_CALL = {
    "snapshot": "VDI.snapshot",
    "copy_parent": "host.call_plugin",
    "power_off": "VM.hard_shutdown",
    "rename": "VM.set_name_label",
    "copy_leaf": "host.call_plugin",
    "import": "host.call_plugin",
    "create_vm": "VM.create",
    "power_on": "VM.start_on",
}


class Killed(BaseException):
    """The compute process dies: no except-Exception handler runs, nothing is rolled back."""


def test_every_step_is_covered():
    assert set(STEPS_COVERED) == set(migrateops.STEP_HOOKS)


def _setup(computes):
    src, dst = computes
    inst = make_instance(flavor("small", root_gb=1))
    src.spawn(inst)
    vdi, path = src.root(inst)
    return src, dst, inst, vdi, digest(path)


def _assert_intact(src, dst, inst, vdi, before):
    """The invariants every failure must keep."""
    found = src.vmops.lookup(inst)
    assert found is not None, "the source instance VM must be back"
    assert found[1]["name_label"] == inst.name
    assert src.vm_names() == [inst.name]
    assert src.session.call_xenapi("VM.get_power_state", found[0]) == "Running"
    assert src.root(inst)[0] == vdi
    assert digest(src.root(inst)[1]) == before
    assert dst.vm_names() == []
    assert dst.sr_files() == set(), "nothing may be left in the destination SR"
    assert dst.staging() == [], "nothing may be left in the destination's /images"


def _revert_again(src, dst, inst, vdi, before):
    """Revert (what Nova runs after the failure) works and changes nothing."""
    dst.vmops.destroy(inst, [])
    src.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
    _assert_intact(src, dst, inst, vdi, before)


def _hook(sim, step, action):
    def hook(name):
        if name == step:
            action()

    return hook


@pytest.mark.parametrize("step", SOURCE_STEPS)
def test_xapi_error_on_the_source(computes, sim, step):
    src, dst, inst, vdi, before = _setup(computes)
    src.migrateops.step_hook = _hook(sim, step, lambda: sim.faults.fail_next(
        FAILING_CALL[step], "INTERNAL_ERROR", f"injected at {step}"))  # fmt: skip
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])
    assert "INTERNAL_ERROR" in str(err.value.inner_exception)
    _assert_intact(src, dst, inst, vdi, before)
    _revert_again(src, dst, inst, vdi, before)


@pytest.mark.parametrize("step", ["copy_parent", "copy_leaf"])
def test_rsync_dies(computes, sim, step):
    src, dst, inst, vdi, before = _setup(computes)
    src.migrateops.step_hook = _hook(sim, step, dst.host.sandbox.stop_sshd)
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])
    assert "TRANSFER_FAILED" in str(err.value.inner_exception)
    _assert_intact(src, dst, inst, vdi, before)
    _revert_again(src, dst, inst, vdi, before)


@pytest.mark.parametrize("step", ["copy_parent", "copy_leaf"])
def test_toolstack_restart_mid_migration(computes, sim, step):
    """Sessions become invalid; the session layer logs in again and the resize completes."""
    src, dst, inst, vdi, before = _setup(computes)
    src.migrateops.step_hook = _hook(sim, step, sim.restart_toolstack)
    disk_info = src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])
    dst.migrateops.finish_migration(None, None, inst, disk_info, [], None, False, power_on=True)
    assert digest(dst.root(inst)[1]) == before
    _revert_again(src, dst, inst, vdi, before)


@pytest.mark.parametrize("transport", ["xapi"], indirect=True)
def test_destination_sr_full(computes, sim):
    src, dst, inst, vdi, before = _setup(computes)
    dst_sr = dst.session.call_xenapi("SR.get_by_uuid", dst.host.local_sr_uuid)
    dst.session.call_xenapi("SR.set_physical_size", dst_sr, str(1024 * 1024))
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])
    assert "SR_FULL" in str(err.value.inner_exception)
    _assert_intact(src, dst, inst, vdi, before)


KILLED_SOURCE = [("rsync", step) for step in SOURCE_STEPS] + [("xapi", "copy_leaf")]


@pytest.mark.parametrize(("transport", "step"), KILLED_SOURCE, indirect=["transport"])
def test_source_compute_killed_then_restarted(computes, sim, step, transport):
    src, dst, inst, vdi, before = _setup(computes)

    def die():
        raise Killed(step)

    src.migrateops.step_hook = _hook(sim, step, die)
    with pytest.raises(Killed):
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [], timeout=0)
    # nova-compute restarts: fresh objects; Nova's init_host finds the instance in
    # RESIZE_MIGRATING and calls finish_revert_migration (power_on: it was ACTIVE).
    restarted = Compute(sim, src.pool, src.host)
    try:
        restarted.migrateops.recover_host()
        restarted.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
        _assert_intact(restarted, dst, inst, vdi, before)
    finally:
        restarted.close()


DEST_CASES = [
    ("rsync", "import", "xapi-error"),
    ("rsync", "import", "killed"),
    ("rsync", "create_vm", "xapi-error"),
    ("rsync", "create_vm", "killed"),
    ("rsync", "power_on", "xapi-error"),
    ("xapi", "create_vm", "killed"),
]


@pytest.mark.parametrize(("transport", "step", "kind"), DEST_CASES, indirect=["transport"])
def test_destination_failure_then_revert(computes, sim, step, kind, transport):
    src, dst, inst, vdi, before = _setup(computes)
    disk_info = src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])

    def fail():
        if kind == "killed":
            raise Killed(step)
        sim.faults.fail_next(FAILING_CALL[step], "INTERNAL_ERROR", f"injected at {step}")

    dst.migrateops.step_hook = _hook(sim, step, fail)
    expected = Killed if kind == "killed" else Exception
    with pytest.raises(expected):
        dst.migrateops.finish_migration(None, None, inst, disk_info, [], None, False, power_on=True)
    if kind == "killed":
        restarted = Compute(sim, dst.pool, dst.host)
        try:
            # only disks imported but never attached need init_host; a VM is Nova's to destroy
            assert bool(restarted.migrateops.recover_host()) == (step == "create_vm")
        finally:
            restarted.close()
    # The user (or Nova) reverts: destroy on the destination, finish_revert on the source.
    assert json.loads(disk_info)["mode"] == transport
    _revert_again(src, dst, inst, vdi, before)
