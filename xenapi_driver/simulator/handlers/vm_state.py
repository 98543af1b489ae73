"""XAPI's VM power-state machine: allowed operations per state, operation locking, blocked operations.

Every VM handler checks and marks its operation here (``check_operation``, ``vm_operation``) so
``allowed_operations``, ``current_operations`` and XAPI's errors (``VM_BAD_POWER_STATE``,
``OTHER_OPERATION_IN_PROGRESS``, ``OPERATION_BLOCKED``, ``VM_IS_TEMPLATE``) behave as XAPI's.
"""

from __future__ import annotations

import contextlib
import time
import uuid as uuidlib

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.registry import message

HALTED, RUNNING, PAUSED, SUSPENDED = "Halted", "Running", "Paused", "Suspended"


_MEMORY_OPS = ["changing_memory_limits", "changing_static_range", "changing_dynamic_range"]


STATE_OPS: dict[str, list[str]] = {
    HALTED: ["start", "start_on", "clone", "copy", "snapshot", "provision", "destroy", "export",
             "metadata_export", "make_into_template", "migrate_send", "changing_VCPUs",
             "changing_shadow_memory", "changing_NVRAM", "create_vtpm", *_MEMORY_OPS],
    RUNNING: ["clean_shutdown", "hard_shutdown", "shutdown", "clean_reboot", "hard_reboot", "pause",
              "suspend", "snapshot", "checkpoint", "pool_migrate", "migrate_send", "changing_memory_live",
              "changing_dynamic_range", "changing_VCPUs_live", "send_sysrq", "send_trigger", "call_plugin"],
    PAUSED: ["unpause", "hard_shutdown", "shutdown", "hard_reboot", "snapshot", "pool_migrate",
             "migrate_send"],
    SUSPENDED: ["resume", "resume_on", "hard_shutdown", "shutdown", "snapshot", "clone", "copy", "export",
                "migrate_send"],
}  # fmt: skip


TEMPLATE_OPS = [
    "clone",
    "copy",
    "provision",
    "export",
    "destroy",
    "metadata_export",
    "changing_VCPUs",
    *_MEMORY_OPS,
]


SNAPSHOT_OPS = ["clone", "copy", "revert", "export", "destroy", "metadata_export"]


def expected_states(op: str) -> list[str]:
    return [state for state, ops in STATE_OPS.items() if op in ops]


def allowed_operations(rec: dict) -> list[str]:
    if rec["is_control_domain"]:
        return []
    if rec["is_a_snapshot"]:
        ops = list(SNAPSHOT_OPS)
    elif rec["is_a_template"]:
        ops = list(TEMPLATE_OPS)
    else:
        ops = list(STATE_OPS.get(rec["power_state"], []))
    if rec["current_operations"]:
        return []
    blocked = set(rec["blocked_operations"])
    if lacks_pv_tools(rec):
        blocked |= COOPERATIVE_OPS
    return sorted(op for op in ops if op not in blocked)


COOPERATIVE_OPS = {"clean_shutdown", "clean_reboot", "suspend", "checkpoint"}


def lacks_pv_tools(rec: dict) -> bool:
    """An HVM guest without the simulated agent/PV tools cannot shut down cleanly or suspend."""
    hvm = rec["domain_type"] == "hvm" or bool(rec["HVM_boot_policy"])
    return hvm and not has_agent(rec)


def has_agent(rec: dict) -> bool:
    """Guests run PV tools with an agent unless ``other_config['simulator-agent']`` is false."""
    return str(rec["other_config"].get("simulator-agent", "true")).lower() != "false"


def refresh_vm(db, vm_ref: str) -> None:
    rec = db.get("VM", vm_ref)
    db.set("VM", vm_ref, "allowed_operations", allowed_operations(rec))


