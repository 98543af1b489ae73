"""Cinder iSCSI volumes on the simulator through VolumeOps and the real XenAPI SDK."""

from __future__ import annotations

import logging

import pytest

from nova import exception as nova_exception
from tests.volumes.guest_helpers import MiB, Target, make_instance, make_vm
from xenapi_driver import volume_utils as vu
from xenapi_driver.volumeops import VolumeOps


def _db(sim):
    return sim.pools[0].db


def _volume_srs(sim):
    db = _db(sim)
    return [ref for ref in db.all("SR") if db.get("SR", ref)["other_config"].get(vu.VOLUME_SR_KEY) == "true"]


def _vbd_at(sim, vm_ref, device):
    db = _db(sim)
    for vbd in db.get("VM", vm_ref)["VBDs"]:
        if db.get("VBD", vbd)["userdevice"] == device:
            return db.get("VBD", vbd)
    return None


@pytest.mark.parametrize("running", [True, False], ids=["hot", "cold"])
def test_attach_and_detach(sim, session, managed_host, running):
    target = Target(sim)
    target.add_lun(1, 16 * MiB, data=b"volume data!")
    info = target.connection_info(1)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=running)
    ops = VolumeOps(session)

    ops.attach_volume(info, instance, "/dev/xvdb")

    vbd = _vbd_at(sim, vm, "1")
    assert vbd is not None and vbd["other_config"]["osvol"] == "True"
    assert vbd["other_config"]["nova_volume_id"] == info["data"]["volume_id"]
    assert vbd["currently_attached"] is running
    db = _db(sim)
    vdi = db.get("VDI", vbd["VDI"])
    assert vdi["sm_config"]["LUNid"] == "1" and int(vdi["virtual_size"]) == 16 * MiB
    sr = db.get("SR", vdi["SR"])
    assert sr["type"] == "iscsi" and sr["uuid"] == vu.sr_uuid_for("127.0.0.1", "3260", target.iqn)
    (pbd,) = sr["PBDs"]
    pbd_rec = db.get("PBD", pbd)
    assert pbd_rec["host"] == managed_host.ref and pbd_rec["currently_attached"]
    assert pbd_rec["device_config"] == {"target": "127.0.0.1", "port": "3260", "targetIQN": target.iqn}

    ops.detach_volume(info, instance, "/dev/xvdb")

    assert _vbd_at(sim, vm, "1") is None
    assert _volume_srs(sim) == []  # forgotten: no VBD uses it
    assert target.read_lun(1, 12) == b"volume data!"  # the LUN itself is untouched
    # detaching again is harmless
    ops.detach_volume(info, instance, "/dev/xvdb")


def test_sr_shared_by_two_luns_is_forgotten_only_when_unused(sim, session, managed_host):
    target = Target(sim)
    target.add_lun(0)
    target.add_lun(1)
    first, second = target.connection_info(0), target.connection_info(1)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = VolumeOps(session)
    ops.attach_volume(first, instance, "/dev/xvdb")
    ops.attach_volume(second, instance, "/dev/xvdc")
    assert len(_volume_srs(sim)) == 1
    db = _db(sim)
    luns = {db.get("VDI", _vbd_at(sim, vm, d)["VDI"])["sm_config"]["LUNid"] for d in ("1", "2")}
    assert luns == {"0", "1"}

    ops.detach_volume(first, instance, "/dev/xvdb")
    assert len(_volume_srs(sim)) == 1  # LUN 1 still attached
    ops.detach_volume(second, instance, "/dev/xvdc")
    assert _volume_srs(sim) == []


