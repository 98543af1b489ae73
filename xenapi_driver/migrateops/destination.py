"""The destination side of a resize: import the received chains, size them, create and start the VM.

Disks received but not yet given to a VM are tagged incoming
(``journal.INCOMING_KEY``): a failed ``finish_migration`` removes them, and
``recover_host`` removes those a killed nova-compute left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid as uuidlib
from typing import Any

from nova import exception as nova_exception
from nova.virt import driver as virt_driver
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils
from xenapi_driver import vmops as vmops_mod
from xenapi_driver.migrateops.base import MigrateBase
from xenapi_driver.migrateops.checks import FILE_SR_TYPES, sr_attached_to
from xenapi_driver.migrateops.copiers import _staging_id
from xenapi_driver.migrateops.journal import INCOMING_KEY

LOG = logging.getLogger(__name__)

GiB = 1024**3
MiB = 1024**2


class DestinationRole(MigrateBase):
    """``finish_migration`` and ``recover_host``: the destination compute's part of a resize."""

    def finish_migration(
        self,
        context: Any,
        migration: Any,
        instance: Any,
        disk_info: str,
        network_info: Any,
        image_meta: Any,
        resize_instance: bool,
        block_device_info: Any = None,
        power_on: bool = True,
    ) -> None:
        """Import the received disks, size them for the new flavor, create and start the VM."""
        info = json.loads(disk_info)
        vmops = self._vmops
        flavor = vmops_mod._flavor(instance)  # noqa: SLF001 - the new flavor, as VMOps reads it
        undo = vmops_mod._Undo()  # noqa: SLF001
        sr_ref = vmops._sr_ref()  # noqa: SLF001
        try:
            # A previous attempt that died half-way: start clean.
            destroy_incoming(self._session, instance.uuid, keep=self._expected_vdis(info))
            vdis: dict[str, str] = {}
            for disk in info["disks"]:
                self._hook("import")
                vdi = self._receive_disk(instance, info, disk, sr_ref)
                undo.add(f"{disk['role']} disk", lambda v=vdi: _destroy_vdi(self._session, v))
                vdis[disk["role"]] = vdi
            if "root" in vdis and flavor["root_gb"]:
                self._grow(vdis["root"], flavor["root_gb"] * GiB)
            if flavor["ephemeral_gb"]:
                if "ephemeral" in vdis:
                    self._grow(vdis["ephemeral"], flavor["ephemeral_gb"] * GiB)
                else:
                    vdis["ephemeral"] = vmops._create_vdi(  # noqa: SLF001
                        sr_ref, instance, "ephemeral", flavor["ephemeral_gb"] * GiB, undo
                    )
            self._hook("create_vm")
            networks = vmops._networks_by_bridge(network_info)  # noqa: SLF001
            xenstore = vmops._xenstore_data(instance, network_info)  # noqa: SLF001
            record = vmops._vm_record(instance, image_meta, flavor, xenstore, sr_ref)  # noqa: SLF001
            vm_ref = self._session.call_xenapi("VM.create", record)
            undo.add(f"VM {vm_ref}", lambda: vmops._destroy_vm(vm_ref, destroy_disks=False))  # noqa: SLF001
            vmops._refs[instance.uuid] = vm_ref  # noqa: SLF001
            if "root" in vdis:
                vmops._create_vbd(vm_ref, vdis["root"], vmops_mod.DEVICE_ROOT, bootable=True)  # noqa: SLF001
            if flavor["swap_mb"]:
                swap = vmops._create_vdi(sr_ref, instance, "swap", flavor["swap_mb"] * MiB, undo)  # noqa: SLF001
                vmops._create_vbd(vm_ref, swap, vmops_mod.DEVICE_SWAP, bootable=False)  # noqa: SLF001
            if "ephemeral" in vdis:
                vmops._create_vbd(vm_ref, vdis["ephemeral"], vmops_mod.DEVICE_EPHEMERAL, bootable=False)  # noqa: SLF001
            if self._volumeops is not None and virt_driver.block_device_info_get_mapping(block_device_info):
                self._volumeops.attach_block_devices(vm_ref, block_device_info)
            for device, vif in enumerate(network_info or []):
                vmops._create_vif(vm_ref, vif, device, networks[vmops._bridge_for(vif)])  # noqa: SLF001
            for vdi in vdis.values():
                with contextlib.suppress(xexc.XenAPIError):
                    self._session.call_xenapi("VDI.remove_from_other_config", vdi, INCOMING_KEY)
            if power_on:
                self._hook("power_on")
                with vmops._waiting_for_vifs(instance, network_info):  # noqa: SLF001
                    vmops._start(vm_ref)  # noqa: SLF001
                vmops._wait_running(instance, vm_ref)  # noqa: SLF001
        except Exception:
            LOG.exception("finish_migration of %s failed; removing what it created", instance.uuid)
            undo.rollback()
            if info.get("mode") == "rsync":
                for disk in info["disks"]:
                    with contextlib.suppress(Exception):
                        self._session.call_plugin(
                            "migration",
                            "cleanup_received",
                            {"instance_uuid": _staging_id(instance.uuid, disk)},
                        )
            raise

    @staticmethod
    def _expected_vdis(info: dict[str, Any]) -> set[str]:
        return {d["vdi_uuid"] for d in info["disks"] if d.get("vdi_uuid")}

    def _receive_disk(self, instance: Any, info: dict[str, Any], disk: dict[str, Any], sr_ref: str) -> str:
        """The VDI holding a received disk, tagged as the instance's (still 'incoming')."""
        mode = info["mode"]
        if mode == "rsync":
            sr = self._session.call_xenapi("SR.get_record", sr_ref)
            if sr["type"] not in FILE_SR_TYPES:
                raise nova_exception.MigrationError(
                    reason=f"the destination SR {sr['name_label']} is {sr['type']}: the rsync "
                    "transport imports VHD files into a file SR (EXT, NFS) only"
                )
            stack = [str(uuidlib.uuid4()) for _ in range(int(disk["chain_length"]))]
            args = {
                "instance_uuid": _staging_id(instance.uuid, disk),
                "sr_path": f"/var/run/sr-mount/{sr['uuid']}",
                "uuid_stack": json.dumps(stack),
            }
            held = disk.get("held_base")
            if held:  # the received chain's base is linked onto the VHD this host held (read only)
                args["base_vdi_uuid"] = held["vdi_uuid"]
                args["base_physical_size"] = str(held["physical_size"])
            result = json.loads(self._session.call_plugin("migration", "move_vhds_into_sr", args))
            vdi = self._introduce(sr_ref, result["root"]["uuid"], instance, disk)
        else:  # xapi transport, same host, shared SR: the VDI already exists here
            vdi = self._session.call_xenapi("VDI.get_by_uuid", disk["vdi_uuid"])
        for key, value in (
            (vm_utils.NOVA_UUID_KEY, instance.uuid),
            (vmops_mod.DISK_ROLE_KEY, disk["role"]),
            (INCOMING_KEY, instance.uuid),
        ):
            with contextlib.suppress(xexc.XenAPIError):
                self._session.call_xenapi("VDI.remove_from_other_config", vdi, key)
            self._session.call_xenapi("VDI.add_to_other_config", vdi, key, value)
        self._session.call_xenapi("VDI.set_name_label", vdi, f"{instance.name} {disk['role']}")
        return vdi

    def _introduce(self, sr_ref: str, leaf_uuid: str, instance: Any, disk: dict[str, Any]) -> str:
        """Make XAPI know the imported leaf without an ``SR.scan``.

        A scan starts the SR's garbage collector, which may coalesce the new
        chain first: the guest would wait for a copy proportional to the whole
        disk instead of only the leaf. The hidden parents are picked up by the
        next scan, as XenServer's storage manager does for base copies.
        """
        try:
            return self._session.call_xenapi(
                "VDI.introduce",
                leaf_uuid,
                f"{instance.name} {disk['role']}",
                f"{disk['role']} disk of Nova instance {instance.uuid}",
                sr_ref,
                "user",
                False,
                False,
                {INCOMING_KEY: instance.uuid},
                leaf_uuid,
                {},
                {},
            )
        except xexc.XenAPIError as exc:
            LOG.info("VDI.introduce of %s failed (%s); scanning the SR instead", leaf_uuid, exc.code)
            self._session.call_xenapi("SR.scan", sr_ref)
            return self._session.call_xenapi("VDI.get_by_uuid", leaf_uuid)

    def _grow(self, vdi: str, wanted: int) -> None:
        if int(self._session.call_xenapi("VDI.get_virtual_size", vdi)) < wanted:
            self._session.call_xenapi("VDI.resize", vdi, str(wanted))

    # ------------------------------------------------------------ crash recovery

    def recover_host(self) -> list[str]:
        """``init_host``: remove disks a killed finish_migration imported but never attached.

        The source side needs nothing here: Nova's own ``init_host`` calls
        ``finish_revert_migration`` for instances left in RESIZE_MIGRATING,
        which restores the kept original from its journal.
        """
        removed = []
        expr = 'field "is_a_snapshot" = "false"'
        for ref, rec in self._session.get_all_records_where("VDI", expr).items():
            if INCOMING_KEY in (rec.get("other_config") or {}) and not rec.get("VBDs"):
                if self._vdi_on_this_host(rec):
                    _destroy_vdi(self._session, ref)
                    removed.append(rec["uuid"])
        return removed

    def _vdi_on_this_host(self, rec: dict[str, Any]) -> bool:
        return sr_attached_to(self._session, rec["SR"], self._session.host_ref)


def _destroy_vdi(session: Any, vdi: str) -> None:
    with contextlib.suppress(xexc.XenAPIError):
        session.call_xenapi("VDI.destroy", vdi)


def destroy_incoming(session: Any, instance_uuid: str, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Destroy VDIs received for ``instance_uuid`` that no VM uses yet (a failed import's leftovers)."""
    expr = 'field "is_a_snapshot" = "false"'
    for ref, rec in session.get_all_records_where("VDI", expr).items():
        other = rec.get("other_config") or {}
        if other.get(INCOMING_KEY) == instance_uuid and not rec.get("VBDs") and rec["uuid"] not in keep:
            _destroy_vdi(session, ref)
