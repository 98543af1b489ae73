"""Resize and cold migration between two simulated hosts: confirm, revert, bytes identical.

Real VHD chains in the simulated dom0s, real rsync over the destination's
loopback OpenSSH (rsync transport) or real HTTP streams through XAPI's
export_raw_vdi / import_raw_vdi (xapi transport). Every disk is compared by
reading it back through the VHD library.
"""

from __future__ import annotations

import json

import pytest
from resize_helpers import (
    DATA_SPAN,
    GiB,
    MiB,
    digest,
    flavor,
    make_instance,
    migrate,
    power_state,
    revert,
    write_pattern,
)

from nova import exception as nova_exception
from xenapi_driver import migrateops

BOTH = pytest.mark.parametrize("transport", ["rsync", "xapi"], indirect=True)


@BOTH
def test_resize_up_then_confirm(computes, transport):
    src, dst = computes
    inst = make_instance(flavor("small", root_gb=1))
    src.spawn(inst)
    _vdi, path = src.root(inst)
    leaf_writes = {}

    def guest_writes(step):
        if step == "power_off":  # the guest keeps writing while its parents are copied
            write_pattern(path, 77, count=3)
            leaf_writes["digest"] = digest(path)

    info = migrate(src, dst, inst, flavor("big", root_gb=2), hook=guest_writes)

    assert info["mode"] == transport
    (root,) = info["disks"]
    assert root["chain_length"] == 3  # leaf, the resize's snapshot base, the image base
    if transport == "rsync":
        assert all(s["local"] is False for s in root["stats"].values())  # really over SSH
    # progress goes 0 -> 100 and never back
    assert inst.saved_progress[0] == 0 and inst.saved_progress[-1] == 100
    assert inst.saved_progress == sorted(inst.saved_progress)
    new_vdi, new_path = dst.root(inst)
    assert power_state(dst, inst) == "Running"
    assert digest(new_path) == leaf_writes["digest"]
    assert int(dst.session.call_xenapi("VDI.get_virtual_size", new_vdi)) == 2 * GiB
    assert dst.session.call_xenapi("VM.get_memory_static_max", dst.vmops.lookup(inst)[0]) == str(512 * MiB)
    # the source keeps the original, renamed, invisible to instance lookups
    assert src.vm_names() == [inst.name + migrateops.KEPT_SUFFIX]
    assert src.vmops.lookup(inst) is None
    assert dst.staging() == []

    src.migrateops.confirm_migration(None, None, inst, [])
    assert src.vm_names() == []
    assert src.sr_files() == set()  # the original's disks, snapshots and base copies are gone
    assert digest(dst.root(inst)[1]) == leaf_writes["digest"]


@BOTH
def test_cold_migrate_then_revert(computes, transport):
    src, dst = computes
    inst = make_instance(flavor("small", root_gb=1))
    src.spawn(inst)
    vdi, path = src.root(inst)
    whole = None if transport == "rsync" else DATA_SPAN  # one run reads all 1 GiB
    before = digest(path, whole)
    files_before = src.sr_files()

    migrate(src, dst, inst, inst.flavor)
    assert power_state(dst, inst) == "Running"
    assert digest(dst.root(inst)[1], whole) == before

    revert(src, dst, inst)
    assert src.vm_names() == [inst.name]
    assert power_state(src, inst) == "Running"
    assert src.root(inst)[0] == vdi
    assert digest(src.root(inst)[1], whole) == before
    assert src.sr_files() == files_before  # the snapshot is gone, the GC put the chain back
    assert dst.vm_names() == [] and dst.sr_files() == set() and dst.staging() == []


@BOTH
def test_ephemeral_disk_moves_and_grows(computes, transport):
    src, dst = computes
    inst = make_instance(flavor("eph", root_gb=1, ephemeral_gb=1, swap=64))
    src.spawn(inst)
    _eph, eph_path = src.root(inst, "ephemeral")
    write_pattern(eph_path, 5)
    root_before, eph_before = digest(src.root(inst)[1]), digest(eph_path)

    info = migrate(src, dst, inst, flavor("eph2", root_gb=1, ephemeral_gb=2, swap=64))
    assert [d["role"] for d in info["disks"]] == ["root", "ephemeral"]  # swap is recreated, not sent
    new_eph, new_eph_path = dst.root(inst, "ephemeral")
    assert digest(new_eph_path) == eph_before
    assert int(dst.session.call_xenapi("VDI.get_virtual_size", new_eph)) == 2 * GiB
    assert digest(dst.root(inst)[1]) == root_before
    assert dst.root(inst, "swap")

    revert(src, dst, inst)
    assert digest(src.root(inst, "ephemeral")[1]) == eph_before
    assert dst.sr_files() == set()


