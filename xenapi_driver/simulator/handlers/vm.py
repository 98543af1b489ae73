"""VM semantics: XAPI's power-state machine, allowed operations, memory accounting, VIFs, consoles.

A started VM gets a domid on its host, a XenStore subtree with its ``xenstore_data``, a guest
agent (see :mod:`xenapi_driver.simulator.guest_agent`), a VNC console record and updated
``VM_metrics``/``VM_guest_metrics``; the host's free memory is accounted and enforced.
Suspend writes a real suspend image VDI; resume reads it back and destroys it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage, xenstore
from xenapi_driver.simulator.implicit import create_from_record
from xenapi_driver.simulator.registry import message, reset_hook
from xenapi_driver.simulator.schema import NULL_REF

HALTED, RUNNING, PAUSED, SUSPENDED = "Halted", "Running", "Paused", "Suspended"
DEFAULT_HOST_MEMORY = 64 * 1024**3

# Operations XAPI allows in each power state (vm_operations enum values).
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
_DOMID_LOCK = threading.Lock()
_NEXT_DOMID: dict[str, int] = {}


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


# Operations that need the guest's cooperation (PV tools) on an HVM guest.
COOPERATIVE_OPS = {"clean_shutdown", "clean_reboot", "suspend", "checkpoint"}


def lacks_pv_tools(rec: dict) -> bool:
    """An HVM guest without the simulated agent/PV tools cannot shut down cleanly or suspend."""
    hvm = rec["domain_type"] == "hvm" or bool(rec["HVM_boot_policy"])
    return hvm and not has_agent(rec)


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


# -- memory accounting -------------------------------------------------------------------------
def vm_memory_need(rec: dict) -> int:
    """Memory XAPI reserves to start a VM: dynamic max (or static max) plus overhead."""
    target = int(rec["memory_dynamic_max"]) or int(rec["memory_static_max"])
    return target + int(rec["memory_overhead"])


def host_memory_total(db, host_ref: str) -> int:
    metrics = db.get("host", host_ref)["metrics"]
    if not storage.is_null(metrics) and db.exists("host_metrics", metrics):
        total = int(db.get("host_metrics", metrics)["memory_total"])
        if total:
            return total
    return DEFAULT_HOST_MEMORY


def host_memory_used(db, host_ref: str, exclude: str | None = None) -> int:
    used = int(db.get("host", host_ref)["memory_overhead"])
    for vm_ref in db.get("host", host_ref)["resident_VMs"]:
        if vm_ref == exclude:
            continue
        rec = db.get("VM", vm_ref)
        if rec["is_control_domain"]:
            used += int(rec["memory_target"]) or int(rec["memory_static_max"])
        elif rec["power_state"] in (RUNNING, PAUSED):
            used += vm_memory_need(rec)
    for vm_ref in db.find("VM", scheduled_to_be_resident_on=host_ref):
        if vm_ref != exclude and vm_ref not in db.get("host", host_ref)["resident_VMs"]:
            used += vm_memory_need(db.get("VM", vm_ref))
    return used


def host_free_memory(db, host_ref: str, exclude: str | None = None) -> int:
    return max(host_memory_total(db, host_ref) - host_memory_used(db, host_ref, exclude), 0)


def update_host_metrics(db, host_ref: str) -> None:
    metrics = db.get("host", host_ref)["metrics"]
    if not storage.is_null(metrics) and db.exists("host_metrics", metrics):
        db.update(
            "host_metrics",
            metrics,
            memory_free=host_free_memory(db, host_ref),
            memory_total=host_memory_total(db, host_ref),
        )


def assert_memory(db, vm_ref: str, host_ref: str) -> None:
    needed = vm_memory_need(db.get("VM", vm_ref))
    free = host_free_memory(db, host_ref, exclude=vm_ref)
    if needed > free:
        raise XapiError("HOST_NOT_ENOUGH_FREE_MEMORY", str(needed), str(free))


def vm_srs(db, vm_ref: str) -> list[str]:
    srs = []
    rec = db.get("VM", vm_ref)
    for vbd in rec["VBDs"]:
        vdi = db.get("VBD", vbd)["VDI"]
        if not storage.is_null(vdi) and db.exists("VDI", vdi):
            srs.append(db.get("VDI", vdi)["SR"])
    if not storage.is_null(rec["suspend_VDI"]) and db.exists("VDI", rec["suspend_VDI"]):
        srs.append(db.get("VDI", rec["suspend_VDI"])["SR"])
    return sorted(set(srs))


def host_sees_sr(db, host_ref: str, sr_ref: str) -> bool:
    return any(
        db.get("PBD", p)["host"] == host_ref and db.get("PBD", p)["currently_attached"]
        for p in db.get("SR", sr_ref)["PBDs"]
    )


def assert_can_boot_here(db, vm_ref: str, host_ref: str) -> None:
    rec = db.get("VM", vm_ref)
    if int(rec["VCPUs_at_startup"]) < 1:
        raise XapiError("VM_NO_VCPUS", vm_ref)
    host = db.get("host", host_ref)
    if not host["enabled"]:
        raise XapiError("HOST_DISABLED", host_ref)
    for sr in vm_srs(db, vm_ref):
        if not host_sees_sr(db, host_ref, sr):
            raise XapiError("VM_REQUIRES_SR", vm_ref, sr)
    assert_memory(db, vm_ref, host_ref)


def choose_host(ctx, vm_ref: str) -> str:
    """XAPI's placement: the affinity host if it fits, else the host with most free memory."""
    db = ctx.db
    rec = db.get("VM", vm_ref)
    candidates = [h.ref for h in ctx.pool.hosts if db.exists("host", h.ref)]
    affinity = rec["affinity"]
    if affinity in candidates:
        candidates.remove(affinity)
        candidates.insert(0, affinity)
    else:
        candidates.sort(key=lambda h: -host_free_memory(db, h, exclude=vm_ref))
    errors: list[XapiError] = []
    for host_ref in candidates:
        if _host_offline(ctx, host_ref):
            continue
        try:
            assert_can_boot_here(db, vm_ref, host_ref)
            return host_ref
        except XapiError as exc:
            errors.append(exc)
    memory = [e for e in errors if e.code == "HOST_NOT_ENOUGH_FREE_MEMORY"]
    if memory and len(memory) == len(errors):
        raise memory[0]
    raise XapiError("NO_HOSTS_AVAILABLE")


