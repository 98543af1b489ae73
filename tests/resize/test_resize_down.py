"""Resize down of an ext4 root disk through MigrateOps, on two simulated hosts and on one.

The guest disk is real: an MBR (with boot code and a boot-loader gap) and one
ext4 partition made by ``mke2fs -d`` with known files. The shrink runs for
real in the source's dom0 sandbox (the ``partition_utils`` plug-in, real
e2fsck/resize2fs); the copy travels by real rsync over SSH or XAPI's HTTP
disk handlers. The destination's disk is read back through the VHD library:
its size is the new flavor's, its one partition ends within it, ``e2fsck
-fn`` is clean and every file reads back byte for byte (``debugfs rdump``).
Refusals (two partitions, no file system, data that does not fit) and a
failure after the shrink leave the instance running with its disk unchanged.
"""

from __future__ import annotations

import json

import pytest
import resize_down_helpers as rdh
from resize_helpers import GiB, flavor, make_instance, migrate, power_state, revert

from nova import exception as nova_exception
from xenapi_driver import migrateops
from xenapi_driver.migrateops import resize_down

BOTH = pytest.mark.parametrize("transport", ["rsync", "xapi"], indirect=True)
FILES = rdh.guest_files()


@pytest.fixture(scope="module")
def ext4_pieces(tmp_path_factory):
    return rdh.ext4_disk_pieces(tmp_path_factory.mktemp("ext4"), 2 * GiB, FILES)


def boot(compute, pieces, **flavor_fields):
    compute.vmops.image_source = rdh.DiskImageSource(compute, pieces)
    inst = make_instance(flavor("two", root_gb=2, **flavor_fields))
    compute.spawn(inst)
    return inst


def source_state(compute, inst):
    """What a refused or rolled-back resize down must leave as it was: root VDI, its data, the SR's files."""
    vdi, path = compute.root(inst)
    return {"vdi": vdi, "data": rdh.digest_allocated(path), "files": compute.sr_files()}


def assert_rolled_back(src, dst, inst, before):
    """The instance runs under its name on its own root disk, byte for byte; nothing is left anywhere."""
    assert power_state(src, inst) == "Running"
    assert src.vm_names() == [inst.name] and src.root(inst)[0] == before["vdi"]
    assert rdh.digest_allocated(src.root(inst)[1]) == before["data"]
    assert src.sr_files() == before["files"]  # the shrunk copy is gone
    assert src.staging() == [] and dst.staging() == [] and dst.sr_files() == set()


@BOTH
def test_resize_down_then_confirm(computes, transport, ext4_pieces, tmp_path):
    src, dst = computes
    inst = boot(src, ext4_pieces, ephemeral_gb=1)
    _eph, eph_path = src.root(inst, "ephemeral")
    rdh.write_disk(eph_path, [(4096, b"ephemeral data" * 300)])
    eph_before = rdh.digest_allocated(eph_path)

    info = migrate(src, dst, inst, flavor("one", root_gb=1, ephemeral_gb=1))

    assert info["mode"] == transport
    root = next(d for d in info["disks"] if d["role"] == "root")
    assert root["chain_length"] == 1  # the shrunk copy: one dynamic VHD
    assert [d["role"] for d in info["disks"]] == ["root", "ephemeral"]
    assert inst.saved_progress[0] == 0 and inst.saved_progress[-1] == 100
    assert inst.saved_progress == sorted(inst.saved_progress)
    new_vdi, new_path = dst.root(inst)
    assert int(dst.session.call_xenapi("VDI.get_virtual_size", new_vdi)) == GiB
    rdh.check_shrunk_disk(new_path, GiB, FILES, tmp_path)
    assert rdh.digest_allocated(dst.root(inst, "ephemeral")[1]) == eph_before
    assert power_state(dst, inst) == "Running"
    assert src.vm_names() == [inst.name + migrateops.KEPT_SUFFIX]
    assert src.staging() == [] and dst.staging() == []

    src.migrateops.confirm_migration(None, None, inst, [])
    assert src.vm_names() == []
    assert src.sr_files() == set()  # the original, its snapshots and the shrunk copy are gone
    rdh.check_shrunk_disk(dst.root(inst)[1], GiB, FILES, tmp_path)


def test_resize_down_then_revert(computes, ext4_pieces):
    src, dst = computes
    inst = boot(src, ext4_pieces)
    before = source_state(src, inst)

    migrate(src, dst, inst, flavor("one", root_gb=1))
    assert power_state(dst, inst) == "Running"

    revert(src, dst, inst)  # Nova's order: the destination first
    assert_rolled_back(src, dst, inst, before)  # byte for byte the original
    assert dst.vm_names() == []


