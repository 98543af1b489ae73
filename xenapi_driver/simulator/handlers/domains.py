"""Running domains: domids per host, devices, consoles and XenStore when a VM boots or stops."""

from __future__ import annotations

import threading
import uuid as uuidlib

from xenapi_driver.simulator.handlers import storage, xenstore
from xenapi_driver.simulator.handlers.placement import update_host_metrics
from xenapi_driver.simulator.handlers.vif import refresh_vif
from xenapi_driver.simulator.handlers.vm_metrics import update_guest_metrics, update_metrics
from xenapi_driver.simulator.handlers.vm_state import HALTED, PAUSED, RUNNING, has_agent, refresh_vm
from xenapi_driver.simulator.registry import boot_hook, reset_hook
from xenapi_driver.simulator.schema import NULL_REF

_DOMID_LOCK = threading.Lock()


_NEXT_DOMID: dict[str, int] = {}


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


def halt_resident_guests(pool, host_ref: str) -> list[str]:
    """Every guest domain on a host that goes down dies with it: its VM is Halted (XAPI's resync)."""
    db = pool.db
    halted = []
    with db.lock:
        for vm_ref in list(db.get("host", host_ref)["resident_VMs"]):
            rec = db.get("VM", vm_ref)
            if rec["is_control_domain"]:
                continue
            stop_domain(pool, vm_ref)
            db.set("VM", vm_ref, "power_state", HALTED)
            refresh_vm(db, vm_ref)
            halted.append(vm_ref)
    return halted


@boot_hook
def _fresh_domains(pool, host) -> None:
    """A booted host has only dom0: nothing else resident, domids count from 1 again."""
    if pool.db.exists("host", host.ref):
        halt_resident_guests(pool, host.ref)
    with _DOMID_LOCK:
        _NEXT_DOMID.pop(host.uuid, None)


def _console_location(ctx_pool, host_ref: str, console_uuid: str, db) -> str:
    address = db.get("host", host_ref)["address"] or "127.0.0.1"
    host = ctx_pool.host_by_ref(host_ref)
    port = getattr(host, "port", None)
    netloc = f"{address}:{port}" if port and int(port) not in (80, 443) else address
    return f"http://{netloc}/console?uuid={console_uuid}"


def set_devices_attached(db, rec: dict, attached: bool) -> None:
    """Plug (or unplug) every VBD and VIF of a VM, as the domain builder does at boot (and stop)."""
    for vbd in rec["VBDs"]:
        if db.get("VBD", vbd)["currently_attached"] != attached:
            (storage.attach_vbd if attached else storage.detach_vbd)(db, vbd)
    for vif in rec["VIFs"]:
        db.update("VIF", vif, currently_attached=attached)
        refresh_vif(db, vif)


def _drop_consoles(db, rec: dict) -> None:
    for console in list(rec["consoles"]):
        db.destroy("console", console)


def boot_domain(pool, vm_ref: str, host_ref: str, *, paused: bool = False, new_metrics: bool = True) -> int:
    """Make ``vm_ref`` resident on ``host_ref`` with a fresh domid, devices, console and xenstore."""
    db = pool.db
    sim_host = pool.host_by_ref(host_ref)
    with db.lock:
        rec = db.get("VM", vm_ref)
        domid = next_domid(db.get("host", host_ref)["uuid"])
        set_devices_attached(db, rec, True)
        _drop_consoles(db, rec)
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
        update_metrics(db, vm_ref, running=True, start=new_metrics)
        if has_agent(rec):
            update_guest_metrics(db, vm_ref)
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
            set_devices_attached(db, rec, False)
        _drop_consoles(db, rec)
        db.update("VM", vm_ref, resident_on=NULL_REF, domid=-1, memory_target=0)
        update_metrics(db, vm_ref, running=False)
        if not storage.is_null(rec["guest_metrics"]) and db.exists("VM_guest_metrics", rec["guest_metrics"]):
            db.destroy("VM_guest_metrics", rec["guest_metrics"])
        db.set("VM", vm_ref, "guest_metrics", NULL_REF)
        if not storage.is_null(host_ref) and db.exists("host", host_ref):
            update_host_metrics(db, host_ref)
    sim_host = pool.host_by_ref(host_ref) if not storage.is_null(host_ref) else None
    if sim_host is not None and domid >= 0:
        xenstore.domain_stopped(sim_host, domid)
