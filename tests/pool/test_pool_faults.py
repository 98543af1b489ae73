"""Faults during pool changes: the aggregate says ``error`` with a reason, no host is
left half-joined, and a retry (``operational_state=created``) after the fix succeeds."""

from __future__ import annotations

from typing import Any

import nova_db
import pytest
from pool_helpers import make_compute_vm, xapi_login
from test_pool_reconcile import pool_hosts, run_rounds, vm_state

from xenapi_driver import pool as xpool


def start_pool(ctx: Any, computes: list) -> Any:
    """Aggregate with the master (active) and the others added and published, not joined yet."""
    master = computes[0]
    agg = nova_db.create_pool_aggregate(ctx)
    agg.add_host(master.name)
    master.pool.reconcile(ctx)
    for c in computes[1:]:
        agg.add_host(c.name)
        c.pool.reconcile(ctx)  # publishes what the master needs
    return nova_db.reload(ctx, agg)


def retry(ctx: Any, agg: Any) -> None:
    """What ``openstack aggregate set --property operational_state=created`` does."""
    nova_db.reload(ctx, agg).update_metadata({"operational_state": "created"})


def assert_error(ctx: Any, agg: Any, *words: str) -> dict:
    meta = nova_db.reload(ctx, agg).metadata
    assert meta["operational_state"] == "error", meta
    reason = meta["operational_state_reason"]
    for word in words:
        assert word in reason, reason
    assert xpool.JOINING_KEY not in meta and xpool.JOIN_TASK_KEY not in meta
    return meta


def test_joining_host_unreachable(sim, ctx, computes):
    master, joiner = computes[0], computes[1]
    agg = start_pool(ctx, computes[:2])
    sim.power_off_host(joiner.host)
    master.pool.reconcile(ctx)
    assert_error(ctx, agg, "cannot reach XAPI", joiner.host.address, "nothing was changed")
    assert pool_hosts(sim, master.host) == {master.host.uuid}
    # an error is not retried behind the operator's back
    master.pool.reconcile(ctx)
    assert nova_db.reload(ctx, agg).metadata["operational_state"] == "error"
    # fixed: the host is back; the operator asks for a retry
    sim.power_on_host(joiner.host)
    assert vm_state(sim, joiner.host, joiner.vm_uuid)[0] == "Running"  # never touched
    retry(ctx, agg)
    run_rounds(ctx, computes[:2])
    assert nova_db.reload(ctx, agg).metadata["operational_state"] == "active"
    assert pool_hosts(sim, master.host) == {master.host.uuid, joiner.host.uuid}


def test_compute_vm_fails_to_restart(sim, ctx, computes):
    master, joiner = computes[0], computes[1]
    agg = start_pool(ctx, computes[:2])
    # the plug-in tries five times, then the master's compute once more
    sim.faults.fail_next("VM.start_on", "HOST_NOT_ENOUGH_FREE_MEMORY", "1073741824", "0", count=6)
    master.pool.reconcile(ctx)
    meta = assert_error(ctx, agg, "joined the pool", joiner.vm_uuid, "did not start")
    # fully joined and recorded (not half-joined): XAPI and the aggregate agree
    assert pool_hosts(sim, master.host) == {master.host.uuid, joiner.host.uuid}
    assert meta[xpool.member_key(joiner.name, "host_uuid")] == joiner.host.uuid
    assert vm_state(sim, master.host, joiner.vm_uuid)[0] == "Halted"
    retry(ctx, agg)
    master.pool.reconcile(ctx)
    assert nova_db.reload(ctx, agg).metadata["operational_state"] == "active"
    assert vm_state(sim, master.host, joiner.vm_uuid) == ("Running", joiner.host.uuid)


class _Died(xpool._Crash):
    pass


def _die_after_join_started(agg: Any, member: Any) -> None:
    raise _Died("nova-compute on the master stopped")


def test_master_compute_restarts_mid_join(sim, ctx, computes, monkeypatch):
    master, joiner = computes[0], computes[1]
    agg = start_pool(ctx, computes[:2])
    monkeypatch.setattr(master.pool, "_after_join_started", _die_after_join_started)
    with pytest.raises(_Died):
        master.pool.reconcile(ctx)
    meta = nova_db.reload(ctx, agg).metadata
    assert meta["operational_state"] == "changing"
    assert meta[xpool.JOINING_KEY] == joiner.name and meta[xpool.JOIN_TASK_KEY]
    master.restart()  # init_host runs reconcile again
    master.pool.reconcile(ctx)
    meta = nova_db.reload(ctx, agg).metadata
    assert meta["operational_state"] == "active", meta
    assert xpool.JOINING_KEY not in meta and xpool.JOIN_TASK_KEY not in meta
    assert pool_hosts(sim, master.host) == {master.host.uuid, joiner.host.uuid}
    assert vm_state(sim, master.host, joiner.vm_uuid) == ("Running", joiner.host.uuid)