def test_chap_secret_reaches_device_config_but_never_the_log(sim, session, managed_host, caplog):
    caplog.set_level(logging.DEBUG)
    target = Target(sim)
    target.add_lun(0)
    info = target.connection_info(
        0, auth_method="CHAP", auth_username="chap-user", auth_password="Sup3r-S3cret-CHAP"
    )
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = VolumeOps(session)
    ops.attach_volume(info, instance, "/dev/xvdb")
    db = _db(sim)
    (sr,) = _volume_srs(sim)
    config = db.get("PBD", db.get("SR", sr)["PBDs"][0])["device_config"]
    assert config["chapuser"] == "chap-user" and config["chappassword"] == "Sup3r-S3cret-CHAP"
    assert "Sup3r-S3cret-CHAP" not in repr(vu.parse_connection_info(info))
    ops.detach_volume(info, instance, None)
    assert _vbd_at(sim, vm, "1") is None
    assert "Sup3r-S3cret-CHAP" not in caplog.text


def test_unknown_target_fails_clearly_and_leaves_nothing(sim, session, managed_host):
    target = Target(sim)  # no LUN files: the target does not exist
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = VolumeOps(session)
    with pytest.raises(nova_exception.StorageError) as err:
        ops.attach_volume(target.connection_info(0), instance, "/dev/xvdb")
    assert target.iqn in str(err.value)
    assert _volume_srs(sim) == []
    assert [r for r in _db(sim).all("SR") if _db(sim).get("SR", r)["type"] == "iscsi"] == []
    assert _vbd_at(sim, vm, "1") is None


def test_missing_lun_fails_and_forgets_the_sr(sim, session, managed_host):
    target = Target(sim)
    target.add_lun(0)
    instance = make_instance()
    make_vm(sim, managed_host, instance, running=False)
    with pytest.raises(nova_exception.StorageError, match="LUN 5 not found"):
        VolumeOps(session).attach_volume(target.connection_info(5), instance, "/dev/xvdb")
    assert _volume_srs(sim) == []


def test_nfs_and_other_types_are_refused_clearly(session):
    with pytest.raises(nova_exception.VolumeDriverNotSupported, match="nfs"):
        vu.parse_connection_info({"driver_volume_type": "nfs", "data": {"export": "h:/e", "name": "v"}})
    with pytest.raises(nova_exception.VolumeDriverNotSupported, match="rbd"):
        vu.parse_connection_info({"driver_volume_type": "rbd", "data": {}})


def test_instance_without_vm(sim, session):
    target = Target(sim)
    target.add_lun(0)
    with pytest.raises(nova_exception.InstanceNotFound):
        VolumeOps(session).attach_volume(target.connection_info(0), make_instance(), "/dev/xvdb")


def test_volume_connector(sim, session, managed_host):
    connector = VolumeOps(session).get_volume_connector(make_instance())
    rec = _db(sim).get("host", managed_host.ref)
    assert connector["initiator"] == rec["other_config"]["iscsi_iqn"]
    assert connector["ip"] == rec["address"]
    assert connector["xenapi_host_uuid"] == managed_host.uuid
    assert connector["host"]  # CONF.host: Cinder tracks attachments by it


def test_boot_from_volume_root_device(sim, session, managed_host):
    target = Target(sim)
    target.add_lun(0, 32 * MiB)
    target.add_lun(1)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=False)
    root_info, data_info = target.connection_info(0), target.connection_info(1)
    bdi = {
        "root_device_name": "/dev/xvda",
        "block_device_mapping": [
            {"connection_info": root_info, "mount_device": "/dev/xvda", "boot_index": 0},
            {"connection_info": data_info, "mount_device": "/dev/xvdb", "boot_index": None},
        ],
    }
    ops = VolumeOps(session)
    assert ops.has_root_volume(bdi)
    vbds = ops.attach_block_devices(vm, bdi)
    assert len(vbds) == 2
    root = _vbd_at(sim, vm, "0")
    assert root["bootable"] and not root["currently_attached"]
    assert _db(sim).get("VDI", root["VDI"])["sm_config"]["LUNid"] == "0"
    assert not _vbd_at(sim, vm, "1")["bootable"]
    # the VM boots with both volumes attached
    session.call_xenapi("VM.start_on", vm, managed_host.ref, False, False)
    assert _vbd_at(sim, vm, "0")["currently_attached"] and _vbd_at(sim, vm, "1")["currently_attached"]
    # destroy: after the hard shutdown every volume VBD goes and the SR is forgotten
    session.call_xenapi("VM.hard_shutdown", vm)
    ops.detach_all(vm)
    assert _vbd_at(sim, vm, "0") is None and _vbd_at(sim, vm, "1") is None
    assert _volume_srs(sim) == []


