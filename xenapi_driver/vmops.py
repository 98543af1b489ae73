"""Instance lifecycle on XAPI: the VM side of :class:`~xenapi_driver.driver.XenAPIDriver`.

The driver passes Nova's calls here with only the arguments XAPI needs, so
this module can be exercised directly against the simulator. Operations not
implemented yet raise ``NotImplementedError``, which Nova's generic driver
tests report as "does not implement".
"""

from __future__ import annotations

from typing import Any

from nova import exception as nova_exception
from nova.virt import hardware
from xenapi_driver import vm_utils


class VMOps:
    """Maps Nova instances to XAPI VMs and drives their lifecycle."""

    def __init__(self, session: Any, virtapi: Any) -> None:
        self._session = session
        self._virtapi = virtapi

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
        raise NotImplementedError()

    def destroy(
        self, instance: Any, network_info: Any, block_device_info: Any = None, destroy_disks: bool = True
    ) -> None:
        raise NotImplementedError()

    def cleanup(
        self,
        instance: Any,
        network_info: Any,
        block_device_info: Any = None,
        destroy_disks: bool = True,
        destroy_vifs: bool = True,
    ) -> None:
        raise NotImplementedError()

    def reboot(self, instance: Any, reboot_type: str, bad_volumes_callback: Any = None) -> None:
        raise NotImplementedError()

    def power_off(self, instance: Any, timeout: int = 0, retry_interval: int = 0) -> None:
        raise NotImplementedError()

    def power_on(self, instance: Any) -> None:
        raise NotImplementedError()

    def pause(self, instance: Any) -> None:
        raise NotImplementedError()

    def unpause(self, instance: Any) -> None:
        raise NotImplementedError()

    def suspend(self, instance: Any) -> None:
        raise NotImplementedError()

    def resume(self, instance: Any) -> None:
        raise NotImplementedError()

    def soft_delete(self, instance: Any) -> None:
        raise NotImplementedError()

    def restore(self, instance: Any) -> None:
        raise NotImplementedError()

    def rescue(
        self, context: Any, instance: Any, network_info: Any, image_meta: Any, rescue_password: str
    ) -> None:
        raise NotImplementedError()

    def unrescue(self, instance: Any) -> None:
        raise NotImplementedError()

    def resume_state_on_host_boot(self, instance: Any) -> None:
        raise NotImplementedError()

    def poll_rebooting_instances(self, timeout: int, instances: Any) -> None:
        raise NotImplementedError()

    def trigger_crash_dump(self, instance: Any) -> None:
        raise NotImplementedError()

    def attach_interface(self, instance: Any, vif: Any) -> None:
        raise NotImplementedError()

    def detach_interface(self, instance: Any, vif: Any) -> None:
        raise NotImplementedError()

    # -- lookups: one XAPI call each, however many VMs the pool has ---------

    def _host_instance_records(self) -> dict[str, dict[str, Any]]:
        """Records of this host's instance VMs, in one ``get_all_records_where``."""
        host_ref = self._session.host_ref
        records = self._session.get_all_records_where("VM", vm_utils.guests_of_host_expr(host_ref))
        return vm_utils.instance_vms_of_host(records, host_ref)

    def lookup(self, instance: Any) -> tuple[str, dict[str, Any]] | None:
        """``(ref, record)`` of the instance's VM, or None (one XAPI call)."""
        records = self._session.get_all_records_where("VM", vm_utils.instance_by_name_expr(instance.name))
        return vm_utils.pick_instance_vm(records, instance.uuid)

    def get_info(self, instance: Any) -> hardware.InstanceInfo:
        found = self.lookup(instance)
        if found is None:
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        ref, record = found
        return hardware.InstanceInfo(
            state=vm_utils.to_power_state(record["power_state"]), internal_id=record.get("uuid") or ref
        )

    def list_instances(self) -> list[str]:
        return sorted(rec["name_label"] for rec in self._host_instance_records().values())

    def list_instance_uuids(self) -> list[str]:
        return sorted(vm_utils.nova_uuid(rec) for rec in self._host_instance_records().values())

    def get_diagnostics(self, instance: Any) -> Any:
        raise NotImplementedError()

    def get_instance_diagnostics(self, instance: Any) -> Any:
        raise NotImplementedError()
