"""The HTTP handler plumbing: authentication, task_id, streaming, errors, legacy events."""

from __future__ import annotations

import base64
import http.client
import threading
import time
import urllib.parse
import xmlrpc.client

import pytest

from xenapi_driver.simulator import registry
from xenapi_driver.simulator.errors import XapiError

PATH = "/_test/core_http"


@pytest.fixture
def route():
    """A test-only handler (the edge); the plumbing around it is what is tested."""
    seen = {}

    def handler(ctx, request):
        seen["session"] = ctx.session
        seen["task"] = ctx.task
        seen["host"] = ctx.host
        if request.query.get("fail"):
            raise XapiError("VDI_MISSING", "OpaqueRef:sr", "OpaqueRef:vdi")
        if request.method == "PUT":
            body = request.read_body()
            return f"got {len(body)}"
        if request.query.get("stream"):
            request.start(200, {"Content-Type": "application/octet-stream"})
            request.wfile.write(b"x" * 1000)
            return None
        request.respond(200, b"hello", "text/plain")
        return None

    registry.http_handler("GET", PATH)(handler)
    registry.http_handler("PUT", PATH)(handler)
    yield seen
    registry.HTTP_HANDLERS.pop(("GET", PATH), None)
    registry.HTTP_HANDLERS.pop(("PUT", PATH), None)


def _request(url, method, path, body=None, headers=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


def test_session_id_query_cookie_basic_and_401(sim, raw, route):
    _, ref = raw
    status, body, _ = _request(sim.url, "GET", f"{PATH}?session_id={ref}")
    assert (status, body) == (200, b"hello")
    assert route["session"] == ref
    status, _, _ = _request(sim.url, "GET", PATH, headers={"Cookie": f"session_id={ref}"})
    assert status == 200
    basic = base64.b64encode(f"root:{sim.password}".encode()).decode()
    status, _, _ = _request(sim.url, "GET", PATH, headers={"Authorization": f"Basic {basic}"})
    assert status == 200
    status, _, _ = _request(sim.url, "GET", f"{PATH}?session_id=OpaqueRef:bogus")
    assert status == 401
    status, _, _ = _request(sim.url, "GET", PATH)
    assert status == 401


def test_member_hosts_serve_http_with_master_sessions(sim, raw, route):
    _, ref = raw
    member = sim.pool.hosts[1]
    status, _, _ = _request(member.url, "GET", f"{PATH}?session_id={ref}")
    assert status == 200
    assert route["host"] == member.ref


def test_task_id_completes_or_fails_the_task(sim, xapi, raw, route):
    _, ref = raw
    task = xapi.task.create("upload", "")
    status, _, _ = _request(sim.url, "PUT", f"{PATH}?session_id={ref}&task_id={task}", body=b"abc")
    assert status == 200
    rec = xapi.task.get_record(task)
    assert rec["status"] == "success"
    (value,), _ = xmlrpc.client.loads(f"<params><param>{rec['result']}</param></params>")
    assert value == "got 3"
    task2 = xapi.task.create("failing", "")
    status, body, _ = _request(sim.url, "GET", f"{PATH}?session_id={ref}&task_id={task2}&fail=1")
    assert status == 500 and body.startswith(b"VDI_MISSING")
    assert xapi.task.get_error_info(task2) == ["VDI_MISSING", "OpaqueRef:sr", "OpaqueRef:vdi"]


def test_streamed_response_closes_connection(sim, raw, route):
    _, ref = raw
    status, body, resp = _request(sim.url, "GET", f"{PATH}?session_id={ref}&stream=1")
    assert status == 200 and body == b"x" * 1000
    assert resp.getheader("Connection") == "close"


def test_call_counts_include_http(sim, raw, route):
    _, ref = raw
    before = sim.call_counts[f"GET {PATH}"]
    _request(sim.url, "GET", f"{PATH}?session_id={ref}")
    assert sim.call_counts[f"GET {PATH}"] == before + 1


def test_legacy_event_register_next(sim, xapi):
    xapi.event.register(["network"])
    got = {}

    def change():
        time.sleep(0.2)
        got["net"] = sim.pool.db.create("network", name_label="legacy")

    t = threading.Thread(target=change)
    t.start()
    events = xapi.event.next()
    t.join(10)
    assert [(e["class"], e["operation"], e["ref"]) for e in events] == [("network", "add", got["net"])]
    xapi.event.unregister(["network"])
    sim.pool.db.destroy("network", got["net"])


def test_event_next_without_register(sim, failure):
    import XenAPI

    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "unregistered")
    assert failure(s.xenapi.event.next) == ["SESSION_NOT_REGISTERED", s._session]
    s.xenapi.session.logout()
