"""Shared by tests/volumes, tests/agent and tests/console: a simulated pool, a XenAPISession on
its member, guest VMs and simulated iSCSI targets. Each area's conftest re-exports the fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from nova import objects
from tests import simulated_pool
from xenapi_driver.session import XenAPISession
from xenapi_driver.simulator import sr_backend

objects.register_all()

# The simulated pool's fixtures (tests/simulated_pool.py), re-exported by each area's conftest.
simulator = simulated_pool.simulator
sim = simulated_pool.sim
managed_host = simulated_pool.managed_host

GiB = 1024**3
_ids = iter(range(1, 1_000_000))
MiB = 1024**2


@pytest.fixture
def session(sim: Any, managed_host: Any) -> Iterator[XenAPISession]:
    sess = XenAPISession(managed_host.url, sim.username, sim.password, originator="volume-tests")
    try:
        yield sess
    finally:
        sess.close()


def make_instance(**fields: Any) -> objects.Instance:
    fields.setdefault("id", next(_ids))
    fields.setdefault("uuid", str(uuid.uuid4()))
    return objects.Instance(**fields)


def make_vm(sim: Any, host: Any, instance: objects.Instance, *, running: bool, agent: bool = True) -> str:
    """A guest VM of ``instance`` assigned to ``host`` (started there when ``running``)."""
    db = sim.pools[0].db
    other_config = {"nova_uuid": instance.uuid}
    if not agent:
        other_config["simulator-agent"] = "false"
    ref = db.create(
        "VM",
        name_label=instance.name,
        is_a_template=False,
        power_state="Halted",
        affinity=host.ref,
        other_config=other_config,
        memory_static_max=256 * MiB,
        memory_dynamic_max=256 * MiB,
        memory_dynamic_min=256 * MiB,
        memory_static_min=256 * MiB,
        VCPUs_max=1,
        VCPUs_at_startup=1,
        HVM_boot_policy="BIOS order",
        domain_type="hvm",
    )
    if running:
        xapi_call(sim, "VM.start_on", ref, host.ref, False, False)
    return ref


def xapi_call(sim: Any, method: str, *args: Any) -> Any:
    import XenAPI

    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "volume-tests-seed")
    try:
        obj = s.xenapi
        for part in method.split("."):
            obj = getattr(obj, part)
        return obj(*args)
    finally:
        s.xenapi.session.logout()


class Target:
    """A simulated iSCSI target with LUN files, and the connection info Cinder would return."""

    def __init__(self, sim: Any, iqn: str | None = None) -> None:
        self.sim = sim
        self.iqn = iqn or f"iqn.2010-10.org.openstack:volume-{uuid.uuid4().hex[:12]}"
        self.root = sim.world.iscsi_root / self.iqn

    def add_lun(self, lun: int, size: int = 8 * MiB, data: bytes | None = None) -> str:
        scsi = sr_backend.create_lun(self.sim.world.iscsi_root, self.iqn, lun, size)
        if data:
            with open(self.root / f"lun{lun}", "r+b") as handle:
                handle.write(data)
        return scsi

    def read_lun(self, lun: int, length: int) -> bytes:
        with open(self.root / f"lun{lun}", "rb") as handle:
            return handle.read(length)

    def grow(self, lun: int, size: int) -> None:
        with open(self.root / f"lun{lun}", "r+b") as handle:
            handle.truncate(size)

    def connection_info(self, lun: int, volume_id: str | None = None, **extra: Any) -> dict[str, Any]:
        data = {
            "volume_id": volume_id or str(uuid.uuid4()),
            "target_portal": "127.0.0.1:3260",
            "target_iqn": self.iqn,
            "target_lun": lun,
            "target_discovered": False,
            "access_mode": "rw",
        }
        data.update(extra)
        return {"driver_volume_type": "iscsi", "data": data, "serial": data["volume_id"]}
