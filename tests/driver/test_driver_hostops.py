"""XenAPIDriver's host side against the simulator: connection, node, resources, placement."""

from __future__ import annotations

from typing import Any

import nova.conf
import os_resource_classes as orc
import pytest
from driver_helpers import make_instance, seed_vm, xapi_calls
from nova.compute import provider_tree

from nova.virt import fake
from xenapi_driver.driver import DriverNotInitialized, XenAPIDriver
from xenapi_driver.exception import XenAPIError
from xenapi_driver.simulator.population import DOM0_MEMORY

CONF = nova.conf.CONF
MiB = 1024 * 1024


def test_construction_does_not_connect(xenserver_conf: None, sim: Any) -> None:
    sim.reset_call_counts()
    drv = XenAPIDriver(fake.FakeVirtAPI())
    assert sum(sim.call_counts.values()) == 0
    with pytest.raises(DriverNotInitialized, match="init_host"):
        drv.list_instances()


def test_init_host_connects_to_master_and_manages_member(driver: XenAPIDriver, managed_host: Any) -> None:
    # connection_url names the pool member; XAPI redirects to the master.
    assert driver._session.host_ref == managed_host.ref
    assert driver.get_host_ip_addr() == managed_host.address
    assert driver.get_available_nodes() == [managed_host.name]
    assert driver.node_is_available(managed_host.name)


def test_cleanup_host_closes_session(driver: XenAPIDriver) -> None:
    driver.cleanup_host("compute-1")
    with pytest.raises(DriverNotInitialized):
        driver.get_available_resource("x")
    driver.cleanup_host("compute-1")  # idempotent