def test_new_ephemeral_disk_when_the_flavor_adds_one(computes):
    src, dst = computes
    inst = make_instance(flavor("small", root_gb=1))
    src.spawn(inst)
    migrate(src, dst, inst, flavor("witheph", root_gb=1, ephemeral_gb=1))
    eph, _ = dst.root(inst, "ephemeral")
    assert int(dst.session.call_xenapi("VDI.get_virtual_size", eph)) == GiB


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (
            dict(root_gb=1, ephemeral_gb=2),
            dict(root_gb=1, ephemeral_gb=1),
            "cannot shrink the ephemeral disk",
        ),
        (dict(root_gb=1), dict(root_gb=0), "root_gb 0"),
        (dict(root_gb=2), dict(root_gb=1), "resizing the root disk down"),
    ],
    ids=["ephemeral-shrink", "root-to-zero", "root-down"],
)
def test_refusals_leave_the_instance_running(computes, old, new, reason):
    src, dst = computes
    inst = make_instance(flavor("old", **old))
    src.spawn(inst)
    before = digest(src.root(inst)[1])
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, flavor("new", **new), [])
    assert isinstance(err.value.inner_exception, nova_exception.ResizeError)
    assert reason in str(err.value.inner_exception)
    assert power_state(src, inst) == "Running"
    assert src.vm_names() == [inst.name]
    assert digest(src.root(inst)[1]) == before
    assert dst.staging() == []


def test_rsync_needs_a_file_sr(computes, monkeypatch):
    src, dst = computes
    inst = make_instance(flavor("small", root_gb=1))
    src.spawn(inst)
    real = src.session.call_xenapi

    def lvm_sr(method, *args):
        record = real(method, *args)
        if method == "SR.get_record":
            record = dict(record, type="lvmoiscsi")
        return record

    monkeypatch.setattr(src.session, "call_xenapi", lvm_sr)  # only the SR type is stood in
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])
    assert "migration_transport = xapi" in str(err.value.inner_exception)
    monkeypatch.undo()
    assert power_state(src, inst) == "Running"


def test_volumes_follow_the_instance_and_come_back_on_revert(computes, sim):
    """A Cinder (iSCSI) data volume: detached at power-off, attached on the destination, back on revert."""
    from xenapi_driver.simulator import sr_backend

    src, dst = computes
    inst = make_instance(flavor("small", root_gb=1))
    src.spawn(inst)
    iqn = "iqn.2010-10.org.openstack:volume-resize"
    sr_backend.create_lun(sim.world.iscsi_root, iqn, 0, 8 * MiB)
    volume_id = "5f0cbb4c-8f0d-4a5e-9c53-2ad2b6a4d2f1"
    info = {
        "driver_volume_type": "iscsi",
        "serial": volume_id,
        "data": {"volume_id": volume_id, "target_portal": "127.0.0.1:3260", "target_iqn": iqn,
                 "target_lun": 0, "target_discovered": False, "access_mode": "rw"},
    }  # fmt: skip
    src.volumeops.attach_volume(info, inst, "/dev/xvdb")
    mapping = [{"connection_info": info, "mount_device": "/dev/xvdb", "boot_index": None}]
    bdi = {"root_device_name": "/dev/xvda", "ephemerals": [], "swap": None, "block_device_mapping": mapping}

    def volume_vbds(compute):
        vm_ref = compute.vmops.lookup(inst)[0]
        return [
            v for v in compute.session.call_xenapi("VM.get_VBDs", vm_ref)
            if compute.session.call_xenapi("VBD.get_userdevice", v) not in ("0", "2", "4")
        ]  # fmt: skip

    assert len(volume_vbds(src)) == 1
    disk_info = src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [], bdi)
    assert [d["role"] for d in json.loads(disk_info)["disks"]] == ["root"]  # volumes are not copied
    kept_ref, _ = src.migrateops._kept(inst)
    assert len(src.session.call_xenapi("VM.get_VBDs", kept_ref)) == 1  # only the root disk is left
    dst.migrateops.finish_migration(None, None, inst, disk_info, [], None, False, bdi, power_on=True)
    assert len(volume_vbds(dst)) == 1
    dst.vmops.destroy(inst, [])
    src.migrateops.finish_revert_migration(None, inst, [], None, bdi, power_on=True)
    assert len(volume_vbds(src)) == 1
    assert power_state(src, inst) == "Running"
