"""VM.pool_migrate and Storage XenMotion (host.migrate_receive + VM.migrate_send) through the SDK."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from urllib.parse import urlencode

import pytest
import XenAPI

from tests.simulator.sim_records import fails, vm_record
from xenapi_driver.simulator import api

MiB = 1024**2
GiB = 1024**3
NULL = "OpaqueRef:NULL"


@pytest.fixture(scope="module")
def world():
    sim = api.start(hosts=[2, 1], host_memory=16 * GiB)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def sessions(world):
    out = []
    for pool in world.pools[:2]:
        s = XenAPI.Session(pool.url)
        s.xenapi.login_with_password(world.username, world.password, "1.0", "migration-tests")
        out.append(s)
    yield out
    for s in out:
        with contextlib.suppress(Exception):
            s.xenapi.session.logout()


def make_vm(x, name, memory=256 * MiB):
    return x.VM.create(vm_record(name, memory))


def add_disk(x, vm, sr, device="0", size=4 * MiB):
    vdi = x.VDI.create(
        {
            "SR": sr,
            "virtual_size": str(size),
            "type": "system",
            "sharable": False,
            "read_only": False,
            "other_config": {},
            "name_label": f"{device}",
            "name_description": "",
        }
    )
    x.VBD.create(
        {
            "VM": vm,
            "VDI": vdi,
            "userdevice": device,
            "bootable": True,
            "mode": "RW",
            "type": "Disk",
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    return vdi


def add_vif(x, vm):
    return x.VIF.create(
        {
            "device": "0",
            "network": x.network.get_all()[0],
            "VM": vm,
            "MAC": "",
            "MTU": "1500",
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )


def raw(url, session, method, vdi, body=None):
    query = urlencode({"session_id": session, "vdi": vdi, "format": "raw"})
    path = "import_raw_vdi" if method == "PUT" else "export_raw_vdi"
    req = urllib.request.Request(f"{url.rstrip('/')}/{path}?{query}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def test_pool_migrate_needs_shared_storage_and_memory(world, sessions):
    x = sessions[0].xenapi
    h0, h1 = (h.ref for h in world.pools[0].hosts)
    local = make_vm(x, "local")
    add_disk(x, local, world.pools[0].hosts[0].local_sr)
    assert fails(x.VM.pool_migrate, local, h1, {}) == [
        "VM_BAD_POWER_STATE",
        local,
        "running,paused",
        "halted",
    ]
    x.VM.start_on(local, h0, False, False)
    assert fails(x.VM.pool_migrate, local, h1, {}) == [
        "VM_REQUIRES_SR",
        local,
        world.pools[0].hosts[0].local_sr,
    ]
    shared = x.SR.create(h0, {}, "0", "nfs", "", "nfs", "user", True, {})
    vm = make_vm(x, "mover")
    add_disk(x, vm, shared)
    x.VM.start_on(vm, h0, True, False)  # paused VMs migrate too and stay paused
    x.VM.pool_migrate(vm, h1, {"live": "true"})
    assert x.VM.get_resident_on(vm) == h1 and x.VM.get_power_state(vm) == "Paused"
    hog = make_vm(x, "hog", memory=int(x.host.compute_free_memory(h0)) - 128 * MiB)
    x.VM.start_on(hog, h0, False, False)
    details = fails(x.VM.pool_migrate, vm, h0, {})
    assert details == ["HOST_NOT_ENOUGH_FREE_MEMORY", str(256 * MiB), str(128 * MiB)]
    for v in (hog, vm, local):
        x.VM.hard_shutdown(v)


def test_storage_xenmotion_within_pool_moves_the_disk(world, sessions):
    x = sessions[0].xenapi
    pool = world.pools[0]
    h0, h1 = pool.hosts
    vm = make_vm(x, "sxm-local")
    disk = add_disk(x, vm, h0.local_sr)
    data = os.urandom(MiB)
    raw(pool.url, sessions[0]._session, "PUT", disk, data)
    old_file = h0.sr_path(h0.local_sr_uuid) / f"{x.VDI.get_uuid(disk)}.vhd"
    assert old_file.exists()
    x.VM.start_on(vm, h0.ref, False, False)
    dest = x.host.migrate_receive(h1.ref, x.network.get_all()[0], {})
    new_vm = x.VM.migrate_send(vm, dest, True, {disk: h1.local_sr}, {}, {})
    assert new_vm == vm and x.VM.get_resident_on(vm) == h1.ref
    new_disk = x.VBD.get_VDI(x.VM.get_VBDs(vm)[0])
    assert x.VDI.get_SR(new_disk) == h1.local_sr and new_disk != disk
    assert (h1.sr_path(h1.local_sr_uuid) / f"{x.VDI.get_uuid(new_disk)}.vhd").exists()
    assert raw(h1.url, sessions[0]._session, "GET", new_disk)[:MiB] == data
    x.SR.scan(h0.local_sr)
    assert not old_file.exists()
    x.VM.hard_shutdown(vm)


def test_storage_xenmotion_across_pools(world, sessions):
    x, y = sessions[0].xenapi, sessions[1].xenapi
    src_pool, dst_pool = world.pools[0], world.pools[1]
    h0 = src_pool.hosts[0]
    vm = make_vm(x, "sxm-remote")
    disk = add_disk(x, vm, h0.local_sr)
    data = os.urandom(MiB)
    raw(src_pool.url, sessions[0]._session, "PUT", disk, data)
    vif = add_vif(x, vm)
    snap = x.VM.snapshot(vm, "before")
    snap_disk = x.VBD.get_VDI(x.VM.get_VBDs(snap)[0])
    snap_vif = x.VM.get_VIFs(snap)[0]
    dhost = dst_pool.hosts[0]
    dnet = y.network.get_all()[0]
    dest = y.host.migrate_receive(dhost.ref, dnet, {})
    bad = dict(dest, host="OpaqueRef:nope")
    assert fails(x.VM.assert_can_migrate, vm, bad, True, {disk: dhost.local_sr}, {vif: dnet}, {}) == [
        "HANDLE_INVALID",
        "host",
        "OpaqueRef:nope",
    ]
    assert fails(x.VM.migrate_send, vm, dest, False, {}, {vif: dnet}, {}) == ["VDI_NOT_IN_MAP", disk]
    assert fails(x.VM.migrate_send, vm, dest, False, {disk: dhost.local_sr}, {}, {}) == [
        "VIF_NOT_IN_MAP",
        vif,
    ]
    # The snapshot's disk follows its snapshot_of; the snapshot's VIF is matched by MAC.
    new_vm = x.VM.migrate_send(vm, dest, False, {disk: dhost.local_sr}, {vif: dnet}, {})
    rec = y.VM.get_record(new_vm)
    assert rec["power_state"] == "Halted" and rec["name_label"] == "sxm-remote"
    new_disk = y.VBD.get_VDI(rec["VBDs"][0])
    assert y.VDI.get_SR(new_disk) == dhost.local_sr
    assert raw(dst_pool.url, sessions[1]._session, "GET", new_disk)[:MiB] == data
    (new_snap,) = rec["snapshots"]
    new_snap_disk = y.VBD.get_VDI(y.VM.get_VBDs(new_snap)[0])
    assert y.VDI.get_snapshot_of(new_snap_disk) == new_disk
    assert y.VIF.get_network(y.VM.get_VIFs(new_snap)[0]) == dnet
    for gone in (vm, snap):
        assert fails(x.VM.get_record, gone)[0] == "HANDLE_INVALID"
    for gone in (disk, snap_disk):
        assert fails(x.VDI.get_record, gone)[0] == "HANDLE_INVALID"
    assert fails(x.VIF.get_record, snap_vif)[0] == "HANDLE_INVALID"


def test_storage_xenmotion_copy_keeps_the_source(world, sessions):
    x, y = sessions[0].xenapi, sessions[1].xenapi
    h0 = world.pools[0].hosts[0]
    dhost = world.pools[1].hosts[0]
    vm = make_vm(x, "sxm-copy")
    disk = add_disk(x, vm, h0.local_sr)
    x.VM.start_on(vm, h0.ref, False, False)
    dest = y.host.migrate_receive(dhost.ref, y.network.get_all()[0], {})
    new_vm = x.VM.migrate_send(vm, dest, True, {disk: dhost.local_sr}, {}, {"copy": "true"})
    assert x.VM.get_power_state(vm) == "Running" and y.VM.get_power_state(new_vm) == "Running"
    assert y.VM.get_uuid(new_vm) != x.VM.get_uuid(vm)
    x.VM.hard_shutdown(vm)
    y.VM.hard_shutdown(new_vm)


def test_storage_xenmotion_copy_within_pool(world, sessions):
    x = sessions[0].xenapi
    h0, h1 = world.pools[0].hosts
    vm = make_vm(x, "sxm-local-copy")
    disk = add_disk(x, vm, h0.local_sr)
    vif = add_vif(x, vm)
    dest = x.host.migrate_receive(h1.ref, x.network.get_all()[0], {})
    new_vm = x.VM.migrate_send(vm, dest, False, {disk: h1.local_sr}, {}, {"copy": "true"})
    assert new_vm != vm and x.VM.get_uuid(new_vm) != x.VM.get_uuid(vm)
    assert x.VDI.get_SR(x.VBD.get_VDI(x.VM.get_VBDs(new_vm)[0])) == h1.local_sr
    assert x.VDI.get_SR(disk) == h0.local_sr
    (new_vif,) = x.VM.get_VIFs(new_vm)
    assert x.VIF.get_network(new_vif) == x.VIF.get_network(vif)


def _attach_lun_sr(x, host_ref, iqn, scsi):
    import uuid as uuidlib

    sr = x.SR.introduce(str(uuidlib.uuid4()), "volume", "", "iscsi", "", False, {})
    config = {"target": "127.0.0.1", "port": "3260", "targetIQN": iqn, "SCSIid": scsi}
    pbd = x.PBD.create({"host": host_ref, "SR": sr, "device_config": config, "other_config": {}})
    x.PBD.plug(pbd)
    x.SR.scan(sr)
    return sr


def test_storage_xenmotion_reuses_a_volume_both_pools_see(world, sessions):
    from xenapi_driver.simulator import sr_backend

    x, y = sessions[0].xenapi, sessions[1].xenapi
    h0 = world.pools[0].hosts[0]
    dhost = world.pools[1].hosts[0]
    iqn = "iqn.2010-10.org.openstack:volume-sxm"
    scsi = sr_backend.create_lun(world.world.iscsi_root, iqn, 0, 4 * MiB)
    lun = world.world.iscsi_root / iqn / "lun0"
    with open(lun, "r+b") as handle:
        handle.write(b"volume data")
    src_sr = _attach_lun_sr(x, h0.ref, iqn, scsi)
    (volume,) = x.SR.get_VDIs(src_sr)
    vm = make_vm(x, "with-volume")
    root = add_disk(x, vm, h0.local_sr)
    x.VBD.create(
        {
            "VM": vm,
            "VDI": volume,
            "userdevice": "1",
            "bootable": False,
            "mode": "RW",
            "type": "Disk",
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    x.VM.start_on(vm, h0.ref, False, False)
    dst_sr = _attach_lun_sr(y, dhost.ref, iqn, scsi)
    dest = y.host.migrate_receive(dhost.ref, y.network.get_all()[0], {})
    new_vm = x.VM.migrate_send(vm, dest, True, {root: dhost.local_sr, volume: dst_sr}, {}, {})
    vdis = {y.VBD.get_userdevice(v): y.VBD.get_VDI(v) for v in y.VM.get_VBDs(new_vm)}
    assert y.VDI.get_SR(vdis["1"]) == dst_sr and y.VDI.get_location(vdis["1"]) == scsi
    assert y.VM.get_power_state(new_vm) == "Running"
    assert lun.read_bytes().startswith(b"volume data")  # the LUN was neither copied nor wiped
    y.VM.hard_shutdown(new_vm)


def _parents(y, vdi):
    """The VHD chain of a VDI as locations of its ancestors (sm_config vhd-parent, walked)."""
    out = []
    by_location = {r["location"]: ref for ref, r in y.VDI.get_all_records().items()}
    current = y.VDI.get_sm_config(vdi).get("vhd-parent")
    while current:
        out.append(current)
        current = y.VDI.get_sm_config(by_location[current]).get("vhd-parent")
    return out


def test_storage_xenmotion_rebuilds_snapshot_chains(world, sessions):
    """Snapshots arrive as one chain sharing base copies (deltas), not as full copies."""
    x, y = sessions[0].xenapi, sessions[1].xenapi
    src_pool, dst_pool = world.pools[0], world.pools[1]
    h0, dhost = src_pool.hosts[0], dst_pool.hosts[0]
    vm = make_vm(x, "sxm-chain")
    disk = add_disk(x, vm, h0.local_sr, size=8 * MiB)
    a, b, c = (os.urandom(2 * MiB) for _ in range(3))
    raw(src_pool.url, sessions[0]._session, "PUT", disk, a)
    s1 = x.VM.snapshot(vm, "one")
    raw(src_pool.url, sessions[0]._session, "PUT", disk, a + b)
    s2 = x.VM.snapshot(vm, "two")
    raw(src_pool.url, sessions[0]._session, "PUT", disk, a + b + c)
    dnet = y.network.get_all()[0]
    dest = y.host.migrate_receive(dhost.ref, dnet, {})
    new_vm = x.VM.migrate_send(vm, dest, False, {disk: dhost.local_sr}, {}, {})
    new_disk = y.VBD.get_VDI(y.VM.get_VBDs(new_vm)[0])
    by_name = {y.VM.get_name_label(s): s for s in y.VM.get_snapshots(new_vm)}
    assert set(by_name) == {"one", "two"}
    d1, d2 = (y.VBD.get_VDI(y.VM.get_VBDs(by_name[n])[0]) for n in ("one", "two"))
    # contents are the source's, each as it was when its snapshot was taken
    session = sessions[1]._session
    assert raw(dst_pool.url, session, "GET", d1)[: 6 * MiB] == a + bytes(4 * MiB)
    assert raw(dst_pool.url, session, "GET", d2)[: 6 * MiB] == a + b + bytes(2 * MiB)
    assert raw(dst_pool.url, session, "GET", new_disk)[: 6 * MiB] == a + b + c
    # the chain: each later disk sits on the base copy holding the earlier snapshot's content
    p1, p2, pd = _parents(y, d1), _parents(y, d2), _parents(y, new_disk)
    assert p1 and p1[0] in p2 and p2[0] in pd
    assert len(pd) == 2
    for d in (d1, d2):
        assert y.VDI.get_is_a_snapshot(d) and y.VDI.get_snapshot_of(d) == new_disk
    base = next(ref for ref, r in y.VDI.get_all_records().items() if r["location"] == pd[0])
    assert y.VDI.get_managed(base) is False
    # the snapshot disks are read-only leaves XAPI lets clients clone, as at the source
    y.VDI.destroy(y.VDI.clone(d1, {}))
    for gone in (vm, s1, s2):
        assert fails(x.VM.get_record, gone)[0] == "HANDLE_INVALID"


def test_storage_xenmotion_within_a_pool_keeps_the_chain(world, sessions):
    x = sessions[0].xenapi
    pool = world.pools[0]
    h0, h1 = pool.hosts
    vm = make_vm(x, "sxm-local-chain")
    disk = add_disk(x, vm, h0.local_sr, size=4 * MiB)
    a, b = os.urandom(2 * MiB), os.urandom(2 * MiB)
    raw(pool.url, sessions[0]._session, "PUT", disk, a)
    snap = x.VM.snapshot(vm, "local-one")
    raw(pool.url, sessions[0]._session, "PUT", disk, a + b)
    dest = x.host.migrate_receive(h1.ref, x.network.get_all()[0], {})
    assert x.VM.migrate_send(vm, dest, False, {disk: h1.local_sr}, {}, {}) == vm
    moved = x.VBD.get_VDI(x.VM.get_VBDs(vm)[0])
    snap_disk = x.VBD.get_VDI(x.VM.get_VBDs(snap)[0])
    assert {x.VDI.get_SR(moved), x.VDI.get_SR(snap_disk)} == {h1.local_sr}
    assert x.VDI.get_snapshot_of(snap_disk) == moved
    assert raw(pool.url, sessions[0]._session, "GET", snap_disk)[: 4 * MiB] == a + bytes(2 * MiB)
    assert raw(pool.url, sessions[0]._session, "GET", moved)[: 4 * MiB] == a + b
    assert _parents(x, snap_disk)[0] in _parents(x, moved)
