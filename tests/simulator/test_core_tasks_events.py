"""Async calls and tasks, task.cancel, task GC, and event.from."""

from __future__ import annotations

import threading
import time
import xmlrpc.client

import pytest

from xenapi_driver.simulator import registry, tasks
from xenapi_driver.simulator.errors import XapiError

NET = {"name_label": "", "name_description": "", "MTU": "1500", "other_config": {}, "bridge": "",
       "managed": True, "tags": []}  # fmt: skip


def wait_task(xapi, task, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = xapi.task.get_record(task)
        if rec["status"] not in ("pending", "cancelling"):
            return rec
        time.sleep(0.02)
    raise AssertionError(f"task {task} still running after {timeout}s")


def test_async_success_result_is_serialised_value(xapi):
    task = xapi.Async.network.create(dict(NET, name_label="async-net"))
    assert task.startswith("OpaqueRef:")
    rec = wait_task(xapi, task)
    assert rec["status"] == "success"
    assert rec["progress"] == 1.0
    assert rec["allowed_operations"] == []
    assert rec["name_label"] == "Async.network.create"
    (net,), _ = xmlrpc.client.loads(f"<params><param>{rec['result']}</param></params>")
    assert xapi.network.get_name_label(net) == "async-net"
    task2 = xapi.Async.network.destroy(net)
    assert wait_task(xapi, task2)["result"] == ""


def test_async_failure_error_info(xapi):
    task = xapi.Async.network.destroy("OpaqueRef:missing")
    rec = wait_task(xapi, task)
    assert rec["status"] == "failure"
    assert rec["error_info"] == ["HANDLE_INVALID", "network", "OpaqueRef:missing"]


@pytest.fixture
def slow_message():
    """A test-only handler for a message nobody implements, which waits for cancellation."""
    name = "host.sync_data"
    started = threading.Event()
    release = threading.Event()
    previous = registry.MESSAGES.get(name)

    def handler(ctx, host):
        started.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not release.is_set():
            ctx.set_progress(0.5)  # raises TASK_CANCELLED once cancelled
            time.sleep(0.01)
        return None

    registry.MESSAGES[name] = handler
    yield started, release
    release.set()
    if previous is None:
        registry.MESSAGES.pop(name, None)
    else:
        registry.MESSAGES[name] = previous


def test_task_cancel(xapi, sim, slow_message):
    started, _ = slow_message
    task = xapi.Async.host.sync_data(sim.pool.master.ref)
    assert started.wait(10)
    assert xapi.task.get_status(task) == "pending"
    assert xapi.task.get_progress(task) == 0.5
    xapi.task.cancel(task)
    rec = wait_task(xapi, task)
    assert rec["status"] == "cancelled"
    assert rec["error_info"] == ["TASK_CANCELLED", task]


def test_task_create_destroy_and_gc(xapi, sim):
    own = xapi.task.create("mine", "desc")
    assert xapi.task.get_status(own) == "pending"
    xapi.task.set_status(own, "success")
    xapi.task.destroy(own)
    refs = [xapi.Async.pool.sync_database() for _ in range(tasks.MAX_COMPLETED + 15)]
    for t in refs[-5:]:
        try:
            wait_task(xapi, t)
        except Exception:  # noqa: BLE001 - may already be collected
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = [r["status"] for r in xapi.task.get_all_records().values()]
        if "pending" not in statuses:
            break
        time.sleep(0.05)
    finished = [r for r in xapi.task.get_all_records().values() if r["status"] in tasks.FINISHED]
    assert len(finished) == tasks.MAX_COMPLETED


def test_event_from_initial_snapshot_and_token(xapi, sim):
    out = xapi.event_from(["pool"], "", 0.0)
    assert [e["class"] for e in out["events"]] == ["pool"]
    ev = out["events"][0]
    assert ev["operation"] == "add" and ev["ref"] == sim.pool.ref
    assert ev["snapshot"]["master"] == sim.pool.master.ref
    assert set(ev) == {"id", "timestamp", "class", "operation", "ref", "snapshot"}
    assert out["valid_ref_counts"]["pool"] == 1  # int32 on the wire (<i4>), not a string
    assert out["valid_ref_counts"]["host"] == 3
    token = out["token"]
    assert len(token) == 41 and token[20] == ","
    again = xapi.event_from(["pool"], token, 0.0)
    assert again["events"] == []


def test_event_from_add_mod_del_and_single_object(xapi):
    token = xapi.event_from(["network"], "", 0.0)["token"]
    net = xapi.network.create(dict(NET, name_label="ev"))
    out = xapi.event_from(["network"], token, 5.0)
    assert [(e["operation"], e["ref"]) for e in out["events"]] == [("add", net)]
    token = out["token"]
    xapi.network.set_name_label(net, "ev2")
    out = xapi.event_from([f"network/{net}"], token, 5.0)
    assert [(e["operation"], e["snapshot"]["name_label"]) for e in out["events"]] == [("mod", "ev2")]
    token = out["token"]
    xapi.network.destroy(net)
    out = xapi.event_from(["*"], token, 5.0)
    dels = [e for e in out["events"] if e["operation"] == "del"]
    assert [(e["class"], e["ref"]) for e in dels] == [("network", net)]
    assert "snapshot" not in dels[0]


def test_event_from_blocks_until_a_change(xapi, sim):
    token = xapi.event_from(["network"], "", 0.0)["token"]
    created = []

    def later():
        time.sleep(0.3)
        created.append(sim.pool.db.create("network", name_label="late"))

    t = threading.Thread(target=later)
    t.start()
    out = xapi.event_from(["network"], token, 20.0)
    t.join(10)
    assert [e["ref"] for e in out["events"]] == created
    sim.pool.db.destroy("network", created[0])


def test_event_from_timeout_returns_empty(xapi):
    token = xapi.event_from(["VM_appliance"], "", 0.0)["token"]
    out = xapi.event_from(["vm_appliance"], token, 0.2)
    assert out["events"] == []
    assert out["valid_ref_counts"]["vm_appliance"] == 0


def test_event_from_bad_token(xapi, failure):
    assert failure(xapi.event_from, ["vm"], "garbage", 0.0) == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "garbage"]
    assert failure(xapi.event_from, ["vm"], "12", 0.0) == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "12"]


def test_event_from_unknown_class_matches_nothing(xapi):
    token = xapi.event_from(["no_such_class"], "", 0.0)
    assert token["events"] == []


def test_event_from_ends_with_session_invalid_on_restart(sim):
    import XenAPI

    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "event-waiter")
    proxy = xmlrpc.client.ServerProxy(sim.url)
    ref = s._session
    token = proxy.event_from(ref, ["vm_appliance"], "", 0.0)["Value"]["token"]
    out = {}

    def waiter():
        out["r"] = proxy.event_from(ref, ["vm_appliance"], token, 30.0)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    sim.restart_toolstack()
    t.join(20)
    assert not t.is_alive()
    assert out["r"]["ErrorDescription"] == ["SESSION_INVALID", ref]


def test_xapi_error_class_is_exported():
    err = XapiError("HANDLE_INVALID", "VM", "OpaqueRef:x")
    assert err.details == ["HANDLE_INVALID", "VM", "OpaqueRef:x"]
