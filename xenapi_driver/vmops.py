"""Instance lifecycle on XAPI: the VM side of :class:`~xenapi_driver.driver.XenAPIDriver`.

The driver passes Nova's calls here with only the arguments XAPI needs, so
this module can be exercised directly against the simulator. How instances
map to VMs is stated in :mod:`xenapi_driver.vm_utils`.

Spawn builds the VM step by step and records an undo action for each step;
if a later step fails, the undo actions run in reverse so no VM, VDI or VIF
is left behind. The root disk comes from an *image source* (the image layer,
a later issue, provides the real one that fetches Glance images); without one
spawn refuses clearly rather than boot an empty disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import nova.conf
from nova.compute import power_state

from nova import exception as nova_exception
from nova.virt import driver, hardware
from xenapi_driver import conf as xconf
from xenapi_driver import exception as xexc
from xenapi_driver import vm_utils

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF

MiB = 1024 * 1024
GiB = 1024 * MiB

# Device numbers, as XenServer's Nova driver always used them.
DEVICE_ROOT = "0"
DEVICE_RESCUE_ORIGINAL_ROOT = "1"
DEVICE_SWAP = "2"
DEVICE_EPHEMERAL = "4"
DEVICE_CD = "3"

DISK_ROLE_KEY = "nova_disk"  # VDI other_config: root | swap | ephemeral | rescue-root

RUNNING, HALTED, PAUSED, SUSPENDED = "Running", "Halted", "Paused", "Suspended"


class ImageSource(Protocol):
    """Provides an instance's root disk as a VDI on ``sr_ref`` (the image layer).

    An image source may also offer ``cdrom_vdi`` (ISO images boot from a CD
    beside a blank root disk) and ``kernel_ramdisk``/``remove_kernel_ramdisk``
    (AMI images boot a kernel kept in dom0's ``/boot/guest``); VMOps uses
    them when present.
    """

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str: ...


class NoImageSource:
    """Until the image layer lands, spawning from an image is refused, not faked."""

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        raise NotImplementedError("XenAPIDriver was built without an image layer: it cannot boot images")


class _Undo:
    """Undo actions for a multi-step operation, run in reverse on failure."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], Any]]] = []

    def add(self, what: str, action: Callable[[], Any]) -> None:
        self._actions.append((what, action))

    def rollback(self) -> None:
        for what, action in reversed(self._actions):
            try:
                action()
            except Exception:  # noqa: BLE001 - undo as much as possible, report each failure
                LOG.exception("Could not undo %s", what)
        self._actions.clear()


def _field(instance: Any, name: str, default: Any = None) -> Any:
    """An instance attribute if it is loaded, else ``default`` (never a lazy load)."""
    is_set = getattr(instance, "obj_attr_is_set", None)
    if is_set is not None:
        return getattr(instance, name) if is_set(name) else default
    return getattr(instance, name, default)


def _flavor(instance: Any) -> dict[str, int]:
    """Memory, vCPUs and disk sizes from the instance's flavor."""
    flavor = _field(instance, "flavor")
    src = flavor if flavor is not None else instance
    return {
        "memory_mb": int(src.memory_mb),
        "vcpus": int(src.vcpus),
        "root_gb": int(src.root_gb or 0),
        "ephemeral_gb": int(src.ephemeral_gb or 0),
        "swap_mb": int(getattr(flavor, "swap", 0) or 0) if flavor is not None else 0,
    }


def _image_property(image_meta: Any, name: str) -> Any:
    props = getattr(image_meta, "properties", None)
    if props is None or not props.obj_attr_is_set(name):
        return None
    return getattr(props, name)


def _is_pv(image_meta: Any) -> bool:
    """PV only when the image asks for it (hw_vm_mode=xen); HVM otherwise, as XenServer 8 prefers."""
    return str(_image_property(image_meta, "hw_vm_mode") or "").lower() == "xen"


class VMOps:
    """Maps Nova instances to XAPI VMs and drives their lifecycle."""

    def __init__(
        self,
        session: Any,
        virtapi: Any,
        hostops: Any = None,
        image_source: ImageSource | None = None,
        volumeops: Any = None,
    ) -> None:
        self._session = session
        self._virtapi = virtapi
        self._hostops = hostops
        self.volumeops = volumeops
        self.image_source: ImageSource = image_source or NoImageSource()
        # instance UUID -> VM ref; see lookup().
        self._refs: dict[str, str] = {}

    # -- lookups: one XAPI call each, however many VMs the pool has ---------

    def _host_instance_records(self) -> dict[str, dict[str, Any]]:
        """Records of this host's instance VMs, in one ``get_all_records_where``."""
        host_ref = self._session.host_ref
        records = self._session.get_all_records_where("VM", vm_utils.guests_of_host_expr(host_ref))
        mine = vm_utils.instance_vms_of_host(records, host_ref)
        self._refs.update({vm_utils.nova_uuid(rec): ref for ref, rec in mine.items()})
        return mine

    def _by_name(self, name_label: str) -> dict[str, dict[str, Any]]:
        return vm_utils.vms_named(self._session, name_label)

    def lookup(self, instance: Any) -> tuple[str, dict[str, Any]] | None:
        """``(ref, record)`` of the instance's VM, or None.

        One XAPI call (``VM.get_record``) for an instance this driver has seen
        (spawned, listed or looked up before); otherwise found by its stable
        name label and remembered. References are only a cache: the record
        must still carry the instance's UUID.
        """
        ref = self._refs.get(instance.uuid)
        if ref is not None:
            record = self._session.get_rec("VM", ref)
            if (
                record is not None
                and vm_utils.is_instance_vm(record)
                and vm_utils.nova_uuid(record) == instance.uuid
            ):
                return ref, record
            self._refs.pop(instance.uuid, None)
        found = vm_utils.pick_instance_vm(self._by_name(instance.name), instance.uuid)
        if found is not None:
            self._refs[instance.uuid] = found[0]
        return found

    def _lookup_rescue(self, instance: Any) -> tuple[str, dict[str, Any]] | None:
        for ref, rec in self._by_name(instance.name + vm_utils.RESCUE_SUFFIX).items():
            if vm_utils.is_rescue(rec) and vm_utils.nova_uuid(rec) == instance.uuid:
                return ref, rec
        return None

    def _require(self, instance: Any) -> tuple[str, dict[str, Any]]:
        found = self.lookup(instance)
        if found is None:
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        return found

    def get_info(self, instance: Any) -> hardware.InstanceInfo:
        ref, record = self._require(instance)
        return hardware.InstanceInfo(
            state=vm_utils.to_power_state(record["power_state"]), internal_id=record.get("uuid") or ref
        )

    def list_instances(self) -> list[str]:
        return sorted(rec["name_label"] for rec in self._host_instance_records().values())

    def list_instance_uuids(self) -> list[str]:
        return sorted(vm_utils.nova_uuid(rec) for rec in self._host_instance_records().values())

    # -- spawn ---------------------------------------------------------------

    def _sr_ref(self) -> str:
        sr_ref = self._hostops.instance_sr() if self._hostops is not None else None
        if not sr_ref:
            raise nova_exception.InvalidConfiguration(
                message=f"no SR usable by host {self._session.host_address} matches [xenserver] "
                f"sr_matching_filter = {xconf.CONF.xenserver.sr_matching_filter}"
            )
        return sr_ref

    def _vm_record(
        self, instance: Any, image_meta: Any, flavor: dict[str, int], xenstore: dict, sr_ref: str
    ) -> dict:
        memory = str(flavor["memory_mb"] * MiB)
        pv = _is_pv(image_meta)
        platform = {"acpi": "1", "apic": "true", "pae": "true", "nx": "true", "timeoffset": "0"}
        if not pv:
            platform["device-model"] = "qemu-upstream-compat"
            if str(_field(instance, "os_type") or "").lower() == "windows":
                platform["viridian"] = "true"
        return {
            "name_label": instance.name,
            "name_description": f"Nova instance {instance.uuid}",
            "user_version": "1",
            "is_a_template": False,
            "affinity": self._session.host_ref,
            "memory_static_max": memory,
            "memory_dynamic_max": memory,
            "memory_dynamic_min": memory,
            "memory_static_min": memory,
            "VCPUs_params": {},
            "VCPUs_max": str(flavor["vcpus"]),
            "VCPUs_at_startup": str(flavor["vcpus"]),
            "actions_after_shutdown": "destroy",
            "actions_after_reboot": "restart",
            "actions_after_crash": "destroy",
            "PV_bootloader": "pygrub" if pv else "",
            "PV_kernel": "",
            "PV_ramdisk": "",
            "PV_args": "",
            "PV_bootloader_args": "",
            "PV_legacy_args": "",
            "HVM_boot_policy": "" if pv else "BIOS order",
            "HVM_boot_params": {} if pv else {"order": "dc"},
            "domain_type": "pv" if pv else "hvm",
            "platform": platform,
            "PCI_bus": "",
            "recommendations": "",
            "other_config": {vm_utils.NOVA_UUID_KEY: instance.uuid},
            "xenstore_data": xenstore,
            # Suspend images beside the disks: the pool's default SR may be
            # another host's local disk, from which this host cannot resume.
            "suspend_SR": sr_ref,
        }

    def _create_vdi(self, sr_ref: str, instance: Any, role: str, size: int, undo: _Undo) -> str:
        vdi = self._session.call_xenapi(
            "VDI.create",
            {
                "name_label": f"{instance.name} {role}",
                "name_description": f"{role} disk of Nova instance {instance.uuid}",
                "SR": sr_ref,
                "virtual_size": str(size),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {vm_utils.NOVA_UUID_KEY: instance.uuid, DISK_ROLE_KEY: role},
            },
        )
        undo.add(f"{role} disk {vdi}", lambda: self._session.call_xenapi("VDI.destroy", vdi))
        return vdi

    def _create_vbd(
        self, vm_ref: str, vdi_ref: str, userdevice: str, bootable: bool, cdrom: bool = False
    ) -> str:
        # Destroyed with the VM: no separate undo needed.
        return self._session.call_xenapi(
            "VBD.create",
            {
                "VM": vm_ref,
                "VDI": vdi_ref,
                "userdevice": userdevice,
                "bootable": bootable,
                "mode": "RO" if cdrom else "RW",
                "type": "CD" if cdrom else "Disk",
                "empty": False,
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            },
        )

    def _bridge_for(self, vif: Any) -> str:
        integration = xconf.CONF.xenserver.ovs_integration_bridge
        return integration or vif["network"]["bridge"]

    def _networks_by_bridge(self, network_info: Any) -> dict[str, str]:
        """network refs for every bridge ``network_info`` needs, in one XAPI call."""
        bridges = sorted({self._bridge_for(vif) for vif in network_info or []})
        if not bridges:
            return {}
        expr = " or ".join(f'field "bridge" = "{vm_utils.quote(b)}"' for b in bridges)
        found = {
            rec["bridge"]: ref for ref, rec in self._session.get_all_records_where("network", expr).items()
        }
        for bridge in bridges:
            if bridge not in found:
                raise nova_exception.NetworkNotFoundForBridge(bridge=bridge)
        return found

    def _create_vif(self, vm_ref: str, vif: Any, device: int, network_ref: str) -> str:
        mtu = (vif["network"].get("meta") or {}).get("mtu") or 1500
        return self._session.call_xenapi(
            "VIF.create",
            {
                "device": str(device),
                "network": network_ref,
                "VM": vm_ref,
                "MAC": vif["address"],
                "MTU": str(mtu),
                "other_config": {"nicira-iface-id": vif["id"], "neutron-port-id": vif["id"]},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            },
        )

    @staticmethod
    def _xenstore_data(instance: Any, network_info: Any) -> dict[str, str]:
        """What the guest reads under ``vm-data/`` (hostname, networking, metadata)."""
        data = {"vm-data/hostname": str(_field(instance, "hostname") or instance.name)}
        for vif in network_info or []:
            mac = vif["address"]
            ips = []
            gateways = []
            dns = []
            for subnet in vif["network"].get("subnets") or []:
                for ip in subnet.get("ips") or []:
                    ips.append({"ip": ip["address"], "cidr": subnet["cidr"], "version": ip.get("version")})
                gw = (subnet.get("gateway") or {}).get("address")
                if gw:
                    gateways.append(gw)
                dns.extend(d["address"] for d in subnet.get("dns") or [])
            data[f"vm-data/networking/{mac.replace(':', '').lower()}"] = json.dumps(
                {
                    "label": vif["network"].get("label"),
                    "mac": mac,
                    "vif_id": vif["id"],
                    "ips": ips,
                    "gateways": gateways,
                    "dns": dns,
                },
                sort_keys=True,
            )
        metadata = _field(instance, "metadata") or {}
        for key, value in dict(metadata).items():
            data[f"vm-data/user-metadata/{key}"] = json.dumps(value)
        return data

    @staticmethod
    def _vif_plug_events(network_info: Any) -> list[tuple[str, str]]:
        if not CONF.vif_plugging_timeout:
            return []
        return [
            ("network-vif-plugged", vif["id"])
            for vif in network_info or []
            if vif.get("active", True) is False
        ]

    def _vif_plug_failed(self, event_name: str, instance: Any) -> None:
        LOG.error("Neutron reported failure on event %s for instance %s", event_name, instance.uuid)
        if CONF.vif_plugging_is_fatal:
            raise nova_exception.VirtualInterfaceCreateException()

    @contextlib.contextmanager
    def _waiting_for_vifs(self, instance: Any, network_info: Any) -> Iterator[None]:
        events = self._vif_plug_events(network_info)
        if not events:
            yield
            return
        try:
            with self._virtapi.wait_for_instance_event(
                instance, events, timeout=CONF.vif_plugging_timeout, error_callback=self._vif_plug_failed
            ):
                yield
        except nova_exception.InstanceEventTimeout:
            LOG.warning("Timeout waiting for %s for instance %s", events, instance.uuid)
            if CONF.vif_plugging_is_fatal:
                raise nova_exception.VirtualInterfaceCreateException() from None

    def spawn(
        self,
        context: Any,
        instance: Any,
        image_meta: Any,
        injected_files: Any,
        admin_password: Any,
        allocations: Any,
        network_info: Any = None,
        block_device_info: Any = None,
        power_on: bool = True,
    ) -> None:
        volumes = driver.block_device_info_get_mapping(block_device_info)
        if volumes and self.volumeops is None:
            raise NotImplementedError("XenAPIDriver was built without volume support")
        # A root volume replaces the image disk (boot from volume).
        boot_from_volume = bool(volumes) and self.volumeops.has_root_volume(block_device_info)
        if self.lookup(instance) is not None:
            raise nova_exception.InstanceExists(name=instance.name)
        flavor = _flavor(instance)
        undo = _Undo()
        try:
            sr_ref = self._sr_ref()
            networks = self._networks_by_bridge(network_info)
            root = cd = kernel = ramdisk = None
            if not boot_from_volume:
                root = self.image_source.root_vdi(context, instance, image_meta, sr_ref)
                undo.add(f"root disk {root}", lambda: self._session.call_xenapi("VDI.destroy", root))
                self._session.call_xenapi("VDI.add_to_other_config", root, DISK_ROLE_KEY, "root")
                if flavor["root_gb"]:
                    wanted = flavor["root_gb"] * GiB
                    if int(self._session.call_xenapi("VDI.get_virtual_size", root)) < wanted:
                        self._session.call_xenapi("VDI.resize", root, str(wanted))
                cd, kernel, ramdisk = self._boot_media(context, instance, image_meta, sr_ref, undo)

            xenstore = self._xenstore_data(instance, network_info)
            record = self._vm_record(instance, image_meta, flavor, xenstore, sr_ref)
            if kernel:
                # AMI images: a PV domain booting the kernel dom0 keeps in /boot/guest.
                record.update(
                    PV_kernel=kernel,
                    PV_ramdisk=ramdisk or "",
                    PV_bootloader="",
                    PV_args="root=/dev/xvda ro",
                    HVM_boot_policy="",
                    HVM_boot_params={},
                    domain_type="pv",
                )
            vm_ref = self._session.call_xenapi("VM.create", record)
            undo.add(f"VM {vm_ref}", lambda: self._destroy_vm(vm_ref))
            self._refs[instance.uuid] = vm_ref

            if root is not None:
                # An ISO image boots from its CD; the blank root disk is for installing onto.
                self._create_vbd(vm_ref, root, DEVICE_ROOT, bootable=not cd)
            if cd:
                self._create_vbd(vm_ref, cd, DEVICE_CD, bootable=True, cdrom=True)
            if flavor["swap_mb"]:
                swap = self._create_vdi(sr_ref, instance, "swap", flavor["swap_mb"] * MiB, undo)
                self._create_vbd(vm_ref, swap, DEVICE_SWAP, bootable=False)
            if flavor["ephemeral_gb"]:
                eph = self._create_vdi(sr_ref, instance, "ephemeral", flavor["ephemeral_gb"] * GiB, undo)
                self._create_vbd(vm_ref, eph, DEVICE_EPHEMERAL, bootable=False)
            if volumes:  # undone by _destroy_vm's detach_all
                self.volumeops.attach_block_devices(vm_ref, block_device_info)
            for device, vif in enumerate(network_info or []):
                self._create_vif(vm_ref, vif, device, networks[self._bridge_for(vif)])

            if power_on:
                with self._waiting_for_vifs(instance, network_info):
                    self._start(vm_ref)
                self._wait_running(instance, vm_ref)
        except Exception:
            with contextlib.suppress(Exception):
                LOG.warning("Spawning instance %s failed; removing what was created", instance.uuid)
            undo.rollback()
            raise

    def _boot_media(
        self, context: Any, instance: Any, image_meta: Any, sr_ref: str, undo: _Undo
    ) -> tuple[str | None, str | None, str | None]:
        """The ISO CD and AMI kernel/ramdisk an image brings, if the image layer offers them."""
        cd = kernel = ramdisk = None
        cdrom_vdi = getattr(self.image_source, "cdrom_vdi", None)
        if cdrom_vdi is not None:
            cd = cdrom_vdi(context, instance, image_meta, sr_ref)
            if cd:
                undo.add(f"CD {cd}", lambda: self._session.call_xenapi("VDI.destroy", cd))
                self._session.call_xenapi("VDI.add_to_other_config", cd, DISK_ROLE_KEY, "cdrom")
        kernel_ramdisk = getattr(self.image_source, "kernel_ramdisk", None)
        if kernel_ramdisk is not None:
            kernel, ramdisk = kernel_ramdisk(context, instance, image_meta, sr_ref)
            if kernel or ramdisk:
                undo.add("kernel/ramdisk", lambda: self.image_source.remove_kernel_ramdisk(kernel, ramdisk))
        return cd, kernel, ramdisk

    def _start(self, vm_ref: str) -> None:
        try:
            self._session.call_xenapi("VM.start_on", vm_ref, self._session.host_ref, False, False)
        except xexc.XenAPIError as exc:
            if exc.code != "HOST_NOT_ENOUGH_FREE_MEMORY":
                raise
            needed, available = (exc.params + ["?", "?"])[:2]
            raise nova_exception.ComputeResourcesUnavailable(
                reason=f"XenServer host {self._session.host_address} has {available} bytes of memory "
                f"free, the VM needs {needed}"
            ) from exc

    def _wait_running(self, instance: Any, vm_ref: str) -> None:
        """XAPI reports Running once the domain is built; wait at most ``running_timeout``."""
        deadline = time.monotonic() + xconf.CONF.xenserver.running_timeout
        while True:
            state = self._session.call_xenapi("VM.get_power_state", vm_ref)
            if state == RUNNING:
                return
            if time.monotonic() >= deadline:
                raise nova_exception.InstanceInvalidState(
                    attr="power_state",
                    instance_uuid=instance.uuid,
                    state=state,
                    method=f"spawn (not Running within {xconf.CONF.xenserver.running_timeout} s)",
                )
            time.sleep(0.5)

    # -- destroy -------------------------------------------------------------

    def _hard_shutdown_if_needed(self, vm_ref: str, state: str) -> None:
        if state != HALTED:
            try:
                self._session.call_xenapi("VM.hard_shutdown", vm_ref)
            except xexc.XenAPIError as exc:
                if exc.code != "VM_BAD_POWER_STATE":
                    raise

    def _destroy_vm(
        self, vm_ref: str, destroy_disks: bool = True, keep_vdis: frozenset[str] = frozenset()
    ) -> None:
        """Shut down and destroy a VM; with ``destroy_disks``, also the disks Nova created for it."""
        record = self._session.get_rec("VM", vm_ref)
        if record is None:
            return
        self._hard_shutdown_if_needed(vm_ref, record["power_state"])
        if self.volumeops is not None:
            # Volumes go back to Cinder intact; their SRs are forgotten when unused.
            self.volumeops.detach_all(vm_ref)
        vdis = []
        if destroy_disks and record.get("VBDs"):
            expr = f'field "VM" = "{vm_utils.quote(vm_ref)}"'
            for vbd in self._session.get_all_records_where("VBD", expr).values():
                vdi = vbd.get("VDI") or vm_utils.NULL_REF
                if vbd.get("type") in ("Disk", "CD") and vdi != vm_utils.NULL_REF and vdi not in keep_vdis:
                    vdis.append(vdi)
        try:
            self._session.call_xenapi("VM.destroy", vm_ref)
        except xexc.XenAPIError as exc:
            if exc.code != "HANDLE_INVALID":
                raise
        for vdi in vdis:
            rec = self._session.get_rec("VDI", vdi)
            # Only disks Nova made for an instance; never a volume or a foreign disk.
            if rec is None or DISK_ROLE_KEY not in (rec.get("other_config") or {}):
                continue
            try:
                self._session.call_xenapi("VDI.destroy", vdi)
            except xexc.XenAPIError as exc:
                if exc.code not in ("HANDLE_INVALID", "VDI_MISSING"):
                    raise

    def destroy(
        self, instance: Any, network_info: Any, block_device_info: Any = None, destroy_disks: bool = True
    ) -> None:
        """Remove the instance's VMs; a VM or disk already gone is fine."""
        rescue = self._lookup_rescue(instance)
        found = self.lookup(instance)
        if rescue is not None:
            # The rescue VM borrows the instance's root disk: keep it for the instance.
            borrowed = frozenset()
            if found is not None:
                borrowed = frozenset(self._vdis_of(found[0]))
            self._destroy_vm(rescue[0], destroy_disks=True, keep_vdis=borrowed)
        if found is None:
            LOG.info("Instance %s has no VM on XAPI; nothing to destroy", instance.uuid)
            return
        self._destroy_vm(found[0], destroy_disks=destroy_disks)
        self._refs.pop(instance.uuid, None)

    def cleanup(
        self,
        instance: Any,
        network_info: Any,
        block_device_info: Any = None,
        destroy_disks: bool = True,
        destroy_vifs: bool = True,
    ) -> None:
        # VIFs belong to the VM, which destroy already removed; nothing else is host-local.
        return None

    def _vdis_of(self, vm_ref: str) -> list[str]:
        expr = f'field "VM" = "{vm_utils.quote(vm_ref)}"'
        return [
            v["VDI"]
            for v in self._session.get_all_records_where("VBD", expr).values()
            if v.get("VDI") and v["VDI"] != vm_utils.NULL_REF
        ]

    # -- power ---------------------------------------------------------------

    def reboot(self, instance: Any, reboot_type: str, bad_volumes_callback: Any = None) -> None:
        vm_ref, record = self._require(instance)
        state = record["power_state"]
        if state in (HALTED, SUSPENDED, PAUSED):
            # Nova reboots to make the instance run again, whatever state it is in.
            self._hard_shutdown_if_needed(vm_ref, state)
            self._start(vm_ref)
            return
        if reboot_type == "SOFT":
            try:
                # A soft reboot gets as long as Nova allows a clean shutdown.
                self._session.call_async("VM.clean_reboot", vm_ref, timeout=CONF.shutdown_timeout or None)
                return
            except xexc.XenAPIError as exc:
                LOG.warning("Soft reboot of %s failed (%s); rebooting hard", instance.uuid, exc.code)
        self._session.call_xenapi("VM.hard_reboot", vm_ref)

    def power_off(self, instance: Any, timeout: int = 0, retry_interval: int = 0) -> None:
        """Clean shutdown within ``timeout`` seconds, then hard; ``timeout=0`` means hard at once."""
        vm_ref, record = self._require(instance)
        if record["power_state"] == HALTED:
            return
        if timeout and record["power_state"] == RUNNING:
            try:
                self._session.call_async("VM.clean_shutdown", vm_ref, timeout=timeout)
                return
            except xexc.XenAPIError as exc:
                LOG.warning("Clean shutdown of %s failed (%s); forcing it off", instance.uuid, exc.code)
        self._hard_shutdown_if_needed(vm_ref, record["power_state"])

    def power_on(self, instance: Any) -> None:
        vm_ref, record = self._require(instance)
        state = record["power_state"]
        if state == HALTED:
            self._start(vm_ref)
        elif state == SUSPENDED:
            self._session.call_xenapi("VM.resume_on", vm_ref, self._session.host_ref, False, False)
        elif state == PAUSED:
            self._session.call_xenapi("VM.unpause", vm_ref)

    def pause(self, instance: Any) -> None:
        vm_ref, record = self._require(instance)
        if record["power_state"] != PAUSED:
            self._session.call_xenapi("VM.pause", vm_ref)

    def unpause(self, instance: Any) -> None:
        vm_ref, record = self._require(instance)
        if record["power_state"] == PAUSED:
            self._session.call_xenapi("VM.unpause", vm_ref)

    def suspend(self, instance: Any) -> None:
        vm_ref, record = self._require(instance)
        if record["power_state"] != SUSPENDED:
            self._session.call_xenapi("VM.suspend", vm_ref)

    def resume(self, instance: Any) -> None:
        vm_ref, record = self._require(instance)
        if record["power_state"] == SUSPENDED:
            self._session.call_xenapi("VM.resume_on", vm_ref, self._session.host_ref, False, False)

    def soft_delete(self, instance: Any) -> None:
        self.power_off(instance)

    def restore(self, instance: Any) -> None:
        self.power_on(instance)

    def resume_state_on_host_boot(self, instance: Any) -> None:
        """After a host reboot, bring the instance back to running."""
        self.power_on(instance)

    def poll_rebooting_instances(self, timeout: int, instances: Any) -> None:
        """Hard-reboot instances whose reboot has taken longer than ``timeout`` seconds."""
        for instance in instances:
            found = self.lookup(instance)
            if found is None:
                continue
            vm_ref, record = found
            LOG.info("Reboot of instance %s exceeded %s s; rebooting hard", instance.uuid, timeout)
            for task in (record.get("current_operations") or {}).keys():
                with contextlib.suppress(xexc.XenAPIError):
                    self._session.call_xenapi("task.cancel", task)
            if record["power_state"] == HALTED:
                self._start(vm_ref)
            else:
                self._session.call_xenapi("VM.hard_reboot", vm_ref)

    def trigger_crash_dump(self, instance: Any) -> None:
        raise NotImplementedError()

    # -- rescue --------------------------------------------------------------

    def rescue(
        self, context: Any, instance: Any, network_info: Any, image_meta: Any, rescue_password: str
    ) -> None:
        """Boot a rescue VM from the rescue image that sees the instance's root disk as a second disk."""
        if self._lookup_rescue(instance) is not None:
            raise nova_exception.InstanceNotRescuable(instance_id=instance.uuid, reason="already in rescue")
        vm_ref, record = self._require(instance)
        flavor = _flavor(instance)
        root_of_instance = self._root_vdi(vm_ref)
        undo = _Undo()
        try:
            sr_ref = self._sr_ref()
            rescue_root = self.image_source.root_vdi(context, instance, image_meta, sr_ref)
            undo.add(
                f"rescue disk {rescue_root}", lambda: self._session.call_xenapi("VDI.destroy", rescue_root)
            )
            self._session.call_xenapi("VDI.add_to_other_config", rescue_root, DISK_ROLE_KEY, "rescue-root")
            xenstore = self._xenstore_data(instance, network_info)
            vm_record = self._vm_record(instance, image_meta, flavor, xenstore, sr_ref)
            vm_record["name_label"] = instance.name + vm_utils.RESCUE_SUFFIX
            vm_record["name_description"] = f"Rescue VM of Nova instance {instance.uuid}"
            vm_record["other_config"] = {vm_utils.NOVA_UUID_KEY: instance.uuid, vm_utils.RESCUE_KEY: "true"}
            self._hard_shutdown_if_needed(vm_ref, record["power_state"])
            undo.add("instance power", lambda: self._start(vm_ref))
            rescue_ref = self._session.call_xenapi("VM.create", vm_record)
            undo.add(f"rescue VM {rescue_ref}", lambda: self._destroy_vm(rescue_ref, destroy_disks=False))
            self._create_vbd(rescue_ref, rescue_root, DEVICE_ROOT, bootable=True)
            if root_of_instance is not None:
                self._create_vbd(rescue_ref, root_of_instance, DEVICE_RESCUE_ORIGINAL_ROOT, bootable=False)
            self._start(rescue_ref)
        except Exception:
            undo.rollback()
            raise

    def _root_vdi(self, vm_ref: str) -> str | None:
        expr = f'field "VM" = "{vm_utils.quote(vm_ref)}" and field "userdevice" = "{DEVICE_ROOT}"'
        for vbd in self._session.get_all_records_where("VBD", expr).values():
            if vbd.get("VDI") and vbd["VDI"] != vm_utils.NULL_REF:
                return vbd["VDI"]
        return None

    def unrescue(self, instance: Any) -> None:
        """Destroy the rescue VM (keeping the instance's disk) and start the instance again.

        An instance not in rescue is left as it is: there is nothing to undo.
        """
        rescue = self._lookup_rescue(instance)
        if rescue is None:
            LOG.info("Instance %s is not in rescue; nothing to unrescue", instance.uuid)
            return
        vm_ref, record = self._require(instance)
        borrowed = frozenset(self._vdis_of(vm_ref))
        self._destroy_vm(rescue[0], destroy_disks=True, keep_vdis=borrowed)
        if record["power_state"] == HALTED:
            self._start(vm_ref)

    # -- interfaces ------------------------------------------------------------

    def attach_interface(self, instance: Any, vif: Any) -> None:
        vm_ref, record = self._require(instance)
        networks = self._networks_by_bridge([vif])
        used = {int(v["device"]) for v in self._vifs(vm_ref).values() if str(v.get("device", "")).isdigit()}
        device = next(n for n in range(len(used) + 1) if n not in used)
        vif_ref = self._create_vif(vm_ref, vif, device, networks[self._bridge_for(vif)])
        if record["power_state"] == RUNNING:
            try:
                self._session.call_xenapi("VIF.plug", vif_ref)
            except Exception:
                with contextlib.suppress(xexc.XenAPIError):
                    self._session.call_xenapi("VIF.destroy", vif_ref)
                raise nova_exception.InterfaceAttachFailed(instance_uuid=instance.uuid) from None

    def detach_interface(self, instance: Any, vif: Any) -> None:
        found = self.lookup(instance)
        if found is None:
            return
        vm_ref, record = found
        for vif_ref, rec in self._vifs(vm_ref).items():
            if rec.get("MAC", "").lower() == str(vif["address"]).lower():
                if rec.get("currently_attached"):
                    self._session.call_xenapi("VIF.unplug", vif_ref)
                self._session.call_xenapi("VIF.destroy", vif_ref)

    def _vifs(self, vm_ref: str) -> dict[str, dict[str, Any]]:
        return self._session.get_all_records_where("VIF", f'field "VM" = "{vm_utils.quote(vm_ref)}"')

    # -- diagnostics -------------------------------------------------------------

    def get_diagnostics(self, instance: Any) -> dict[str, Any]:
        vm_ref, record = self._require(instance)
        metrics = self._session.get_rec("VM_metrics", record["metrics"]) or {}
        diags: dict[str, Any] = {
            "power_state": record["power_state"],
            "memory": int(metrics.get("memory_actual") or 0),
            "vcpus": int(metrics.get("VCPUs_number") or 0),
        }
        for cpu, value in (metrics.get("VCPUs_utilisation") or {}).items():
            diags[f"cpu{cpu}_utilisation"] = float(value)
        return diags

    def get_instance_diagnostics(self, instance: Any) -> Any:
        from nova.objects import diagnostics

        vm_ref, record = self._require(instance)
        metrics = self._session.get_rec("VM_metrics", record["metrics"]) or {}
        diags = diagnostics.Diagnostics(
            state=power_state.STATE_MAP.get(vm_utils.to_power_state(record["power_state"]), "pending"),
            driver="xenapi",
            hypervisor="xen",
            hypervisor_os="linux",
            config_drive=False,
        )
        diags.memory_details = diagnostics.MemoryDiagnostics(
            maximum=int(record.get("memory_static_max") or 0) // MiB,
            used=int(metrics.get("memory_actual") or 0) // MiB,
        )
        for _cpu, value in sorted((metrics.get("VCPUs_utilisation") or {}).items()):
            diags.add_cpu(utilisation=int(float(value) * 100))
        return diags
