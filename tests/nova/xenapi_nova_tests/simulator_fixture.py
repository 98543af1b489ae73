"""Connect a Nova test to the in-process XAPI simulator.

One simulator per test class (starting one is the slow part), reset before
each test so tests stay independent; the driver is pointed at it through the
real ``[xenserver]`` options, exactly as an operator configures nova.conf.
"""

from __future__ import annotations

from typing import Any

import fixtures


def start_simulator(hosts: int = 1) -> Any:
    """Start an in-process simulated pool; the caller stops it."""
    from xenapi_driver.simulator import api

    return api.start(hosts=hosts, pools=1)


class XenServerConfFixture(fixtures.Fixture):
    """Point ``[xenserver]`` at a simulated host (the pool master by default)."""

    def __init__(self, test: Any, simulator: Any, pool: int = 0, host: int = 0) -> None:
        super().__init__()
        self.test = test
        self.simulator = simulator
        self.host = simulator.pools[pool].hosts[host]

    def _setUp(self) -> None:
        self.test.flags(
            connection_url=self.host.url,
            connection_username=self.simulator.username,
            connection_password=self.simulator.password,
            group="xenserver",
        )
