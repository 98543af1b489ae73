"""Fixtures for resize / cold-migration tests: two computes on simulated hosts with real VHD chains.

Each compute is a real ``XenAPISession`` + ``HostOps`` + ``VMOps`` +
``MigrateOps`` talking XML-RPC to the simulator, as ``XenAPIDriver`` builds
them. Disks are real VHD files in the simulated dom0s; rsync runs for real,
over the loopback OpenSSH of the destination's sandbox.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

pytest.importorskip("xenapi_driver.simulator.api")

import nova.conf  # noqa: E402
from resize_helpers import Compute  # noqa: E402

from nova import objects  # noqa: E402
from tests.simulated_pool import running_pool  # noqa: E402
from xenapi_driver.simulator import api  # noqa: E402

CONF = nova.conf.CONF
objects.register_all()

# Nova's functional tests run in a child interpreter (test_nova_resize.py), never under pytest.
collect_ignore = ["nova_resize"]


@pytest.fixture(scope="module")
def two_pools() -> Iterator[Any]:
    """Two single-host pools (hosts 127.0.0.2 and 127.0.0.3): cross-pool cold migration."""
    sim = api.start(hosts=[1, 1])
    try:
        yield sim
    finally:
        for pool in sim.pools:
            for host in pool.hosts:
                host.sandbox.stop_sshd()
        sim.stop()


@pytest.fixture
def sim(two_pools: Any) -> Any:
    two_pools.reset()
    src = two_pools.pools[0].hosts[0]
    dst = two_pools.pools[1].hosts[0]
    dst.sandbox.start_sshd(dst.address)
    src.sandbox.trust(dst.sandbox)
    return two_pools


def _conf(sim: Any, url: str, transport: str) -> dict[str, Any]:
    return {
        "connection_url": url,
        "connection_username": sim.username,
        "connection_password": sim.password,
        "migration_transport": transport,
    }


@pytest.fixture(params=["rsync"])
def transport(request: Any) -> str:
    return request.param


@pytest.fixture
def computes(sim: Any, transport: str) -> Iterator[tuple[Compute, Compute]]:
    src_host = sim.pools[0].hosts[0]
    dst_host = sim.pools[1].hosts[0]
    for name, value in _conf(sim, src_host.url, transport).items():
        CONF.set_override(name, value, group="xenserver")
    src = Compute(sim, sim.pools[0], src_host)
    dst = Compute(sim, sim.pools[1], dst_host)
    try:
        yield src, dst
    finally:
        src.close()
        dst.close()
        for name in _conf(sim, "", "rsync"):
            CONF.clear_override(name, group="xenserver")


@pytest.fixture(scope="module")
def one_pool() -> Iterator[Any]:
    """One pool of two hosts (the instance SR local to each; tests add a shared one)."""
    with running_pool(hosts=2) as sim:
        yield sim


@pytest.fixture
def pool_computes(one_pool: Any) -> Iterator[tuple[Compute, Compute]]:
    """A compute for each host of ``one_pool``, both connected through the master."""
    one_pool.reset()
    hosts = one_pool.pool.hosts
    overrides = {
        "connection_url": hosts[0].url,
        "connection_username": one_pool.username,
        "connection_password": one_pool.password,
        "migration_transport": "rsync",
    }
    for name, value in overrides.items():
        CONF.set_override(name, value, group="xenserver")
    first, second = Compute(one_pool, one_pool.pool, hosts[0]), Compute(one_pool, one_pool.pool, hosts[1])
    try:
        yield first, second
    finally:
        first.close()
        second.close()
        for name in overrides:
            CONF.clear_override(name, group="xenserver")
