"""Fixtures for pool tests: three single-host simulated pools, a compute per host.

Each "compute" is what one nova-compute would hold: its own XenAPISession to
its own host (real XML-RPC through the real XenAPI SDK) and a ResourcePool
reconciling the aggregates of its service host name in Nova's real API
database. The compute's VM is a real simulated VM on its host (disk on the
host's local SR, running), as nova-compute runs in a VM on the host it manages.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import nova_db  # noqa: E402
import XenAPI  # noqa: E402

from xenapi_driver import conf as xconf  # noqa: E402
from xenapi_driver.pool import ResourcePool  # noqa: E402
from xenapi_driver.session import XenAPISession  # noqa: E402
from xenapi_driver.simulator import api  # noqa: E402

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


@pytest.fixture
def sim() -> Iterator[Any]:
    simulator = api.start(hosts=[1, 1, 1])
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def ctx() -> Any:
    return nova_db.admin_context()


@pytest.fixture
def pool_conf(sim: Any) -> Iterator[None]:
    conf = xconf.CONF
    overrides = {"connection_username": sim.username, "connection_password": sim.password}
    for name, value in overrides.items():
        conf.set_override(name, value, group="xenserver")
    try:
        yield
    finally:
        for name in overrides:
            conf.clear_override(name, group="xenserver")


@pytest.fixture
def computes(sim: Any, pool_conf: None) -> Iterator[list[Compute]]:
    """One compute per host; the first host's pool has a shared default SR (it will be the master)."""
    make_shared_default_sr(sim, sim.pools[0].hosts[0])
    tag = uuid.uuid4().hex[:6]
    out = []
    for i, pool in enumerate(list(sim.pools)):
        host = pool.hosts[0]
        name = f"compute{i}-{tag}"
        vm_uuid = make_compute_vm(sim, host, f"nova-compute VM {i}")
        session = XenAPISession(host.url, sim.username, sim.password)
        rp = ResourcePool(session, name, compute_vm_uuid=vm_uuid, join_timeout=30)
        c = Compute(name, host, session, rp, vm_uuid)
        c._creds = (sim.username, sim.password)
        out.append(c)
    try:
        yield out
    finally:
        for c in out:
            c.session.close()
            for old in c.abandoned:
                old.close()
