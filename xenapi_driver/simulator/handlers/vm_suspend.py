"""Suspend and resume: a real suspend image VDI is written, read back and destroyed."""

from __future__ import annotations

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.domains import boot_domain, stop_domain
from xenapi_driver.simulator.handlers.placement import assert_can_boot_here, choose_host, vm_srs
from xenapi_driver.simulator.handlers.vm_state import HALTED, SUSPENDED, vm_operation
from xenapi_driver.simulator.registry import message
from xenapi_driver.simulator.schema import NULL_REF

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


def drop_suspend_image(ctx, vm_ref: str) -> None:
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
    drop_suspend_image(ctx, vm_ref)


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
