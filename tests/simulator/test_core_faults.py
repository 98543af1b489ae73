"""Fault injection, call counters, reset, and powered-off hosts."""

from __future__ import annotations

import time
import xmlrpc.client

import pytest
import XenAPI

from xenapi_driver.simulator.handlers import storage


def test_fail_next_then_recover(sim, xapi, failure):
    sim.faults.fail_next("pool.get_all", "INTERNAL_ERROR", "injected")
    assert failure(xapi.pool.get_all) == ["INTERNAL_ERROR", "injected"]
    assert xapi.pool.get_all() == [sim.pool.ref]


def test_fail_next_rejects_unknown_methods(sim):
    with pytest.raises(ValueError, match="not a XAPI message"):
        sim.faults.fail_next("VM.strat", "INTERNAL_ERROR")


def test_fail_next_count_and_async(sim, xapi):
    sim.faults.fail_next("pool.sync_database", "HOST_OFFLINE", "OpaqueRef:h", count=2)
    for _ in range(2):
        task = xapi.Async.pool.sync_database()
        deadline = time.monotonic() + 20
        while xapi.task.get_status(task) == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert xapi.task.get_error_info(task) == ["HOST_OFFLINE", "OpaqueRef:h"]
    xapi.pool.sync_database()


def test_latency_still_answers(sim, xapi):
    sim.faults.add_latency(0.05)
    try:
        assert xapi.pool.get_all() == [sim.pool.ref]
    finally:
        sim.faults.add_latency(0)


def test_drop_connections(sim, xapi):
    # xmlrpc.client retries once on a dropped keep-alive connection, so drop two
    sim.faults.drop_connections(2)
    with pytest.raises((ConnectionError, xmlrpc.client.ProtocolError, OSError)):
        xapi.pool.get_all()
    assert xapi.pool.get_all() == [sim.pool.ref]


def test_call_counts(sim, xapi):
    vm = xapi.VM.get_all()[0]
    before = sim.call_counts["VM.get_record"]
    for _ in range(3):
        xapi.VM.get_record(vm)
    xapi.VM_get_record(vm)
    assert sim.call_counts["VM.get_record"] == before + 4
    xapi.Async.pool.sync_database()
    assert sim.call_counts["Async.pool.sync_database"] >= 1


def test_power_off_and_on(sim, xapi):
    member = sim.pool.hosts[2]
    metrics = xapi.host.get_metrics(member.ref)
    sim.power_off_host(member)
    try:
        with pytest.raises(ConnectionRefusedError):
            XenAPI.Session(member.url).xenapi.login_with_password("root", sim.password, "1.0", "t")
        assert xapi.host_metrics.get_live(metrics) is False
    finally:
        sim.power_on_host(member)
    assert xapi.host_metrics.get_live(metrics) is True
    proxy = xmlrpc.client.ServerProxy(member.url)
    assert proxy.session.login_with_password("root", sim.password)["ErrorDescription"][0] == "HOST_IS_SLAVE"


def test_reset_restores_initial_state(sim):
    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "reset-test")
    rec = {"name_label": "temp", "name_description": "", "MTU": "1500", "other_config": {}, "bridge": "",
           "managed": True, "tags": []}  # fmt: skip
    s.xenapi.network.create(rec)
    hosts_before = {h.uuid: h.url for h in sim.pool.hosts}
    old = s._session
    master = sim.pool.master
    backend_before = storage.backend_of(sim.pool, master.local_sr)
    sim.reset()
    # reset hooks dropped the handlers' caches: the SR's backend object is a new one
    assert storage.backend_of(sim.pool, master.local_sr) is not backend_before
    assert {h.uuid: h.url for h in sim.pool.hosts} == hosts_before
    proxy = xmlrpc.client.ServerProxy(sim.url)
    assert proxy.pool.get_all(old)["ErrorDescription"] == ["SESSION_INVALID", old]
    s2 = XenAPI.Session(sim.url)
    s2.xenapi.login_with_password(sim.username, sim.password, "1.0", "reset-test")
    assert s2.xenapi.network.get_by_name_label("temp") == []
    assert len(s2.xenapi.host.get_all()) == 3
    assert sim.call_counts["network.create"] == 0
    s2.xenapi.session.logout()


def _wait_task(xapi, task):
    deadline = time.monotonic() + 20
    while xapi.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    return xapi.task.get_status(task)


def test_fail_next_async_name_fails_only_the_task(sim, xapi):
    """``Async.Class.msg`` arms the asynchronous form only: its task ends in failure."""
    sim.faults.fail_next("Async.pool.sync_database", "SR_BACKEND_FAILURE_46", "", "busy", "")
    xapi.pool.sync_database()  # the synchronous call is not armed
    task = xapi.Async.pool.sync_database()
    assert _wait_task(xapi, task) == "failure"
    assert xapi.task.get_error_info(task) == ["SR_BACKEND_FAILURE_46", "", "busy", ""]
    task = xapi.Async.pool.sync_database()  # fired once only
    assert _wait_task(xapi, task) == "success"
    # the plain name still fails the next call, made either way
    sim.faults.fail_next("pool.sync_database", "HOST_OFFLINE", "OpaqueRef:h")
    task = xapi.Async_pool_sync_database()
    assert _wait_task(xapi, task) == "failure"


def test_fail_next_async_name_checked(sim):
    with pytest.raises(ValueError, match="not a XAPI message"):
        sim.faults.fail_next("Async.VM.strat", "INTERNAL_ERROR")
    with pytest.raises(ValueError, match="no asynchronous form"):
        sim.faults.fail_next("Async.session.logout", "INTERNAL_ERROR")
    with pytest.raises(ValueError, match="no asynchronous form"):
        sim.faults.fail_next("Async.VM.get_name_label", "INTERNAL_ERROR")
