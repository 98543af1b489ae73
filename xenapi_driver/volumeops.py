"""Cinder volumes on XenServer: connect a LUN as an SR, attach its VDI with a VBD.

Attach: the target's SR is introduced (``SR.introduce`` with a UUID derived
from the target, ``PBD.create`` on the managed host, ``PBD.plug``) unless this
host already has it, ``SR.scan`` finds the LUN's VDI (by ``LUNid``), and a
VBD marked ``other_config['osvol']`` joins the VM: plugged at once when the VM
runs (hot), else attached at its next start (cold). Detach reverses it:
unplug (retrying a busy device ``[xenserver] num_vbd_unplug_retries`` times),
destroy the VBD, and forget the SR when no VBD uses any of its VDIs.

Every step that creates something records how to undo it, so a failed attach
leaves neither a VBD nor an SR behind. Operations on one SR are serialised in
this process so concurrent attaches and detaches of volumes sharing a target
never forget an SR another one is about to use.

The driver calls the methods named after Nova's; spawn and destroy call
:meth:`VolumeOps.attach_block_devices` and :meth:`VolumeOps.detach_all`.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import nova.conf

from nova import exception as nova_exception
from nova.virt import driver as nova_driver
from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils
from xenapi_driver import volume_utils as vu

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF

NULL_REF = vm_utils.NULL_REF
RUNNING_STATES = ("Running", "Paused")
COPY_CHUNK = 4 * 1024 * 1024

Lookup = Callable[[Any], "tuple[str, dict[str, Any]] | None"]

_SR_LOCKS: dict[str, threading.Lock] = {}
_SR_LOCKS_GUARD = threading.Lock()


@contextmanager
def _sr_lock(sr_uuid: str) -> Iterator[None]:
    with _SR_LOCKS_GUARD:
        lock = _SR_LOCKS.setdefault(sr_uuid, threading.Lock())
    with lock:
        yield


class _Undo:
    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], Any]]] = []

    def add(self, what: str, action: Callable[[], Any]) -> None:
        self._actions.append((what, action))

    def rollback(self) -> None:
        for what, action in reversed(self._actions):
            try:
                action()
            except Exception:  # noqa: BLE001 - undo as much as possible
                LOG.exception("Could not undo %s", what)
        self._actions.clear()


class VolumeOps:
    """Attach, detach, swap and extend Cinder volumes on the managed host's VMs."""

    def __init__(self, session: Any, lookup: Lookup | None = None) -> None:
        self._session = session
        #: ``instance -> (vm_ref, record) | None``; the driver sets VMOps.lookup (cached refs).
        #: Without it the VM is found by its name label.
        self.lookup = lookup

    # -- finding things ------------------------------------------------------

    def _vm(self, instance: Any) -> tuple[str, dict[str, Any]]:
        found = self._locate(instance)
        if found is None:
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        return found

    def _locate(self, instance: Any) -> tuple[str, dict[str, Any]] | None:
        """The instance's VM through the driver's cached lookup, else by its name label."""
        if self.lookup is not None:
            return self.lookup(instance)
        return vm_utils.find_instance_vm(self._session, instance)

    def _find_sr(self, sr_uuid: str) -> str | None:
        try:
            return self._session.call_xenapi("SR.get_by_uuid", sr_uuid)
        except xexc.XenAPIError as exc:
            if exc.code in ("UUID_INVALID", "HANDLE_INVALID"):
                return None
            raise

    def _volume_vbds(self, vm_ref: str) -> dict[str, dict[str, Any]]:
        expr = f'field "VM" = "{vm_utils.quote(vm_ref)}"'
        return {
            ref: rec
            for ref, rec in self._session.get_all_records_where("VBD", expr).items()
            if str((rec.get("other_config") or {}).get(vu.VBD_VOLUME_KEY, "")).lower() == "true"
        }

    def _vdi_of_target(self, sr_ref: str, target: vu.IscsiTarget) -> str:
        """The LUN's VDI on ``sr_ref`` after a scan (by LUNid; the only VDI when no LUN given)."""
        self._session.call_xenapi("SR.scan", sr_ref)
        expr = f'field "SR" = "{vm_utils.quote(sr_ref)}"'
        vdis = self._session.get_all_records_where("VDI", expr)
        if target.lun is None:
            if len(vdis) == 1:
                return next(iter(vdis))
            raise vu.VolumeConnectionError(
                reason=f"volume {target.volume_id}: Cinder named no LUN and target {target.iqn} "
                f"has {len(vdis)} LUNs"
            )
        for ref, rec in vdis.items():
            if str((rec.get("sm_config") or {}).get("LUNid")) == str(target.lun):
                return ref
        raise vu.VolumeConnectionError(
            reason=f"volume {target.volume_id}: LUN {target.lun} not found on target {target.iqn} "
            f"at {target.portal} (the SR lists LUNs "
            f"{sorted(str((r.get('sm_config') or {}).get('LUNid')) for r in vdis.values())})"
        )

    def _find_volume_vbd(
        self, vm_ref: str, target: vu.IscsiTarget, mountpoint: str | None
    ) -> tuple[str, dict[str, Any]] | None:
        """The VBD of ``target``'s LUN on the VM (by SR and LUN; by device as a fallback)."""
        vbds = self._volume_vbds(vm_ref)
        sr_ref = self._find_sr(target.sr_uuid)
        for ref, rec in vbds.items():
            vdi = self._session.get_rec("VDI", rec["VDI"]) if rec.get("VDI") not in (None, NULL_REF) else None
            if vdi is None or vdi.get("SR") != sr_ref:
                continue
            if target.lun is None or str((vdi.get("sm_config") or {}).get("LUNid")) == str(target.lun):
                return ref, rec
        if target.volume_id:
            for ref, rec in vbds.items():
                if (rec.get("other_config") or {}).get(vu.VBD_VOLUME_ID_KEY) == target.volume_id:
                    return ref, rec
        userdevice = vu.mountpoint_to_userdevice(mountpoint)
        for ref, rec in vbds.items():
            recorded = (rec.get("other_config") or {}).get(vu.VBD_VOLUME_ID_KEY)
            # By device only when the VBD does not say it belongs to another volume.
            if userdevice is not None and rec.get("userdevice") == userdevice and not recorded:
                return ref, rec
        return None

    # -- the SR of a target --------------------------------------------------

    def _connect_sr(self, target: vu.IscsiTarget, undo: _Undo) -> str:
        """The target's SR, introduced and plugged on the managed host if needed (hold the SR lock)."""
        sr_ref = self._find_sr(target.sr_uuid)
        if sr_ref is None:
            LOG.info("Introducing SR %s for iSCSI target %s at %s", target.sr_uuid, target.iqn, target.portal)
            sr_ref = self._session.call_xenapi(
                "SR.introduce",
                target.sr_uuid,
                target.sr_label,
                f"Introduced by Nova for Cinder volumes on {target.portal}",
                "iscsi",
                "",
                False,
                {},
            )
            undo.add(f"SR {target.sr_uuid}", lambda: self._forget_sr(sr_ref))
            self._session.call_xenapi("SR.add_to_other_config", sr_ref, vu.VOLUME_SR_KEY, "true")
        host_ref = self._session.host_ref
        pbd_ref = None
        for pbd in self._session.call_xenapi("SR.get_PBDs", sr_ref):
            rec = self._session.get_rec("PBD", pbd)
            if rec is not None and rec.get("host") == host_ref:
                pbd_ref = pbd
                if rec.get("currently_attached"):
                    return sr_ref
        if pbd_ref is None:
            pbd_ref = self._session.call_xenapi(
                "PBD.create",
                {"host": host_ref, "SR": sr_ref, "device_config": target.device_config(), "other_config": {}},
            )
            new_pbd = pbd_ref
            undo.add(f"PBD {new_pbd}", lambda: self._destroy_pbd(new_pbd))
        try:
            self._session.call_xenapi("PBD.plug", pbd_ref)
        except xexc.XenAPIError as exc:
            # XAPI's text names the target; keep any echo of the CHAP secret out.
            secret = target.chap_password
            details = [p for p in exc.params if p and not (secret and secret in p)]
            raise vu.VolumeConnectionError(
                reason=f"volume {target.volume_id}: XenServer host {self._session.host_address} could "
                f"not log in to iSCSI target {target.iqn} at {target.portal}: {exc.code} {details}"
            ) from None
        return sr_ref

    def _destroy_pbd(self, pbd_ref: str) -> None:
        try:
            self._session.call_xenapi("PBD.unplug", pbd_ref)
            self._session.call_xenapi("PBD.destroy", pbd_ref)
        except xexc.XenAPIError as exc:
            if exc.code != "HANDLE_INVALID":
                raise

    def _forget_sr(self, sr_ref: str) -> None:
        """Unplug and forget an SR (its LUNs stay untouched on the target)."""
        if self._session.get_rec("SR", sr_ref) is None:
            return
        for pbd in self._session.call_xenapi("SR.get_PBDs", sr_ref):
            try:
                self._session.call_xenapi("PBD.unplug", pbd)
            except xexc.XenAPIError as exc:
                if exc.code != "HANDLE_INVALID":
                    raise
        self._session.call_xenapi("SR.forget", sr_ref)

    def _sr_in_use(self, sr_ref: str) -> bool:
        for vdi in self._session.call_xenapi("SR.get_VDIs", sr_ref):
            try:
                if self._session.call_xenapi("VDI.get_VBDs", vdi):
                    return True
            except xexc.XenAPIError as exc:
                if exc.code != "HANDLE_INVALID":
                    raise
        return False

    def _forget_sr_if_unused(self, sr_ref: str) -> bool:
        rec = self._session.get_rec("SR", sr_ref)
        if rec is None:
            return False
        if (rec.get("other_config") or {}).get(vu.VOLUME_SR_KEY) != "true":
            return False  # not ours: never forget an operator's SR
        if self._sr_in_use(sr_ref):
            return False
        LOG.info("Forgetting SR %s: no VBD uses its volumes any more", rec.get("uuid"))
        self._forget_sr(sr_ref)
        return True

    # -- VBDs ----------------------------------------------------------------

    def _free_userdevice(self, vm_ref: str, wanted: str | None) -> str:
        expr = f'field "VM" = "{vm_utils.quote(vm_ref)}"'
        used = {rec.get("userdevice") for rec in self._session.get_all_records_where("VBD", expr).values()}
        if wanted is not None and wanted not in used:
            return wanted
        start = int(wanted) if wanted is not None else 1
        for number in list(range(start, vu.MAX_USERDEVICE + 1)) + list(range(1, start)):
            if str(number) not in used:
                if wanted is not None:
                    LOG.info("Device %s of VM %s is taken; using device %s", wanted, vm_ref, number)
                return str(number)
        raise nova_exception.TooManyDiskDevices(maximum=vu.MAX_USERDEVICE + 1)

    def _unplug_vbd(self, vbd_ref: str) -> None:
        """VBD.unplug, retrying while the guest holds the device; already detached is fine."""
        retries = xconf.CONF.xenserver.num_vbd_unplug_retries
        attempt = 0
        while True:
            try:
                self._session.call_xenapi("VBD.unplug", vbd_ref)
                return
            except xexc.XenAPIError as exc:
                if exc.code in ("DEVICE_ALREADY_DETACHED", "HANDLE_INVALID"):
                    return
                if exc.code == "VM_BAD_POWER_STATE":
                    return  # the VM stopped meanwhile: nothing is plugged any more
                if exc.code not in ("DEVICE_DETACH_REJECTED", "OTHER_OPERATION_IN_PROGRESS"):
                    raise
                attempt += 1
                if attempt > retries:
                    raise nova_exception.StorageError(
                        reason=f"the guest did not release VBD {vbd_ref} after {retries} retries "
                        f"({exc.code}); unmount the volume in the guest and try again"
                    ) from None
                LOG.info("VBD %s is busy (%s); retry %d of %d in 1 s", vbd_ref, exc.code, attempt, retries)
                time.sleep(1)

    def _create_vbd(
        self,
        vm_ref: str,
        vdi_ref: str,
        userdevice: str,
        *,
        bootable: bool,
        target: vu.IscsiTarget,
        mountpoint: str | None,
    ) -> str:
        other_config = {vu.VBD_VOLUME_KEY: "True"}
        if target.volume_id:
            other_config[vu.VBD_VOLUME_ID_KEY] = target.volume_id
        if mountpoint:
            other_config[vu.VBD_MOUNTPOINT_KEY] = str(mountpoint)
        return self._session.call_xenapi(
            "VBD.create",
            {
                "VM": vm_ref,
                "VDI": vdi_ref,
                "userdevice": userdevice,
                "bootable": bootable,
                "mode": "RO" if target.read_only else "RW",
                "type": "Disk",
                "empty": False,
                "unpluggable": True,
                "other_config": other_config,
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            },
        )

    # -- the building blocks spawn, destroy and swap use ---------------------

    def connect_volume(
        self,
        vm_ref: str,
        connection_info: dict[str, Any],
        mountpoint: str | None = None,
        *,
        userdevice: str | None = None,
        bootable: bool = False,
        hotplug: bool = True,
    ) -> str:
        """Attach a Cinder volume to a VM; returns the VBD.

        ``userdevice`` wins over ``mountpoint``. With ``hotplug`` the VBD is
        plugged when the VM is running; otherwise it attaches at the VM's next
        start. On failure nothing is left behind (VBD destroyed, SR forgotten
        if this attach introduced it and nothing else uses it).
        """
        target = vu.parse_connection_info(connection_info)
        wanted = userdevice if userdevice is not None else vu.mountpoint_to_userdevice(mountpoint)
        undo = _Undo()
        with _sr_lock(target.sr_uuid):
            try:
                sr_ref = self._connect_sr(target, undo)
                vdi_ref = self._vdi_of_target(sr_ref, target)
                device = self._free_userdevice(vm_ref, wanted) if not bootable else (wanted or "0")
                vbd_ref = self._create_vbd(
                    vm_ref, vdi_ref, device, bootable=bootable, target=target, mountpoint=mountpoint
                )
                undo.add(f"VBD {vbd_ref}", lambda: self._session.call_xenapi("VBD.destroy", vbd_ref))
                state = self._session.call_xenapi("VM.get_power_state", vm_ref)
                if hotplug and state in RUNNING_STATES:
                    self._session.call_xenapi("VBD.plug", vbd_ref)
            except Exception:
                undo.rollback()
                sr_ref = self._find_sr(target.sr_uuid)
                if sr_ref is not None:
                    try:
                        self._forget_sr_if_unused(sr_ref)
                    except Exception:  # noqa: BLE001
                        LOG.exception("Could not forget unused SR %s", target.sr_uuid)
                raise
        LOG.info(
            "Attached volume %s (LUN %s of %s) to VM %s as device %s%s",
            target.volume_id,
            target.lun,
            target.iqn,
            vm_ref,
            device,
            " (hot-plugged)" if hotplug and state in RUNNING_STATES else "",
        )
        return vbd_ref

    def disconnect_vbd(self, vbd_ref: str) -> None:
        """Unplug and destroy a volume's VBD, then forget its SR if nothing else uses it."""
        rec = self._session.get_rec("VBD", vbd_ref)
        if rec is None:
            return
        sr_ref = None
        if rec.get("VDI") not in (None, NULL_REF):
            try:
                sr_ref = self._session.call_xenapi("VDI.get_SR", rec["VDI"])
            except xexc.XenAPIError as exc:
                if exc.code != "HANDLE_INVALID":
                    raise
        sr_uuid = None
        if sr_ref is not None:
            sr_rec = self._session.get_rec("SR", sr_ref)
            sr_uuid = sr_rec.get("uuid") if sr_rec else None
        with _sr_lock(sr_uuid or vbd_ref):
            if rec.get("currently_attached"):
                self._unplug_vbd(vbd_ref)
            try:
                self._session.call_xenapi("VBD.destroy", vbd_ref)
            except xexc.XenAPIError as exc:
                if exc.code != "HANDLE_INVALID":
                    raise
            if sr_ref is not None:
                self._forget_sr_if_unused(sr_ref)

    def attach_root_volume(self, vm_ref: str, connection_info: dict[str, Any]) -> str:
        """Boot from volume: the volume as bootable device 0 of a VM not yet started."""
        return self.connect_volume(vm_ref, connection_info, userdevice="0", bootable=True, hotplug=False)

    def attach_block_devices(self, vm_ref: str, block_device_info: Any) -> list[str]:
        """Attach every volume of Nova's ``block_device_info`` to a new VM (before it starts).

        The root volume (``mount_device`` = ``root_device_name``, or boot
        index 0) becomes bootable device 0, the others their device names.
        Returns the VBDs; on failure the ones attached so far are removed.
        """
        root_name = nova_driver.block_device_info_get_root_device(block_device_info)
        done: list[str] = []
        try:
            for bdm in nova_driver.block_device_info_get_mapping(block_device_info):
                info = bdm.get("connection_info")
                if not info:
                    raise vu.VolumeConnectionError(
                        reason=f"block device {bdm.get('mount_device')} has no connection info"
                    )
                mount = bdm.get("mount_device")
                is_root = (root_name and mount == root_name) or bdm.get("boot_index") == 0
                if is_root:
                    done.append(self.attach_root_volume(vm_ref, info))
                else:
                    done.append(self.connect_volume(vm_ref, info, mount, hotplug=False))
        except Exception:
            for vbd in reversed(done):
                try:
                    self.disconnect_vbd(vbd)
                except Exception:  # noqa: BLE001
                    LOG.exception("Could not remove volume VBD %s", vbd)
            raise
        return done

    def has_root_volume(self, block_device_info: Any) -> bool:
        """Whether ``block_device_info`` boots from a volume (so no image root disk is needed)."""
        root_name = nova_driver.block_device_info_get_root_device(block_device_info)
        return any(
            (root_name and bdm.get("mount_device") == root_name) or bdm.get("boot_index") == 0
            for bdm in nova_driver.block_device_info_get_mapping(block_device_info)
        )

    def detach_all(self, vm_ref: str) -> None:
        """Remove every volume VBD of a VM and forget unused volume SRs (before VM.destroy)."""
        for vbd_ref in self._volume_vbds(vm_ref):
            self.disconnect_vbd(vbd_ref)

    def forget_unused_srs(self) -> list[str]:
        """Forget volume SRs no VBD uses (left by a crash mid-detach); returns their UUIDs."""
        forgotten = []
        expr = 'field "type" = "iscsi"'
        for ref, rec in self._session.get_all_records_where("SR", expr).items():
            if (rec.get("other_config") or {}).get(vu.VOLUME_SR_KEY) != "true":
                continue
            with _sr_lock(rec["uuid"]):
                if self._forget_sr_if_unused(ref):
                    forgotten.append(rec["uuid"])
        return forgotten

    # -- Nova's methods --------------------------------------------------------

    def get_volume_connector(self, instance: Any) -> dict[str, Any]:
        """What Cinder needs to export a volume to this XenServer host.

        ``ip`` and ``initiator`` are the XenServer host's (it, not the
        compute VM, logs in to the target), unless ``[DEFAULT]
        my_block_storage_ip`` is set apart from ``my_ip``: then that address
        is the one storage sees. ``host`` is this nova-compute's name, as
        Cinder tracks attachments by it.
        """
        host_ref = self._session.host_ref
        record = self._session.get_rec("host", host_ref) or {}
        iqn = record.get("iscsi_iqn") or (record.get("other_config") or {}).get("iscsi_iqn")
        connector: dict[str, Any] = {
            "ip": self._block_storage_ip(record),
            "host": CONF.host,
            "multipath": False,
            "platform": "x86_64",
            "os_type": "linux2",
            "xenapi_host_uuid": record.get("uuid") or self._session.host_uuid,
        }
        if iqn:
            connector["initiator"] = iqn
        else:
            LOG.warning(
                "XenServer host %s has no iSCSI initiator name (host.iscsi_iqn / other_config iscsi_iqn); "
                "iSCSI volumes cannot be exported to it",
                record.get("name_label") or host_ref,
            )
        return connector

    def _block_storage_ip(self, host_record: dict[str, Any]) -> str:
        if CONF.my_block_storage_ip and CONF.my_block_storage_ip != CONF.my_ip:
            return CONF.my_block_storage_ip
        return host_record.get("address") or self._session.host_address

    def attach_volume(
        self,
        connection_info: dict[str, Any],
        instance: Any,
        mountpoint: str | None,
        encryption: dict[str, Any] | None = None,
    ) -> None:
        """Hot-plug (running VM) or cold-attach (stopped VM) a volume at ``mountpoint``.

        Front-end encrypted volumes are refused: XenServer has no dm-crypt
        layer between a LUN and the guest.
        """
        if encryption and (encryption.get("provider") or encryption.get("cipher")):
            raise nova_exception.VolumeEncryptionNotSupported(
                volume_type=vu.volume_type(connection_info) or "?",
                volume_id=vu.parse_connection_info(connection_info).volume_id,
            )
        vm_ref, _record = self._vm(instance)
        try:
            self.connect_volume(vm_ref, connection_info, mountpoint, hotplug=True)
        except (nova_exception.NovaException, NotImplementedError):
            raise
        except xexc.XenAPIError as exc:
            raise nova_exception.VolumeAttachFailed(
                volume_id=vu.parse_connection_info(connection_info).volume_id, reason=str(exc)
            ) from None

    def detach_volume(self, connection_info: dict[str, Any], instance: Any, mountpoint: str | None) -> None:
        """Detach; a volume no longer on the VM (or a VM already gone) is not an error."""
        found = self._locate(instance)
        target = vu.parse_connection_info(connection_info)
        if found is None:
            LOG.info("Instance %s has no VM; volume %s is already detached", instance.uuid, target.volume_id)
            self._cleanup_target_sr(target)
            return
        vbd = self._find_volume_vbd(found[0], target, mountpoint)
        if vbd is None:
            LOG.info("Volume %s is not attached to instance %s", target.volume_id, instance.uuid)
            self._cleanup_target_sr(target)
            return
        self.disconnect_vbd(vbd[0])
        LOG.info("Detached volume %s from instance %s", target.volume_id, instance.uuid)

    def _cleanup_target_sr(self, target: vu.IscsiTarget) -> None:
        with _sr_lock(target.sr_uuid):
            sr_ref = self._find_sr(target.sr_uuid)
            if sr_ref is not None:
                self._forget_sr_if_unused(sr_ref)

    def swap_volume(
        self,
        old_connection_info: dict[str, Any],
        new_connection_info: dict[str, Any],
        instance: Any,
        mountpoint: str | None,
        resize_to: int,
    ) -> None:
        """Replace a volume by another: copy the old LUN's data onto the new one, same device.

        The old VBD is unplugged first so the guest cannot write during the
        copy. If anything fails before the new VBD is in place, the old volume
        is plugged back and the new one disconnected.
        """
        vm_ref, _record = self._vm(instance)
        old = vu.parse_connection_info(old_connection_info)
        new = vu.parse_connection_info(new_connection_info)
        found = self._find_volume_vbd(vm_ref, old, mountpoint)
        if found is None:
            raise nova_exception.VolumeNotFound(volume_id=old.volume_id)
        old_vbd, old_rec = found
        device = old_rec["userdevice"]
        running = self._session.call_xenapi("VM.get_power_state", vm_ref) in RUNNING_STATES
        was_plugged = bool(old_rec.get("currently_attached"))
        if was_plugged:
            self._unplug_vbd(old_vbd)
        new_vbd = None
        try:
            # Connect the new volume on a spare device, unplugged, then copy.
            new_vbd = self.connect_volume(
                vm_ref, new_connection_info, userdevice=None, hotplug=False, mountpoint=None
            )
            new_vdi = self._session.call_xenapi("VBD.get_VDI", new_vbd)
            old_vdi = old_rec["VDI"]
            old_size = int(self._session.call_xenapi("VDI.get_virtual_size", old_vdi))
            new_size = int(self._session.call_xenapi("VDI.get_virtual_size", new_vdi))
            if new_size < old_size:
                raise nova_exception.StorageError(
                    reason=f"volume {new.volume_id} ({new_size} bytes) is smaller than "
                    f"volume {old.volume_id} ({old_size} bytes)"
                )
            copy_vdi_data(self._session, old_vdi, new_vdi, old_size)
            # Move the new volume to the old device number.
            self._session.call_xenapi("VBD.destroy", old_vbd)
            self._session.call_xenapi("VBD.destroy", new_vbd)
            new_vbd = None
            new_vbd = self.connect_volume(
                vm_ref, new_connection_info, userdevice=device, hotplug=running and was_plugged
            )
        except Exception:
            with _suppress_and_log("rolling back swap_volume"):
                if new_vbd is not None:
                    self.disconnect_vbd(new_vbd)
                if self._session.get_rec("VBD", old_vbd) is None:
                    self.connect_volume(vm_ref, old_connection_info, userdevice=device, hotplug=False)
                    old_vbd = self._find_volume_vbd(vm_ref, old, None)[0]
                if running and was_plugged:
                    self._session.call_xenapi("VBD.plug", old_vbd)
            raise
        sr_ref = self._find_sr(old.sr_uuid)
        if sr_ref is not None:
            with _sr_lock(old.sr_uuid):
                self._forget_sr_if_unused(sr_ref)
        LOG.info(
            "Swapped volume %s for %s on instance %s (device %s)",
            old.volume_id,
            new.volume_id,
            instance.uuid,
            device,
        )

    def extend_volume(self, connection_info: dict[str, Any], instance: Any, requested_size: int) -> None:
        """Make a volume Cinder has grown show its new size.

        ``SR.scan`` refreshes the VDI's size from the LUN. A running guest
        sees the new size once the device is re-plugged, which is done here;
        if the guest holds the device, the error says so (the size applies at
        the next reboot).
        """
        vm_ref, _record = self._vm(instance)
        target = vu.parse_connection_info(connection_info)
        found = self._find_volume_vbd(vm_ref, target, None)
        if found is None:
            raise nova_exception.VolumeNotFound(volume_id=target.volume_id)
        vbd_ref, rec = found
        vdi_ref = rec["VDI"]
        sr_ref = self._session.call_xenapi("VDI.get_SR", vdi_ref)
        self._session.call_xenapi("SR.scan", sr_ref)
        size = int(self._session.call_xenapi("VDI.get_virtual_size", vdi_ref))
        if size < int(requested_size):
            raise nova_exception.StorageError(
                reason=f"volume {target.volume_id}: XenServer still sees {size} bytes after a rescan, "
                f"{requested_size} were requested; check the LUN was grown on the target"
            )
        if rec.get("currently_attached"):
            # XenServer's disk back-end does not pass a size change to a plugged
            # guest device: re-plug it.
            try:
                self._unplug_vbd(vbd_ref)
            except nova_exception.StorageError:
                raise nova_exception.StorageError(
                    reason=f"volume {target.volume_id} grew to {size} bytes, but the guest of instance "
                    f"{instance.uuid} holds the device, so it keeps the old size until the device is "
                    "re-plugged (reboot the instance, or detach and attach the volume)"
                ) from None
            self._session.call_xenapi("VBD.plug", vbd_ref)
        LOG.info("Volume %s of instance %s now has %d bytes", target.volume_id, instance.uuid, size)