def _host_offline(ctx, host_ref: str) -> bool:
    host = ctx.pool.host_by_ref(host_ref)
    return bool(host is not None and not host.powered)


# -- domains -----------------------------------------------------------------------------------
def next_domid(host_uuid: str) -> int:
    with _DOMID_LOCK:
        domid = _NEXT_DOMID.get(host_uuid, 1)
        _NEXT_DOMID[host_uuid] = domid + 1
        return domid


@reset_hook
def _forget_domids(pool) -> None:
    """A reset pool's hosts boot their first guest as domid 1 again."""
    with _DOMID_LOCK:
        for host in pool.hosts:
            _NEXT_DOMID.pop(host.uuid, None)


def _console_location(ctx_pool, host_ref: str, console_uuid: str, db) -> str:
    address = db.get("host", host_ref)["address"] or "127.0.0.1"
    host = ctx_pool.host_by_ref(host_ref)
    port = getattr(host, "port", None)
    netloc = f"{address}:{port}" if port and int(port) not in (80, 443) else address
    return f"http://{netloc}/console?uuid={console_uuid}"


def boot_domain(pool, vm_ref: str, host_ref: str, *, paused: bool = False, new_metrics: bool = True) -> int:
    """Make ``vm_ref`` resident on ``host_ref`` with a fresh domid, devices, console and xenstore."""
    db = pool.db
    sim_host = pool.host_by_ref(host_ref)
    with db.lock:
        rec = db.get("VM", vm_ref)
        domid = next_domid(db.get("host", host_ref)["uuid"])
        for vbd in rec["VBDs"]:
            vbd_rec = db.get("VBD", vbd)
            if not vbd_rec["currently_attached"]:
                storage.attach_vbd(db, vbd)
        for vif in rec["VIFs"]:
            db.update("VIF", vif, currently_attached=True)
            refresh_vif(db, vif)
        for console in list(rec["consoles"]):
            db.destroy("console", console)
        console_uuid = str(uuidlib.uuid4())
        db.create(
            "console",
            uuid=console_uuid,
            protocol="rfb",
            VM=vm_ref,
            location=_console_location(pool, host_ref, console_uuid, db),
        )
        db.create(
            "console",
            protocol="vt100",
            VM=vm_ref,
            location=_console_location(pool, host_ref, str(uuidlib.uuid4()), db),
        )
        target = int(rec["memory_dynamic_max"]) or int(rec["memory_static_max"])
        db.update(
            "VM",
            vm_ref,
            power_state=PAUSED if paused else RUNNING,
            resident_on=host_ref,
            scheduled_to_be_resident_on=NULL_REF,
            domid=domid,
            memory_target=target,
            last_booted_record=str(rec["uuid"]),
        )
        _update_metrics(db, vm_ref, running=True, start=new_metrics)
        if has_agent(rec):
            _update_guest_metrics(db, vm_ref)
        update_host_metrics(db, host_ref)
        refresh_vm(db, vm_ref)
    if sim_host is not None:
        xenstore.domain_started(sim_host, domid, db.get("VM", vm_ref))
    return domid


def stop_domain(pool, vm_ref: str, *, keep_devices: bool = False) -> None:
    """Tear down the running domain of ``vm_ref`` (shutdown, suspend, migrate away)."""
    db = pool.db
    with db.lock:
        rec = db.get("VM", vm_ref)
        host_ref = rec["resident_on"]
        domid = int(rec["domid"])
        if not keep_devices:
            for vbd in rec["VBDs"]:
                if db.get("VBD", vbd)["currently_attached"]:
                    storage.detach_vbd(db, vbd)
            for vif in rec["VIFs"]:
                db.update("VIF", vif, currently_attached=False)
                refresh_vif(db, vif)
        for console in list(rec["consoles"]):
            db.destroy("console", console)
        db.update("VM", vm_ref, resident_on=NULL_REF, domid=-1, memory_target=0)
        _update_metrics(db, vm_ref, running=False)
        if not storage.is_null(rec["guest_metrics"]) and db.exists("VM_guest_metrics", rec["guest_metrics"]):
            db.destroy("VM_guest_metrics", rec["guest_metrics"])
        db.set("VM", vm_ref, "guest_metrics", NULL_REF)
        if not storage.is_null(host_ref) and db.exists("host", host_ref):
            update_host_metrics(db, host_ref)
    sim_host = pool.host_by_ref(host_ref) if not storage.is_null(host_ref) else None
    if sim_host is not None and domid >= 0:
        xenstore.domain_stopped(sim_host, domid)


def ensure_metrics(db, vm_ref: str) -> str:
    rec = db.get("VM", vm_ref)
    metrics = rec["metrics"]
    if storage.is_null(metrics) or not db.exists("VM_metrics", metrics):
        metrics = db.create("VM_metrics", install_time=storage.now(), last_updated=storage.now())
        db.set("VM", vm_ref, "metrics", metrics)
    return metrics


def _update_metrics(db, vm_ref: str, *, running: bool, start: bool = True) -> None:
    rec = db.get("VM", vm_ref)
    metrics = ensure_metrics(db, vm_ref)
    if running:
        vcpus = int(rec["VCPUs_at_startup"]) or 1
        fields: dict[str, Any] = dict(
            memory_actual=int(rec["memory_target"]),
            VCPUs_number=vcpus,
            VCPUs_utilisation={i: 0.0 for i in range(vcpus)},
            state=["running"] if rec["power_state"] == RUNNING else ["paused"],
            last_updated=storage.now(),
            current_domain_type=rec["domain_type"] if rec["domain_type"] != "unspecified" else "pv",
            hvm=rec["domain_type"] == "hvm" or bool(rec["HVM_boot_policy"]),
        )
        if start:
            fields["start_time"] = storage.now()
        db.update("VM_metrics", metrics, **fields)
    else:
        db.update(
            "VM_metrics",
            metrics,
            memory_actual=0,
            VCPUs_number=0,
            VCPUs_utilisation={},
            state=[],
            last_updated=storage.now(),
            current_domain_type="unspecified",
        )


