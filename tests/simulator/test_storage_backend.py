"""The file-SR backend behaves as XenServer's storage manager on real VHD files."""

import json
import subprocess
import uuid

import pytest

from xenapi_driver import vhd
from xenapi_driver.simulator import sr_backend
from xenapi_driver.simulator.sr_backend import FileSR, IsoSR, LunSR, SRBackendError

MiB = 1024**2


def qemu_info(path):
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "vpc", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(out.stdout)


def write(sr, vdi_uuid, offset, data):
    with vhd.open_chain(str(sr.path_of(vdi_uuid))) as chain:
        chain.write(offset, data)


def read(sr, vdi_uuid, offset, length):
    with vhd.open_chain(str(sr.path_of(vdi_uuid))) as chain:
        return chain.read(offset, length)


@pytest.fixture
def sr(tmp_path):
    return FileSR(tmp_path / "sr", physical_size=1024 * MiB)


def test_create_makes_a_real_dynamic_vhd_named_by_uuid(sr):
    disk = sr.create(5 * MiB)
    path = sr.root / f"{disk.uuid}.vhd"
    assert path.exists() and disk.location == disk.uuid
    assert disk.virtual_size == 6 * MiB  # rounded up to 2 MiB blocks
    assert qemu_info(path)["virtual-size"] >= 6 * MiB - 512 * 64
    assert not disk.hidden and disk.parent is None
    assert disk.sm_config == {"vdi_type": "vhd"}


def test_snapshot_keeps_the_original_uuid_on_a_new_leaf(sr):
    disk = sr.create(4 * MiB)
    write(sr, disk.uuid, 0, b"A" * 4096)
    base, leaf, snap = sr.snapshot(disk.uuid)
    assert leaf.uuid == disk.uuid
    assert base.hidden and base.read_only and not base.managed
    assert leaf.parent == base.uuid and snap.parent == base.uuid
    assert leaf.sm_config["vhd-parent"] == base.uuid
    assert len({base.uuid, leaf.uuid, snap.uuid}) == 3
    write(sr, disk.uuid, 0, b"B" * 4096)
    assert read(sr, snap.uuid, 0, 4096) == b"A" * 4096
    assert read(sr, disk.uuid, 0, 4096) == b"B" * 4096
    assert sr.depth(disk.uuid) == 2


def test_chain_depth_limit_is_sm_error_109(sr):
    disk = sr.create(2 * MiB)
    for _ in range(sr_backend.MAX_CHAIN_DEPTH - 1):
        sr.snapshot(disk.uuid)
    assert sr.depth(disk.uuid) == sr_backend.MAX_CHAIN_DEPTH
    with pytest.raises(SRBackendError) as err:
        sr.snapshot(disk.uuid)
    assert err.value.code == "SR_BACKEND_FAILURE_109"
    assert len(err.value.params) == 3


def test_destroy_hides_and_scan_gc_removes_and_coalesces(sr):
    disk = sr.create(4 * MiB)
    write(sr, disk.uuid, 0, b"1" * 4096)
    base, _, snap = sr.snapshot(disk.uuid)
    write(sr, disk.uuid, 4096, b"2" * 4096)
    sr.destroy(snap.uuid)
    assert sr.info(snap.uuid).hidden
    found = sr.scan()
    # The snapshot leaf went, then the base (one child left) was leaf-coalesced into the disk.
    assert set(found) == {disk.uuid}
    assert found[disk.uuid].parent is None and not found[disk.uuid].hidden
    assert read(sr, disk.uuid, 0, 8192) == b"1" * 4096 + b"2" * 4096
    assert not (sr.root / f"{base.uuid}.vhd").exists()


