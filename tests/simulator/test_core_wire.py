"""The wire as XAPI speaks it: envelope, encodings, names, dispatch errors."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
import xmlrpc.client

import pytest


def _post(url: str, path: str, body: bytes, content_type: str = "text/xml") -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _call_xml(url: str, method: str, *params, path: str = "/") -> str:
    status, body = _post(url, path, xmlrpc.client.dumps(params, method).encode())
    assert status == 200
    return body.decode()


def test_envelope_ints_as_strings_and_datetime_format(sim, raw):
    proxy, ref = raw
    host = sim.pool.master.ref
    text = _call_xml(sim.url, "host.get_record", ref, host)
    assert "<name>Status</name><value>Success</value>" in text
    # 64-bit ints are decimal strings, strings are untyped <value>s
    assert re.search(r"<name>API_version_major</name><value>2</value>", text)
    assert "<value><string>" not in text
    # XAPI's datetime format
    text = _call_xml(sim.url, "host.get_servertime", ref, host)
    assert re.search(r"<dateTime.iso8601>\d{8}T\d\d:\d\d:\d\dZ</dateTime.iso8601>", text)
    rec = proxy.host.get_record(ref, host)["Value"]
    assert rec["API_version_major"] == "2"
    assert rec["metrics"].startswith("OpaqueRef:")


def test_void_result_is_empty_string(sim, raw):
    proxy, ref = raw
    net = proxy.network.get_all(ref)["Value"][0]
    assert proxy.network.set_name_description(ref, net, "d") == {"Status": "Success", "Value": ""}


def test_rpc2_path_and_underscore_names(sim, raw):
    _, ref = raw
    text = _call_xml(sim.url, "VM_get_all", ref, path="/RPC2")
    assert "<value>Success</value>" in text
    proxy = xmlrpc.client.ServerProxy(sim.url)
    assert proxy.VM_metrics_get_all(ref)["Status"] == "Success"
    assert proxy.event_from(ref, ["pool"], "", 0.0)["Status"] == "Success"


def test_method_unknown(sim, raw):
    proxy, ref = raw
    assert proxy.VM.frobnicate(ref)["ErrorDescription"] == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert proxy.Nope.get_all(ref)["ErrorDescription"] == ["MESSAGE_METHOD_UNKNOWN", "Nope.get_all"]
    # no setter for a read-only field
    vm = proxy.VM.get_all(ref)["Value"][0]
    assert proxy.VM.set_power_state(ref, vm, "Halted")["ErrorDescription"] == [
        "MESSAGE_METHOD_UNKNOWN",
        "VM.set_power_state",
    ]


def test_parameter_count_mismatch(sim, raw):
    proxy, ref = raw
    assert proxy.VM.get_record(ref)["ErrorDescription"] == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "VM.get_record",
        "1",
        "0",
    ]
    assert proxy.VM.get_all(ref, "extra")["ErrorDescription"] == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "VM.get_all",
        "0",
        "1",
    ]
    # trailing params with defaults may be omitted, but not more
    out = proxy.VM.migrate_send(ref, "OpaqueRef:x", {}, True, {}, {})
    assert out["ErrorDescription"][:2] == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.migrate_send"]
    assert out["ErrorDescription"][2:] == ["6", "5"]


def test_defaults_fill_omitted_trailing_params(sim, raw):
    proxy, ref = raw
    # VM.assert_can_migrate without vgpu_map / vdi_format_map reaches the handler
    # (which then complains about the VM, not about the parameter count)
    out = proxy.VM.assert_can_migrate(ref, "OpaqueRef:bad", {}, True, {}, {}, {})
    assert out["Status"] == "Failure"
    assert out["ErrorDescription"][0] != "MESSAGE_PARAMETER_COUNT_MISMATCH"


def test_handle_invalid_and_uuid_invalid(sim, raw):
    proxy, ref = raw
    assert proxy.VM.get_record(ref, "OpaqueRef:NULL")["ErrorDescription"] == [
        "HANDLE_INVALID",
        "VM",
        "OpaqueRef:NULL",
    ]
    assert proxy.SR.get_name_label(ref, "OpaqueRef:x")["ErrorDescription"] == [
        "HANDLE_INVALID",
        "SR",
        "OpaqueRef:x",
    ]
    assert proxy.VM.get_by_uuid(ref, "no-such-uuid")["ErrorDescription"] == [
        "UUID_INVALID",
        "VM",
        "no-such-uuid",
    ]


def test_type_checking(sim, raw):
    proxy, ref = raw
    net = proxy.network.get_all(ref)["Value"][0]
    assert proxy.network.set_MTU(ref, net, "not-a-number")["ErrorDescription"][0] == "FIELD_TYPE_ERROR"
    assert proxy.network.set_name_label(ref, net, 42)["ErrorDescription"] == ["FIELD_TYPE_ERROR", "value"]
    assert proxy.network.set_other_config(ref, net, ["a"])["ErrorDescription"][0] == "FIELD_TYPE_ERROR"
    # ints may come as ints or decimal strings
    assert proxy.network.set_MTU(ref, net, 9000)["Status"] == "Success"
    assert proxy.network.get_MTU(ref, net)["Value"] == "9000"
    assert proxy.network.set_MTU(ref, net, "1500")["Status"] == "Success"
    # enums are checked
    vm = proxy.VM.get_all(ref)["Value"][0]
    bad = proxy.VM.set_actions_after_shutdown(ref, vm, "explode")
    assert bad["ErrorDescription"][0] == "INVALID_VALUE"


def test_malformed_request_is_http_500(sim):
    status, _ = _post(sim.url, "/", b"<methodCall><oops")
    assert status == 500


def test_async_of_getter_is_an_xmlrpc_fault(sim, raw):
    _, ref = raw
    proxy = xmlrpc.client.ServerProxy(sim.url)
    with pytest.raises(xmlrpc.client.Fault):
        getattr(proxy, "Async.VM.get_record")(ref, "OpaqueRef:NULL")
    with pytest.raises(xmlrpc.client.Fault):
        getattr(proxy, "Async.session.logout")(ref)


def test_jsonrpc_v2_and_v1(sim, raw):
    _, ref = raw
    status, body = _post(
        sim.url,
        "/jsonrpc",
        json.dumps(
            {"jsonrpc": "2.0", "method": "host.get_record", "params": [ref, sim.pool.master.ref], "id": 7}
        ).encode(),
        "application/json",
    )
    assert status == 200
    out = json.loads(body)
    assert out["id"] == 7 and out["jsonrpc"] == "2.0"
    assert out["result"]["uuid"] == sim.pool.master.uuid
    assert out["result"]["API_version_major"] == 2
    status, body = _post(
        sim.url,
        "/jsonrpc",
        json.dumps({"method": "VM.get_record", "params": [ref, "OpaqueRef:x"], "id": 1}).encode(),
        "application/json",
    )
    out = json.loads(body)
    assert out["result"] is None
    assert out["error"] == {"code": 1, "message": "HANDLE_INVALID", "data": ["VM", "OpaqueRef:x"]}


def test_unknown_http_path_is_404(sim):
    u = urllib.parse.urlsplit(sim.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/no/such/thing")
    assert conn.getresponse().status == 404
    conn.close()
