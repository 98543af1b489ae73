"""A resize never sends a parent the destination already holds intact (an image cached there).

Both hosts boot from the same Glance image through the real image layer
(``direct_vhd``: dom0's glance plug-in downloads it, the SR image cache clones
it), so each host's SR has a hidden base copy of the image. The resized
instance's chain is leaf -> resize snapshot -> image base: only the first two
travel (real rsync over the destination's loopback OpenSSH, or XAPI's HTTP
export/import), and the received chain is linked onto the destination's own
base copy, whose file must stay the same inode with the same bytes and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nova.conf
import nova.context
import pytest
from resize_helpers import MiB, digest, flavor, make_instance, migrate, revert, write_pattern

from nova import objects
from tests.glance_server import TOKEN, GlanceServer
from xenapi_driver import migrateops, vhd, vmops
from xenapi_driver.image import XenAPIImageSource
from xenapi_driver.image.cache import cache_label

CONF = nova.conf.CONF
BOTH = pytest.mark.parametrize("transport", ["rsync", "xapi"], indirect=True)
IMAGE_SIZE = 64 * MiB


@pytest.fixture(scope="module")
def glance() -> Iterator[GlanceServer]:
    server = GlanceServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def image_data(tmp_path_factory: Any) -> bytes:
    """A plain dynamic VHD image with 24 MiB of data (what makes sending its base costly)."""
    path = tmp_path_factory.mktemp("image") / "image.vhd"
    vhd.create_dynamic(str(path), IMAGE_SIZE)
    rng = random.Random(7)
    with vhd.open_chain(str(path)) as chain:
        for block in range(12):
            chain.write(block * 4 * MiB, rng.randbytes(2 * MiB))
    return path.read_bytes()


@pytest.fixture
def cloud(computes: Any, glance: GlanceServer, image_data: bytes) -> Iterator[dict[str, Any]]:
    """Both computes boot from Glance with the SR image cache; the image is cached on both."""
    overrides = {("api_servers", "glance"): [glance.endpoint], ("image_handler", "xenserver"): "direct_vhd",
                 ("cache_images", "xenserver"): "all"}  # fmt: skip
    for (name, group), value in overrides.items():
        CONF.set_override(name, value, group=group)
    src, dst = computes
    for compute in (src, dst):
        source = XenAPIImageSource(compute.session, sr_finder=compute.hostops.instance_sr)
        compute.vmops = vmops.VMOps(compute.session, compute.vmops._virtapi, hostops=compute.hostops,  # noqa: SLF001
                                    image_source=source)  # fmt: skip
        compute.migrateops = migrateops.MigrateOps(
            compute.session, compute.vmops, volumeops=compute.volumeops
        )
    image_id = glance.add(image_data, "vhd", "bare")
    context = nova.context.RequestContext("user-1", "project-1", auth_token=TOKEN, is_admin=False)
    try:
        yield {"src": src, "dst": dst, "image_id": image_id, "context": context}
    finally:
        for name, group in overrides:
            CONF.clear_override(name, group=group)


def boot(cloud: dict[str, Any], compute: Any) -> Any:
    inst = make_instance(flavor("small", root_gb=1), image_ref=cloud["image_id"])
    meta = objects.ImageMeta.from_dict({"id": cloud["image_id"]})
    compute.vmops.spawn(cloud["context"], inst, meta, [], None, {}, network_info=[], power_on=True)
    return inst


def image_base(cloud: dict[str, Any], compute: Any) -> Path:
    """The hidden base copy below the image's cache entry on ``compute``'s SR."""
    s = compute.session
    (entry,) = s.call_xenapi("VDI.get_by_name_label", cache_label(cloud["image_id"]))
    parent = s.call_xenapi("VDI.get_sm_config", entry)["vhd-parent"]
    return compute.host.sandbox.sr_path() / f"{parent}.vhd"


def snapshot_of(path: Path) -> tuple[int, int, str]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def unique_id(path: Path) -> str:
    return vhd.info(str(path), require_parents=False).uuid


def chain_files(path: Path) -> list[str]:
    names = []
    current: str | None = str(path)
    while current:
        names.append(os.path.basename(current))
        current = vhd.info(current).parent_path
    return names


def prepared(cloud: dict[str, Any]) -> tuple[Any, Path, str, tuple[int, int, str]]:
    """An instance on src booted from the image (with its own writes), the image also in use on dst."""
    src, dst = cloud["src"], cloud["dst"]
    boot(cloud, dst)  # dst caches the image: a hidden base copy with a running clone on it
    inst = boot(cloud, src)
    _vdi, path = src.root(inst)
    write_pattern(path, 41, count=6)
    src_base, dst_base = image_base(cloud, src), image_base(cloud, dst)
    # The image's VHD unique id survives the download and the cache's clone on both hosts.
    assert unique_id(src_base) == unique_id(dst_base)
    assert vhd.info(str(dst_base)).hidden
    return inst, dst_base, digest(path), snapshot_of(dst_base)


def assert_not_sent(info: dict[str, Any], dst_base: Path) -> dict[str, Any]:
    (root,) = info["disks"]
    held = root["held_base"]
    assert held["vdi_uuid"] == dst_base.stem and held["seq"] == 2
    assert root["chain_length"] == 2  # leaf and the resize's snapshot: the image base stayed home
    assert sorted(root["stats"]) == ["0", "1"]  # transfer records: nothing for sequence number 2
    assert sum(s.get("literal_bytes", 0) for s in root["stats"].values()) < 24 * MiB
    return root


@BOTH
def test_held_image_base_is_not_sent_then_confirm(cloud, transport):
    src, dst = cloud["src"], cloud["dst"]
    inst, dst_base, before, held_file = prepared(cloud)

    info = migrate(src, dst, inst, flavor("big", root_gb=2))

    assert_not_sent(info, dst_base)
    kept = src.session.call_xenapi("VM.get_by_name_label", inst.name + migrateops.KEPT_SUFFIX)[0]
    journal = json.loads(src.session.call_xenapi("VM.get_other_config", kept)[migrateops.JOURNAL_KEY])
    assert journal["held"] == {"root-0": dst_base.stem}
    _new_vdi, new_path = dst.root(inst)
    assert dst_base.name in chain_files(new_path)  # linked onto the held file
    vhd.check(str(new_path), walk_parents=True)
    assert digest(new_path) == before
    assert snapshot_of(dst_base) == held_file  # same inode, same mtime, same bytes

    src.migrateops.confirm_migration(None, None, inst, [])
    dst.sr_files()  # SR.scan and its GC
    assert snapshot_of(dst_base) == held_file
    assert digest(dst.root(inst)[1]) == before


@BOTH
def test_held_image_base_is_not_sent_then_revert(cloud, transport):
    src, dst = cloud["src"], cloud["dst"]
    inst, dst_base, before, held_file = prepared(cloud)
    dst_files = dst.sr_files()

    info = migrate(src, dst, inst, flavor("big", root_gb=2))
    assert_not_sent(info, dst_base)
    revert(src, dst, inst)

    assert snapshot_of(dst_base) == held_file
    assert dst.sr_files() == dst_files  # what was received is gone, the held base stays
    assert dst.staging() == []
    assert digest(src.root(inst)[1]) == before


def _same_id_bigger(dst_base: Path) -> None:
    """Same unique id, other physical size (a block written into it: still a sound VHD)."""
    with vhd.open_chain(str(dst_base)) as chain:
        chain.write(58 * MiB, b"\x5a" * 4096)  # an unallocated block


def _damaged(dst_base: Path) -> None:
    """The dynamic header's checksum no longer holds."""
    with open(dst_base, "r+b") as handle:
        handle.seek(512 + 36)
        handle.write(b"\x00\x00\x00\x01")


