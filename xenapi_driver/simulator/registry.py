"""Registration of explicit message and HTTP handlers.

Why: the schema gives every implicit message for free; the few messages
with real behaviour (``VM.start``, ``VDI.snapshot`` ...) and HTTP handlers
(``/export_raw_vdi`` ...) are plain functions registered here by the
modules in :mod:`xenapi_driver.simulator.handlers`, so each helper owns
its own file and nobody edits a central dispatch table.

Handler signatures::

    @message("VM.start")            # params in schema order, without the session
    def vm_start(ctx, vm, start_paused, force): ...

    @http_handler("GET", "/export_raw_vdi")
    def export(ctx, request): ...

    @pool_hook                      # called after a pool's hosts are populated
    def add_templates(pool): ...

    @host_hook                      # called after each host is created
    def add_host_stuff(pool, host): ...

    @reset_hook                     # called before a pool is wiped by Simulator.reset()
    def forget_caches(pool): ...

    @boot_hook                      # called when a host boots again (host.reboot, host.power_on)
    def fresh_dom0(pool, host): ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

MESSAGES: dict[str, Callable] = {}
HTTP_HANDLERS: dict[tuple[str, str], HttpRoute] = {}
POOL_HOOKS: list[Callable] = []
HOST_HOOKS: list[Callable] = []
RESET_HOOKS: list[Callable] = []
BOOT_HOOKS: list[Callable] = []


@dataclass
class HttpRoute:
    method: str
    path: str
    func: Callable
    auth: bool = True  # require a valid session_id (query, cookie) or basic auth


def message(name: str) -> Callable[[Callable], Callable]:
    """Register ``func`` as the implementation of XAPI message ``name`` ("Class.msg").

    The function receives ``(ctx, *params)`` with the session removed, params
    already type-checked and converted (ints as ``int``, enums canonical,
    omitted trailing params filled with their defaults). It returns a Python
    value (refs as str, ints as int, records as dicts, ``None`` for void) or
    raises :class:`~xenapi_driver.simulator.errors.XapiError`.
    """
    if "." not in name:
        raise ValueError(f"message name must be 'Class.msg', got {name!r}")

    def deco(func: Callable) -> Callable:
        if name in MESSAGES and MESSAGES[name] is not func:
            LOG.warning("message %s registered twice; %s replaces %s", name, func, MESSAGES[name])
        MESSAGES[name] = func
        return func

    return deco


def http_handler(method: str, path: str, *, auth: bool = True) -> Callable[[Callable], Callable]:
    """Register an HTTP handler for ``method`` (GET/PUT/POST/...) at ``path``."""

    def deco(func: Callable) -> Callable:
        HTTP_HANDLERS[(method.upper(), path)] = HttpRoute(method.upper(), path, func, auth)
        return func

    return deco


def pool_hook(func: Callable) -> Callable:
    """Run ``func(pool)`` once a new pool's hosts and base objects exist."""
    if func not in POOL_HOOKS:
        POOL_HOOKS.append(func)
    return func


def host_hook(func: Callable) -> Callable:
    """Run ``func(pool, host)`` after a host and its base objects are created."""
    if func not in HOST_HOOKS:
        HOST_HOOKS.append(func)
    return func


def reset_hook(func: Callable) -> Callable:
    """Run ``func(pool)`` before ``reset()`` wipes a pool (drop per-pool caches and state)."""
    if func not in RESET_HOOKS:
        RESET_HOOKS.append(func)
    return func


def boot_hook(func: Callable) -> Callable:
    """Run ``func(pool, host)`` when a host boots again after going down (per-host state is new)."""
    if func not in BOOT_HOOKS:
        BOOT_HOOKS.append(func)
    return func


def lookup_message(name: str) -> Callable | None:
    return MESSAGES.get(name)


def lookup_http(method: str, path: str) -> HttpRoute | None:
    return HTTP_HANDLERS.get((method.upper(), path))
