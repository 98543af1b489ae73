"""XenAPIDriver plus the changes proposed for driver.py and vmops.py (volumes, agent, consoles).

Used by tests/volumes/test_driver_wiring.py and the REST test
(tests/volumes/rest/volume_rest_cases.py) until driver.py and vmops.py carry
these changes themselves; then this module adds nothing and can go.

``WiredVMOps.spawn`` is ``VMOps.spawn`` as of commit 8ec3936 with the proposed
boot-from-volume change (marked ``# volumes:``); ``_destroy_vm`` adds the
volume detach before ``VM.destroy``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from nova import exception as nova_exception
from nova.virt import driver as nova_driver
from xenapi_driver import agent, console, hostops, vmops, volumeops
from xenapi_driver.driver import XenAPIDriver
from xenapi_driver.vmops import DEVICE_EPHEMERAL, DEVICE_ROOT, DEVICE_SWAP, DISK_ROLE_KEY, GiB, MiB, _flavor


class WiredVMOps(vmops.VMOps):
    def __init__(
        self, session: Any, virtapi: Any, hostops: Any = None, image_source: Any = None, volumeops=None
    ):
        super().__init__(session, virtapi, hostops=hostops, image_source=image_source)
        self.volumeops = volumeops  # volumes:

    def _destroy_vm(self, vm_ref, destroy_disks=True, keep_vdis=frozenset()):
        # volumes: detach every volume (and forget unused volume SRs) before VM.destroy.
        record = self._session.get_rec("VM", vm_ref)
        if record is not None and self.volumeops is not None:
            self._hard_shutdown_if_needed(vm_ref, record["power_state"])
            self.volumeops.detach_all(vm_ref)
        super()._destroy_vm(vm_ref, destroy_disks=destroy_disks, keep_vdis=keep_vdis)

    def spawn(
        self,
        context,
        instance,
        image_meta,
        injected_files,
        admin_password,
        allocations,
        network_info=None,
        block_device_info=None,
        power_on=True,
    ):
        # volumes: the refusal of block_device_info is gone; a root volume replaces the image disk.
        volumes = nova_driver.block_device_info_get_mapping(block_device_info)
        boot_from_volume = bool(volumes) and self.volumeops.has_root_volume(block_device_info)
        if self.lookup(instance) is not None:
            raise nova_exception.InstanceExists(name=instance.name)
        flavor = _flavor(instance)
        undo = vmops._Undo()
        try:
            sr_ref = self._sr_ref()
            networks = self._networks_by_bridge(network_info)
            root = None
            if not boot_from_volume:  # volumes:
                root = self.image_source.root_vdi(context, instance, image_meta, sr_ref)
                undo.add(f"root disk {root}", lambda: self._session.call_xenapi("VDI.destroy", root))
                self._session.call_xenapi("VDI.add_to_other_config", root, DISK_ROLE_KEY, "root")
                if flavor["root_gb"]:
                    wanted = flavor["root_gb"] * GiB
                    if int(self._session.call_xenapi("VDI.get_virtual_size", root)) < wanted:
                        self._session.call_xenapi("VDI.resize", root, str(wanted))

            xenstore = self._xenstore_data(instance, network_info)
            record = self._vm_record(instance, image_meta, flavor, xenstore, sr_ref)
            vm_ref = self._session.call_xenapi("VM.create", record)
            undo.add(f"VM {vm_ref}", lambda: self._destroy_vm(vm_ref))
            self._refs[instance.uuid] = vm_ref

            if root is not None:  # volumes:
                self._create_vbd(vm_ref, root, DEVICE_ROOT, bootable=True)
            if flavor["swap_mb"]:
                swap = self._create_vdi(sr_ref, instance, "swap", flavor["swap_mb"] * MiB, undo)
                self._create_vbd(vm_ref, swap, DEVICE_SWAP, bootable=False)
            if flavor["ephemeral_gb"]:
                eph = self._create_vdi(sr_ref, instance, "ephemeral", flavor["ephemeral_gb"] * GiB, undo)
                self._create_vbd(vm_ref, eph, DEVICE_EPHEMERAL, bootable=False)
            if volumes:  # volumes: (undone by _destroy_vm's detach_all)
                self.volumeops.attach_block_devices(vm_ref, block_device_info)
            for device, vif in enumerate(network_info or []):
                self._create_vif(vm_ref, vif, device, networks[self._bridge_for(vif)])

            if power_on:
                with self._waiting_for_vifs(instance, network_info):
                    self._start(vm_ref)
                self._wait_running(instance, vm_ref)
        except Exception:
            with contextlib.suppress(Exception):
                vmops.LOG.warning("Spawning instance %s failed; removing what was created", instance.uuid)
            undo.rollback()
            raise


class WiredDriver(XenAPIDriver):
    capabilities = dict(XenAPIDriver.capabilities, supports_extend_volume=True)

    def _connect(self):
        from xenapi_driver.session import XenAPISession

        session = XenAPISession.from_conf()
        self._session = session
        self._hostops = hostops.HostOps(session)
        self._volumeops = volumeops.VolumeOps(session)
        self._vmops = WiredVMOps(session, self.virtapi, hostops=self._hostops, volumeops=self._volumeops)
        self._volumeops.lookup = self._vmops.lookup
        self._agentops = agent.AgentOps(session, lookup=self._vmops.lookup)
        self._consoleops = console.ConsoleOps(session, lookup=self._vmops.lookup)

    def cleanup_host(self, host):
        consoleops, self._consoleops = getattr(self, "_consoleops", None), None
        if consoleops is not None:
            consoleops.close()
        super().cleanup_host(host)

    def spawn(
        self,
        context,
        instance,
        image_meta,
        injected_files,
        admin_password,
        allocations,
        network_info=None,
        block_device_info=None,
        power_on=True,
        accel_info=None,
    ):
        super().spawn(
            context,
            instance,
            image_meta,
            injected_files,
            admin_password,
            allocations,
            network_info=network_info,
            block_device_info=block_device_info,
            power_on=power_on,
        )
        if power_on:
            self._agentops.configure_new_instance(instance, image_meta, injected_files, admin_password)

    def get_volume_connector(self, instance):
        return self._volumeops.get_volume_connector(instance)

    def attach_volume(
        self, context, connection_info, instance, mountpoint, disk_bus=None, device_type=None, encryption=None
    ):
        self._volumeops.attach_volume(connection_info, instance, mountpoint, encryption=encryption)

    def detach_volume(self, context, connection_info, instance, mountpoint, encryption=None):
        self._volumeops.detach_volume(connection_info, instance, mountpoint)

    def swap_volume(self, context, old_connection_info, new_connection_info, instance, mountpoint, resize_to):
        self._volumeops.swap_volume(old_connection_info, new_connection_info, instance, mountpoint, resize_to)

    def extend_volume(self, context, connection_info, instance, requested_size):
        self._volumeops.extend_volume(connection_info, instance, requested_size)

    def set_admin_password(self, instance, new_pass):
        self._agentops.set_admin_password(instance, new_pass)

    def get_console_output(self, context, instance):
        return self._consoleops.get_console_output(instance)

    def get_vnc_console(self, context, instance):
        return self._consoleops.get_vnc_console(instance)
