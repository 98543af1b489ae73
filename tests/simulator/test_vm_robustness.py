"""Every semantic handler answers bogus references with XAPI errors, never INTERNAL_ERROR."""

from __future__ import annotations

import xmlrpc.client

import pytest

from xenapi_driver.simulator import registry, schema
from xenapi_driver.simulator.handlers import load_all

OURS = {
    "xenapi_driver.simulator.handlers.storage",
    "xenapi_driver.simulator.handlers.vm_state",
    "xenapi_driver.simulator.handlers.placement",
    "xenapi_driver.simulator.handlers.vm_power",
    "xenapi_driver.simulator.handlers.vm_suspend",
    "xenapi_driver.simulator.handlers.vm_copy",
    "xenapi_driver.simulator.handlers.vm_provision",
    "xenapi_driver.simulator.handlers.vm_config",
    "xenapi_driver.simulator.handlers.vm_xenstore",
    "xenapi_driver.simulator.handlers.vif",
    "xenapi_driver.simulator.handlers.setters",
    "xenapi_driver.simulator.handlers.host_power",
    "xenapi_driver.simulator.handlers.migration",
    "xenapi_driver.simulator.handlers.pool_ops",
}
BOGUS = "OpaqueRef:00000000-0000-0000-0000-00000000b0b0"
NULL = "OpaqueRef:NULL"


def _value(t, ref=BOGUS):
    kind = t.kind
    if kind == "ref":
        return ref
    if kind == "string":
        return ""
    if kind == "int":
        return "0"
    if kind == "float":
        return 0.0
    if kind == "bool":
        return False
    if kind == "datetime":
        return "19700101T00:00:00Z"
    if kind in ("map", "record"):
        return {}
    if kind == "set":
        return []
    if kind == "enum":
        return schema.load().enums[t.name][0]
    return ""


def _messages():
    load_all()
    s = schema.load()
    out = []
    for name, func in sorted(registry.MESSAGES.items()):
        if func.__module__ not in OURS:
            continue
        cls, _, msg = name.partition(".")
        info = s.message(cls, msg)
        if info is None or not any(t.kind == "ref" for _, t in info.params):
            continue
        for ref in (BOGUS, NULL):
            out.append((name, [_value(t, ref) for _, t in info.params]))
    return out


MESSAGES = _messages()


def test_the_walk_covers_our_messages():
    names = {n for n, _ in MESSAGES}
    assert {"VM.start", "VDI.snapshot", "VM.migrate_send", "pool.eject", "VBD.plug"} <= names


@pytest.mark.parametrize(
    "name,params", MESSAGES, ids=[f"{n}-{'null' if NULL in p else 'bogus'}" for n, p in MESSAGES]
)
def test_bogus_references_get_xapi_errors(sim, session, name, params):
    proxy = xmlrpc.client.ServerProxy(sim.url)
    method = proxy
    for part in name.split("."):
        method = getattr(method, part)
    result = method(session._session, *params)
    if result["Status"] == "Success":
        return
    code = result["ErrorDescription"][0]
    assert code != "INTERNAL_ERROR", result["ErrorDescription"]
