"""VM life cycle: create, destroy, start, shutdown, reboot, pause, power-state reset."""

from __future__ import annotations

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.domains import boot_domain, set_devices_attached, stop_domain
from xenapi_driver.simulator.handlers.placement import assert_can_boot_here, choose_host, host_offline
from xenapi_driver.simulator.handlers.vm_config import check_memory_constraints
from xenapi_driver.simulator.handlers.vm_metrics import ensure_metrics, update_metrics
from xenapi_driver.simulator.handlers.vm_state import (
    HALTED,
    PAUSED,
    RUNNING,
    SUSPENDED,
    check_operation,
    refresh_vm,
    vm_operation,
)
from xenapi_driver.simulator.handlers.vm_suspend import drop_suspend_image
from xenapi_driver.simulator.implicit import create_from_record
from xenapi_driver.simulator.registry import message
from xenapi_driver.simulator.schema import NULL_REF


@message("VM.create")
def vm_create(ctx, record: dict) -> str:
    db = ctx.db
    info = db.schema.classes["VM"]
    with db.lock:
        ref = create_from_record(ctx, info, record)
        try:
            check_memory_constraints(db.get("VM", ref))
        except XapiError:
            db.destroy("VM", ref)
            raise
        db.update("VM", ref, power_state=HALTED, domid=-1)
        ensure_metrics(db, ref)
        refresh_vm(db, ref)
    return ref


@message("VM.destroy")
def vm_destroy(ctx, vm_ref: str) -> None:
    db = ctx.db
    with db.lock:
        rec = check_operation(db, vm_ref, "destroy")
        destroy_vm_records(db, vm_ref, rec)


def destroy_vm_records(db, vm_ref: str, rec: dict | None = None) -> None:
    """Remove a VM and its devices and metrics (never its disks, as XAPI)."""
    rec = rec or db.get("VM", vm_ref)
    for vbd in list(rec["VBDs"]):
        vdi = db.get("VBD", vbd)["VDI"]
        db.destroy("VBD", vbd)
        if not storage.is_null(vdi) and db.exists("VDI", vdi):
            storage.refresh_vdi(db, vdi)
    for vif in list(rec["VIFs"]):
        db.destroy("VIF", vif)
    for console in list(rec["consoles"]):
        db.destroy("console", console)
    for field, cls in (("metrics", "VM_metrics"), ("guest_metrics", "VM_guest_metrics")):
        if not storage.is_null(rec[field]) and db.exists(cls, rec[field]):
            db.destroy(cls, rec[field])
    for snap in list(rec["snapshots"]):
        db.set("VM", snap, "snapshot_of", NULL_REF)
    db.destroy("VM", vm_ref)


@message("VM.start")
def vm_start(ctx, vm_ref: str, start_paused: bool, force: bool) -> None:
    with vm_operation(ctx, vm_ref, "start"):
        with ctx.db.lock:
            host_ref = choose_host(ctx, vm_ref)
            ctx.db.set("VM", vm_ref, "scheduled_to_be_resident_on", host_ref)
        _start_on(ctx, vm_ref, host_ref, start_paused)


def _start_on(ctx, vm_ref: str, host_ref: str, paused: bool) -> None:
    db = ctx.db
    try:
        with db.lock:
            assert_can_boot_here(db, vm_ref, host_ref)
            _check_vdis_free(db, vm_ref)
            boot_domain(ctx.pool, vm_ref, host_ref, paused=bool(paused))
    finally:
        if db.exists("VM", vm_ref):
            db.set("VM", vm_ref, "scheduled_to_be_resident_on", NULL_REF)


def _check_vdis_free(db, vm_ref: str) -> None:
    for vbd in db.get("VM", vm_ref)["VBDs"]:
        rec = db.get("VBD", vbd)
        if storage.is_null(rec["VDI"]) or rec["empty"]:
            continue
        vdi = db.get("VDI", rec["VDI"])
        if vdi["sharable"] or rec["mode"] == "RO":
            continue
        for other in vdi["VBDs"]:
            o = db.get("VBD", other)
            if other != vbd and o["currently_attached"] and o["mode"] == "RW":
                raise XapiError("VDI_IN_USE", rec["VDI"], "start")


@message("VM.start_on")
def vm_start_on(ctx, vm_ref: str, host_ref: str, start_paused: bool, force: bool) -> None:
    ctx.db.get("host", host_ref)
    with vm_operation(ctx, vm_ref, "start_on"):
        if host_offline(ctx, host_ref):
            raise XapiError("HOST_OFFLINE", host_ref)
        _start_on(ctx, vm_ref, host_ref, start_paused)


def _shutdown(ctx, vm_ref: str, op: str) -> None:
    with vm_operation(ctx, vm_ref, op):
        db = ctx.db
        rec = db.get("VM", vm_ref)
        if rec["power_state"] == SUSPENDED:
            drop_suspend_image(ctx, vm_ref)
            with db.lock:
                set_devices_attached(db, rec, False)
                db.update("VM", vm_ref, power_state=HALTED)
            return
        stop_domain(ctx.pool, vm_ref)
        db.set("VM", vm_ref, "power_state", HALTED)


def _reboot(ctx, vm_ref: str, op: str) -> None:
    with vm_operation(ctx, vm_ref, op):
        db = ctx.db
        rec = db.get("VM", vm_ref)
        host_ref = rec["resident_on"]
        stop_domain(ctx.pool, vm_ref, keep_devices=True)
        db.set("VM", vm_ref, "power_state", HALTED)
        boot_domain(ctx.pool, vm_ref, host_ref, paused=False)


def _for_operation(action, op: str):
    """The message handler running ``action`` as XAPI operation ``op`` (same name as the message)."""

    def handler(ctx, vm_ref: str) -> None:
        action(ctx, vm_ref, op)

    handler.__name__ = handler.__qualname__ = f"vm_{op}"
    return handler


for _op, _action in [("clean_shutdown", _shutdown), ("hard_shutdown", _shutdown), ("shutdown", _shutdown),
                     ("clean_reboot", _reboot), ("hard_reboot", _reboot)]:  # fmt: skip
    message(f"VM.{_op}")(_for_operation(_action, _op))


@message("VM.pause")
def vm_pause(ctx, vm_ref: str) -> None:
    with vm_operation(ctx, vm_ref, "pause"):
        ctx.db.set("VM", vm_ref, "power_state", PAUSED)
        update_metrics(ctx.db, vm_ref, running=True, start=False)


@message("VM.unpause")
def vm_unpause(ctx, vm_ref: str) -> None:
    with vm_operation(ctx, vm_ref, "unpause"):
        ctx.db.set("VM", vm_ref, "power_state", RUNNING)
        update_metrics(ctx.db, vm_ref, running=True, start=False)


@message("VM.power_state_reset")
def vm_power_state_reset(ctx, vm_ref: str) -> None:
    db = ctx.db
    if db.get("VM", vm_ref)["power_state"] in (RUNNING, PAUSED):
        stop_domain(ctx.pool, vm_ref)
    db.update("VM", vm_ref, power_state=HALTED, current_operations={}, suspend_VDI=NULL_REF)
    refresh_vm(db, vm_ref)
