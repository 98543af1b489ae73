"""Host maintenance: disable/enable, evacuate, reboot, shutdown and power-on with XAPI's rules.

XAPI's order for taking a host down is: ``host.disable`` (no new VMs land there),
``host.evacuate`` (running guests live-migrate to the other *enabled* hosts), then
``host.reboot`` or ``host.shutdown``, which XAPI refuses while the host is enabled
(``HOST_NOT_DISABLED []``) and which the simulator refuses while a guest still runs there
(``HOST_IN_USE [host, "vm", vm]``, XAPI's maintenance-mode check).  The call answers first;
then the host goes away: its URL refuses connections, ``host_metrics.live`` turns false and
the sessions it held are gone (all of the pool's when it is the master, as after a toolstack
restart).  A rebooted host comes back after ``World.reboot_downtime`` seconds, enabled, with a
fresh dom0 (XenStore, domids); ``host.power_on`` (with a ``power_on_mode``) or
``Simulator.power_on_host`` brings a shut-down host back.  Database state survives.
"""

from __future__ import annotations

import threading

from xenapi_driver.simulator import population, sessions
from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.domains import halt_resident_guests
from xenapi_driver.simulator.handlers.placement import assert_can_boot_here, host_free_memory, vm_memory_need
from xenapi_driver.simulator.handlers.vm_state import RUNNING
from xenapi_driver.simulator.registry import boot_hook, host_hook, message
from xenapi_driver.simulator.schema import NULL_REF

GOING_AWAY_DELAY = 0.05  # the call answers before the host goes (XAPI waits 10 s)
LIVE_OPS = ["provision", "evacuate", "vm_start", "vm_resume", "vm_migrate"]


def host_live(db, host_ref: str) -> bool:
    metrics = db.get("host", host_ref)["metrics"]
    if storage.is_null(metrics) or not db.exists("host_metrics", metrics):
        return True
    return bool(db.get("host_metrics", metrics)["live"])


def refresh_host(db, host_ref: str) -> None:
    """``host.allowed_operations`` as XAPI's ``valid_operations`` computes them."""
    rec = db.get("host", host_ref)
    live = host_live(db, host_ref)
    if rec["current_operations"]:
        ops: list[str] = []
    elif live:
        ops = [*LIVE_OPS, "enable"] + ([] if rec["enabled"] else ["reboot", "shutdown", "apply_updates"])
    else:
        ops = ["power_on"] if rec["power_on_mode"] else []
    db.set("host", host_ref, "allowed_operations", ops)


@host_hook
def _initial_operations(pool, host) -> None:
    refresh_host(pool.db, host.ref)


def _reachable(ctx, host_ref: str):
    """The SimHost, which must answer (XAPI forwards these calls to the host itself)."""
    target = ctx.host_obj(host_ref)
    if not target.powered:
        raise XapiError("HOST_OFFLINE", host_ref)
    return target


# -- disable / enable ------------------------------------------------------------------------------
@message("host.disable")
def host_disable(ctx, host_ref: str) -> None:
    _reachable(ctx, host_ref)
    with ctx.db.lock:
        ctx.db.set("host", host_ref, "enabled", False)
        refresh_host(ctx.db, host_ref)


@message("host.enable")
def host_enable(ctx, host_ref: str) -> None:
    target = _reachable(ctx, host_ref)
    if target.going_down:
        raise XapiError("HOST_DISABLED_UNTIL_REBOOT", host_ref)
    with ctx.db.lock:
        ctx.db.set("host", host_ref, "enabled", True)
        refresh_host(ctx.db, host_ref)


