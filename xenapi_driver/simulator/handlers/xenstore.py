"""Per-host XenStore, the guest agents living in it, and the internal endpoint dom0 tools use.

Each simulated host has one XenStore (domain 0's view of every domain on that host).  When a VM
starts, XAPI's domain builder writes ``/local/domain/<domid>/{name,domid,vm}`` and every
``VM.xenstore_data`` key under ``/local/domain/<domid>/``; the simulated guest agent then answers
requests under ``data/host``.  Dom0 tools (``xenstore-read`` & co. in the sandbox, plug-ins) reach
the store through ``POST <host url>/_simulator/xenstore`` with a JSON body (INTERFACES §3).
"""

from __future__ import annotations

import json
import threading

from xenapi_driver.simulator.guest_agent import GuestAgents, XenStore, XenStoreError
from xenapi_driver.simulator.registry import boot_hook, host_hook, http_handler, reset_hook

_LOCK = threading.Lock()
_STORES: dict[str, XenStore] = {}
_AGENTS: dict[str, GuestAgents] = {}


def _key(host) -> str:
    return host.uuid or str(id(host))


def store_for(host) -> XenStore:
    """The XenStore of a :class:`SimHost` (created on first use, kept across pool moves)."""
    with _LOCK:
        key = _key(host)
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = XenStore()
            store.write("/local/domain/0/name", "Domain-0")
            store.write("/local/domain/0/domid", "0")
            _AGENTS[key] = GuestAgents(store)
        return store


def agents_for(host) -> GuestAgents:
    """The guest agents of a host: ``.enabled`` switches them all off, ``.state(domid)`` for checks."""
    store_for(host)
    return _AGENTS[_key(host)]


def set_agent_enabled(host, enabled: bool) -> None:
    agents_for(host).enabled = bool(enabled)


def domain_started(host, domid: int, vm: dict) -> None:
    """Write what the domain builder writes and start the guest agent (unless the VM opts out).

    A VM whose ``other_config['simulator-agent']`` is ``"false"`` boots without an agent.
    """
    store = store_for(host)
    base = f"/local/domain/{domid}"
    store.rm(base)
    store.write(f"{base}/name", vm.get("name_label", ""))
    store.write(f"{base}/domid", str(domid))
    store.write(f"{base}/vm", f"/vm/{vm.get('uuid', '')}")
    store.write(f"{base}/control/platform-feature-multiprocessor-suspend", "1")
    for key, value in sorted((vm.get("xenstore_data") or {}).items()):
        store.write(f"{base}/{key.lstrip('/')}", str(value))
    agent = str((vm.get("other_config") or {}).get("simulator-agent", "true")).lower() != "false"
    agents_for(host).domain_started(domid, agent=agent)
    if agent:
        store.write(f"{base}/control/feature-shutdown", "1")
        store.write(f"{base}/control/feature-suspend", "1")


def domain_stopped(host, domid: int) -> None:
    agents_for(host).domain_stopped(domid)
    store_for(host).rm(f"/local/domain/{domid}")


def forget_host(host) -> None:
    with _LOCK:
        _STORES.pop(_key(host), None)
        _AGENTS.pop(_key(host), None)


def execute(store: XenStore, body: dict) -> dict:
    """Run one internal-endpoint request; always returns ``{"ok": ...}``."""
    op = body.get("op")
    path = body.get("path", "")
    try:
        if op == "read":
            return {"ok": True, "value": store.read(path)}
        if op == "write":
            store.write(path, str(body.get("value", "")))
            return {"ok": True, "value": None}
        if op == "rm":
            store.rm(path)
            return {"ok": True, "value": None}
        if op == "ls":
            return {"ok": True, "value": store.ls(path)}
        if op == "exists":
            return {"ok": True, "value": store.exists(path)}
        if op == "list":
            return {"ok": True, "value": store.list(path)}
        return {"ok": False, "error": f"unknown op {op!r}: use read, write, rm, ls, exists or list"}
    except XenStoreError as exc:
        return {"ok": False, "error": str(exc)}


@http_handler("POST", "/_simulator/xenstore", auth=False)
def xenstore_endpoint(ctx, request):
    """``POST /_simulator/xenstore``: dom0 tools' view of this host's XenStore (loopback only)."""
    raw = request.read_body()
    try:
        body = json.loads(raw.decode("utf-8") or "{}")
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        answer = execute(store_for(ctx.sim_host), body)
    except (ValueError, UnicodeDecodeError) as exc:
        answer = {"ok": False, "error": f"bad request body: {exc}"}
    request.respond(200, json.dumps(answer), content_type="application/json")


@host_hook
@boot_hook
def _fresh_store(pool, host) -> None:
    """A (re)populated or rebooted host starts with an empty XenStore (only dom0 in it)."""
    forget_host(host)
    store_for(host)


@reset_hook
def _forget_stores(pool) -> None:
    """Reset drops every host's XenStore and guest agents (the host hook then makes fresh ones)."""
    for host in pool.hosts:
        forget_host(host)
