"""``VM_metrics`` and ``VM_guest_metrics`` as XAPI and the guest's PV tools keep them up to date."""

from __future__ import annotations

from typing import Any

from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.vm_state import RUNNING


def ensure_metrics(db, vm_ref: str) -> str:
    rec = db.get("VM", vm_ref)
    metrics = rec["metrics"]
    if storage.is_null(metrics) or not db.exists("VM_metrics", metrics):
        metrics = db.create("VM_metrics", install_time=storage.now(), last_updated=storage.now())
        db.set("VM", vm_ref, "metrics", metrics)
    return metrics


def update_metrics(db, vm_ref: str, *, running: bool, start: bool = True) -> None:
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


def update_guest_metrics(db, vm_ref: str) -> None:
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
