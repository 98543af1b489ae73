"""The managed XenServer host: resources, placement inventory and host actions.

Everything here reads XAPI records in bulk so that the cost of a periodic
resource update does not grow with the number of VMs on the host. Operations
not implemented yet raise ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any


class HostOps:
    """Host-level operations for the one host a nova-compute manages."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def init_host(self, host: str) -> None:
        """Check the managed host is reachable; Nova calls this once at start-up."""
        raise NotImplementedError()

    def get_host_ip_addr(self) -> str:
        raise NotImplementedError()

    def get_available_nodes(self, refresh: bool = False) -> list[str]:
        raise NotImplementedError()

    def get_available_resource(self, nodename: str) -> dict[str, Any]:
        raise NotImplementedError()

    def update_provider_tree(
        self, provider_tree: Any, nodename: str, allocations: Any = None, traits: Any = None
    ) -> None:
        raise NotImplementedError()

    def get_host_uptime(self) -> str:
        raise NotImplementedError()

    def get_host_cpu_stats(self) -> dict[str, Any]:
        raise NotImplementedError()

    def set_host_enabled(self, enabled: bool) -> str:
        raise NotImplementedError()

    def host_power_action(self, action: str) -> str:
        raise NotImplementedError()

    def host_maintenance_mode(self, host: str, mode: bool) -> str:
        raise NotImplementedError()
