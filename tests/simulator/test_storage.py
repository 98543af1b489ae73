"""Storage semantics through the real SDK: VDIs as real VHD files, SR.scan's GC, VBD constraints."""

from __future__ import annotations

import pytest
import XenAPI

from tests.simulator.sim_records import vm_record
from xenapi_driver import vhd
from xenapi_driver.simulator import sr_backend

MiB = 1024**2
NULL = "OpaqueRef:NULL"


def make_vdi(x, sr, size=4 * MiB, name="disk", **extra):
    rec = {
        "SR": sr,
        "virtual_size": str(size),
        "type": "user",
        "sharable": False,
        "read_only": False,
        "other_config": {},
        "name_label": name,
        "name_description": "",
    }
    rec.update(extra)
    return x.VDI.create(rec)


def make_vm(x, name="vm", memory=128 * MiB):
    return x.VM.create(vm_record(name, memory))


def make_vbd(x, vm, vdi, device="0", vbd_type="Disk", mode="RW", empty=False):
    return x.VBD.create(
        {
            "VM": vm,
            "VDI": vdi,
            "userdevice": device,
            "bootable": device == "0",
            "mode": mode,
            "type": vbd_type,
            "empty": empty,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )


@pytest.fixture
def local_sr(sim):
    return sim.pool.master.local_sr


@pytest.fixture
def sr_dir(sim):
    return sim.pool.master.sr_path(sim.pool.master.local_sr_uuid)


def test_vdi_create_is_a_real_vhd_named_by_uuid(xapi, local_sr, sr_dir):
    vdi = make_vdi(xapi, local_sr, 5 * MiB)
    rec = xapi.VDI.get_record(vdi)
    path = sr_dir / f"{rec['uuid']}.vhd"
    assert path.exists() and rec["location"] == rec["uuid"]
    info = vhd.info(str(path))
    assert info.disk_type == "dynamic" and int(rec["virtual_size"]) == info.virtual_size == 6 * MiB
    assert rec["managed"] and rec["sm_config"]["vdi_type"] == "vhd"
    assert local_sr == rec["SR"] and vdi in xapi.SR.get_VDIs(local_sr)
    assert "destroy" in rec["allowed_operations"] and "snapshot" in rec["allowed_operations"]


def test_snapshot_clone_destroy_and_scan_gc(xapi, local_sr, sr_dir):
    vdi = make_vdi(xapi, local_sr)
    uuid = xapi.VDI.get_uuid(vdi)
    snap = xapi.VDI.snapshot(vdi, {})
    clone = xapi.VDI.clone(vdi, {})
    assert xapi.VDI.get_uuid(vdi) == uuid and xapi.VDI.get_is_a_snapshot(snap)
    assert xapi.VDI.get_snapshot_of(snap) == vdi and xapi.VDI.get_snapshots(vdi) == [snap]
    assert not xapi.VDI.get_is_a_snapshot(clone)
    chain = vhd.info(str(sr_dir / f"{uuid}.vhd"))
    assert chain.depth == 3 and chain.disk_type == "differencing"
    bases = [xapi.VDI.get_by_uuid(xapi.VDI.get_sm_config(v)["vhd-parent"]) for v in (vdi, snap, clone)]
    assert not any(xapi.VDI.get_managed(b) for b in bases)
    # Destroying both snapshot and clone lets the GC collapse the chain back into the disk.
    xapi.VDI.destroy(snap)
    xapi.VDI.destroy(clone)
    xapi.SR.scan(local_sr)
    assert "vhd-parent" not in xapi.VDI.get_sm_config(vdi)
    assert vhd.info(str(sr_dir / f"{uuid}.vhd")).depth == 1
    for b in set(bases):
        with pytest.raises(XenAPI.Failure):
            xapi.VDI.get_record(b)


def test_chain_depth_limit(xapi, local_sr, failure):
    vdi = make_vdi(xapi, local_sr, 2 * MiB)
    for _ in range(sr_backend.MAX_CHAIN_DEPTH - 1):
        xapi.VDI.destroy(xapi.VDI.snapshot(vdi, {}))
    details = failure(xapi.VDI.snapshot, vdi, {})
    assert details[0] == "SR_BACKEND_FAILURE_109" and len(details) == 4
    xapi.SR.scan(local_sr)
    assert xapi.VDI.snapshot(vdi, {})  # the GC shortened the chain


def test_scan_introduces_and_forgets_files(xapi, local_sr, sr_dir):
    import uuid as uuidlib

    foreign = str(uuidlib.uuid4())
    vhd.create_dynamic(str(sr_dir / f"{foreign}.vhd"), 2 * MiB)
    xapi.SR.scan(local_sr)
    ref = xapi.VDI.get_by_uuid(foreign)
    assert xapi.VDI.get_location(ref) == foreign and xapi.VDI.get_SR(ref) == local_sr
    (sr_dir / f"{foreign}.vhd").unlink()
    xapi.SR.scan(local_sr)
    with pytest.raises(XenAPI.Failure):
        xapi.VDI.get_by_uuid(foreign)


def test_forget_and_introduce(xapi, local_sr):
    vdi = make_vdi(xapi, local_sr, name="keep")
    uuid = xapi.VDI.get_uuid(vdi)
    xapi.VDI.forget(vdi)
    new = xapi.VDI.introduce(
        uuid,
        "back",
        "",
        local_sr,
        "user",
        False,
        False,
        {},
        uuid,
        {},
        {},
        True,
        "0",
        "0",
        NULL,
        False,
        "19700101T00:00:00Z",
        NULL,
    )
    assert xapi.VDI.get_name_label(new) == "back" and int(xapi.VDI.get_virtual_size(new)) == 4 * MiB


def test_resize_copy_and_sr_accounting(xapi, local_sr, failure):
    before = int(xapi.SR.get_virtual_allocation(local_sr))
    vdi = make_vdi(xapi, local_sr, 4 * MiB)
    xapi.VDI.resize(vdi, str(10 * MiB))
    assert int(xapi.VDI.get_virtual_size(vdi)) == 10 * MiB
    assert int(xapi.SR.get_virtual_allocation(local_sr)) == before + 10 * MiB
    assert int(xapi.SR.get_physical_utilisation(local_sr)) > 0
    assert failure(xapi.VDI.resize, vdi, str(2 * MiB))[0] == "SR_BACKEND_FAILURE_79"
    copy = xapi.VDI.copy(vdi, local_sr)
    assert copy != vdi and int(xapi.VDI.get_virtual_size(copy)) == 10 * MiB


def test_sr_full(xapi, sim, failure):
    host = sim.pool.master.ref
    small = xapi.SR.create(host, {}, str(16 * MiB), "small", "", "ext", "user", False, {})
    assert int(xapi.SR.get_physical_size(small)) == 16 * MiB
    details = failure(make_vdi, xapi, small, 64 * MiB)
    assert details[0] == "SR_FULL" and details[1] == str(64 * MiB)
    xapi.SR.destroy(small)


def test_iscsi_sr_introduce_plug_scan(xapi, sim):
    iqn = "iqn.2010-10.org.openstack:volume-00000001"
    scsi = sim.create_lun(iqn, 0, 8 * MiB)  # the public API (sr_backend.create_lun underneath)
    assert scsi == sr_backend.lun_scsi_id(iqn, 0)
    host = sim.pool.master.ref
    import uuid as uuidlib

    sr_uuid = str(uuidlib.uuid4())
    sr = xapi.SR.introduce(sr_uuid, "volume", "", "iscsi", "", False, {})
    config = {"target": "127.0.0.1", "port": "3260", "targetIQN": iqn, "SCSIid": scsi}
    pbd = xapi.PBD.create({"host": host, "SR": sr, "device_config": config, "other_config": {}})
    assert not xapi.PBD.get_currently_attached(pbd)
    xapi.PBD.plug(pbd)
    xapi.SR.scan(sr)
    vdis = xapi.SR.get_VDIs(sr)
    assert len(vdis) == 1
    rec = xapi.VDI.get_record(vdis[0])
    assert (
        rec["sm_config"]["LUNid"] == "0" and rec["location"] == scsi and int(rec["virtual_size"]) == 8 * MiB
    )
    lun_file = sim.world.iscsi_root / iqn / "lun0"
    with open(lun_file, "r+b") as handle:
        handle.write(b"LUN!" * 1024)
    copy = xapi.VDI.copy(vdis[0], sim.pool.master.local_sr)
    path = sim.pool.master.sr_path(sim.pool.master.local_sr_uuid) / f"{xapi.VDI.get_uuid(copy)}.vhd"
    with vhd.open_chain(str(path)) as chain:
        assert chain.read(0, 4096) == b"LUN!" * 1024
    xapi.PBD.unplug(pbd)
    xapi.SR.forget(sr)
    with pytest.raises(XenAPI.Failure):
        xapi.VDI.get_record(vdis[0])


def test_iscsi_pbd_plug_fails_without_target(xapi, sim, failure):
    import uuid as uuidlib

    sr = xapi.SR.introduce(str(uuidlib.uuid4()), "missing", "", "iscsi", "", False, {})
    pbd = xapi.PBD.create(
        {
            "host": sim.pool.master.ref,
            "SR": sr,
            "device_config": {"target": "127.0.0.1", "targetIQN": "iqn.none"},
            "other_config": {},
        }
    )
    assert failure(xapi.PBD.plug, pbd)[0] == "SR_BACKEND_FAILURE_68"


def test_iso_sr_lists_isos(xapi, sim):
    iso_sr = sim.pool.iso_sr
    location = xapi.PBD.get_device_config(xapi.SR.get_PBDs(iso_sr)[0])["location"]
    from pathlib import Path

    (Path(location) / "tools.iso").write_bytes(b"\0" * 4096)
    xapi.SR.scan(iso_sr)
    names = {xapi.VDI.get_name_label(v): v for v in xapi.SR.get_VDIs(iso_sr)}
    assert "tools.iso" in names and xapi.VDI.get_read_only(names["tools.iso"])


def test_vbd_constraints(xapi, local_sr, sim, failure):
    vm = make_vm(xapi, "vbd-vm")
    disk = make_vdi(xapi, local_sr)
    vbd = make_vbd(xapi, vm, disk)
    assert failure(make_vbd, xapi, vm, disk, "0") == ["DEVICE_ALREADY_EXISTS", "0"]
    assert failure(xapi.VBD.plug, vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    cd = make_vbd(xapi, vm, NULL, "3", "CD", "RO", True)
    iso = make_vdi(xapi, local_sr, 2 * MiB, "cd")
    xapi.VBD.insert(cd, iso)
    assert failure(xapi.VBD.insert, cd, iso)[0] == "VBD_NOT_EMPTY"
    xapi.VBD.eject(cd)
    assert failure(xapi.VBD.eject, cd)[0] == "VBD_IS_EMPTY"
    assert failure(xapi.VBD.insert, vbd, iso)[0] == "VBD_NOT_REMOVABLE_MEDIA"
    other = make_vm(xapi, "vbd-other")
    make_vbd(xapi, other, disk)
    xapi.VM.start_on(vm, sim.pool.master.ref, False, False)
    assert failure(xapi.VBD.plug, vbd) == ["DEVICE_ALREADY_ATTACHED", vbd]
    assert failure(xapi.VDI.destroy, disk) == ["VDI_IN_USE", disk, "destroy"]
    assert failure(xapi.VBD.destroy, vbd)[0] == "OPERATION_NOT_ALLOWED"
    # A second VM cannot attach the same non-sharable disk read-write.
    assert failure(make_vbd, xapi, make_vm(xapi, "third"), disk) == ["VDI_IN_USE", disk, "attach"]
    assert failure(xapi.VM.start, other, False, False) == ["VDI_IN_USE", disk, "start"]
    xapi.VBD.unplug(vbd)
    assert not xapi.VBD.get_currently_attached(vbd)
    assert failure(xapi.VBD.unplug, vbd) == ["DEVICE_ALREADY_DETACHED", vbd]
    hot = make_vbd(xapi, vm, make_vdi(xapi, local_sr), "1")
    xapi.VBD.plug(hot)
    assert xapi.VBD.get_device(hot) == "xvdb"
    xapi.VM.hard_shutdown(vm)
    assert not xapi.VBD.get_currently_attached(hot)
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(disk)


def test_vdi_setters_update_and_live_storage_migration(xapi, sim, local_sr):
    vdi = make_vdi(xapi, local_sr)
    xapi.VDI.set_name_label(vdi, "renamed")
    xapi.VDI.set_name_description(vdi, "described")
    assert xapi.VDI.get_name_label(vdi) == "renamed"
    xapi.VDI.update(vdi)
    vm = make_vm(xapi, "live-move")
    make_vbd(xapi, vm, vdi)
    shared = xapi.SR.create(sim.pool.master.ref, {}, "0", "target", "", "nfs", "user", True, {})
    xapi.VM.start_on(vm, sim.pool.master.ref, False, False)
    moved = xapi.VDI.pool_migrate(vdi, shared, {})
    assert xapi.VDI.get_SR(moved) == shared and xapi.VBD.get_VDI(xapi.VM.get_VBDs(vm)[0]) == moved
    assert xapi.VBD.get_currently_attached(xapi.VM.get_VBDs(vm)[0])
    with pytest.raises(XenAPI.Failure):
        xapi.VDI.get_record(vdi)
    xapi.VM.hard_shutdown(vm)


def test_iscsi_probe_lists_luns(xapi, sim, failure):
    iqn = "iqn.2010-10.org.openstack:volume-probe"
    scsi = sr_backend.create_lun(sim.world.iscsi_root, iqn, 3, 2 * MiB)
    xml = xapi.SR.probe(sim.pool.master.ref, {"target": "127.0.0.1", "targetIQN": iqn}, "lvmoiscsi", {})
    assert f"<SCSIid>{scsi}</SCSIid>" in xml and "<LUNid>3</LUNid>" in xml
    assert failure(xapi.SR.probe, sim.pool.master.ref, {"target": "127.0.0.1"}, "iscsi", {})[0] == (
        "SR_BACKEND_FAILURE_97"
    )
