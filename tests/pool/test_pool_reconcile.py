"""Pool aggregates converge XAPI: three single-host pools become one; removal ejects."""

from __future__ import annotations

from typing import Any

import nova_db
from pool_helpers import xapi_login

from xenapi_driver import pool as xpool

ROUNDS = 3  # periodic runs of every compute; converging must not need more


def run_rounds(ctx: Any, computes: list, rounds: int = ROUNDS) -> None:
    for _ in range(rounds):
        for c in computes:
            c.pool.reconcile(ctx)


def pool_hosts(sim: Any, host: Any) -> set[str]:
    """Host UUIDs of the XAPI pool ``host`` is in, asked over XML-RPC."""
    s = xapi_login(host.pool.master.url, sim)
    try:
        return {s.xenapi.host.get_uuid(h) for h in s.xenapi.host.get_all()}
    finally:
        s.xenapi.session.logout()


def vm_state(sim: Any, host: Any, vm_uuid: str) -> tuple[str, str]:
    s = xapi_login(host.pool.master.url, sim)
    try:
        vm = s.xenapi.VM.get_by_uuid(vm_uuid)
        resident = s.xenapi.VM.get_resident_on(vm)
        where = s.xenapi.host.get_uuid(resident) if resident != "OpaqueRef:NULL" else ""
        return s.xenapi.VM.get_power_state(vm), where
    finally:
        s.xenapi.session.logout()


def form_pool(ctx: Any, computes: list) -> Any:
    agg = nova_db.create_pool_aggregate(ctx)
    agg.add_host(computes[0].name)  # the master's compute first
    computes[0].pool.reconcile(ctx)
    agg = nova_db.reload(ctx, agg)
    assert agg.metadata["master_compute"] == computes[0].name
    assert agg.metadata["operational_state"] == "active", agg.metadata
    for c in computes[1:]:
        agg.add_host(c.name)
    run_rounds(ctx, computes)
    return nova_db.reload(ctx, agg)


def test_three_single_host_pools_join_into_one(sim, ctx, computes):
    master = computes[0]
    agg = form_pool(ctx, computes)
    meta = agg.metadata
    assert meta["operational_state"] == "active", meta
    assert "operational_state_reason" not in meta
    assert xpool.JOINING_KEY not in meta and xpool.JOIN_TASK_KEY not in meta
    uuids = {c.host.uuid for c in computes}
    assert pool_hosts(sim, master.host) == uuids
    for c in computes:
        assert meta[xpool.member_key(c.name, "host_uuid")] == c.host.uuid
        assert meta[xpool.member_key(c.name, "address")] == c.host.address
        # every compute VM runs again, on its own host
        assert vm_state(sim, master.host, c.vm_uuid) == ("Running", c.host.uuid)
    for c in computes[1:]:
        assert meta[xpool.member_key(c.name, "compute_vm")] == c.vm_uuid
    # XAPI's pool takes the aggregate's name
    s = xapi_login(master.host.url, sim)
    try:
        assert [p["name_label"] for p in s.xenapi.pool.get_all_records().values()] == [agg.name]
    finally:
        s.xenapi.session.logout()
    # no secret in the metadata any admin can read
    assert not any(sim.password in v for v in meta.values())
    # each member's compute still manages its own host, now through the master
    for c in computes[1:]:
        assert c.session.call_xenapi("host.get_uuid", c.session.host_ref) == c.host.uuid
        assert c.host.address not in c.session.master_url
    # and a further run changes nothing
    before = dict(meta)
    run_rounds(ctx, computes, 1)
    assert nova_db.reload(ctx, agg).metadata == before


def test_removing_a_host_from_the_aggregate_ejects_it(sim, ctx, computes):
    master, _, leaving = computes
    agg = form_pool(ctx, computes)
    assert agg.metadata["operational_state"] == "active"
    agg.delete_host(leaving.name)
    master.pool.reconcile(ctx)
    agg = nova_db.reload(ctx, agg)
    assert agg.metadata["operational_state"] == "active", agg.metadata
    assert xpool.member_key(leaving.name, "host_uuid") not in agg.metadata
    assert pool_hosts(sim, master.host) == {computes[0].host.uuid, computes[1].host.uuid}
    # the ejected host is a pool of its own again (XAPI wiped it, compute VM included)
    assert leaving.host.pool is not master.host.pool
    assert pool_hosts(sim, leaving.host) == {leaving.host.uuid}
