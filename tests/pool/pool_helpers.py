"""Helpers for pool tests (a module of its own: conftest modules of several test
directories share the name ``conftest``, so tests never import from them)."""

from __future__ import annotations

import dataclasses
from typing import Any

import XenAPI

from xenapi_driver.pool import ResourcePool
from xenapi_driver.session import XenAPISession

GiB = 1024**3


def xapi_login(url: str, sim: Any) -> Any:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password(sim.username, sim.password, "1.0", "xenapi-driver-tests")
    return session


def make_shared_default_sr(sim: Any, host: Any) -> str:
    """An NFS SR shared by the pool of ``host``, made the pool's default SR (with real XAPI calls)."""
    s = xapi_login(host.url, sim)
    try:
        x = s.xenapi
        sr = x.SR.create(
            host.ref, {"server": "127.0.0.1", "serverpath": "/export/pool"}, "0", "NFS shared",
            "pool storage", "nfs", "user", True, {},
        )  # fmt: skip
        pool = x.pool.get_all()[0]
        x.pool.set_default_SR(pool, sr)
        return sr
    finally:
        s.xenapi.session.logout()


def make_compute_vm(sim: Any, host: Any, name: str) -> str:
    """The VM nova-compute runs in: a disk on the host's local SR, affinity to it, running."""
    s = xapi_login(host.url, sim)
    try:
        x = s.xenapi
        vdi = x.VDI.create(
            {"name_label": f"{name} disk", "SR": host.local_sr, "virtual_size": str(GiB), "type": "system",
             "sharable": False, "read_only": False, "other_config": {}}
        )  # fmt: skip
        vm = host.pool.db.create(
            "VM",
            name_label=name,
            is_a_template=False,
            power_state="Halted",
            affinity=host.ref,
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
        x.VM.start(vm, False, False)
        return x.VM.get_uuid(vm)
    finally:
        s.xenapi.session.logout()


@dataclasses.dataclass
class Compute:
    name: str
    host: Any  # SimHost
    session: XenAPISession
    pool: ResourcePool
    vm_uuid: str

    def restart(self, crashed: bool = True, **kwargs: Any) -> None:
        """nova-compute restarts: a new session and a new ResourcePool (no memory kept).

        A crashed process logs nothing out: its XAPI sessions stay valid until XAPI
        expires them (and a plug-in started with one keeps using it).
        """
        if not crashed:
            self.session.close()
        self.abandoned.append(self.session)
        self.session = XenAPISession(self.host.url, *self._creds)
        self.pool = ResourcePool(
            self.session, self.name, compute_vm_uuid=self.vm_uuid, join_timeout=30, **kwargs
        )

    _creds: tuple[str, str] = ("root", "xenroot")
    abandoned: list = dataclasses.field(default_factory=list)
