"""After a join, the master's compute waits (bounded) until the pool sees the joined host live."""

from __future__ import annotations

from typing import Any

import pytest

from xenapi_driver import pool as xpool
from xenapi_driver.session import XenAPISession
from xenapi_driver.simulator import api


@pytest.fixture(scope="module")
def sim() -> Any:
    simulator = api.start(hosts=2)
    try:
        yield simulator
    finally:
        simulator.stop()


def _pool(sim: Any, join_timeout: float) -> tuple[XenAPISession, xpool.ResourcePool]:
    session = XenAPISession(sim.pools[0].master.url, sim.username, sim.password)
    return session, xpool.ResourcePool(session, "compute-0", join_timeout=join_timeout)


def _member(host: Any) -> Any:
    return xpool._Member(compute="compute-1", address=host.address, host_uuid=host.uuid, compute_vm=None)


def test_a_live_member_passes_at_once(sim: Any) -> None:
    sim.reset()
    session, rp = _pool(sim, join_timeout=5)
    member_host = sim.pools[0].hosts[1]
    try:
        rp._wait_until_live(_member(member_host), member_host.ref)
    finally:
        session.close()


def test_a_member_that_never_comes_back_is_an_error_with_advice(sim: Any) -> None:
    sim.reset()
    db = sim.pools[0].db
    member_host = sim.pools[0].hosts[1]
    metrics = db.get("host", member_host.ref)["metrics"]
    db.update("host_metrics", metrics, live=False)
    session, rp = _pool(sim, join_timeout=1)
    try:
        with pytest.raises(xpool.PoolError, match="has not come back live.*operational_state=created"):
            rp._wait_until_live(_member(member_host), member_host.ref)
    finally:
        session.close()