def test_same_host_resize_down_confirm_and_revert(computes, ext4_pieces, tmp_path):
    """No network copy, but the shrunk copy is made; the new VM uses it, the original is kept."""
    src, _dst = computes
    inst = boot(src, ext4_pieces)
    before = source_state(src, inst)

    info = migrate(src, src, inst, flavor("one", root_gb=1))
    assert info["mode"] == "same-host"
    new_vdi, new_path = src.root(inst)
    assert new_vdi != before["vdi"]
    assert int(src.session.call_xenapi("VDI.get_virtual_size", new_vdi)) == GiB
    rdh.check_shrunk_disk(new_path, GiB, FILES, tmp_path)
    assert sorted(src.vm_names()) == sorted([inst.name, inst.name + migrateops.KEPT_SUFFIX])
    assert power_state(src, inst) == "Running"

    # revert: Nova destroys the new VM (and its disk, the copy), then brings the original back
    src.vmops.destroy(inst, [])
    inst.flavor = inst.old_flavor
    src.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
    assert_rolled_back(src, _dst, inst, before)

    # again, then confirm: the original goes, the new VM keeps its shrunk disk
    inst.flavor = inst.old_flavor
    migrate(src, src, inst, flavor("one", root_gb=1))
    src.migrateops.confirm_migration(None, None, inst, [])
    assert src.vm_names() == [inst.name]
    new_vdi, new_path = src.root(inst)
    rdh.check_shrunk_disk(new_path, GiB, FILES, tmp_path)
    assert power_state(src, inst) == "Running"


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ("two-partitions", "the root disk has 2 partitions"),
        ("random-bytes", "holds no file system this driver recognises, not ext3/ext4"),
        ("does-not-fit", "choose a larger flavor or free space in the guest"),
    ],
)
def test_refusals_keep_the_instance_running_and_its_disk_unchanged(computes, tmp_path, layout, words):
    src, dst = computes
    if layout == "two-partitions":
        pieces = rdh.two_partition_pieces(tmp_path, 2 * GiB, FILES)
    elif layout == "random-bytes":
        pieces = rdh.random_partition_pieces(2 * GiB)
    else:
        pieces = rdh.ext4_disk_pieces(tmp_path, 2 * GiB, FILES, fill_bytes=1100 * 1024 * 1024)
    inst = boot(src, pieces)
    before = source_state(src, inst)
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, flavor("one", root_gb=1), [])
    inner = err.value.inner_exception
    assert isinstance(inner, nova_exception.ResizeError)
    message = str(inner)
    assert "resizing the root disk down (2 GiB to 1 GiB) is not possible" in message
    assert words in message and "choose a flavor with root_gb >= 2" in message
    assert_rolled_back(src, dst, inst, before)


def test_data_that_only_resize2fs_finds_too_big_is_refused_after_power_off(computes, tmp_path):
    """The superblock under-reports the data (as a running guest's may): the first check passes,
    resize2fs -P on the consistent copy refuses, and the instance is powered back on unchanged."""
    src, dst = computes
    pieces = rdh.ext4_disk_pieces(tmp_path, 2 * GiB, FILES, fill_bytes=1100 * 1024 * 1024, stale=True)
    inst = boot(src, pieces)
    before = source_state(src, inst)
    steps = []
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        migrate(src, dst, inst, flavor("one", root_gb=1), hook=steps.append)
    message = str(err.value.inner_exception)
    assert "the root disk cannot be resized down" in message and "(resize2fs -P)" in message, message
    assert steps[:3] == ["power_off", "rename", "shrink"]  # refused after the power-off
    assert_rolled_back(src, dst, inst, before)


def test_plugins_without_resize_down_refuse_clearly(computes, ext4_pieces, monkeypatch):
    """dom0 plug-ins older than 1.1 answer UNKNOWN_XENAPI_PLUGIN_FUNCTION: refused, with advice."""
    from xenapi_driver import exception as xexc

    src, dst = computes
    inst = boot(src, ext4_pieces)
    real = src.session.call_plugin

    def old_plugins(plugin, fn, args=None):
        if fn.startswith("shrink_"):
            raise xexc.XenAPIError("UNKNOWN_XENAPI_PLUGIN_FUNCTION", [fn])
        return real(plugin, fn, args)

    monkeypatch.setattr(src.session, "call_plugin", old_plugins)  # only the plug-in's answer is stood in
    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, flavor("one", root_gb=1), [])
    assert "xenapi-driver install-plugins" in str(err.value.inner_exception)
    assert power_state(src, inst) == "Running"


