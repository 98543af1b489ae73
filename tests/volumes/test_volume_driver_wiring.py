"""Volumes, the guest agent and consoles through ``XenAPIDriver`` itself.

Checks the driver's delegating methods have Nova 34's exact signatures and
work through the driver on the simulator.
"""

from __future__ import annotations

import inspect

import nova.conf
import pytest

from nova.virt import driver as nova_driver
from nova.virt import fake
from tests.volumes.guest_helpers import MiB, Target, make_instance, make_vm
from xenapi_driver import volume_utils as vu
from xenapi_driver.driver import XenAPIDriver
from xenapi_driver.simulator.handlers import xenstore

CONF = nova.conf.CONF


WIRED = [
    "spawn",
    "get_volume_connector",
    "attach_volume",
    "detach_volume",
    "swap_volume",
    "extend_volume",
    "set_admin_password",
    "get_console_output",
    "get_vnc_console",
]


@pytest.mark.parametrize("name", WIRED)
def test_signatures_are_novas(name):
    assert inspect.signature(getattr(XenAPIDriver, name)) == inspect.signature(
        getattr(nova_driver.ComputeDriver, name)
    )


@pytest.fixture
def driver(sim, managed_host):
    overrides = {
        "connection_url": managed_host.url,
        "connection_username": sim.username,
        "connection_password": sim.password,
        "use_agent_default": True,
    }
    for name, value in overrides.items():
        CONF.set_override(name, value, group="xenserver")
    drv = XenAPIDriver(fake.FakeVirtAPI())
    drv.init_host("compute-1")
    try:
        yield drv
    finally:
        drv.cleanup_host("compute-1")
        for name in overrides:
            CONF.clear_override(name, group="xenserver")


def test_volume_agent_and_console_through_the_driver(sim, managed_host, driver):
    db = sim.pools[0].db
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    target = Target(sim)
    target.add_lun(0, 8 * MiB)
    info = target.connection_info(0)

    assert driver.get_volume_connector(instance)["initiator"].startswith("iqn.")
    driver.attach_volume(None, info, instance, "/dev/xvdb", encryption={})
    assert any(db.get("VBD", v)["currently_attached"] for v in db.get("VM", vm)["VBDs"])
    target.grow(0, 16 * MiB)
    driver.extend_volume(None, info, instance, 16 * MiB)
    driver.detach_volume(None, info, instance, "/dev/xvdb")
    assert db.get("VM", vm)["VBDs"] == []
    assert not [r for r in db.all("SR") if db.get("SR", r)["other_config"].get(vu.VOLUME_SR_KEY)]

    driver.set_admin_password(instance, "Pa55-via-driver")
    domid = int(db.get("VM", vm)["domid"])
    assert xenstore.agents_for(managed_host).state(domid).password == "Pa55-via-driver"

    managed_host.sandbox.path(f"/var/log/xen/guest/console.{domid}").unlink(missing_ok=True)
    managed_host.sandbox.append_console(domid, b"hello console\n")
    assert driver.get_console_output(None, instance) == "hello console\n"
    assert driver.get_vnc_console(None, instance).port == managed_host.port


def test_destroy_after_detach_all_keeps_the_lun_and_forgets_the_sr(sim, managed_host, driver):
    db = sim.pools[0].db
    instance = make_instance()
    vm = make_vm(sim, managed_host, instance, running=True)
    target = Target(sim)
    target.add_lun(0, 8 * MiB, data=b"keep me")
    driver.attach_volume(None, target.connection_info(0), instance, "/dev/xvdb")
    # what VMOps._destroy_vm is asked to do: hard shutdown, detach_all, VM.destroy
    driver._session.call_xenapi("VM.hard_shutdown", vm)
    driver._volumeops.detach_all(vm)
    driver.destroy(None, instance, [])
    assert not db.exists("VM", vm)
    assert not [r for r in db.all("SR") if db.get("SR", r)["other_config"].get(vu.VOLUME_SR_KEY)]
    assert target.read_lun(0, 7) == b"keep me"