def test_swap_volume_copies_data_to_the_same_device(sim, session, managed_host):
    old_t, new_t = Target(sim), Target(sim)
    old_t.add_lun(0, 8 * MiB, data=b"OLD-DATA" * 512)
    new_t.add_lun(0, 16 * MiB)
    old, new = old_t.connection_info(0), new_t.connection_info(0)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = VolumeOps(session)
    ops.attach_volume(old, instance, "/dev/xvdb")

    ops.swap_volume(old, new, instance, "/dev/xvdb", 0)

    vbd = _vbd_at(sim, vm, "1")
    assert vbd["currently_attached"] and vbd["other_config"]["nova_volume_id"] == new["data"]["volume_id"]
    db = _db(sim)
    assert db.get("SR", db.get("VDI", vbd["VDI"])["SR"])["uuid"] == vu.sr_uuid_for(
        "127.0.0.1", "3260", new_t.iqn
    )
    assert new_t.read_lun(0, 4096) == b"OLD-DATA" * 512
    assert len(_volume_srs(sim)) == 1  # the old target's SR is forgotten
    ops.detach_volume(new, instance, "/dev/xvdb")
    assert _volume_srs(sim) == []


def test_swap_to_a_smaller_volume_rolls_back(sim, session, managed_host):
    old_t, new_t = Target(sim), Target(sim)
    old_t.add_lun(0, 16 * MiB)
    new_t.add_lun(0, 8 * MiB)
    old, new = old_t.connection_info(0), new_t.connection_info(0)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = VolumeOps(session)
    ops.attach_volume(old, instance, "/dev/xvdb")
    with pytest.raises(nova_exception.StorageError, match="smaller"):
        ops.swap_volume(old, new, instance, "/dev/xvdb", 0)
    vbd = _vbd_at(sim, vm, "1")
    assert vbd["currently_attached"] and vbd["other_config"]["nova_volume_id"] == old["data"]["volume_id"]
    assert len(_volume_srs(sim)) == 1


@pytest.mark.parametrize("running", [True, False], ids=["hot", "cold"])
def test_extend_volume(sim, session, managed_host, running):
    target = Target(sim)
    target.add_lun(0, 8 * MiB)
    info = target.connection_info(0)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=running)
    ops = VolumeOps(session)
    ops.attach_volume(info, instance, "/dev/xvdb")
    target.grow(0, 24 * MiB)  # what Cinder's extend does on the backend

    ops.extend_volume(info, instance, 24 * MiB)

    vbd = _vbd_at(sim, vm, "1")
    assert int(_db(sim).get("VDI", vbd["VDI"])["virtual_size"]) == 24 * MiB
    assert vbd["currently_attached"] is running
    with pytest.raises(nova_exception.StorageError, match="still sees"):
        ops.extend_volume(info, instance, 64 * MiB)


def test_forget_unused_srs_after_a_crash(sim, session, managed_host):
    target = Target(sim)
    target.add_lun(0)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=False)
    ops = VolumeOps(session)
    vbd = ops.connect_volume(vm, target.connection_info(0), "/dev/xvdb", hotplug=False)
    session.call_xenapi("VBD.destroy", vbd)  # as if nova-compute died mid-detach
    assert len(_volume_srs(sim)) == 1
    assert ops.forget_unused_srs() == [vu.sr_uuid_for("127.0.0.1", "3260", target.iqn)]
    assert _volume_srs(sim) == []