def has_agent(rec: dict) -> bool:
    """Guests run PV tools with an agent unless ``other_config['simulator-agent']`` is false."""
    return str(rec["other_config"].get("simulator-agent", "true")).lower() != "false"


def _update_guest_metrics(db, vm_ref: str) -> None:
    """What XenServer's PV tools report once the guest is up (networks from the VIFs)."""
    rec = db.get("VM", vm_ref)
    networks = {}
    for vif in rec["VIFs"]:
        vif_rec = db.get("VIF", vif)
        for i, address in enumerate(vif_rec["ipv4_addresses"]):
            networks[f"{vif_rec['device']}/ipv4/{i}"] = address.split("/")[0]
    fields = dict(
        os_version={"name": "Simulated Linux", "distro": "simulated", "major": "1", "minor": "0"},
        PV_drivers_version={"major": "8", "minor": "2", "micro": "0", "build": "1"},
        PV_drivers_up_to_date=True,
        PV_drivers_detected=True,
        networks=networks,
        memory={},
        disks={},
        other={"feature-shutdown": "1", "feature-suspend": "1", "has-vendor-device": "0"},
        last_updated=storage.now(),
        live=True,
        can_use_hotplug_vbd="yes",
        can_use_hotplug_vif="yes",
    )
    gm = rec["guest_metrics"]
    if storage.is_null(gm) or not db.exists("VM_guest_metrics", gm):
        gm = db.create("VM_guest_metrics", **fields)
        db.set("VM", vm_ref, "guest_metrics", gm)
    else:
        db.update("VM_guest_metrics", gm, **fields)


# -- VM.create and friends ---------------------------------------------------------------------
def _check_memory_constraints(rec: dict) -> None:
    smin, dmin = int(rec["memory_static_min"]), int(rec["memory_dynamic_min"])
    dmax, smax = int(rec["memory_dynamic_max"]), int(rec["memory_static_max"])
    if not (smin <= dmin <= dmax <= smax):
        raise XapiError(
            "MEMORY_CONSTRAINT_VIOLATION",
            "Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max",
        )


@message("VM.create")
def vm_create(ctx, record: dict) -> str:
    db = ctx.db
    info = db.schema.classes["VM"]
    with db.lock:
        ref = create_from_record(ctx, info, record)
        try:
            _check_memory_constraints(db.get("VM", ref))
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
        if _host_offline(ctx, host_ref):
            raise XapiError("HOST_OFFLINE", host_ref)
        _start_on(ctx, vm_ref, host_ref, start_paused)


def _shutdown(ctx, vm_ref: str, op: str) -> None:
    with vm_operation(ctx, vm_ref, op):
        db = ctx.db
        rec = db.get("VM", vm_ref)
        if rec["power_state"] == SUSPENDED:
            _drop_suspend_image(ctx, vm_ref)
            with db.lock:
                for vbd in rec["VBDs"]:
                    if db.get("VBD", vbd)["currently_attached"]:
                        storage.detach_vbd(db, vbd)
                for vif in rec["VIFs"]:
                    db.update("VIF", vif, currently_attached=False)
                db.update("VM", vm_ref, power_state=HALTED)
            return
        stop_domain(ctx.pool, vm_ref)
        db.set("VM", vm_ref, "power_state", HALTED)


@message("VM.clean_shutdown")
def vm_clean_shutdown(ctx, vm_ref: str) -> None:
    _shutdown(ctx, vm_ref, "clean_shutdown")


@message("VM.hard_shutdown")
def vm_hard_shutdown(ctx, vm_ref: str) -> None:
    _shutdown(ctx, vm_ref, "hard_shutdown")


@message("VM.shutdown")
def vm_shutdown(ctx, vm_ref: str) -> None:
    _shutdown(ctx, vm_ref, "shutdown")


def _reboot(ctx, vm_ref: str, op: str) -> None:
    with vm_operation(ctx, vm_ref, op):
        db = ctx.db
        rec = db.get("VM", vm_ref)
        host_ref = rec["resident_on"]
        stop_domain(ctx.pool, vm_ref, keep_devices=True)
        db.set("VM", vm_ref, "power_state", HALTED)
        boot_domain(ctx.pool, vm_ref, host_ref, paused=False)


@message("VM.clean_reboot")
def vm_clean_reboot(ctx, vm_ref: str) -> None:
    _reboot(ctx, vm_ref, "clean_reboot")


@message("VM.hard_reboot")
def vm_hard_reboot(ctx, vm_ref: str) -> None:
    _reboot(ctx, vm_ref, "hard_reboot")


@message("VM.pause")
def vm_pause(ctx, vm_ref: str) -> None:
    with vm_operation(ctx, vm_ref, "pause"):
        ctx.db.set("VM", vm_ref, "power_state", PAUSED)
        _update_metrics(ctx.db, vm_ref, running=True, start=False)


@message("VM.unpause")
def vm_unpause(ctx, vm_ref: str) -> None:
    with vm_operation(ctx, vm_ref, "unpause"):
        ctx.db.set("VM", vm_ref, "power_state", RUNNING)
        _update_metrics(ctx.db, vm_ref, running=True, start=False)


# -- suspend / resume --------------------------------------------------------------------------
SUSPEND_MAGIC = b"XENSIM-SUSPEND-IMAGE\n"


