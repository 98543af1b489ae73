"""``VM.provision``: the disks a template's ``other_config['disks']`` describes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from xenapi_driver.simulator.errors import XapiError
from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.vm_state import vm_operation
from xenapi_driver.simulator.registry import message
from xenapi_driver.simulator.schema import NULL_REF


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
