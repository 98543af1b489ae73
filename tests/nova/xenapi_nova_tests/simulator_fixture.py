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
        from xenapi_driver import conf as xconf

        xconf.register_opts(xconf.CONF)  # as loading the driver would
        self.test.flags(
            connection_url=self.host.url,
            connection_username=self.simulator.username,
            connection_password=self.simulator.password,
            image_handler="vdi_remote_stream",
            group="xenserver",
        )


class BlankImageSource:
    """Stands in for the image layer (a later issue): a blank root VDI made with real XAPI calls.

    Nova's fake Glance images carry no data, so the lifecycle is exercised on
    an empty disk; image fetching is proven where it is implemented.
    """

    def __init__(self, session: Any, size: int = 1024**3) -> None:
        self.session = session
        self.size = size

    def root_vdi(self, context: Any, instance: Any, image_meta: Any, sr_ref: str) -> str:
        return self.session.call_xenapi(
            "VDI.create",
            {
                "name_label": f"image for {instance.name}",
                "SR": sr_ref,
                "virtual_size": str(self.size),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            },
        )


def add_network(simulator: Any, bridge: str, pool: int = 0) -> str:
    """A XenServer network for ``bridge``, as an operator would have created for Neutron."""
    return simulator.pools[pool].db.create(
        "network", name_label=f"network for {bridge}", bridge=bridge, MTU=1500, managed=True
    )


def prepare_driver(driver: Any) -> None:
    """Give a connected XenAPIDriver the stand-in image layer."""
    driver.vmops.image_source = BlankImageSource(driver._session)
