"""VM configuration with XAPI's checks: memory limits, VCPUs, devices, sysrq and triggers."""

from __future__ import annotations

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers.placement import update_host_metrics
from xenapi_driver.simulator.handlers.vm_metrics import update_metrics
from xenapi_driver.simulator.handlers.vm_state import HALTED, PAUSED, RUNNING
from xenapi_driver.simulator.registry import message


def check_memory_constraints(rec: dict) -> None:
    smin, dmin = int(rec["memory_static_min"]), int(rec["memory_dynamic_min"])
    dmax, smax = int(rec["memory_dynamic_max"]), int(rec["memory_static_max"])
    if not (smin <= dmin <= dmax <= smax):
        raise XapiError(
            "MEMORY_CONSTRAINT_VIOLATION",
            "Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max",
        )


def _memory_setter(*fields: str):
    def setter(ctx, vm_ref: str, *values) -> None:
        db = ctx.db
        with db.lock:
            rec = db.get("VM", vm_ref)
            if rec["power_state"] != HALTED and "memory_static_max" in fields:
                raise XapiError("VM_BAD_POWER_STATE", vm_ref, "halted", rec["power_state"].lower())
            trial = dict(rec)
            trial.update(zip(fields, (int(v) for v in values), strict=True))
            check_memory_constraints(trial)
            db.update("VM", vm_ref, **{f: trial[f] for f in fields})
            if rec["power_state"] in (RUNNING, PAUSED) and "memory_dynamic_max" in fields:
                db.set("VM", vm_ref, "memory_target", trial["memory_dynamic_max"])
                update_metrics(db, vm_ref, running=True, start=False)
                update_host_metrics(db, rec["resident_on"])

    return setter


message("VM.set_memory_limits")(
    _memory_setter("memory_static_min", "memory_static_max", "memory_dynamic_min", "memory_dynamic_max")
)


message("VM.set_memory_static_range")(_memory_setter("memory_static_min", "memory_static_max"))


message("VM.set_memory_dynamic_range")(_memory_setter("memory_dynamic_min", "memory_dynamic_max"))


message("VM.set_memory_static_max")(_memory_setter("memory_static_max"))


message("VM.set_memory_static_min")(_memory_setter("memory_static_min"))


message("VM.set_memory_dynamic_max")(_memory_setter("memory_dynamic_max"))


message("VM.set_memory_dynamic_min")(_memory_setter("memory_dynamic_min"))


@message("VM.set_memory")
def vm_set_memory(ctx, vm_ref: str, value: int) -> None:
    _memory_setter("memory_static_max", "memory_dynamic_max", "memory_dynamic_min")(
        ctx, vm_ref, value, value, value
    )


@message("VM.set_VCPUs_number_live")
def vm_set_vcpus_live(ctx, vm_ref: str, nvcpu: int) -> None:
    db = ctx.db
    rec = db.get("VM", vm_ref)
    if rec["power_state"] != RUNNING:
        raise XapiError("VM_BAD_POWER_STATE", vm_ref, "running", rec["power_state"].lower())
    if not 0 < int(nvcpu) <= int(rec["VCPUs_max"]):
        raise XapiError("INVALID_VALUE", "nvcpu", str(nvcpu))
    db.set("VM", vm_ref, "VCPUs_at_startup", int(nvcpu))
    update_metrics(db, vm_ref, running=True, start=False)


@message("VM.compute_memory_overhead")
def vm_compute_memory_overhead(ctx, vm_ref: str) -> int:
    return int(ctx.db.get("VM", vm_ref)["memory_overhead"])


@message("VM.set_VCPUs_max")
def vm_set_vcpus_max(ctx, vm_ref: str, value: int) -> None:
    db = ctx.db
    with db.lock:
        rec = db.get("VM", vm_ref)
        if rec["power_state"] != HALTED:
            raise XapiError("VM_BAD_POWER_STATE", vm_ref, "halted", rec["power_state"].lower())
        if int(value) < 1 or int(value) < int(rec["VCPUs_at_startup"]):
            raise XapiError("VCPU_CONSTRAINT_VIOLATION", "VCPUs_at_startup must be <= VCPUs_max")
        db.set("VM", vm_ref, "VCPUs_max", int(value))


@message("VM.set_VCPUs_at_startup")
def vm_set_vcpus_at_startup(ctx, vm_ref: str, value: int) -> None:
    db = ctx.db
    with db.lock:
        rec = db.get("VM", vm_ref)
        if int(value) < 1 or int(value) > int(rec["VCPUs_max"]):
            raise XapiError("VCPU_CONSTRAINT_VIOLATION", "VCPUs_at_startup must be between 1 and VCPUs_max")
        db.set("VM", vm_ref, "VCPUs_at_startup", int(value))


@message("VM.get_allowed_VBD_devices")
def vm_get_allowed_vbd_devices(ctx, vm_ref: str) -> list[str]:
    db = ctx.db
    used = {db.get("VBD", v)["userdevice"] for v in db.get("VM", vm_ref)["VBDs"]}
    return [str(n) for n in range(16) if str(n) not in used]


@message("VM.get_allowed_VIF_devices")
def vm_get_allowed_vif_devices(ctx, vm_ref: str) -> list[str]:
    db = ctx.db
    used = {db.get("VIF", v)["device"] for v in db.get("VM", vm_ref)["VIFs"]}
    return [str(n) for n in range(7) if str(n) not in used]


@message("VM.get_boot_record")
def vm_get_boot_record(ctx, vm_ref: str) -> dict:
    return ctx.db.record("VM", vm_ref)


@message("VM.send_sysrq")
def vm_send_sysrq(ctx, vm_ref: str, key: str) -> None:
    rec = ctx.db.get("VM", vm_ref)
    if rec["power_state"] != RUNNING:
        raise XapiError("VM_BAD_POWER_STATE", vm_ref, "running", rec["power_state"].lower())


@message("VM.send_trigger")
def vm_send_trigger(ctx, vm_ref: str, trigger: str) -> None:
    vm_send_sysrq(ctx, vm_ref, trigger)


@message("VM.set_memory_target_live")
def vm_set_memory_target_live(ctx, vm_ref: str, target: int) -> None:
    db = ctx.db
    rec = db.get("VM", vm_ref)
    if rec["power_state"] != RUNNING:
        raise XapiError("VM_BAD_POWER_STATE", vm_ref, "running", rec["power_state"].lower())
    db.set("VM", vm_ref, "memory_target", int(target))
