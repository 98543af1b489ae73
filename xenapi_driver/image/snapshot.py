"""Instance snapshots: a crash-consistent ``VDI.snapshot`` of the root disk, uploaded to Glance.

Steps, as Nova's compute manager expects them:

1. find the instance's VM (absent: ``InstanceNotRunning``, what Nova's driver
   contract asks for an instance the hypervisor does not have);
2. ``update_task_state(IMAGE_PENDING_UPLOAD)``; ``VDI.snapshot`` of the root
   disk (works on a running VM: XenServer snapshots are crash-consistent);
3. ``update_task_state(IMAGE_UPLOADING, expected_state=IMAGE_PENDING_UPLOAD)``;
   upload the snapshot's chain through the configured handler;
4. destroy the temporary snapshot whatever happened;
5. trigger the storage GC (``SR.scan``) and wait until it has coalesced the
   chain back to its depth before the snapshot, polling every
   ``vhd_coalesce_poll_interval`` seconds at most ``vhd_coalesce_max_attempts``
   times, so repeated snapshots never walk the disk towards XenServer's chain
   limit. A coalesce that does not finish in time is logged as an error; the
   uploaded image is good either way, so it is not failed for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from nova.compute import task_states

from nova import exception as nova_exception
from xenapi_driver import conf as xconf
from xenapi_driver import vm_utils
from xenapi_driver.image import sr

LOG = logging.getLogger(__name__)


def find_vm(session: Any, instance: Any) -> str | None:
    """The instance's own VM ref (by its stable name label, proved by its Nova UUID)."""
    picked = vm_utils.find_instance_vm(session, instance)
    return picked[0] if picked else None


def root_vdi_of(session: Any, vm_ref: str) -> str | None:
    expr = f'field "VM" = "{sr.quote(vm_ref)}" and field "userdevice" = "0"'
    for vbd in session.get_all_records_where("VBD", expr).values():
        if vbd.get("VDI") and vbd["VDI"] != vm_utils.NULL_REF and vbd.get("type") == "Disk":
            return vbd["VDI"]
    return None


class Snapshotter:
    def __init__(self, session: Any, handler: Any, sleep: Any = time.sleep) -> None:
        self.session = session
        self.handler = handler
        self.sleep = sleep

    def snapshot(self, context: Any, instance: Any, image_id: str, update_task_state: Any) -> None:
        vm_ref = find_vm(self.session, instance)
        if vm_ref is None:
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)
        root = root_vdi_of(self.session, vm_ref)
        if root is None:
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)
        root_rec = self.session.call_xenapi("VDI.get_record", root)
        sr_ref = root_rec["SR"]
        parent_before = (root_rec.get("sm_config") or {}).get("vhd-parent")

        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        snap = self.session.call_xenapi("VDI.snapshot", root, {})
        LOG.info(
            "Snapshot %s of instance %s's root disk taken; uploading to image %s",
            snap,
            instance.uuid,
            image_id,
        )
        try:
            self.session.call_xenapi(
                "VDI.set_name_label", snap, f"snapshot of {instance.name} for image {image_id}"
            )
            update_task_state(
                task_state=task_states.IMAGE_UPLOADING, expected_state=task_states.IMAGE_PENDING_UPLOAD
            )
            properties = {}
            os_type = getattr(instance, "os_type", None) if instance.obj_attr_is_set("os_type") else None
            if os_type:
                properties["os_type"] = os_type
            self.handler.upload(context, image_id, sr_ref, snap, properties)
        finally:
            with contextlib.suppress(Exception):
                sr.destroy_vdi(self.session, snap)
        self.wait_for_coalesce(sr_ref, root, parent_before)

    def wait_for_coalesce(self, sr_ref: str, root: str, parent_before: str | None) -> bool:
        """Scan the SR until the root disk's parent is again ``parent_before`` (chain coalesced)."""
        opts = xconf.CONF.xenserver
        attempts = max(int(opts.vhd_coalesce_max_attempts), 1)
        for attempt in range(attempts):
            sr.scan(self.session, sr_ref)
            sm_config = self.session.call_xenapi("VDI.get_sm_config", root)
            if sm_config.get("vhd-parent") == parent_before:
                LOG.debug("VHD chain of %s coalesced after %d scan(s)", root, attempt + 1)
                return True
            if attempt + 1 < attempts:
                self.sleep(opts.vhd_coalesce_poll_interval)
        LOG.error(
            "The storage GC did not coalesce the VHD chain of VDI %s after %d attempts (parent is %s, "
            "was %s); later snapshots lengthen the chain until it does",
            root,
            attempts,
            sm_config.get("vhd-parent"),
            parent_before,
        )
        return False