def suspend_sr(ctx, vm_ref: str) -> str:
    """Where XAPI puts the suspend image: VM.suspend_SR, pool, host, else the VM's first disk SR."""
    db = ctx.db
    rec = db.get("VM", vm_ref)
    candidates = [rec["suspend_SR"]]
    for pool_ref in db.all("pool"):
        candidates.append(db.get("pool", pool_ref)["suspend_image_SR"])
    if not storage.is_null(rec["resident_on"]):
        candidates.append(db.get("host", rec["resident_on"])["suspend_image_sr"])
    candidates.extend(vm_srs(db, vm_ref))
    if not storage.is_null(rec["resident_on"]):
        host = ctx.pool.host_by_ref(rec["resident_on"])
        candidates.append(getattr(host, "local_sr", None))
    for sr in candidates:
        if (
            not storage.is_null(sr)
            and db.exists("SR", sr)
            and db.get("SR", sr)["type"] in storage.FILE_SR_TYPES
        ):
            return sr
    raise XapiError("VM_NO_SUSPEND_SR", vm_ref)


@message("VM.suspend")
def vm_suspend(ctx, vm_ref: str) -> None:
    with vm_operation(ctx, vm_ref, "suspend"):
        db = ctx.db
        rec = db.get("VM", vm_ref)
        sr_ref = suspend_sr(ctx, vm_ref)
        size = int(rec["memory_static_max"]) + 2 * 1024**2
        vdi_ref = storage.vdi_create(
            ctx,
            {
                "SR": sr_ref,
                "virtual_size": size,
                "type": "suspend",
                "name_label": "Suspend image",
                "name_description": f"Suspend image of VM {rec['uuid']}",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            },
        )
        ctx.set_progress(0.3)
        _write_suspend_image(ctx, vm_ref, vdi_ref)
        ctx.set_progress(0.8)
        stop_domain(ctx.pool, vm_ref, keep_devices=True)
        db.update("VM", vm_ref, power_state=SUSPENDED, suspend_VDI=vdi_ref)


def _write_suspend_image(ctx, vm_ref: str, vdi_ref: str) -> None:
    from xenapi_driver import vhd

    rec = ctx.db.get("VM", vm_ref)
    header = SUSPEND_MAGIC + f"vm={rec['uuid']}\ndomid={rec['domid']}\n".encode()
    header += b"\0" * (4096 - len(header) % 4096)
    with vhd.open_chain(str(storage.disk_path(ctx.pool, vdi_ref, ctx.world))) as chain:
        chain.write(0, header)


def _read_suspend_image(ctx, vm_ref: str, vdi_ref: str) -> None:
    from xenapi_driver import vhd

    path = storage.disk_path(ctx.pool, vdi_ref, ctx.world)
    if not path.exists():
        raise XapiError("VDI_MISSING", ctx.db.get("VDI", vdi_ref)["SR"], vdi_ref)
    with vhd.open_chain(str(path)) as chain:
        head = chain.read(0, 4096)
    if not head.startswith(SUSPEND_MAGIC):
        raise XapiError("INTERNAL_ERROR", f"suspend image of VM {vm_ref} is not a suspend image")


def _drop_suspend_image(ctx, vm_ref: str) -> None:
    db = ctx.db
    vdi = db.get("VM", vm_ref)["suspend_VDI"]
    db.set("VM", vm_ref, "suspend_VDI", NULL_REF)
    if not storage.is_null(vdi) and db.exists("VDI", vdi):
        storage.vdi_destroy(ctx, vdi)


def _resume_on(ctx, vm_ref: str, host_ref: str, paused: bool) -> None:
    db = ctx.db
    vdi = db.get("VM", vm_ref)["suspend_VDI"]
    if storage.is_null(vdi) or not db.exists("VDI", vdi):
        raise (
            XapiError("VM_HAS_NO_SUSPEND_VDI", vm_ref)
            if "VM_HAS_NO_SUSPEND_VDI" in storage._errors()
            else (XapiError("INTERNAL_ERROR", "suspended VM has no suspend VDI"))
        )
    with db.lock:
        assert_can_boot_here(db, vm_ref, host_ref)
    _read_suspend_image(ctx, vm_ref, vdi)
    ctx.set_progress(0.5)
    with db.lock:
        db.set("VM", vm_ref, "power_state", HALTED)  # transiently, for the domain builder
        boot_domain(ctx.pool, vm_ref, host_ref, paused=bool(paused))
    _drop_suspend_image(ctx, vm_ref)


@message("VM.resume")
def vm_resume(ctx, vm_ref: str, start_paused: bool, force: bool) -> None:
    with vm_operation(ctx, vm_ref, "resume"):
        host_ref = choose_host(ctx, vm_ref)
        _resume_on(ctx, vm_ref, host_ref, start_paused)


@message("VM.resume_on")
def vm_resume_on(ctx, vm_ref: str, host_ref: str, start_paused: bool, force: bool) -> None:
    ctx.db.get("host", host_ref)
    with vm_operation(ctx, vm_ref, "resume_on"):
        _resume_on(ctx, vm_ref, host_ref, start_paused)


# -- clone / copy / snapshot / provision -------------------------------------------------------
_NOT_COPIED = {
    "uuid", "allowed_operations", "current_operations", "power_state", "resident_on",
    "scheduled_to_be_resident_on", "consoles", "VIFs", "VBDs", "VUSBs", "crash_dumps", "VTPMs", "domid",
    "metrics", "guest_metrics", "snapshots", "children", "VGPUs", "attached_PCIs", "suspend_VDI",
    "is_a_snapshot", "snapshot_of", "snapshot_time", "parent", "blobs",
}  # fmt: skip


def random_mac() -> str:
    return "02:" + ":".join(f"{random.randint(0, 255):02x}" for _ in range(5))