FAKE_TOOLS = {
    # dom0's e2fsprogs older than the guest's file system (XenServer 8 ships 1.42.9)
    "e2fsck": (
        "#!/bin/sh\necho 'e2fsck: Get a newer version of e2fsck!' >&2\n"
        "echo '/images/x: ********** WARNING: Filesystem still has errors **********' >&2\nexit 8\n",
        "dom0's e2fsprogs are too old",
    ),
    # resize2fs dies half-way through the shrink (its estimate still answers)
    "resize2fs": (
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = -P ] && exec {real} "$@"; done\n'
        "echo 'resize2fs: Memory allocation failed while trying to resize' >&2\nexit 1\n",
        "resize2fs could not shrink the ext4 file system to 1023 MiB",
    ),
}


@pytest.mark.parametrize("tool", sorted(FAKE_TOOLS))
def test_dom0_tool_failing_mid_shrink_rolls_back(computes, ext4_pieces, tool):
    """The plug-in fails after the power-off (a dom0 tool fails): refused, powered back on, no leftovers."""
    import shutil

    src, dst = computes
    inst = boot(src, ext4_pieces)
    before = source_state(src, inst)
    script, words = FAKE_TOOLS[tool]
    fake = src.host.sandbox.bin_dir / tool  # dom0's PATH starts with bin/
    fake.write_text(script.format(real=shutil.which("resize2fs") or "/usr/sbin/resize2fs"))
    fake.chmod(0o755)
    try:
        with pytest.raises(nova_exception.InstanceFaultRollback) as err:
            migrate(src, dst, inst, flavor("one", root_gb=1))
    finally:
        fake.unlink()
    message = str(err.value.inner_exception)
    assert "failed and was rolled back: the root disk cannot be resized down" in message
    assert words in message, message
    assert_rolled_back(src, dst, inst, before)


class Killed(BaseException):
    """The compute process dies: no handler runs, nothing is rolled back."""


@pytest.mark.parametrize("step", ["shrink", "copy_leaf"])
def test_failure_after_power_off_rolls_back(computes, ext4_pieces, step):
    """A failure after the guest was powered off (before or after the shrink): all undone."""
    src, dst = computes
    inst = boot(src, ext4_pieces)
    before = source_state(src, inst)

    def fail(name):
        if name == step:
            raise RuntimeError(f"injected failure at {name}")

    with pytest.raises(nova_exception.InstanceFaultRollback) as err:
        migrate(src, dst, inst, flavor("one", root_gb=1), hook=fail)
    assert f"injected failure at {step}" in str(err.value.inner_exception)
    assert_rolled_back(src, dst, inst, before)  # powered back on, the shrunk copy gone


def test_compute_killed_after_the_shrink_is_recovered_by_revert(computes, ext4_pieces, sim):
    """Killed mid-copy: Nova's init_host runs finish_revert_migration, which removes the copy."""
    from resize_helpers import Compute

    src, dst = computes
    inst = boot(src, ext4_pieces)
    before = source_state(src, inst)

    def die(name):
        if name == "copy_leaf":
            raise Killed()

    src.migrateops.step_hook = die
    with pytest.raises(Killed):
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, flavor("one", root_gb=1), [])
    kept, _ = src.migrateops._kept(inst)
    journal = json.loads(src.session.call_xenapi("VM.get_other_config", kept)[migrateops.JOURNAL_KEY])
    shrunk = journal[resize_down.SHRUNK_KEY]["uuid"]
    assert f"{shrunk}.vhd" in {p.name for p in src.host.sandbox.sr_path().iterdir()}

    fresh = Compute(sim, src.pool, src.host)  # a restarted nova-compute
    try:
        fresh.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
        assert_rolled_back(fresh, dst, inst, before)
    finally:
        fresh.close()


def test_shrunk_copy_left_unknown_to_xapi_is_removed_on_revert(computes, ext4_pieces, monkeypatch):
    """Killed between the plug-in and VDI.introduce: the file is in the SR, XAPI does not know it."""
    src, dst = computes
    inst = boot(src, ext4_pieces)
    before = source_state(src, inst)

    def die_before_introduce(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(resize_down, "_introduce", die_before_introduce)
    with pytest.raises(Killed):
        src.migrateops.migrate_disk_and_power_off(None, inst, dst.host.address, flavor("one", root_gb=1), [])
    monkeypatch.undo()
    src.migrateops.finish_revert_migration(None, inst, [], None, power_on=True)
    assert_rolled_back(src, dst, inst, before)