def check_operation(db, vm_ref: str, op: str) -> dict:
    """XAPI's ``assert_operation_valid``: blocked, template, in progress, power state."""
    rec = db.get("VM", vm_ref)
    if op in rec["blocked_operations"]:
        raise XapiError("OPERATION_BLOCKED", vm_ref, rec["blocked_operations"][op])
    if rec["is_control_domain"]:
        raise XapiError("OPERATION_NOT_ALLOWED", "Operations on the control domain are not allowed")
    if (rec["is_a_template"] or rec["is_a_snapshot"]) and op not in (
        SNAPSHOT_OPS if rec["is_a_snapshot"] else TEMPLATE_OPS
    ):
        raise XapiError("VM_IS_TEMPLATE", vm_ref)
    if rec["current_operations"]:
        task, other = next(iter(rec["current_operations"].items()))
        raise XapiError("OTHER_OPERATION_IN_PROGRESS", "VM", vm_ref, other, task)
    if not (rec["is_a_template"] or rec["is_a_snapshot"]):
        states = expected_states(op)
        if rec["power_state"] not in states:
            raise XapiError(
                "VM_BAD_POWER_STATE", vm_ref, ",".join(s.lower() for s in states), rec["power_state"].lower()
            )
    if op in COOPERATIVE_OPS and lacks_pv_tools(rec):
        raise XapiError("VM_LACKS_FEATURE", vm_ref)
    return rec


@contextlib.contextmanager
def vm_operation(ctx, vm_ref: str, op: str):
    """Mark ``op`` in ``current_operations`` while it runs (XAPI's operation locking).

    ``other_config['simulator_operation_delay']`` (seconds, at most 10) makes every operation
    on that VM take that long, so clients can test OTHER_OPERATION_IN_PROGRESS and timeouts.
    """
    db = ctx.db
    with db.lock:
        check_operation(db, vm_ref, op)
        token = ctx.task or f"OpaqueRef:{uuidlib.uuid4()}"
        ops = dict(db.get("VM", vm_ref)["current_operations"])
        ops[token] = op
        db.update("VM", vm_ref, current_operations=ops, allowed_operations=[])
        delay = _operation_delay(db.get("VM", vm_ref))
    try:
        if delay:
            time.sleep(delay)
        yield
    finally:
        with db.lock:
            if db.exists("VM", vm_ref):
                ops = dict(db.get("VM", vm_ref)["current_operations"])
                ops.pop(token, None)
                db.set("VM", vm_ref, "current_operations", ops)
                refresh_vm(db, vm_ref)


def _operation_delay(rec: dict) -> float:
    try:
        return max(0.0, min(float(rec["other_config"].get("simulator_operation_delay", 0)), 10.0))
    except ValueError:
        return 0.0


@message("VM.assert_operation_valid")
def vm_assert_operation_valid(ctx, vm_ref: str, op: str) -> None:
    check_operation(ctx.db, vm_ref, op)


@message("VM.update_allowed_operations")
def vm_update_allowed_operations(ctx, vm_ref: str) -> None:
    refresh_vm(ctx.db, vm_ref)


def _set_and_refresh(field: str):
    def setter(ctx, vm_ref: str, value) -> None:
        ctx.db.set("VM", vm_ref, field, value)
        refresh_vm(ctx.db, vm_ref)

    return setter


message("VM.set_blocked_operations")(_set_and_refresh("blocked_operations"))


message("VM.set_is_a_template")(_set_and_refresh("is_a_template"))


@message("VM.add_to_blocked_operations")
def vm_add_blocked(ctx, vm_ref: str, key: str, value: str) -> None:
    with ctx.db.lock:
        ctx.db.map_add("VM", vm_ref, "blocked_operations", key, value)
        refresh_vm(ctx.db, vm_ref)


@message("VM.remove_from_blocked_operations")
def vm_remove_blocked(ctx, vm_ref: str, key: str) -> None:
    with ctx.db.lock:
        ctx.db.map_remove("VM", vm_ref, "blocked_operations", key)
        refresh_vm(ctx.db, vm_ref)
