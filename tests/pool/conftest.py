"""Fixtures for pool tests: three single-host simulated pools, a compute per host.

Each "compute" is what one nova-compute would hold: its own XenAPISession to
its own host (real XML-RPC through the real XenAPI SDK) and a ResourcePool
reconciling the aggregates of its service host name in Nova's real API
database. The compute's VM is a real simulated VM on its host (disk on the
host's local SR, running), as nova-compute runs in a VM on the host it manages.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import nova_db  # noqa: E402
from pool_helpers import Compute, make_compute_vm, make_shared_default_sr  # noqa: E402

from xenapi_driver import conf as xconf  # noqa: E402
from xenapi_driver.pool import ResourcePool  # noqa: E402
from xenapi_driver.session import XenAPISession  # noqa: E402
from xenapi_driver.simulator import api  # noqa: E402

GiB = 1024**3

# Nova functional tests run in a child interpreter under unittest
# (test_pool_nova_functional.py); pytest must not collect them itself.
collect_ignore = ["functional"]


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
