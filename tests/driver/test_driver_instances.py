"""Finding instances on XAPI: get_info and list_instances, one call each."""

from __future__ import annotations

from typing import Any

import pytest
from driver_helpers import make_instance, seed_vm, xapi, xapi_calls
from nova.compute import power_state

from nova import exception as nova_exception
from xenapi_driver.driver import XenAPIDriver


def _calls(sim: Any, fn: Any) -> tuple[Any, int]:
    sim.reset_call_counts()
    result = fn()
    return result, sum(xapi_calls(sim).values())


def test_list_instances_only_this_hosts_instances(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    other_host = sim.pools[0].hosts[0]
    mine_running = make_instance()
    mine_halted = make_instance()
    elsewhere = make_instance()
    seed_vm(sim, mine_running, host=managed_host, resident=True, power_state="Running")
    seed_vm(sim, mine_halted, host=managed_host)  # halted, assigned here
    seed_vm(sim, elsewhere, host=other_host, resident=True, power_state="Running")
    seed_vm(sim, None, host=managed_host, resident=True, power_state="Running", name="not-nova")
    rescue = {"nova_rescue": "true"}
    seed_vm(sim, mine_running, host=managed_host, resident=True, name=mine_running.name + "-rescue", **rescue)

    names, calls = _calls(sim, driver.list_instances)
    assert names == sorted([mine_running.name, mine_halted.name])
    assert calls == 1
    uuids, calls = _calls(sim, driver.list_instance_uuids)
    assert uuids == sorted([mine_running.uuid, mine_halted.uuid])
    assert calls == 1
    assert driver.get_num_instances() == 2
    assert driver.instance_exists(mine_halted)
    assert not driver.instance_exists(elsewhere)


def test_running_vm_that_migrated_away_is_not_ours(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    other_host = sim.pools[0].hosts[0]
    inst = make_instance()
    ref = seed_vm(sim, inst, host=managed_host)
    sim.pools[0].db.update("VM", ref, resident_on=other_host.ref, power_state="Running")
    assert driver.list_instances() == []


def test_list_instances_is_one_call_at_any_scale(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    for _ in range(300):
        seed_vm(sim, make_instance(), host=managed_host, resident=True, power_state="Running")
    names, calls = _calls(sim, driver.list_instances)
    assert len(names) == 300
    assert calls == 1


def test_get_info_maps_power_states_in_one_call(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    inst = make_instance(host="compute-1")
    ref = seed_vm(sim, inst, host=managed_host)
    # First sight: found by its name label (2 calls), then remembered.
    _, calls = _calls(sim, lambda: driver.get_info(inst))
    assert calls == 2
    session = xapi(sim)
    try:
        expected = [
            (lambda: None, power_state.SHUTDOWN),
            (lambda: session.xenapi.VM.start_on(ref, managed_host.ref, False, False), power_state.RUNNING),
            (lambda: session.xenapi.VM.pause(ref), power_state.PAUSED),
            (lambda: session.xenapi.VM.unpause(ref), power_state.RUNNING),
            (lambda: session.xenapi.VM.suspend(ref), power_state.SUSPENDED),
        ]
        for action, state in expected:
            action()
            info, calls = _calls(sim, lambda: driver.get_info(inst))
            assert info.state == state
            assert calls == 1
    finally:
        session.xenapi.session.logout()


def test_get_info_unknown_instance(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    inst = make_instance()
    # A VM with the instance's name that belongs to another instance is not it.
    seed_vm(sim, None, host=managed_host, name=inst.name, nova_uuid="someone-else")
    with pytest.raises(nova_exception.InstanceNotFound):
        driver.get_info(inst)


def test_get_info_after_list_is_one_call(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    instances = [make_instance() for _ in range(20)]
    for inst in instances:
        seed_vm(sim, inst, host=managed_host, resident=True, power_state="Running")
    driver.list_instances()  # what Nova's periodic sync does first
    for inst in instances:
        info, calls = _calls(sim, lambda inst=inst: driver.get_info(inst))
        assert (info.state, calls) == (power_state.RUNNING, 1)


def test_stale_cached_ref_is_not_trusted(driver: XenAPIDriver, sim: Any, managed_host: Any) -> None:
    inst = make_instance()
    ref = seed_vm(sim, inst, host=managed_host, resident=True, power_state="Running")
    driver.get_info(inst)
    sim.pools[0].db.destroy("VM", ref)
    with pytest.raises(nova_exception.InstanceNotFound):
        driver.get_info(inst)
    seed_vm(sim, inst, host=managed_host)  # recreated under a new ref
    assert driver.get_info(inst).state == power_state.SHUTDOWN