def duplicate_vm(
    ctx,
    vm_ref: str,
    new_name: str,
    *,
    disk_action,
    target_db=None,
    extra: dict | None = None,
    keep_macs: bool = False,
) -> str:
    """Create a new VM from ``vm_ref``: ``disk_action(vdi_ref) -> new vdi ref`` handles each disk."""
    db = ctx.db
    tdb = target_db or db
    rec = db.record("VM", vm_ref)
    fields = {k: v for k, v in rec.items() if k not in _NOT_COPIED}
    fields.update(name_label=new_name, power_state=HALTED, domid=-1, memory_target=0)
    if tdb is db:
        fields["parent"] = vm_ref
    else:
        fields["affinity"] = NULL_REF
        fields["suspend_SR"] = NULL_REF
        fields["protection_policy"] = NULL_REF
        fields["snapshot_schedule"] = NULL_REF
        fields["appliance"] = NULL_REF
    fields.update(extra or {})
    new_ref = tdb.create("VM", **fields)
    ensure_metrics(tdb, new_ref)
    for vbd in rec["VBDs"]:
        vbd_rec = db.record("VBD", vbd)
        new_vdi = vbd_rec["VDI"]
        if vbd_rec["type"] != "CD" and not storage.is_null(new_vdi) and not vbd_rec["empty"]:
            new_vdi = disk_action(new_vdi)
        elif tdb is not db:
            new_vdi = NULL_REF
        tdb.create(
            "VBD",
            VM=new_ref,
            VDI=new_vdi if new_vdi else NULL_REF,
            userdevice=vbd_rec["userdevice"],
            bootable=vbd_rec["bootable"],
            mode=vbd_rec["mode"],
            type=vbd_rec["type"],
            unpluggable=vbd_rec["unpluggable"],
            empty=vbd_rec["empty"] or storage.is_null(new_vdi),
            other_config=dict(vbd_rec["other_config"]),
            qos_algorithm_type=vbd_rec["qos_algorithm_type"],
            qos_algorithm_params=dict(vbd_rec["qos_algorithm_params"]),
        )
    for vbd in tdb.get("VM", new_ref)["VBDs"]:
        storage.refresh_vbd(tdb, vbd)
    if tdb is db:
        for vif in rec["VIFs"]:
            vif_rec = db.record("VIF", vif)
            mac = vif_rec["MAC"] if keep_macs or not vif_rec["MAC_autogenerated"] else random_mac()
            ref = db.create(
                "VIF",
                VM=new_ref,
                device=vif_rec["device"],
                network=vif_rec["network"],
                MAC=mac,
                MTU=vif_rec["MTU"],
                MAC_autogenerated=vif_rec["MAC_autogenerated"],
                other_config=dict(vif_rec["other_config"]),
                qos_algorithm_type=vif_rec["qos_algorithm_type"],
                qos_algorithm_params=dict(vif_rec["qos_algorithm_params"]),
                locking_mode=vif_rec["locking_mode"],
                ipv4_allowed=list(vif_rec["ipv4_allowed"]),
                ipv6_allowed=list(vif_rec["ipv6_allowed"]),
            )
            refresh_vif(db, ref)
    refresh_vm(tdb, new_ref)
    return new_ref


def _vdi_clone(ctx, vdi_ref: str, *, snapshot: bool) -> str:
    db = ctx.db
    vdi = db.get("VDI", vdi_ref)
    sr_type = db.get("SR", vdi["SR"])["type"]
    if sr_type not in storage.FILE_SR_TYPES:
        return vdi_ref  # raw LUNs / ISOs are shared, not cloned
    return storage.snapshot_vdi(ctx, vdi_ref, is_snapshot=snapshot)


@message("VM.clone")
def vm_clone(ctx, vm_ref: str, new_name: str) -> str:
    with vm_operation(ctx, vm_ref, "clone"):
        return duplicate_vm(ctx, vm_ref, new_name, disk_action=lambda v: _vdi_clone(ctx, v, snapshot=False))


@message("VM.copy")
def vm_copy(ctx, vm_ref: str, new_name: str, sr_ref: str) -> str:
    if not storage.is_null(sr_ref):
        ctx.db.get("SR", sr_ref)

    def copy_disk(vdi_ref: str) -> str:
        target = sr_ref if not storage.is_null(sr_ref) else ctx.db.get("VDI", vdi_ref)["SR"]
        return storage.copy_vdi(ctx.pool, vdi_ref, ctx.pool, target, world=ctx.world)

    with vm_operation(ctx, vm_ref, "copy"):
        return duplicate_vm(ctx, vm_ref, new_name, disk_action=copy_disk)


def _snapshot(ctx, vm_ref: str, new_name: str, op: str, ignore_vdis: list[str]) -> str:
    db = ctx.db
    ignored = set(ignore_vdis or [])

    def snap_disk(vdi_ref: str) -> str:
        if vdi_ref in ignored:
            return NULL_REF
        return _vdi_clone(ctx, vdi_ref, snapshot=True)

    with vm_operation(ctx, vm_ref, op):
        rec = db.get("VM", vm_ref)
        extra = {
            "is_a_snapshot": True,
            "is_a_template": True,
            "snapshot_of": vm_ref,
            "snapshot_time": storage.now(),
            "transportable_snapshot_id": str(uuidlib.uuid4()),
            "snapshot_info": {"power-state-at-snapshot": rec["power_state"]},
            "parent": NULL_REF,
        }
        new_ref = duplicate_vm(ctx, vm_ref, new_name, disk_action=snap_disk, extra=extra, keep_macs=True)
        with db.lock:
            for vbd in list(db.get("VM", new_ref)["VBDs"]):
                if storage.is_null(db.get("VBD", vbd)["VDI"]) and db.get("VBD", vbd)["type"] != "CD":
                    db.destroy("VBD", vbd)
            db.set("VM", vm_ref, "parent", new_ref)
            refresh_vm(db, new_ref)
        return new_ref


@message("VM.snapshot")
def vm_snapshot(ctx, vm_ref: str, new_name: str, ignore_vdis: list | None = None) -> str:
    return _snapshot(ctx, vm_ref, new_name, "snapshot", ignore_vdis or [])


@message("VM.checkpoint")
def vm_checkpoint(ctx, vm_ref: str, new_name: str) -> str:
    return _snapshot(ctx, vm_ref, new_name, "checkpoint", [])