def test_gc_coalesces_interior_hidden_nodes_and_relinks_children(sr):
    disk = sr.create(4 * MiB)
    write(sr, disk.uuid, 0, b"a" * 4096)
    base1, _, snap1 = sr.snapshot(disk.uuid)
    write(sr, disk.uuid, 4096, b"b" * 4096)
    base2, _, snap2 = sr.snapshot(disk.uuid)
    # base2 is a hidden child of base1; once snap1 goes, base1 has exactly one child (base2).
    sr.destroy(snap1.uuid)
    found = sr.scan()
    assert snap1.uuid not in found
    assert set(found) == {disk.uuid, snap2.uuid, base1.uuid}
    assert found[disk.uuid].parent == base1.uuid == found[snap2.uuid].parent
    assert read(sr, snap2.uuid, 0, 8192) == b"a" * 4096 + b"b" * 4096
    vhd.check(str(sr.path_of(disk.uuid)), walk_parents=True)


def test_scan_lists_foreign_vhds_and_forgets_deleted_ones(sr, tmp_path):
    foreign = str(uuid.uuid4())
    vhd.create_dynamic(str(sr.root / f"{foreign}.vhd"), 2 * MiB)
    (sr.root / "not-a-uuid.vhd").write_bytes(b"junk")
    assert foreign in sr.scan()
    (sr.root / f"{foreign}.vhd").unlink()
    assert foreign not in sr.scan()


def test_resize_grows_refuses_shrink_and_sr_full(sr):
    disk = sr.create(4 * MiB)
    assert sr.resize(disk.uuid, 10 * MiB).virtual_size == 10 * MiB
    with pytest.raises(SRBackendError) as err:
        sr.resize(disk.uuid, 2 * MiB)
    assert err.value.code == "SR_BACKEND_FAILURE_79"
    with pytest.raises(SRBackendError) as err:
        sr.create(4096 * MiB)
    assert err.value.code == "SR_FULL"
    assert int(err.value.params[0]) == 4096 * MiB


def test_copy_flattens_a_chain_onto_another_sr(sr, tmp_path):
    other = FileSR(tmp_path / "other")
    disk = sr.create(4 * MiB)
    write(sr, disk.uuid, 0, b"x" * 4096)
    sr.snapshot(disk.uuid)
    write(sr, disk.uuid, 8192, b"y" * 4096)
    copy = sr.copy_to(disk.uuid, other)
    assert copy.parent is None and copy.virtual_size == disk.virtual_size
    assert read(other, copy.uuid, 0, 12288) == b"x" * 4096 + b"\0" * 4096 + b"y" * 4096


def test_copy_delta_into_existing_disk(sr, tmp_path):
    other = FileSR(tmp_path / "other")
    disk = sr.create(4 * MiB)
    write(sr, disk.uuid, 0, b"x" * 4096)
    base, _, snap = sr.snapshot(disk.uuid)
    target = sr.copy_to(snap.uuid, other)
    write(sr, disk.uuid, 8192, b"z" * 4096)
    sr.copy_to(disk.uuid, other, base_uuid=base.uuid, into_uuid=target.uuid)
    assert read(other, target.uuid, 0, 12288) == b"x" * 4096 + b"\0" * 4096 + b"z" * 4096


def test_iso_sr_lists_iso_files(tmp_path):
    (tmp_path / "a.iso").write_bytes(b"\0" * 2048)
    (tmp_path / "readme.txt").write_text("no")
    found = IsoSR(tmp_path).scan()
    assert list(found) == ["a.iso"] and found["a.iso"].read_only


def test_lun_sr_sees_lun_files_of_its_target(tmp_path):
    scsi = sr_backend.create_lun(tmp_path, "iqn.2010-10.org.openstack:volume-1", 0, 8 * MiB)
    sr_backend.create_lun(tmp_path, "iqn.2010-10.org.openstack:volume-1", 1, 4 * MiB)
    luns = LunSR(tmp_path, "iqn.2010-10.org.openstack:volume-1").scan()
    assert len(luns) == 2 and luns[scsi].sm_config["LUNid"] == "0"
    only = LunSR(tmp_path, "iqn.2010-10.org.openstack:volume-1", scsi)
    only.check_attachable()
    assert list(only.scan()) == [scsi]
    with pytest.raises(SRBackendError):
        LunSR(tmp_path, "iqn.missing").check_attachable()