def test_concurrent_attaches_and_detaches_share_one_sr(sim, session, managed_host):
    import threading

    target = Target(sim)
    infos = [target.connection_info(lun) for lun in range(4)]
    for lun in range(4):
        target.add_lun(lun)
    instances = [make_instance() for _ in range(4)]
    vms = [make_vm(sim, managed_host, inst, running=True) for inst in instances]
    ops = VolumeOps(session)
    errors = []

    def run(action):
        threads = [threading.Thread(target=action, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)

    def attach(i):
        try:
            ops.attach_volume(infos[i], instances[i], "/dev/xvdb")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def detach(i):
        try:
            ops.detach_volume(infos[i], instances[i], "/dev/xvdb")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    run(attach)
    assert errors == []
    assert len(_volume_srs(sim)) == 1
    assert all(_vbd_at(sim, vm, "1")["currently_attached"] for vm in vms)
    run(detach)
    assert errors == []
    assert _volume_srs(sim) == []


def test_detach_by_device_never_takes_another_volume(sim, session, managed_host):
    target = Target(sim)
    target.add_lun(0)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = VolumeOps(session)
    ops.attach_volume(target.connection_info(0, volume_id="vol-a"), instance, "/dev/xvdb")
    other = Target(sim).connection_info(0, volume_id="vol-b")  # never attached
    ops.detach_volume(other, instance, "/dev/xvdb")
    assert _vbd_at(sim, vm, "1") is not None


def test_volume_connector_storage_ip(session):
    import nova.conf

    conf = nova.conf.CONF
    conf.set_override("my_ip", "192.0.2.1")
    conf.set_override("my_block_storage_ip", "198.51.100.7")
    try:
        assert VolumeOps(session).get_volume_connector(make_instance())["ip"] == "198.51.100.7"
    finally:
        conf.clear_override("my_ip")
        conf.clear_override("my_block_storage_ip")


def test_unsupported_type_is_also_not_implemented():
    with pytest.raises(NotImplementedError):
        vu.parse_connection_info({"driver_volume_type": "fake", "data": {}})


def test_busy_device_is_retried_then_reported(sim, session, managed_host):
    from xenapi_driver import conf as xconf

    target = Target(sim)
    target.add_lun(0)
    info = target.connection_info(0)
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    ops = VolumeOps(session)
    ops.attach_volume(info, instance, "/dev/xvdb")
    xconf.CONF.set_override("num_vbd_unplug_retries", 0, group="xenserver")
    try:
        sim.faults.fail_next("VBD.unplug", "DEVICE_DETACH_REJECTED", "VBD", "ref", "device in use")
        with pytest.raises(nova_exception.StorageError, match="unmount the volume"):
            ops.detach_volume(info, instance, "/dev/xvdb")
        assert _vbd_at(sim, vm, "1")["currently_attached"]  # nothing half-done
        xconf.CONF.set_override("num_vbd_unplug_retries", 1, group="xenserver")
        sim.faults.fail_next("VBD.unplug", "DEVICE_DETACH_REJECTED", "VBD", "ref", "device in use")
        ops.detach_volume(info, instance, "/dev/xvdb")  # the retry succeeds
        assert _vbd_at(sim, vm, "1") is None and _volume_srs(sim) == []
    finally:
        xconf.CONF.clear_override("num_vbd_unplug_retries", group="xenserver")


def test_chap_secret_stays_out_of_a_login_failure(sim, session, managed_host):
    target = Target(sim)  # no such target: the PBD cannot be plugged
    info = target.connection_info(0, auth_method="CHAP", auth_username="u", auth_password="Hidden-CHAP-9")
    instance = make_instance()
    make_vm(sim, managed_host, instance, running=True)
    with pytest.raises(nova_exception.StorageError) as err:
        VolumeOps(session).attach_volume(info, instance, "/dev/xvdb")
    assert "Hidden-CHAP-9" not in str(err.value) and "Hidden-CHAP-9" not in repr(err.value)
    assert _volume_srs(sim) == []