@message("VM.revert")
def vm_revert(ctx, snapshot_ref: str) -> None:
    db = ctx.db
    snap = db.get("VM", snapshot_ref)
    if not snap["is_a_snapshot"]:
        raise XapiError("VM_REVERT_FAILED", snapshot_ref, "not a snapshot")
    vm_ref = snap["snapshot_of"]
    if storage.is_null(vm_ref) or not db.exists("VM", vm_ref):
        raise XapiError("VM_REVERT_FAILED", snapshot_ref, "the snapshot's VM no longer exists")
    rec = db.get("VM", vm_ref)
    if rec["power_state"] != HALTED:
        stop_domain(ctx.pool, vm_ref)
        db.set("VM", vm_ref, "power_state", HALTED)
    old = [db.get("VBD", v)["VDI"] for v in rec["VBDs"] if db.get("VBD", v)["type"] != "CD"]
    for vbd in list(rec["VBDs"]):
        db.destroy("VBD", vbd)
    for vdi in old:
        if not storage.is_null(vdi) and db.exists("VDI", vdi):
            storage.vdi_destroy(ctx, vdi)
    for vbd in snap["VBDs"]:
        vbd_rec = db.record("VBD", vbd)
        vdi = vbd_rec["VDI"]
        if vbd_rec["type"] != "CD" and not storage.is_null(vdi):
            vdi = _vdi_clone(ctx, vdi, snapshot=False)
        db.create(
            "VBD",
            VM=vm_ref,
            VDI=vdi,
            userdevice=vbd_rec["userdevice"],
            bootable=vbd_rec["bootable"],
            mode=vbd_rec["mode"],
            type=vbd_rec["type"],
            empty=vbd_rec["empty"],
            unpluggable=vbd_rec["unpluggable"],
        )
    db.set("VM", vm_ref, "parent", snapshot_ref)
    refresh_vm(db, vm_ref)


@message("VM.provision")
def vm_provision(ctx, vm_ref: str) -> None:
    """Create the disks a template's ``other_config['disks']`` describes (XenServer's installer spec)."""
    db = ctx.db
    with vm_operation(ctx, vm_ref, "provision"):
        rec = db.get("VM", vm_ref)
        spec = rec["other_config"].get("disks", "")
        if not spec:
            return
        try:
            root = ET.fromstring(spec)
        except ET.ParseError as exc:
            raise XapiError("INVALID_VALUE", "other_config:disks", str(exc)) from None
        for disk in root.iter("disk"):
            sr_uuid = disk.get("sr", "")
            if sr_uuid:
                sr_ref = db.by_uuid("SR", sr_uuid)
            else:
                pools = db.all("pool")
                sr_ref = db.get("pool", pools[0])["default_SR"] if pools else NULL_REF
                if storage.is_null(sr_ref):
                    raise XapiError(
                        "SR_NOT_FOUND" if "SR_NOT_FOUND" in storage._errors() else "VM_REQUIRES_SR",
                        vm_ref,
                        NULL_REF,
                    )
            vdi = storage.vdi_create(
                ctx,
                {
                    "SR": sr_ref,
                    "virtual_size": int(disk.get("size", "0")),
                    "type": disk.get("type", "system"),
                    "name_label": f"{rec['name_label']} {disk.get('device', '0')}",
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                },
            )
            db.create(
                "VBD",
                VM=vm_ref,
                VDI=vdi,
                userdevice=disk.get("device", "0"),
                bootable=disk.get("bootable", "false").lower() == "true",
                mode="RW",
                type="Disk",
            )
        other = dict(rec["other_config"])
        other.pop("disks", None)
        db.set("VM", vm_ref, "other_config", other)


# -- misc VM messages --------------------------------------------------------------------------
@message("VM.assert_operation_valid")
def vm_assert_operation_valid(ctx, vm_ref: str, op: str) -> None:
    check_operation(ctx.db, vm_ref, op)


@message("VM.update_allowed_operations")
def vm_update_allowed_operations(ctx, vm_ref: str) -> None:
    refresh_vm(ctx.db, vm_ref)


@message("VM.assert_can_boot_here")
def vm_assert_can_boot_here(ctx, vm_ref: str, host_ref: str) -> None:
    ctx.db.get("host", host_ref)
    assert_can_boot_here(ctx.db, vm_ref, host_ref)


@message("VM.get_possible_hosts")
def vm_get_possible_hosts(ctx, vm_ref: str) -> list[str]:
    out = []
    for host in ctx.pool.hosts:
        try:
            assert_can_boot_here(ctx.db, vm_ref, host.ref)
            out.append(host.ref)
        except XapiError:
            pass
    return out


@message("VM.power_state_reset")
def vm_power_state_reset(ctx, vm_ref: str) -> None:
    db = ctx.db
    if db.get("VM", vm_ref)["power_state"] in (RUNNING, PAUSED):
        stop_domain(ctx.pool, vm_ref)
    db.update("VM", vm_ref, power_state=HALTED, current_operations={}, suspend_VDI=NULL_REF)
    refresh_vm(db, vm_ref)


def _set_and_refresh(field: str):
    def setter(ctx, vm_ref: str, value) -> None:
        ctx.db.set("VM", vm_ref, field, value)
        refresh_vm(ctx.db, vm_ref)

    return setter


message("VM.set_blocked_operations")(_set_and_refresh("blocked_operations"))
message("VM.set_is_a_template")(_set_and_refresh("is_a_template"))


@message("VM.add_to_blocked_operations")
def vm_add_blocked(ctx, vm_ref: str, key: str, value: str) -> None:
    db = ctx.db
    with db.lock:
        current = dict(db.get("VM", vm_ref)["blocked_operations"])
        if key in current:
            raise XapiError("MAP_DUPLICATE_KEY", "VM", "blocked_operations", vm_ref, key)
        current[key] = value
        db.set("VM", vm_ref, "blocked_operations", current)
        refresh_vm(db, vm_ref)


