"""Helpers for live-migration tests: guest VMs with real VHD disks, computes per host.

(Not in conftest.py: several test directories have one, all named ``conftest``.)

Each side of a migration is what one nova-compute holds: a XenAPISession to its
own host and a LiveMigrationOps. Nova's compute manager calls the methods in the
order the tests follow (check dest -> check source -> pre -> live_migration ->
post at source and destination), and the migrate data crosses between them as a
Nova object primitive, as over RPC.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from pathlib import Path
from typing import Any

import XenAPI
from nova.objects import base as obj_base

from nova import objects
from xenapi_driver import vhd
from xenapi_driver.live_migration import LiveMigrationOps
from xenapi_driver.session import XenAPISession

objects.register_all()

GiB = 1024**3
MiB = 1024**2
_ids = itertools.count(1000)


def xapi_login(url: str, sim: Any) -> Any:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password(sim.username, sim.password, "1.0", "xenapi-driver-tests")
    return session


def make_shared_default_sr(sim: Any, pool: Any) -> str:
    s = xapi_login(pool.master.url, sim)
    try:
        x = s.xenapi
        sr = x.SR.create(
            pool.master.ref, {"server": "127.0.0.1", "serverpath": "/export/lm"}, "0", "NFS shared",
            "pool storage", "nfs", "user", True, {},
        )  # fmt: skip
        x.pool.set_default_SR(x.pool.get_all()[0], sr)
        return sr
    finally:
        s.xenapi.session.logout()


def make_instance() -> Any:
    return objects.Instance(id=next(_ids), uuid=str(uuid.uuid4()))


def vdi_path(host: Any, sr_uuid: str, location: str) -> Path:
    return host.sr_path(sr_uuid) / f"{location}.vhd"


def make_guest(sim: Any, host: Any, instance: Any, sr: str, *, running: bool = True) -> dict[str, Any]:
    """A Nova instance's VM on ``host``: one disk on ``sr`` holding known bytes, one VIF."""
    pool = host.pool
    s = xapi_login(pool.master.url, sim)
    try:
        x = s.xenapi
        vdi = x.VDI.create(
            {"name_label": f"{instance.name} root", "SR": sr, "virtual_size": str(64 * MiB), "type": "user",
             "sharable": False, "read_only": False, "other_config": {}}
        )  # fmt: skip
        vm = pool.db.create(
            "VM",
            name_label=instance.name,
            is_a_template=False,
            power_state="Halted",
            affinity=host.ref,
            other_config={"nova_uuid": instance.uuid},
            memory_static_max=GiB,
            memory_dynamic_max=GiB,
            memory_dynamic_min=GiB,
            memory_static_min=GiB,
            VCPUs_max=1,
            VCPUs_at_startup=1,
            HVM_boot_policy="BIOS order",
            domain_type="hvm",
        )
        x.VBD.create(
            {"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW", "type": "Disk",
             "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}}
        )  # fmt: skip
        mac = "02:00:00:aa:bb:%02x" % (instance.id % 256)
        x.VIF.create(
            {"device": "0", "network": pool.network, "VM": vm, "MAC": mac,
             "MTU": "1500", "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}}
        )  # fmt: skip
        sr_uuid = x.SR.get_uuid(sr)
        location = x.VDI.get_location(vdi)
        # Real bytes in the VHD, 4 KiB-aligned, in several blocks.
        with vhd.open_chain(str(vdi_path(host, sr_uuid, location))) as chain:
            for n, offset in enumerate((0, 3 * MiB, 17 * MiB + 4096, 63 * MiB)):
                chain.write(offset, bytes([n + 1]) * 4096 + instance.uuid.encode() * 8)
        if running:
            x.VM.start_on(vm, host.ref, False, False)
        return {"vm_uuid": x.VM.get_uuid(vm), "vdi_uuid": x.VDI.get_uuid(vdi)}
    finally:
        s.xenapi.session.logout()


def disk_digest(sim: Any, host: Any, vm_uuid: str) -> tuple[str, int]:
    """SHA-256 of the VM's first disk, read through its VHD chain on ``host``'s view of the SR."""
    s = xapi_login(host.pool.master.url, sim)
    try:
        x = s.xenapi
        vm = x.VM.get_by_uuid(vm_uuid)
        for vbd in x.VM.get_VBDs(vm):
            if x.VBD.get_type(vbd) != "Disk":
                continue
            vdi = x.VBD.get_VDI(vbd)
            sr_uuid = x.SR.get_uuid(x.VDI.get_SR(vdi))
            path = vdi_path(host, sr_uuid, x.VDI.get_location(vdi))
            digest = hashlib.sha256()
            with vhd.open_chain(str(path)) as chain:
                size = chain.virtual_size
                for offset in range(0, size, 4 * MiB):
                    digest.update(chain.read(offset, min(4 * MiB, size - offset)))
            return digest.hexdigest(), size
        raise AssertionError("no disk")
    finally:
        s.xenapi.session.logout()


def first_bytes(sim: Any, host: Any, vm_uuid: str, length: int = 4096) -> bytes:
    s = xapi_login(host.pool.master.url, sim)
    try:
        x = s.xenapi
        vm = x.VM.get_by_uuid(vm_uuid)
        vdi = next(x.VBD.get_VDI(v) for v in x.VM.get_VBDs(vm) if x.VBD.get_type(v) == "Disk")
        path = vdi_path(host, x.SR.get_uuid(x.VDI.get_SR(vdi)), x.VDI.get_location(vdi))
    finally:
        s.xenapi.session.logout()
    with vhd.open_chain(str(path)) as chain:
        return chain.read(0, length)


def vm_where(sim: Any, pool: Any, vm_uuid: str) -> tuple[str, str] | None:
    s = xapi_login(pool.master.url, sim)
    try:
        x = s.xenapi
        try:
            vm = x.VM.get_by_uuid(vm_uuid)
        except XenAPI.Failure:
            return None
        resident = x.VM.get_resident_on(vm)
        return x.VM.get_power_state(vm), (x.host.get_uuid(resident) if resident != "OpaqueRef:NULL" else "")
    finally:
        s.xenapi.session.logout()


class Side:
    """One nova-compute's view: its session to its host and its LiveMigrationOps."""

    def __init__(self, sim: Any, host: Any) -> None:
        self.host = host
        self.session = XenAPISession(host.url, sim.username, sim.password)
        self.ops = LiveMigrationOps(self.session, timeout=60)

    def close(self) -> None:
        self.session.close()


def over_rpc(data: Any) -> Any:
    """What nova-conductor / RPC does to migrate data: to a primitive and back."""
    serializer = obj_base.NovaObjectSerializer()
    primitive = serializer.serialize_entity(None, data)
    return serializer.deserialize_entity(None, primitive)
