"""Live migration within a pool (VM.pool_migrate) and between pools (Storage XenMotion)."""

from __future__ import annotations

from typing import Any

import pytest
from lm_helpers import (
    Side,
    disk_digest,
    first_bytes,
    make_guest,
    make_instance,
    make_shared_default_sr,
    over_rpc,
    vm_where,
)

from nova import exception as nova_exception
from xenapi_driver.simulator import api


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.data: Any = None

    def post(self, *args: Any) -> None:
        self.calls.append(("post", args))

    def recover(self, *args: Any) -> None:
        self.calls.append(("recover", args))


def migrate(src: Side, dst: Side, instance: Any, block_migration: Any = None) -> Recorder:
    """Nova's compute-manager sequence, migrate data crossing as over RPC at each hop."""
    dest_check = dst.ops.check_can_live_migrate_destination(None, instance, {}, {}, block_migration, False)
    data = src.ops.check_can_live_migrate_source(None, instance, over_rpc(dest_check))
    dst.ops.cleanup_live_migration_destination_check(None, dest_check)
    data = over_rpc(dst.ops.pre_live_migration(None, instance, None, [], None, over_rpc(data)))
    rec = Recorder()
    src.ops.live_migration(None, instance, "dest-compute", rec.post, rec.recover, bool(block_migration), data)
    if rec.calls and rec.calls[0][0] == "post":
        src.ops.post_live_migration(None, instance, None, data)
        src.ops.post_live_migration_at_source(None, instance, [])
        dst.ops.post_live_migration_at_destination(None, instance, [], False, None)
    else:
        dst.ops.rollback_live_migration_at_destination(None, instance, [], None, True, data)
    rec.data = data
    return rec


@pytest.fixture
def pool_sim():
    sim = api.start(hosts=3)
    try:
        make_shared_default_sr(sim, sim.pools[0])
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def two_pools():
    sim = api.start(hosts=[1, 1])
    try:
        yield sim
    finally:
        sim.stop()


def test_live_migration_within_a_pool(pool_sim):
    sim = pool_sim
    pool = sim.pools[0]
    shared = _default_sr(sim, pool)
    src, dst = Side(sim, pool.hosts[1]), Side(sim, pool.hosts[2])
    try:
        instance = make_instance()
        guest = make_guest(sim, src.host, instance, shared)
        before = disk_digest(sim, src.host, guest["vm_uuid"])
        sim.reset_call_counts()
        rec = migrate(src, dst, instance)
        assert [c[0] for c in rec.calls] == ["post"]
        assert vm_where(sim, pool, guest["vm_uuid"]) == ("Running", dst.host.uuid)
        assert sim.call_counts["Async.VM.pool_migrate"] == 1
        assert sim.call_counts["VM.migrate_send"] + sim.call_counts["Async.VM.migrate_send"] == 0
        # same disk, same bytes: nothing was copied
        assert disk_digest(sim, dst.host, guest["vm_uuid"]) == before
    finally:
        src.close()
        dst.close()


def _default_sr(sim: Any, pool: Any) -> str:
    from lm_helpers import xapi_login

    s = xapi_login(pool.master.url, sim)
    try:
        return s.xenapi.pool.get_default_SR(s.xenapi.pool.get_all()[0])
    finally:
        s.xenapi.session.logout()


def test_storage_xenmotion_between_single_host_pools(two_pools):
    sim = two_pools
    src, dst = Side(sim, sim.pools[0].hosts[0]), Side(sim, sim.pools[1].hosts[0])
    try:
        instance = make_instance()
        guest = make_guest(sim, src.host, instance, src.host.local_sr)
        before = disk_digest(sim, src.host, guest["vm_uuid"])
        rec = migrate(src, dst, instance, block_migration=True)
        assert [c[0] for c in rec.calls] == ["post"]
        assert vm_where(sim, sim.pools[0], guest["vm_uuid"]) is None  # gone from the source pool
        assert vm_where(sim, dst.host.pool, guest["vm_uuid"]) == ("Running", dst.host.uuid)
        after = disk_digest(sim, dst.host, guest["vm_uuid"])
        assert after == before  # every byte of the disk, read through the VHD chain
        assert first_bytes(sim, dst.host, guest["vm_uuid"]) == bytes([1]) * 4096
        # the disk now lives on the destination's SR
        assert list(dst.host.sr_path(_local_sr_uuid(dst.host)).glob("*.vhd"))
        # the migrate_receive session (a credential) was logged out afterwards
        assert_session_ended(dst.host, rec.data)
    finally:
        src.close()
        dst.close()