# -- evacuation ------------------------------------------------------------------------------------
def evacuation_plan(ctx, host_ref: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """XAPI's plan: each resident guest to an enabled live host that can take it, or why not.

    Returns ``(moves, errors)``: VM -> destination host, VM -> ``[code, params...]``.
    """
    db = ctx.db
    targets = [
        h.ref
        for h in ctx.pool.hosts
        if h.ref != host_ref and h.powered and db.exists("host", h.ref) and db.get("host", h.ref)["enabled"]
    ]
    free = {t: host_free_memory(db, t) for t in targets}
    moves: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for vm_ref in db.get("host", host_ref)["resident_VMs"]:
        rec = db.get("VM", vm_ref)
        if rec["is_control_domain"]:
            continue
        if not targets:
            errors[vm_ref] = ["NO_HOSTS_AVAILABLE", vm_ref]
            continue
        try:
            for target in targets:
                assert_can_boot_here(db, vm_ref, target, memory=False)
        except XapiError as exc:
            errors[vm_ref] = [exc.code, *exc.params]
            continue
        need = vm_memory_need(rec)
        best = max(targets, key=lambda t: free[t])
        if free[best] < need:
            errors[vm_ref] = ["HOST_NOT_ENOUGH_FREE_MEMORY", vm_ref]
            continue
        free[best] -= need
        moves[vm_ref] = best
    return moves, errors


@message("host.evacuate")
def host_evacuate(ctx, host_ref: str, network_ref: str = NULL_REF, evacuate_batch_size: int = 0) -> None:
    """Live-migrate every resident guest to the other enabled hosts (XAPI's maintenance step)."""
    from xenapi_driver.simulator.handlers import migration

    _reachable(ctx, host_ref)
    with ctx.db.lock:
        moves, errors = evacuation_plan(ctx, host_ref)
    if errors:
        raise XapiError(*next(iter(errors.values())))
    for n, (vm_ref, target) in enumerate(moves.items(), 1):
        migration.vm_pool_migrate(ctx, vm_ref, target, {"live": "true"})
        ctx.set_progress(n / len(moves))


@message("host.get_vms_which_prevent_evacuation")
def host_get_vms_which_prevent_evacuation(ctx, host_ref: str) -> dict:
    with ctx.db.lock:
        ctx.db.get("host", host_ref)
        return evacuation_plan(ctx, host_ref)[1]


@message("host.assert_can_evacuate")
def host_assert_can_evacuate(ctx, host_ref: str) -> None:
    """XAPI's old-style answer: ``CANNOT_EVACUATE_HOST ["code,param|code,param"]``."""
    blockers = host_get_vms_which_prevent_evacuation(ctx, host_ref)
    if blockers:
        raise XapiError("CANNOT_EVACUATE_HOST", "|".join(",".join(e) for e in blockers.values()))


# -- reboot / shutdown / power_on ------------------------------------------------------------------
def _take_down(ctx, host_ref: str, op: str) -> None:
    target = _reachable(ctx, host_ref)
    db = ctx.db
    with db.lock:
        rec = db.get("host", host_ref)
        if target.going_down:
            raise XapiError("OTHER_OPERATION_IN_PROGRESS", "host", host_ref, target.going_down)
        if rec["enabled"]:
            raise XapiError("HOST_NOT_DISABLED")
        for vm_ref in rec["resident_VMs"]:
            vm = db.get("VM", vm_ref)
            if not vm["is_control_domain"] and vm["power_state"] == RUNNING:
                raise XapiError("HOST_IN_USE", host_ref, "vm", vm_ref)
        target.going_down = op
        token = ctx.task or f"OpaqueRef:{op}-{target.uuid}"
        db.set("host", host_ref, "current_operations", {token: op})
        refresh_host(db, host_ref)
    timer = threading.Timer(GOING_AWAY_DELAY, _go_down, (ctx.pool, target, op == "reboot"))
    timer.daemon = True
    timer.start()


def _go_down(pool, host, reboot: bool) -> None:
    """The host goes away: no answers, not live, its sessions and guest domains gone."""
    if pool.world.stopped:
        return
    halt_resident_guests(pool, host.ref)
    host.stop_server()
    host.powered = False
    host.shut_down_cleanly = True
    population.set_host_live(pool, host, False)
    if host.is_master:
        sessions.invalidate_all(pool)
    else:
        sessions.invalidate_local(pool, host.ref)
    with pool.db.lock:
        if pool.db.exists("host", host.ref):
            pool.db.set("host", host.ref, "current_operations", {})  # done: the host is down
            refresh_host(pool.db, host.ref)
    if reboot:
        epoch = host.epoch
        timer = threading.Timer(pool.world.reboot_downtime, _come_back, (pool, host, epoch))
        timer.daemon = True
        timer.start()


def _come_back(pool, host, epoch: int) -> None:
    # not if the simulator stopped, or someone powered the host on/off meanwhile
    if pool.world.stopped or host.epoch != epoch or host.powered:
        return
    host.power_on()


@boot_hook
def _booted(pool, host) -> None:
    """After boot XAPI enables the host (a user's disable does not survive a reboot)."""
    host.going_down = ""
    db = pool.db
    with db.lock:
        if db.exists("host", host.ref):
            db.update("host", host.ref, enabled=True, current_operations={})
            refresh_host(db, host.ref)


@message("host.reboot")
def host_reboot(ctx, host_ref: str) -> None:
    _take_down(ctx, host_ref, "reboot")


@message("host.shutdown")
def host_shutdown(ctx, host_ref: str) -> None:
    _take_down(ctx, host_ref, "shutdown")


@message("host.set_power_on_mode")
def host_set_power_on_mode(ctx, host_ref: str, power_on_mode: str, power_on_config: dict) -> None:
    with ctx.db.lock:
        ctx.db.update("host", host_ref, power_on_mode=power_on_mode, power_on_config=dict(power_on_config))
        refresh_host(ctx.db, host_ref)


@message("host.power_on")
def host_power_on(ctx, host_ref: str) -> None:
    """Power a host on through its ``power_on_mode`` (XAPI's precondition: the host is down)."""
    db = ctx.db
    target = ctx.host_obj(host_ref)
    with db.lock:
        rec = db.get("host", host_ref)
        if target.powered and host_live(db, host_ref):
            raise XapiError("HOST_IS_LIVE", host_ref)
        if not rec["power_on_mode"]:
            raise XapiError("HOST_POWER_ON_MODE_DISABLED")
    target.shut_down_cleanly = True  # whatever took it down, it boots afresh
    target.power_on()
