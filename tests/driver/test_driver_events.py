"""Power-state changes made outside Nova reach it as lifecycle events, across a toolstack restart."""

from __future__ import annotations

import queue
from typing import Any

import pytest
from driver_helpers import make_instance, seed_vm, xapi

from nova.virt import event as virtevent
from xenapi_driver.driver import XenAPIDriver

WAIT = 15.0  # upper bound for an event to arrive; they normally take milliseconds


@pytest.fixture
def watched(driver: XenAPIDriver) -> Any:
    received: queue.Queue = queue.Queue()
    driver.register_event_listener(received.put)
    assert driver._watcher.ready.wait(WAIT), "the watcher never read XAPI's first snapshot"
    return received


def next_event(received: queue.Queue) -> tuple[str, int]:
    try:
        ev = received.get(timeout=WAIT)
    except queue.Empty:
        pytest.fail(f"no lifecycle event within {WAIT} s")
    assert isinstance(ev, virtevent.LifecycleEvent)
    return ev.get_instance_uuid(), ev.get_transition()


def test_changes_outside_nova_become_lifecycle_events(
    driver: XenAPIDriver, watched: queue.Queue, sim: Any, managed_host: Any
) -> None:
    inst = make_instance()
    ref = seed_vm(sim, inst, host=managed_host)
    sim.pools[0].db.update("VM", ref, suspend_SR=managed_host.local_sr)  # as spawn sets it
    other = seed_vm(sim, None, host=managed_host, name="not-a-nova-vm")
    session = xapi(sim)
    try:
        vm = session.xenapi.VM
        vm.start_on(other, managed_host.ref, False, False)  # not Nova's: no event
        steps = [
            (lambda: vm.start_on(ref, managed_host.ref, False, False), virtevent.EVENT_LIFECYCLE_STARTED),
            (lambda: vm.pause(ref), virtevent.EVENT_LIFECYCLE_PAUSED),
            (lambda: vm.unpause(ref), virtevent.EVENT_LIFECYCLE_RESUMED),
            (lambda: vm.suspend(ref), virtevent.EVENT_LIFECYCLE_SUSPENDED),
            (lambda: vm.resume_on(ref, managed_host.ref, False, False), virtevent.EVENT_LIFECYCLE_RESUMED),
            (lambda: vm.hard_shutdown(ref), virtevent.EVENT_LIFECYCLE_STOPPED),
        ]
        for action, expected in steps:
            action()
            assert next_event(watched) == (inst.uuid, expected)
    finally:
        session.xenapi.session.logout()
    assert watched.empty()


def test_toolstack_restart_misses_nothing(
    driver: XenAPIDriver, watched: queue.Queue, sim: Any, managed_host: Any
) -> None:
    inst = make_instance()
    ref = seed_vm(sim, inst, host=managed_host)
    sim.restart_toolstack()  # every session, the watcher's included, becomes invalid
    session = xapi(sim)
    try:
        session.xenapi.VM.start_on(ref, managed_host.ref, False, False)
        assert next_event(watched) == (inst.uuid, virtevent.EVENT_LIFECYCLE_STARTED)
        sim.restart_toolstack()
        session = xapi(sim)
        session.xenapi.VM.hard_shutdown(ref)
        assert next_event(watched) == (inst.uuid, virtevent.EVENT_LIFECYCLE_STOPPED)
    finally:
        session.xenapi.session.logout()


def test_cleanup_host_stops_the_watcher(driver: XenAPIDriver) -> None:
    watcher = driver._watcher
    driver.cleanup_host("compute-1")
    assert driver._watcher is None
    assert watcher._stop.is_set()
