"""Host maintenance: evacuate, disable/enable, reboot, shutdown and power-on with XAPI's rules."""

from __future__ import annotations

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers.placement import host_free_memory, vm_srs
from xenapi_driver.simulator.registry import message
from xenapi_driver.simulator.schema import NULL_REF


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
