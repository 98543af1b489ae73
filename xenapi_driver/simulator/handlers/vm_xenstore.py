"""``VM.xenstore_data`` changes reach a running guest's XenStore at once, as XAPI does."""

from __future__ import annotations

from xenapi_driver.simulator.handlers import xenstore
from xenapi_driver.simulator.handlers.vm_state import PAUSED, RUNNING
from xenapi_driver.simulator.registry import message


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
    ctx.db.map_add("VM", vm_ref, "xenstore_data", key, value)
    _live_xenstore(ctx, vm_ref, {key: value})


@message("VM.remove_from_xenstore_data")
def vm_remove_from_xenstore_data(ctx, vm_ref: str, key: str) -> None:
    ctx.db.map_remove("VM", vm_ref, "xenstore_data", key)
    _live_xenstore(ctx, vm_ref, {key: None})