def test_master_compute_restarts_while_the_join_fails(sim, ctx, computes, monkeypatch):
    master, joiner = computes[0], computes[1]
    agg = start_pool(ctx, computes[:2])
    sim.faults.fail_next("pool.join_force", "JOINING_HOST_CONNECTION_FAILED")
    monkeypatch.setattr(master.pool, "_after_join_started", _die_after_join_started)
    with pytest.raises(_Died):
        master.pool.reconcile(ctx)
    master.restart()
    master.pool.reconcile(ctx)
    assert_error(ctx, agg, "did not join", "JOINING_HOST_CONNECTION_FAILED", "unchanged")
    # not half-joined: still alone in its pool, and its compute VM runs again on it
    assert pool_hosts(sim, joiner.host) == {joiner.host.uuid}
    assert vm_state(sim, joiner.host, joiner.vm_uuid) == ("Running", joiner.host.uuid)
    retry(ctx, agg)
    run_rounds(ctx, computes[:2])
    assert nova_db.reload(ctx, agg).metadata["operational_state"] == "active"
    assert pool_hosts(sim, master.host) == {master.host.uuid, joiner.host.uuid}


def test_preconditions_are_checked_before_anything_changes(sim, ctx, computes):
    master, joiner = computes[0], computes[1]
    make_compute_vm(sim, joiner.host, "a guest")  # a running guest on the joining host
    agg = start_pool(ctx, computes[:2])
    master.pool.reconcile(ctx)
    assert_error(ctx, agg, "runs guests", "a guest")
    assert pool_hosts(sim, joiner.host) == {joiner.host.uuid}
    assert vm_state(sim, joiner.host, joiner.vm_uuid)[0] == "Running"


def test_master_needs_the_shared_default_sr(sim, ctx, computes):
    # the second host's pool keeps its local default SR
    agg = nova_db.create_pool_aggregate(ctx)
    agg.add_host(computes[1].name)
    computes[1].pool.reconcile(ctx)
    meta = nova_db.reload(ctx, agg).metadata
    assert meta["operational_state"] == "error"
    assert "is not shared" in meta["operational_state_reason"]
    assert "master_compute" not in meta
    s = xapi_login(computes[1].host.url, sim)
    try:
        assert [p["name_label"] for p in s.xenapi.pool.get_all_records().values()] == [""]
    finally:
        s.xenapi.session.logout()


def test_joining_compute_checks_its_own_credentials_at_the_master(sim, ctx, computes):
    """Its nova.conf credentials must work at the master, or it could not manage its host after the join."""
    master, joiner = computes[0], computes[1]
    joiner.restart(crashed=False, credentials=("root", "not-the-pool-password"))
    agg = start_pool(ctx, computes[:2])
    meta = assert_error(ctx, agg, "refuses the [xenserver] credentials", joiner.name)
    assert "not-the-pool-password" not in " ".join(meta.values())
    master.pool.reconcile(ctx)  # an error is not acted on
    assert pool_hosts(sim, joiner.host) == {joiner.host.uuid}
    joiner.restart(crashed=False)  # fixed in its nova.conf
    retry(ctx, agg)
    run_rounds(ctx, computes[:2])
    assert nova_db.reload(ctx, agg).metadata["operational_state"] == "active"
    assert pool_hosts(sim, master.host) == {master.host.uuid, joiner.host.uuid}


def test_a_join_outlasting_the_wait_is_followed_on_the_next_run(sim, ctx, computes, monkeypatch):
    master, joiner = computes[0], computes[1]
    agg = start_pool(ctx, computes[:2])
    real_wait = master.pool._wait_task
    monkeypatch.setattr(master.pool, "_wait_task", lambda task: ("timeout", []))
    master.pool.reconcile(ctx)
    meta = nova_db.reload(ctx, agg).metadata
    assert meta["operational_state"] == "changing", meta  # not an error: still running
    assert meta[xpool.JOINING_KEY] == joiner.name and meta[xpool.JOIN_TASK_KEY]
    monkeypatch.setattr(master.pool, "_wait_task", real_wait)
    master.pool.reconcile(ctx)
    meta = nova_db.reload(ctx, agg).metadata
    assert meta["operational_state"] == "active", meta
    assert xpool.JOINING_KEY not in meta
    assert pool_hosts(sim, master.host) == {master.host.uuid, joiner.host.uuid}
    assert vm_state(sim, master.host, joiner.vm_uuid) == ("Running", joiner.host.uuid)