def test_get_available_resource(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    world = sim.world
    res = driver.get_available_resource(managed_host.name)
    assert res["vcpus"] == world.host_cpus
    assert res["memory_mb"] == world.host_memory // MiB
    assert res["memory_mb_used"] == DOM0_MEMORY // MiB
    assert res["hypervisor_hostname"] == managed_host.name
    assert res["hypervisor_type"] == "xen"
    assert isinstance(res["hypervisor_version"], int) and res["hypervisor_version"] > 0
    assert ("x86_64", "xen", "hvm") in res["supported_instances"]
    assert ("x86_64", "xen", "xen") in res["supported_instances"]


def test_pool_default_sr_local_to_another_host_reports_no_disk(
    driver: XenAPIDriver, managed_host: Any
) -> None:
    # The simulator's pool default SR is the master's local SR: the member cannot use it.
    res = driver.get_available_resource(managed_host.name)
    assert res["local_gb"] == 0


def test_sr_by_other_config(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    db = sim.pools[0].db
    db.update("SR", managed_host.local_sr, other_config={"nova-instances": "yes"})
    CONF.set_override("sr_matching_filter", "other-config:nova-instances=yes", group="xenserver")
    try:
        res = driver.get_available_resource(managed_host.name)
    finally:
        CONF.clear_override("sr_matching_filter", group="xenserver")
    sr = db.get("SR", managed_host.local_sr)
    assert res["local_gb"] == sr["physical_size"] // 1024**3 > 0


@pytest.fixture
def master_driver(sim: Any, xenserver_conf: None) -> Any:
    master = sim.pools[0].hosts[0]
    CONF.set_override("connection_url", master.url, group="xenserver")
    drv = XenAPIDriver(fake.FakeVirtAPI())
    drv.init_host("compute-0")
    yield drv, master
    drv.cleanup_host("compute-0")


def test_update_provider_tree_inventory(master_driver: Any, sim: Any) -> None:
    drv, master = master_driver
    tree = provider_tree.ProviderTree()
    tree.new_root(master.name, "00000000-0000-0000-0000-000000000001")
    drv.update_provider_tree(tree, master.name)
    inv = tree.data(master.name).inventory
    assert inv[orc.VCPU]["total"] == sim.world.host_cpus
    assert inv[orc.VCPU]["allocation_ratio"] == CONF.initial_cpu_allocation_ratio
    assert inv[orc.VCPU]["reserved"] == CONF.reserved_host_cpus
    assert inv[orc.MEMORY_MB]["total"] == sim.world.host_memory // MiB
    assert inv[orc.MEMORY_MB]["reserved"] == CONF.reserved_host_memory_mb + DOM0_MEMORY // MiB
    assert inv[orc.MEMORY_MB]["allocation_ratio"] == CONF.initial_ram_allocation_ratio
    sr = sim.pools[0].db.get("SR", master.local_sr)
    assert inv[orc.DISK_GB]["total"] == sr["physical_size"] // 1024**3
    assert inv[orc.DISK_GB]["allocation_ratio"] == CONF.initial_disk_allocation_ratio


def test_update_provider_tree_keeps_externally_set_ratio(master_driver: Any) -> None:
    drv, master = master_driver
    tree = provider_tree.ProviderTree()
    tree.new_root(master.name, "00000000-0000-0000-0000-000000000001")
    drv.update_provider_tree(tree, master.name)
    inv = tree.data(master.name).inventory
    inv[orc.VCPU]["allocation_ratio"] = 2.5
    tree.update_inventory(master.name, inv)
    drv.update_provider_tree(tree, master.name)
    assert tree.data(master.name).inventory[orc.VCPU]["allocation_ratio"] == 2.5


def test_update_provider_tree_traits_follow_capabilities(master_driver: Any) -> None:
    drv, master = master_driver
    tree = provider_tree.ProviderTree()
    tree.new_root(master.name, "00000000-0000-0000-0000-000000000001")
    stale = [t for t, on in drv.capabilities_as_traits().items() if not on][:1]
    tree.update_traits(master.name, ["CUSTOM_OPERATOR_TRAIT", *stale])
    drv.update_provider_tree(tree, master.name)
    traits = tree.data(master.name).traits
    assert "CUSTOM_OPERATOR_TRAIT" in traits  # traits the driver does not own are kept
    assert not set(stale) & traits
    wanted = {t for t, on in drv.capabilities_as_traits().items() if on}
    assert wanted <= traits


def _calls(sim: Any, fn: Any) -> int:
    sim.reset_call_counts()
    fn()
    return sum(xapi_calls(sim).values())


def test_resource_calls_do_not_grow_with_vms(master_driver: Any, sim: Any) -> None:
    drv, master = master_driver
    tree = provider_tree.ProviderTree()
    tree.new_root(master.name, "00000000-0000-0000-0000-000000000001")

    def costs() -> tuple[int, int]:
        return (
            _calls(sim, lambda: drv.get_available_resource(master.name)),
            _calls(sim, lambda: drv.update_provider_tree(tree, master.name)),
        )

    for _ in range(5):
        seed_vm(sim, make_instance(), host=master, resident=True, power_state="Running")
    few = costs()
    for _ in range(200):
        seed_vm(sim, make_instance(), host=master, resident=True, power_state="Running")
    many = costs()
    assert few == many
    assert max(many) <= 6


def test_set_host_enabled(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    db = sim.pools[0].db
    assert driver.set_host_enabled(False) == "disabled"
    assert db.get("host", managed_host.ref)["enabled"] is False
    assert driver.set_host_enabled(True) == "enabled"
    assert db.get("host", managed_host.ref)["enabled"] is True


def test_host_uptime_from_dom0(driver: XenAPIDriver) -> None:
    assert " up " in driver.get_host_uptime()


def test_host_startup_is_not_possible(driver: XenAPIDriver) -> None:
    with pytest.raises(NotImplementedError):
        driver.host_power_action("startup")


def test_host_reboot_refused_leaves_host_enabled(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    # XAPI refuses to reboot a host with running VMs (HOST_IN_USE [host, "vm", vm]).
    sim.faults.fail_next("host.reboot", "HOST_IN_USE", managed_host.ref, "vm", "OpaqueRef:x")
    with pytest.raises(XenAPIError) as err:
        driver.host_power_action("reboot")
    assert err.value.code == "HOST_IN_USE"
    assert sim.pools[0].db.get("host", managed_host.ref)["enabled"] is True