@pytest.mark.parametrize(
    ("transport", "problem"),
    [(t, p) for t in ("rsync", "xapi") for p in ("size", "damaged", "writable_leaf")],
    indirect=["transport"],
)
def test_base_not_held_intact_is_sent(cloud, transport, problem):
    src, dst = cloud["src"], cloud["dst"]
    if problem == "writable_leaf":
        # dst's only instance of the image goes; SR.scan's GC merges the idle cache entry into its
        # base: dst then has the image's unique id and sizes in a visible (writable) VDI.
        other = boot(cloud, dst)
        base_uuid = image_base(cloud, dst).stem
        dst.vmops.destroy(other, [])
        dst.sr_files()
        (entry,) = dst.session.call_xenapi("VDI.get_by_name_label", cache_label(cloud["image_id"]))
        leaf = dst.host.sandbox.sr_path() / f"{dst.session.call_xenapi('VDI.get_uuid', entry)}.vhd"
        assert not vhd.info(str(leaf)).hidden and not (leaf.parent / f"{base_uuid}.vhd").exists()
        inst = boot(cloud, src)
        _vdi, path = src.root(inst)
        write_pattern(path, 43, count=4)
        src_base = image_base(cloud, src)
        assert unique_id(leaf) == unique_id(src_base)  # same identity, but writable: not held
        assert leaf.stat().st_size == src_base.stat().st_size
        before = digest(path)
    else:
        inst, dst_base, before, _ = prepared(cloud)
        {"size": _same_id_bigger, "damaged": _damaged}[problem](dst_base)

    info = migrate(src, dst, inst, flavor("big", root_gb=2))

    (root,) = info["disks"]
    assert "held_base" not in root
    assert root["chain_length"] == 3 and sorted(root["stats"]) == ["0", "1", "2"]
    assert digest(dst.root(inst)[1]) == before
    src.migrateops.confirm_migration(None, None, inst, [])