def assert_session_ended(host: Any, data: Any) -> None:
    import xmlrpc.client

    from xenapi_driver.live_migration import XenAPIMigrateData

    session_id = XenAPIMigrateData.receive_map(data)["session_id"]
    answer = xmlrpc.client.ServerProxy(host.url).session.get_this_host(session_id, session_id)
    assert answer["Status"] == "Failure" and answer["ErrorDescription"][0] == "SESSION_INVALID", answer


def _local_sr_uuid(host: Any) -> str:
    return host.pool.db.get("SR", host.local_sr)["uuid"]


def test_between_pools_without_block_migration_is_refused_clearly(two_pools):
    sim = two_pools
    src, dst = Side(sim, sim.pools[0].hosts[0]), Side(sim, sim.pools[1].hosts[0])
    try:
        instance = make_instance()
        make_guest(sim, src.host, instance, src.host.local_sr)
        dest_check = dst.ops.check_can_live_migrate_destination(None, instance, {}, {}, False, False)
        with pytest.raises(nova_exception.MigrationPreCheckError, match="block migration"):
            src.ops.check_can_live_migrate_source(None, instance, over_rpc(dest_check))
    finally:
        src.close()
        dst.close()


def test_xapi_refusal_recovers_and_keeps_the_vm_on_the_source(two_pools):
    sim = two_pools
    src, dst = Side(sim, sim.pools[0].hosts[0]), Side(sim, sim.pools[1].hosts[0])
    try:
        instance = make_instance()
        guest = make_guest(sim, src.host, instance, src.host.local_sr)
        before = disk_digest(sim, src.host, guest["vm_uuid"])
        sim.faults.fail_next("VM.migrate_send", "VM_MIGRATE_FAILED", "vm", "src", "dst", "network gone")
        rec = migrate(src, dst, instance, block_migration=True)
        assert [c[0] for c in rec.calls] == ["recover"]
        assert vm_where(sim, sim.pools[0], guest["vm_uuid"]) == ("Running", src.host.uuid)
        assert vm_where(sim, dst.host.pool, guest["vm_uuid"]) is None
        assert disk_digest(sim, src.host, guest["vm_uuid"]) == before
        assert_session_ended(dst.host, rec.data)  # by rollback_live_migration_at_destination
    finally:
        src.close()
        dst.close()


def test_source_check_reports_xapi_reasons(pool_sim):
    sim = pool_sim
    pool = sim.pools[0]
    src, dst = Side(sim, pool.hosts[1]), Side(sim, pool.hosts[2])
    try:
        instance = make_instance()
        make_guest(sim, src.host, instance, src.host.local_sr)  # local disk: not on the destination
        dest_check = dst.ops.check_can_live_migrate_destination(None, instance, {}, {}, None, False)
        with pytest.raises(nova_exception.MigrationPreCheckError, match="VM_REQUIRES_SR"):
            src.ops.check_can_live_migrate_source(None, instance, over_rpc(dest_check))
    finally:
        src.close()
        dst.close()


def test_force_complete_is_not_offered_and_abort_without_a_migration_is_harmless(pool_sim):
    sim = pool_sim
    src = Side(sim, sim.pools[0].hosts[1])
    try:
        instance = make_instance()
        with pytest.raises(NotImplementedError):
            src.ops.live_migration_force_complete(instance)
        src.ops.live_migration_abort(instance)  # nothing running here: a no-op
    finally:
        src.close()


def test_abort_cancels_the_running_migration_task(pool_sim):
    """live_migration_abort cancels the XAPI task live_migration is waiting for.

    A real pending XAPI task stands in for the VM.pool_migrate task: the
    simulator finishes a real migration too fast to cancel it deterministically.
    """
    sim = pool_sim
    src = Side(sim, sim.pools[0].hosts[1])
    try:
        instance = make_instance()
        task = src.session.call_xenapi("task.create", "VM.pool_migrate", "a running live migration")
        src.ops._tasks[instance.uuid] = task  # as LiveMigrationOps._run records it
        src.ops.live_migration_abort(instance)
        assert src.session.call_xenapi("task.get_status", task) in ("cancelling", "cancelled")
    finally:
        src.close()
