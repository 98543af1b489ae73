"""XenAPIDriver plus the delegation lines proposed for driver.py (volumes, agent, consoles).

Used by tests/volumes/test_driver_wiring.py and by the REST test
(tests/volumes/rest/volume_rest_cases.py) until driver.py carries these lines
itself; then this subclass adds nothing and can go.
"""

from xenapi_driver import agent, console, volumeops
from xenapi_driver.driver import XenAPIDriver


class WiredDriver(XenAPIDriver):
    capabilities = dict(XenAPIDriver.capabilities, supports_extend_volume=True)

    def _connect(self):
        super()._connect()
        lookup = self._vmops.lookup
        self._volumeops = volumeops.VolumeOps(self._session, lookup=lookup)
        self._agentops = agent.AgentOps(self._session, lookup=lookup)
        self._consoleops = console.ConsoleOps(self._session, lookup=lookup)

    def cleanup_host(self, host):
        consoleops, self._consoleops = getattr(self, "_consoleops", None), None
        if consoleops is not None:
            consoleops.close()
        super().cleanup_host(host)

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
