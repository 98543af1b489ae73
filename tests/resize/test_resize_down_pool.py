"""Resize down within one pool, hosts sharing an NFS SR: the shrunk copy is made, nothing is copied.

The copy is written into the shared SR by the source's dom0 and the
destination's VM uses it directly; confirm removes the original, revert the copy.
"""

from __future__ import annotations

import resize_down_helpers as rdh
from resize_helpers import GiB, flavor, make_instance

from xenapi_driver import migrateops

FILES = rdh.guest_files(seed=5)


def test_resize_down_on_a_shared_sr_confirm_and_revert(pool_computes, one_pool, tmp_path):
    src, dst = pool_computes
    session = src.session
    shared = session.call_xenapi(
        "SR.create", src.host.ref, {}, "0", "shared NFS", "", "nfs", "user", True, {}
    )
    session.call_xenapi("pool.set_default_SR", session.call_xenapi("pool.get_all")[0], shared)
    pieces = rdh.ext4_disk_pieces(tmp_path, 2 * GiB, FILES)
    src.vmops.image_source = rdh.DiskImageSource(src, pieces)
    for outcome in ("confirm", "revert"):
        inst = make_instance(flavor("two", root_gb=2))
        src.spawn(inst)
        vdi, path = src.root(inst)
        assert session.call_xenapi("VDI.get_SR", vdi) == shared
        before = rdh.digest_allocated(path)
        info = src.migrateops.migrate_disk_and_power_off(
            None, inst, dst.host.address, flavor("one", root_gb=1), [], timeout=5
        )
        assert '"mode": "shared"' in info
        inst.old_flavor, inst.flavor = inst.flavor, flavor("one", root_gb=1)
        dst.migrateops.finish_migration(None, None, inst, info, [], None, True, power_on=True)
        new_vdi, new_path = dst.root(inst)
        assert session.call_xenapi("VDI.get_SR", new_vdi) == shared
        assert int(session.call_xenapi("VDI.get_virtual_size", new_vdi)) == GiB
        rdh.check_shrunk_disk(new_path, GiB, FILES, tmp_path)
        assert session.call_xenapi("VM.get_resident_on", dst.vmops.lookup(inst)[0]) == dst.host.ref
        assert sorted(src.vm_names()) == sorted([inst.name, inst.name + migrateops.KEPT_SUFFIX])
        if outcome == "confirm":
            src.migrateops.confirm_migration(None, None, inst, [])
            assert src.vm_names() == [inst.name]  # only the resized VM is left in the pool
            rdh.check_shrunk_disk(dst.root(inst)[1], GiB, FILES, tmp_path)
            dst.vmops.destroy(inst, [])
        else:
            dst.vmops.destroy(inst, [])
            inst.flavor = inst.old_flavor
            src.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
            assert src.root(inst)[0] == vdi and rdh.digest_allocated(src.root(inst)[1]) == before
            src.vmops.destroy(inst, [])
        assert src.staging() == [] and dst.staging() == []
    session.call_xenapi("SR.scan", shared)
    assert session.call_xenapi("SR.get_VDIs", shared) == []
