"""xenstore, agent, bandwidth and console plug-ins, run as processes in a dom0 sandbox."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from plugin_helpers import call

from xenapi_driver.simulator.dom0 import XapiError
from xenapi_driver.simulator.guest_agent import DH_BASE, DH_PRIME, encrypt_password

DOMID = 7


def test_xenstore_write_read_list_delete(dom0, xapi):
    call(
        dom0,
        "xenstore",
        "write_record",
        dom_id=DOMID,
        path="vm-data/networking/mac1",
        value='{"ip": "10.0.0.2"}',
    )
    call(dom0, "xenstore", "write_record", dom_id=DOMID, path="vm-data/hostname", value="a b; c")
    assert xapi.store.read(f"/local/domain/{DOMID}/vm-data/hostname") == "a b; c"
    assert (
        json.loads(call(dom0, "xenstore", "read_record", dom_id=DOMID, path="vm-data/hostname")) == "a b; c"
    )
    listed = json.loads(call(dom0, "xenstore", "list_records", dom_id=DOMID, path="vm-data"))
    assert listed == {"hostname": "a b; c", "networking": "", "networking/mac1": '{"ip": "10.0.0.2"}'}
    call(dom0, "xenstore", "delete_record", dom_id=DOMID, path="vm-data/networking")
    assert not xapi.store.exists(f"/local/domain/{DOMID}/vm-data/networking/mac1")
    assert json.loads(call(dom0, "xenstore", "list_records", dom_id=DOMID, path="nothing/here")) == {}


def test_xenstore_missing_key(dom0):
    with pytest.raises(XapiError) as err:
        call(dom0, "xenstore", "read_record", dom_id=DOMID, path="vm-data/absent")
    assert err.value.details == ["XENSTORE_MISSING", f"/local/domain/{DOMID}/vm-data/absent"]
    assert (
        json.loads(
            call(
                dom0,
                "xenstore",
                "read_record",
                dom_id=DOMID,
                path="vm-data/absent",
                ignore_missing_path="true",
            )
        )
        is None
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("path", "../../0/vm-data"),
        ("path", "vm-data/../../../0"),
        ("path", "a b"),
        ("path", "x;reboot"),
        ("path", "$(id)"),
        ("dom_id", "-1"),
        ("dom_id", "1 2"),
        ("dom_id", "abc"),
    ],
)
def test_xenstore_rejects_bad_arguments(dom0, xapi, name, value):
    args = {"dom_id": str(DOMID), "path": "vm-data/x", "value": "v"}
    args[name] = value
    with pytest.raises(XapiError) as err:
        call(dom0, "xenstore", "write_record", **args)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.params[0] == name
    assert xapi.store.list("/local/domain") == {"/local/domain": ""}


def test_agent_version_key_exchange_and_password(dom0, xapi):
    xapi.agents.domain_started(DOMID)
    reply = json.loads(call(dom0, "agent", "version", dom_id=DOMID, timeout="10"))
    assert reply == {"returncode": "0", "message": "1.0.0"}
    private = 123456789
    reply = json.loads(
        call(dom0, "agent", "key_init", dom_id=DOMID, pub=str(pow(DH_BASE, private, DH_PRIME)))
    )
    assert reply["returncode"] == "D0"
    shared = pow(int(reply["message"]), private, DH_PRIME)
    secret = encrypt_password("s3cret!", str(shared))
    reply = json.loads(call(dom0, "agent", "password", dom_id=DOMID, enc_pass=secret))
    assert reply["returncode"] == "0"
    assert xapi.agents.state(DOMID).password == "s3cret!"
    assert json.loads(call(dom0, "agent", "resetnetwork", dom_id=DOMID))["returncode"] == "0"
    # request and reply keys are cleaned up
    assert not [k for k in xapi.store.list(f"/local/domain/{DOMID}/data") if "/host/" in k or "/guest/" in k]


def test_agent_timeout_removes_the_request(dom0, xapi):
    xapi.agents.domain_started(DOMID, agent=False)
    with pytest.raises(XapiError) as err:
        call(dom0, "agent", "version", dom_id=DOMID, timeout="1", id="req-1")
    assert err.value.details == ["AGENT_TIMEOUT", str(DOMID), "version", "1"]
    assert not xapi.store.exists(f"/local/domain/{DOMID}/data/host/req-1")


def test_agent_inject_file_and_update(dom0, xapi):
    xapi.agents.domain_started(DOMID)
    path = base64.b64encode(b"/etc/motd").decode()
    contents = base64.b64encode(b"hello, world").decode()
    reply = json.loads(call(dom0, "agent", "inject_file", dom_id=DOMID, b64_path=path, b64_contents=contents))
    assert reply["returncode"] == "0"
    assert xapi.agents.state(DOMID).injected_files["/etc/motd"] == b"hello, world"
    reply = json.loads(
        call(dom0, "agent", "agent_update", dom_id=DOMID, url="http://example.invalid/a.tgz", md5sum="a" * 32)
    )
    assert reply["returncode"] == "0"
    assert xapi.agents.state(DOMID).updates == ["http://example.invalid/a.tgz," + "a" * 32]


@pytest.mark.parametrize(
    ("fn", "args", "bad"),
    [
        ("key_init", {"pub": "12; reboot"}, "pub"),
        ("password", {"enc_pass": "not base64 !"}, "enc_pass"),
        ("version", {"timeout": "0"}, "timeout"),
        ("version", {"timeout": "99999"}, "timeout"),
        ("version", {"id": "../x"}, "id"),
        ("agent_update", {"url": "file:///etc/shadow", "md5sum": "0" * 32}, "url"),
        ("agent_update", {"url": "http://x/a", "md5sum": "xyz"}, "md5sum"),
        ("inject_file", {"b64_path": base64.b64encode(b"relative").decode(), "b64_contents": ""}, "b64_path"),
    ],
)
def test_agent_rejects_bad_arguments(dom0, xapi, fn, args, bad):
    with pytest.raises(XapiError) as err:
        call(dom0, "agent", fn, dom_id=str(DOMID), **args)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.params[0] == bad
    assert not xapi.store.exists(f"/local/domain/{DOMID}/data/host")


def test_bandwidth_counters(dom0):
    dom0.write_vif_counters(3, 0, rx_bytes=100, tx_bytes=2000)
    dom0.write_vif_counters(3, 1, rx_bytes=5, tx_bytes=6)
    dom0.write_vif_counters(12, 0, rx_bytes=7, tx_bytes=8)
    dom0.path("/sys/class/net/eth0/statistics").mkdir(parents=True)
    result = json.loads(call(dom0, "bandwidth", "fetch_all_bandwidth"))
    assert result == {
        "3": {"0": {"bw_in": 2000, "bw_out": 100}, "1": {"bw_in": 6, "bw_out": 5}},
        "12": {"0": {"bw_in": 8, "bw_out": 7}},
    }
    dom0.remove_vif(12, 0)
    assert "12" not in json.loads(call(dom0, "bandwidth", "fetch_all_bandwidth"))


def test_console_log_is_compressed_tail(dom0):
    data = b"".join(b"line %d of the boot log\n" % i for i in range(20000))
    dom0.append_console(4, data)
    encoded = call(dom0, "console", "get_console_log", dom_id="4")
    assert zlib.decompress(base64.b64decode(encoded)) == data[-100 * 1024 :]
    small = call(dom0, "console", "get_console_log", dom_id="4", max_bytes="10")
    assert zlib.decompress(base64.b64decode(small)) == data[-10:]


def test_console_missing_and_bad_domid(dom0):
    with pytest.raises(XapiError) as err:
        call(dom0, "console", "get_console_log", dom_id="5")
    assert err.value.code == "NOT_FOUND"
    for bad in ("../5", "5/../../etc/passwd", "-1", ""):
        with pytest.raises(XapiError) as err:
            call(dom0, "console", "get_console_log", dom_id=bad)
        assert err.value.code == "INVALID_ARGUMENT"


def test_json_encoded_identifiers_are_accepted_but_values_are_verbatim(dom0, xapi):
    """call_plugin_serialized JSON-encodes every argument: identifiers are unwrapped, free text is not."""
    args = {"dom_id": json.dumps("7"), "path": json.dumps("vm-data/q"), "value": '"quoted"'}
    call(dom0, "xenstore", "write_record", **args)
    assert xapi.store.read("/local/domain/7/vm-data/q") == '"quoted"'
