"""Within one pool: same-host resize and hosts sharing the SR move no data (copy-on-write clones)."""

from __future__ import annotations

from resize_helpers import GiB, digest, flavor, make_instance

from xenapi_driver import migrateops


def _no_plugin_calls(sim):
    return sim.call_counts.get("host.call_plugin", 0) == 0


def test_same_host_resize_copies_nothing_confirm_and_revert(pool_computes, one_pool):
    compute, _ = pool_computes
    for outcome in ("confirm", "revert"):
        inst = make_instance(flavor("small", root_gb=1))
        compute.spawn(inst)
        vdi, path = compute.root(inst)
        before = digest(path)
        one_pool.reset_call_counts()
        info = compute.migrateops.migrate_disk_and_power_off(
            None, inst, compute.host.address, flavor("big", root_gb=2), [], timeout=5
        )
        inst.old_flavor, inst.flavor = inst.flavor, flavor("big", root_gb=2)
        compute.migrateops.finish_migration(None, None, inst, info, [], None, True, power_on=True)
        assert '"mode": "same-host"' in info
        assert _no_plugin_calls(one_pool), "a same-host resize copies nothing"
        new_vdi, new_path = compute.root(inst)
        assert new_vdi != vdi and digest(new_path) == before
        assert int(compute.session.call_xenapi("VDI.get_virtual_size", new_vdi)) == 2 * GiB
        assert compute.vm_names() == sorted([inst.name, inst.name + migrateops.KEPT_SUFFIX])
        if outcome == "confirm":
            compute.migrateops.confirm_migration(None, None, inst, [])
            assert compute.vm_names() == [inst.name]
            assert digest(compute.root(inst)[1]) == before
        else:
            compute.vmops.destroy(inst, [])  # Nova's revert_resize on the (same) destination
            inst.flavor = inst.old_flavor
            compute.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
            assert compute.vm_names() == [inst.name]
            assert compute.root(inst)[0] == vdi and digest(compute.root(inst)[1]) == before
        compute.vmops.destroy(inst, [])
    assert compute.sr_files() == set()


def test_shared_sr_moves_nothing_between_pool_members(pool_computes, one_pool):
    src, dst = pool_computes
    session = src.session
    shared = session.call_xenapi(
        "SR.create", src.host.ref, {}, "0", "shared NFS", "", "nfs", "user", True, {}
    )
    pool_ref = session.call_xenapi("pool.get_all")[0]
    session.call_xenapi("pool.set_default_SR", pool_ref, shared)
    for outcome in ("confirm", "revert"):
        inst = make_instance(flavor("small", root_gb=1))
        src.spawn(inst)
        vdi, path = src.root(inst)
        assert session.call_xenapi("VDI.get_SR", vdi) == shared
        before = digest(path)
        one_pool.reset_call_counts()
        info = src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, inst.flavor, [])
        inst.old_flavor = inst.flavor
        dst.migrateops.finish_migration(None, None, inst, info, [], None, False, power_on=True)
        assert '"mode": "shared"' in info
        assert _no_plugin_calls(one_pool), "hosts sharing the SR copy nothing"
        vm_ref = dst.vmops.lookup(inst)[0]
        assert session.call_xenapi("VM.get_resident_on", vm_ref) == dst.host.ref
        assert digest(dst.root(inst)[1]) == before
        if outcome == "confirm":
            src.migrateops.confirm_migration(None, None, inst, [])
            assert src.vm_names() == [inst.name]  # only the migrated VM is left in the pool
            assert digest(dst.root(inst)[1]) == before
            dst.vmops.destroy(inst, [])
        else:
            dst.vmops.destroy(inst, [])
            src.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
            assert src.root(inst)[0] == vdi and digest(src.root(inst)[1]) == before
            assert session.call_xenapi("VM.get_resident_on", src.vmops.lookup(inst)[0]) == src.host.ref
            src.vmops.destroy(inst, [])
    session.call_xenapi("SR.scan", shared)
    assert session.call_xenapi("SR.get_VDIs", shared) == []