@message("VM.remove_from_blocked_operations")
def vm_remove_blocked(ctx, vm_ref: str, key: str) -> None:
    db = ctx.db
    with db.lock:
        current = dict(db.get("VM", vm_ref)["blocked_operations"])
        current.pop(key, None)
        db.set("VM", vm_ref, "blocked_operations", current)
        refresh_vm(db, vm_ref)


def _memory_setter(*fields: str):
    def setter(ctx, vm_ref: str, *values) -> None:
        db = ctx.db
        with db.lock:
            rec = db.get("VM", vm_ref)
            if rec["power_state"] != HALTED and "memory_static_max" in fields:
                raise XapiError("VM_BAD_POWER_STATE", vm_ref, "halted", rec["power_state"].lower())
            trial = dict(rec)
            trial.update(zip(fields, (int(v) for v in values), strict=True))
            _check_memory_constraints(trial)
            db.update("VM", vm_ref, **{f: trial[f] for f in fields})
            if rec["power_state"] in (RUNNING, PAUSED) and "memory_dynamic_max" in fields:
                db.set("VM", vm_ref, "memory_target", trial["memory_dynamic_max"])
                _update_metrics(db, vm_ref, running=True, start=False)
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
    _update_metrics(db, vm_ref, running=True, start=False)


@message("VM.compute_memory_overhead")
def vm_compute_memory_overhead(ctx, vm_ref: str) -> int:
    return int(ctx.db.get("VM", vm_ref)["memory_overhead"])


# -- xenstore_data of running VMs --------------------------------------------------------------
def _live_xenstore(ctx, vm_ref: str, changes: dict[str, str | None]) -> None:
    rec = ctx.db.get("VM", vm_ref)
    if rec["power_state"] not in (RUNNING, PAUSED):
        return
    host = ctx.pool.host_by_ref(rec["resident_on"])
    if host is None:
        return
    store = xenstore.store_for(host)
    for key, value in changes.items():
        path = f"/local/domain/{rec['domid']}/{key.lstrip('/')}"
        if value is None:
            store.rm(path)
        else:
            store.write(path, value)


@message("VM.set_xenstore_data")
def vm_set_xenstore_data(ctx, vm_ref: str, value: dict) -> None:
    old = dict(ctx.db.get("VM", vm_ref)["xenstore_data"])
    ctx.db.set("VM", vm_ref, "xenstore_data", dict(value))
    changes: dict[str, str | None] = {k: None for k in old if k not in value}
    changes.update(value)
    _live_xenstore(ctx, vm_ref, changes)


@message("VM.add_to_xenstore_data")
def vm_add_to_xenstore_data(ctx, vm_ref: str, key: str, value: str) -> None:
    db = ctx.db
    with db.lock:
        current = dict(db.get("VM", vm_ref)["xenstore_data"])
        if key in current:
            raise XapiError("MAP_DUPLICATE_KEY", "VM", "xenstore_data", vm_ref, key)
        current[key] = value
        db.set("VM", vm_ref, "xenstore_data", current)
    _live_xenstore(ctx, vm_ref, {key: value})


@message("VM.remove_from_xenstore_data")
def vm_remove_from_xenstore_data(ctx, vm_ref: str, key: str) -> None:
    db = ctx.db
    with db.lock:
        current = dict(db.get("VM", vm_ref)["xenstore_data"])
        current.pop(key, None)
        db.set("VM", vm_ref, "xenstore_data", current)
    _live_xenstore(ctx, vm_ref, {key: None})


# -- VIF ---------------------------------------------------------------------------------------
def refresh_vif(db, vif_ref: str) -> None:
    vif = db.get("VIF", vif_ref)
    vm = db.get("VM", vif["VM"])
    if vm["power_state"] in (RUNNING, PAUSED):
        ops = ["unplug"] if vif["currently_attached"] else ["plug"]
    else:
        ops = ["attach"]
    db.set("VIF", vif_ref, "allowed_operations", ops)


@message("VIF.create")
def vif_create(ctx, record: dict) -> str:
    db = ctx.db
    vm_ref = record.get("VM", NULL_REF)
    vm = db.get("VM", vm_ref)
    db.get("network", record.get("network", NULL_REF))
    device = str(record.get("device", ""))
    if device in {db.get("VIF", v)["device"] for v in vm["VIFs"]}:
        raise XapiError("DEVICE_ALREADY_EXISTS", device)
    mac = str(record.get("MAC", "") or "")
    with db.lock:
        ref = create_from_record(ctx, db.schema.classes["VIF"], {**record, "MAC": mac or random_mac()})
        db.update("VIF", ref, MAC_autogenerated=not mac, currently_attached=False)
        refresh_vif(db, ref)
    return ref


@message("VIF.plug")
def vif_plug(ctx, vif_ref: str) -> None:
    db = ctx.db
    with db.lock:
        vif = db.get("VIF", vif_ref)
        vm = db.get("VM", vif["VM"])
        if vm["power_state"] not in (RUNNING, PAUSED):
            raise XapiError("VM_BAD_POWER_STATE", vif["VM"], "running", vm["power_state"].lower())
        if vif["currently_attached"]:
            raise XapiError("DEVICE_ALREADY_ATTACHED", vif_ref)
        db.set("VIF", vif_ref, "currently_attached", True)
        refresh_vif(db, vif_ref)


@message("VIF.unplug")
def vif_unplug(ctx, vif_ref: str) -> None:
    db = ctx.db
    with db.lock:
        vif = db.get("VIF", vif_ref)
        vm = db.get("VM", vif["VM"])
        if vm["power_state"] not in (RUNNING, PAUSED):
            raise XapiError("VM_BAD_POWER_STATE", vif["VM"], "running", vm["power_state"].lower())
        if not vif["currently_attached"]:
            raise XapiError("DEVICE_ALREADY_DETACHED", vif_ref)
        db.set("VIF", vif_ref, "currently_attached", False)
        refresh_vif(db, vif_ref)