@contextmanager
def _suppress_and_log(what: str) -> Iterator[None]:
    try:
        yield
    except Exception:  # noqa: BLE001
        LOG.exception("Failed while %s", what)


def copy_vdi_data(session: Any, src_vdi: str, dst_vdi: str, size: int) -> None:
    """Copy ``size`` bytes of one VDI into another through XAPI's raw HTTP export and import.

    Works for any SR type (LUN VDIs cannot be ``VDI.copy`` targets in every
    XAPI). Bytes flow from ``export_raw_vdi`` to ``import_raw_vdi`` through
    nova-compute in 4 MiB chunks, on the host that sees the SRs (the export's
    302 redirect says which), authenticated by a pooled session held for the
    copy.
    """
    with session_id(session) as sid:
        src_uuid = session.call_xenapi("VDI.get_uuid", src_vdi)
        dst_uuid = session.call_xenapi("VDI.get_uuid", dst_vdi)
        base = session.master_url
        query = {"session_id": sid, "vdi": src_uuid, "format": "raw"}
        for _hop in range(4):
            source = _open_http(session, base, "GET", "/export_raw_vdi", query)
            resp = source.getresponse()
            if resp.status not in (301, 302, 303, 307):
                break
            location = resp.getheader("location") or ""
            resp.read()
            source.close()
            parts = urllib.parse.urlsplit(urllib.parse.urljoin(base, location))
            base = f"{parts.scheme}://{parts.netloc}/"
        try:
            if resp.status != 200:
                raise nova_exception.StorageError(
                    reason=f"export_raw_vdi of VDI {src_uuid} answered HTTP {resp.status}"
                )
            length = int(resp.getheader("content-length") or size)
            import_query = {"session_id": sid, "vdi": dst_uuid, "format": "raw"}
            sink = _open_http(session, base, "PUT", "/import_raw_vdi", import_query, length)
            try:
                remaining = length
                while remaining > 0:
                    chunk = resp.read(min(COPY_CHUNK, remaining))
                    if not chunk:
                        raise nova_exception.StorageError(
                            reason=f"export of VDI {src_uuid} ended {remaining} bytes early"
                        )
                    sink.send(chunk)
                    remaining -= len(chunk)
                answer = sink.getresponse()
                answer.read()
                if answer.status != 200:
                    raise nova_exception.StorageError(
                        reason=f"import_raw_vdi into VDI {dst_uuid} answered HTTP {answer.status}"
                    )
            finally:
                sink.close()
        finally:
            source.close()


def _open_http(
    session: Any, base_url: str, method: str, path: str, query: dict[str, str], length: int | None = None
) -> http.client.HTTPConnection:
    conn = session.http_connection(base_url, 60.0)
    conn.putrequest(method, f"{path}?{urllib.parse.urlencode(query)}")
    if length is not None:
        conn.putheader("Content-Length", str(length))
    conn.endheaders()
    return conn


@contextmanager
def session_id(session: Any) -> Iterator[str]:
    """A logged-in XAPI session id for an HTTP handler, held for the block."""
    with session.borrow_session_id() as sid:
        yield sid
