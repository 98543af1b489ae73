"""Where a VM may run: host memory accounting, storage visibility and XAPI's placement.

Free memory is enforced at start (``HOST_NOT_ENOUGH_FREE_MEMORY [needed, available]``) and
``host_metrics`` follow every change, so clients see what XenServer would report.
"""

from __future__ import annotations

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.vm_state import PAUSED, RUNNING
from xenapi_driver.simulator.registry import message

DEFAULT_HOST_MEMORY = 64 * 1024**3


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


def assert_can_boot_here(db, vm_ref: str, host_ref: str, *, memory: bool = True) -> None:
    rec = db.get("VM", vm_ref)
    if int(rec["VCPUs_at_startup"]) < 1:
        raise XapiError("VM_NO_VCPUS", vm_ref)
    host = db.get("host", host_ref)
    if not host["enabled"]:
        raise XapiError("HOST_DISABLED", host_ref)
    for sr in vm_srs(db, vm_ref):
        if not host_sees_sr(db, host_ref, sr):
            raise XapiError("VM_REQUIRES_SR", vm_ref, sr)
    if memory:
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
        if host_offline(ctx, host_ref):
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


def host_offline(ctx, host_ref: str) -> bool:
    host = ctx.pool.host_by_ref(host_ref)
    return bool(host is not None and not host.powered)


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