def test_lookup_failure_sends_everything(cloud, transport, monkeypatch):
    """No answer from the destination (older plug-ins, no XAPI session): the resize still works."""
    src, dst = cloud["src"], cloud["dst"]
    inst, _dst_base, before, _ = prepared(cloud)

    def no_session(dest):
        raise ConnectionRefusedError(f"no XAPI at {dest}")

    src.migrateops._dest_session_factory = no_session  # noqa: SLF001
    info = migrate(src, dst, inst, flavor("big", root_gb=2))
    (root,) = info["disks"]
    assert "held_base" not in root and root["chain_length"] == 3
    assert digest(dst.root(inst)[1]) == before


def test_choose_held_verifies_the_whole_parent_chain():
    def ident(uid, parent=None, vdi=None, size=100):
        return {"vdi_uuid": vdi or str(uuid.uuid4()), "unique_id": uid, "virtual_size": 10,
                "physical_size": size, "parent_unique_id": parent, "parent_vdi_uuid": None}  # fmt: skip

    s1, s2, s3 = ident("a", "b"), ident("b", "c"), ident("c")
    d2, d3 = ident("b", "c"), ident("c")
    d2["parent_vdi_uuid"] = d3["vdi_uuid"]
    assert migrateops.choose_held([s1, s2, s3], [d2, d3]) == (2, d2)
    assert migrateops.choose_held([s1, s2, s3], [d3]) == (3, d3)
    # the held VHD's parent on the destination is not the source's: not held
    d2_other = dict(d2, parent_vdi_uuid=str(uuid.uuid4()))
    assert migrateops.choose_held([s1, s2, s3], [d2_other]) is None
    # the destination's copy of the base differs in size: neither counts
    assert migrateops.choose_held([s1, s2, s3], [d2, dict(d3, physical_size=101)]) is None
    # a member the source could not vouch for is never assumed
    assert migrateops.choose_held([s1, None, s3], [d2, d3]) == (3, d3)
    assert migrateops.choose_held([s1, s2, s3], []) is None


def test_held_base_gone_before_finish_fails_clearly_and_reverts(cloud, transport):
    """The destination's held base vanishes after the copy (its last user gone, an SR scan):
    finish_migration fails with the reason, the revert brings the untouched source back."""
    src, dst = cloud["src"], cloud["dst"]
    inst, dst_base, before, _ = prepared(cloud)
    dst_files = dst.sr_files()
    src.migrateops.step_hook = None
    disk_info = src.migrateops.migrate_disk_and_power_off(
        None, inst, dst.host.address, flavor("big", root_gb=2), [], timeout=5
    )
    assert json.loads(disk_info)["disks"][0]["held_base"]["vdi_uuid"] == dst_base.stem
    moved = dst_base.with_suffix(".away")
    os.rename(dst_base, moved)
    inst.old_flavor, inst.flavor = inst.flavor, flavor("big", root_gb=2)
    with pytest.raises(Exception, match="held base"):
        dst.migrateops.finish_migration(None, None, inst, disk_info, [], None, True, power_on=True)
    os.rename(moved, dst_base)
    revert(src, dst, inst)
    assert digest(src.root(inst)[1]) == before
    assert dst.sr_files() == dst_files and dst.staging() == []
