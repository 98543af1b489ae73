"""XAPI's checks for plugging and unplugging a VM's devices (VBDs and VIFs alike).

Hot-plug needs a running (or paused) VM, and a device is plugged at most once:
``VM_BAD_POWER_STATE [vm, "running", actual]``, ``DEVICE_ALREADY_ATTACHED [ref]``,
``DEVICE_ALREADY_DETACHED [ref]``; an attached device cannot be destroyed.
"""

from __future__ import annotations

from xenapi_driver.simulator.errors import XapiError

RUNNING_STATES = ("Running", "Paused")


def checked(db, cls: str, ref: str, *, attached: bool, running: bool = True) -> dict:
    """The device's record once (un)plugging it is allowed; ``attached`` is the state it must be in."""
    rec = db.get(cls, ref)
    if running:
        vm = db.get("VM", rec["VM"])
        if vm["power_state"] not in RUNNING_STATES:
            raise XapiError("VM_BAD_POWER_STATE", rec["VM"], "running", vm["power_state"].lower())
    if attached and not rec["currently_attached"]:
        raise XapiError("DEVICE_ALREADY_DETACHED", ref)
    if not attached and rec["currently_attached"]:
        raise XapiError("DEVICE_ALREADY_ATTACHED", ref)
    return rec


def destroyable(db, cls: str, ref: str) -> dict:
    """The device's record once it may be destroyed (not attached)."""
    rec = db.get(cls, ref)
    if rec["currently_attached"]:
        raise XapiError("OPERATION_NOT_ALLOWED", f"{cls} is currently attached; unplug it first")
    return rec