@message("VIF.unplug_force")
def vif_unplug_force(ctx, vif_ref: str) -> None:
    db = ctx.db
    with db.lock:
        if not db.get("VIF", vif_ref)["currently_attached"]:
            raise XapiError("DEVICE_ALREADY_DETACHED", vif_ref)
        db.set("VIF", vif_ref, "currently_attached", False)
        refresh_vif(db, vif_ref)


@message("VIF.destroy")
def vif_destroy(ctx, vif_ref: str) -> None:
    db = ctx.db
    with db.lock:
        vif = db.get("VIF", vif_ref)
        if vif["currently_attached"]:
            raise XapiError("OPERATION_NOT_ALLOWED", "VIF is currently attached; unplug it first")
        db.destroy("VIF", vif_ref)


# -- explicit setters that are plain field updates in the simulator ---------------------------
def _field_setter(cls: str, field: str, after=None):
    def setter(ctx, ref: str, value) -> None:
        ctx.db.set(cls, ref, field, value)
        if after is not None:
            after(ctx.db, ref)

    return setter


def _set_adder(cls: str, field: str, add: bool):
    def change(ctx, ref: str, value) -> None:
        db = ctx.db
        with db.lock:
            current = [v for v in db.get(cls, ref)[field] if v != value]
            if add:
                current.append(value)
            db.set(cls, ref, field, current)

    return change


def _map_changer(cls: str, field: str, add: bool):
    def add_to(ctx, ref: str, key, value) -> None:
        db = ctx.db
        with db.lock:
            current = dict(db.get(cls, ref)[field])
            if key in current:
                raise XapiError("MAP_DUPLICATE_KEY", cls, field, ref, key)
            current[key] = value
            db.set(cls, ref, field, current)

    def remove_from(ctx, ref: str, key) -> None:
        db = ctx.db
        with db.lock:
            current = dict(db.get(cls, ref)[field])
            current.pop(key, None)
            db.set(cls, ref, field, current)

    return add_to if add else remove_from


_REFRESH = {"VM": refresh_vm, "VDI": storage.refresh_vdi}


def _register_plain_setters() -> None:
    """``VDI.set_name_label``, ``VM.set_VCPUs_max``, ``VIF.add_ipv4_allowed`` ... as XAPI's datamodel
    declares them explicitly: each one changes its field (checks live in dedicated handlers)."""
    from xenapi_driver.simulator import registry, schema

    s = schema.load()
    for cls in ("VM", "VDI", "VBD", "VIF", "SR", "PBD", "network"):
        info = s.classes[cls]
        for name, msg in info.messages.items():
            if msg.implicit or registry.lookup_message(f"{cls}.{name}") is not None:
                continue
            for prefix, arity in (
                ("set_", 2),
                ("add_to_", 3),
                ("remove_from_", 2),
                ("add_", 2),
                ("remove_", 2),
            ):
                field = name[len(prefix) :]
                if not name.startswith(prefix) or field not in info.fields or len(msg.params) != arity:
                    continue
                kind = info.fields[field].type.kind
                if prefix == "set_":
                    func = _field_setter(cls, field, _REFRESH.get(cls))
                elif prefix in ("add_to_", "remove_from_") and kind == "map":
                    func = _map_changer(cls, field, prefix == "add_to_")
                elif prefix in ("add_", "remove_") and kind == "set":
                    func = _set_adder(cls, field, prefix == "add_")
                else:
                    continue
                message(f"{cls}.{name}")(func)
                break


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


@message("VIF.move")
def vif_move(ctx, vif_ref: str, network_ref: str) -> None:
    ctx.db.get("network", network_ref)
    ctx.db.set("VIF", vif_ref, "network", network_ref)


@message("VIF.configure_ipv4")
def vif_configure_ipv4(ctx, vif_ref: str, mode: str, address: str, gateway: str) -> None:
    addresses = [address] if address else []
    ctx.db.update(
        "VIF", vif_ref, ipv4_configuration_mode=mode, ipv4_addresses=addresses, ipv4_gateway=gateway or ""
    )


@message("VIF.configure_ipv6")
def vif_configure_ipv6(ctx, vif_ref: str, mode: str, address: str, gateway: str) -> None:
    addresses = [address] if address else []
    ctx.db.update(
        "VIF", vif_ref, ipv6_configuration_mode=mode, ipv6_addresses=addresses, ipv6_gateway=gateway or ""
    )


@message("host.evacuate")
def host_evacuate(ctx, host_ref: str, network_ref: str = NULL_REF, evacuate_batch_size: int = 0) -> None:
    """Move every running guest to another host of the pool (XAPI's maintenance-mode step)."""
    from xenapi_driver.simulator.handlers import migration

    db = ctx.db
    db.get("host", host_ref)
    for vm_ref in list(db.get("host", host_ref)["resident_VMs"]):
        if db.get("VM", vm_ref)["is_control_domain"]:
            continue
        targets = [h.ref for h in ctx.pool.hosts if h.ref != host_ref and h.powered]
        for target in sorted(targets, key=lambda h: -host_free_memory(db, h)):
            try:
                migration.vm_pool_migrate(ctx, vm_ref, target, {"live": "true"})
                break
            except XapiError:
                continue
        else:
            raise XapiError("NO_HOSTS_AVAILABLE")


@message("host.get_vms_which_prevent_evacuation")
def host_get_vms_which_prevent_evacuation(ctx, host_ref: str) -> dict:
    db = ctx.db
    out = {}
    for vm_ref in db.get("host", host_ref)["resident_VMs"]:
        if db.get("VM", vm_ref)["is_control_domain"]:
            continue
        for sr in vm_srs(db, vm_ref):
            if not db.get("SR", sr)["shared"]:
                out[vm_ref] = ["VM_REQUIRES_SR", vm_ref, sr]
    return out


@message("host.assert_can_evacuate")
def host_assert_can_evacuate(ctx, host_ref: str) -> None:
    blockers = host_get_vms_which_prevent_evacuation(ctx, host_ref)
    if blockers:
        raise XapiError(*next(iter(blockers.values())))


_register_plain_setters()
