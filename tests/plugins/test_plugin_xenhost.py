"""xenhost plug-in against a loopback XAPI (the plug-in's session is XenAPIPlugin's)."""

from __future__ import annotations

import json
import os

import pytest
from plugin_helpers import call

from xenapi_driver.simulator.dom0 import XapiError


def test_host_data(dom0, xapi):
    data = json.loads(call(dom0, "xenhost", "host_data"))
    assert data["host_uuid"] == dom0.host_uuid
    assert data["host_memory"] == {
        "total": 8589934592,
        "free": 6442450944,
        "overhead": 123,
        "free-computed": 6000000000,
    }
    assert data["host_cpu_info"]["cpu_count"] == 4
    assert data["disk"] == {
        "total": 100 * 2**30,
        "used": 10 * 2**30,
        "available": 90 * 2**30,
        "sr_uuid": dom0.local_sr_uuid,
    }
    assert data["host_os_version"]["product_brand"] == "XCP-ng"


def test_host_uptime(dom0):
    data = json.loads(call(dom0, "xenhost", "host_uptime"))
    with open("/proc/uptime") as handle:
        now = float(handle.read().split()[0])
    assert 0 < data["uptime_seconds"] <= now
    assert " up " in data["uptime"] and "load average" in data["uptime"]


def test_set_host_enabled(dom0, xapi):
    ref = f"OpaqueRef:{dom0.host_uuid}"
    assert json.loads(call(dom0, "xenhost", "set_host_enabled", enabled="false")) == {"status": "disabled"}
    assert xapi.hosts[ref]["enabled"] is False
    assert json.loads(call(dom0, "xenhost", "set_host_enabled", enabled="true")) == {"status": "enabled"}
    with pytest.raises(XapiError) as err:
        call(dom0, "xenhost", "set_host_enabled", enabled="maybe")
    assert err.value.code == "INVALID_ARGUMENT"


def test_reboot_disables_then_reboots(dom0, xapi):
    assert json.loads(call(dom0, "xenhost", "host_reboot")) == {"power_action": "reboot"}
    record = xapi.hosts[f"OpaqueRef:{dom0.host_uuid}"]
    assert record["power"] == "reboot" and record["enabled"] is False
    assert [m for m, _ in xapi.calls if m.startswith("host.")][-2:] == ["host.disable", "host.reboot"]


def test_shutdown_refused_by_xapi_is_passed_on_and_host_re_enabled(dom0, xapi):
    xapi.running_vms.add("OpaqueRef:vm1")
    with pytest.raises(XapiError) as err:
        call(dom0, "xenhost", "host_shutdown")
    assert err.value.details == ["HOST_IN_USE", f"OpaqueRef:{dom0.host_uuid}", "vm", "OpaqueRef:vm1"]
    assert xapi.hosts[f"OpaqueRef:{dom0.host_uuid}"]["enabled"] is True


def test_pci_devices_from_sysfs(dom0):
    base = dom0.path("/sys/bus/pci/devices")
    for slot, values, extra in (
        ("0000:00:02.0", {"vendor": "0x8086", "device": "0x1916", "class": "0x030000"}, None),
        (
            "0000:03:00.0",
            {"vendor": "0x15b3", "device": "0x1017", "class": "0x020000", "sriov_totalvfs": "8"},
            None,
        ),
        ("0000:03:00.2", {"vendor": "0x15b3", "device": "0x1018", "class": "0x020000"}, "physfn"),
    ):
        directory = base / slot
        directory.mkdir(parents=True)
        for name, value in values.items():
            (directory / name).write_text(value + "\n")
        (directory / "revision").write_text("0x01\n")
        (directory / "subsystem_vendor").write_text("0x1028\n")
        (directory / "subsystem_device").write_text("0x0001\n")
        if extra:
            os.symlink("../0000:03:00.0", directory / extra)
    os.symlink("/sys/bus/pci/drivers/i915", base / "0000:00:02.0" / "driver")
    devices = json.loads(call(dom0, "xenhost", "get_pci_device_details"))
    assert devices[0] == {
        "Slot": "0000:00:02.0",
        "Class": "0300",
        "Vendor": "8086",
        "Device": "1916",
        "SVendor": "1028",
        "SDevice": "0001",
        "Rev": "01",
        "Driver": "i915",
        "Type": "type-PCI",
    }
    assert [d["Type"] for d in devices] == ["type-PCI", "type-PF", "type-VF"]


def test_host_join_rejects_bad_arguments(dom0):
    args = dict(
        url="http://127.0.0.1:1",
        user="root",
        password="pw",
        compute_uuid="x",
        master_addr="127.0.0.1",
        master_user="root",
        master_pass="pw",
    )
    with pytest.raises(XapiError) as err:
        call(dom0, "xenhost", "host_join", **args)
    assert err.value.details[:2] == ["INVALID_ARGUMENT", "compute_uuid"]
    args.update(compute_uuid="0" * 8 + "-0000-0000-0000-" + "0" * 12, url="http://x;reboot")
    with pytest.raises(XapiError) as err:
        call(dom0, "xenhost", "host_join", **args)
    assert err.value.details[:2] == ["INVALID_ARGUMENT", "url"]
    assert "pw" not in " ".join(err.value.details)


def test_host_join_unreachable_host(dom0):
    args = dict(
        url="http://127.0.0.1:9",
        user="root",
        password="secret-pw",
        master_addr="127.0.0.1",
        compute_uuid="12345678-1234-1234-1234-123456789abc",
        master_user="root",
        master_pass="pw2",
    )
    with pytest.raises(XapiError) as err:
        call(dom0, "xenhost", "host_join", **args)
    assert err.value.details[:2] == ["HOST_JOIN_FAILED", "cannot reach the joining host"]
    assert "secret-pw" not in str(err.value.details)
    assert "secret-pw" not in dom0.path("/var/log/xenapi-driver-plugins.log").read_text()
