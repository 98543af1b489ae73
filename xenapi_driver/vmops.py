"""Instance lifecycle on XAPI: the VM side of :class:`~xenapi_driver.driver.XenAPIDriver`.

The driver passes Nova's calls here with only the arguments XAPI needs, so
this module can be exercised directly against the simulator. Operations not
implemented yet raise ``NotImplementedError``, which Nova's generic driver
tests report as "does not implement".
"""

from __future__ import annotations

from typing import Any


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

    def get_info(self, instance: Any) -> Any:
        raise NotImplementedError()

    def list_instances(self) -> list[str]:
        raise NotImplementedError()

    def list_instance_uuids(self) -> list[str]:
        raise NotImplementedError()

    def get_diagnostics(self, instance: Any) -> Any:
        raise NotImplementedError()

    def get_instance_diagnostics(self, instance: Any) -> Any:
        raise NotImplementedError()
