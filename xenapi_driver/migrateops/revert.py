"""Revert and confirm on the source: bring the kept original back, or destroy it.

Every action is idempotent, so Nova's own recovery (``init_host`` calls
``finish_revert_migration`` for instances left in RESIZE_MIGRATING) works
after a crash at any step: the journal says what to undo.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from nova import exception as nova_exception
from nova.virt import driver as virt_driver
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils
from xenapi_driver import vmops as vmops_mod
from xenapi_driver.migrateops import resize_down
from xenapi_driver.migrateops.base import MigrateBase
from xenapi_driver.migrateops.copiers import _staging_id
from xenapi_driver.migrateops.destination import destroy_incoming
from xenapi_driver.migrateops.journal import JOURNAL_KEY, RESIZE_OF_KEY

LOG = logging.getLogger(__name__)


class RevertRole(MigrateBase):
    """``finish_revert_migration`` and ``confirm_migration`` (and the rollback of a failed migrate)."""

    def _rollback_source(self, instance: Any, vm_ref: str, block_device_info: Any) -> None:
        """Undo a failed migrate_disk_and_power_off: the instance is back as it was."""
        try:
            self._restore_original(instance, vm_ref, power_on=None, block_device_info=block_device_info)
        except Exception:  # noqa: BLE001 - report, the original error is what the user needs
            LOG.exception("Rolling back the migration of %s failed", instance.uuid)

    def _restore_original(
        self, instance: Any, vm_ref: str, power_on: bool | None, block_device_info: Any = None
    ) -> None:
        """Bring the kept VM back under its name; drop snapshots, clones and staged copies.

        ``power_on=None`` restores the power state recorded in the journal.
        Every action is idempotent, so a revert after a crash at any step works.
        """
        journal = self._journal(vm_ref)
        resize_down.cleanup(self._session, instance.uuid, journal)
        for snap_uuid in journal.get("snapshots", []):
            with contextlib.suppress(xexc.XenAPIError):
                ref = self._session.call_xenapi("VDI.get_by_uuid", snap_uuid)
                if not self._session.call_xenapi("VDI.get_VBDs", ref):
                    self._session.call_xenapi("VDI.destroy", ref)
        dest = journal.get("dest")
        if dest and journal.get("mode") in ("rsync", "xapi"):
            self._clean_destination(instance, dest, journal)
        other = self._session.call_xenapi("VM.get_other_config", vm_ref)
        if other.get(vm_utils.NOVA_UUID_KEY) != instance.uuid:
            with contextlib.suppress(xexc.XenAPIError):
                self._session.call_xenapi("VM.remove_from_other_config", vm_ref, vm_utils.NOVA_UUID_KEY)
            self._session.call_xenapi("VM.add_to_other_config", vm_ref, vm_utils.NOVA_UUID_KEY, instance.uuid)
        self._session.call_xenapi("VM.set_name_label", vm_ref, instance.name)
        for key in (RESIZE_OF_KEY, JOURNAL_KEY):
            with contextlib.suppress(xexc.XenAPIError):
                self._session.call_xenapi("VM.remove_from_other_config", vm_ref, key)
        self._vmops._refs[instance.uuid] = vm_ref  # noqa: SLF001 - keep VMOps' cache right
        if (
            self._volumeops is not None
            and "volumes_detached" in journal.get("steps", [])
            and virt_driver.block_device_info_get_mapping(block_device_info)
        ):
            self._volumeops.attach_block_devices(vm_ref, block_device_info)
        if power_on is None:
            power_on = journal.get("power_state", vmops_mod.RUNNING) == vmops_mod.RUNNING
        state = self._session.call_xenapi("VM.get_power_state", vm_ref)
        if power_on and state == vmops_mod.HALTED:
            self._vmops.power_on(instance)

    def _clean_destination(self, instance: Any, dest: str, journal: dict[str, Any]) -> None:
        """Remove what a copy left on the destination (staging files, incoming VDIs); best effort."""
        try:
            with self._dest_session(dest) as dsession:
                if journal.get("mode") == "rsync":
                    for disk in journal.get("disks", []):
                        dsession.call_plugin(
                            "migration",
                            "cleanup_received",
                            {"instance_uuid": _staging_id(instance.uuid, disk)},
                        )
                destroy_incoming(dsession, instance.uuid)
        except Exception as exc:  # noqa: BLE001 - the destination may be down; its init_host cleans up
            LOG.warning("Could not clean destination %s after migrating %s: %s", dest, instance.uuid, exc)

    def finish_revert_migration(
        self,
        context: Any,
        instance: Any,
        network_info: Any,
        migration: Any,
        block_device_info: Any = None,
        power_on: bool = True,
    ) -> None:
        """Bring the original back (also Nova's recovery after a crash in RESIZE_MIGRATING)."""
        kept = self._kept(instance)
        if kept is None:
            # Nothing was kept (crash before the journal existed): the instance VM is untouched.
            found = self._vmops.lookup(instance)
            if found is None:
                raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
            if power_on:
                self._vmops.power_on(instance)
            return
        vm_ref, _ = kept
        # Same-host resize: the new VM is this host's too; Nova's destroy on the destination
        # normally removed it already. Remove it if it is still here.
        current = self._vmops.lookup(instance)
        if current is not None and current[0] != vm_ref:
            self._vmops._destroy_vm(current[0])  # noqa: SLF001
        self._restore_original(instance, vm_ref, power_on=power_on, block_device_info=block_device_info)

    def confirm_migration(self, context: Any, migration: Any, instance: Any, network_info: Any) -> None:
        """Destroy the kept original VM, its disks and the resize's snapshots."""
        kept = self._kept(instance)
        if kept is None:
            LOG.info("No original VM of %s is kept; nothing to confirm", instance.uuid)
            return
        vm_ref, rec = kept
        if (rec.get("other_config") or {}).get(vm_utils.NOVA_UUID_KEY) == instance.uuid:
            raise nova_exception.InstanceInvalidState(
                attr="task_state", instance_uuid=instance.uuid, state="migrating",
                method="confirm_migration (the migration never completed on this host)",
            )  # fmt: skip
        journal = self._journal(vm_ref)
        new_vdis: set[str] = set()
        current = self._vmops.lookup(instance)
        if current is not None:  # same host: never destroy what the new VM uses
            new_vdis = set(self._vmops._vdis_of(current[0]))  # noqa: SLF001
        for snap_uuid in journal.get("snapshots", []):
            with contextlib.suppress(xexc.XenAPIError):
                ref = self._session.call_xenapi("VDI.get_by_uuid", snap_uuid)
                if ref not in new_vdis:
                    self._session.call_xenapi("VDI.destroy", ref)
        self._vmops._destroy_vm(vm_ref, destroy_disks=True, keep_vdis=frozenset(new_vdis))  # noqa: SLF001
