"""Fixtures for driver tests: a simulated pool and XenAPIDriver configured for it.

The driver is configured exactly as an operator would (``[xenserver]``
options on Nova's CONF) and talks to the simulator over real XML-RPC with the
real XenAPI SDK. VMs a test needs are seeded in the simulator's database and
then driven with real XAPI calls where the test is about their state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("xenapi_driver.simulator.api", reason="the XAPI simulator has not landed")

import nova.conf  # noqa: E402

from nova import objects  # noqa: E402
from nova.virt import fake  # noqa: E402
from tests import simulated_pool  # noqa: E402
from xenapi_driver.driver import XenAPIDriver  # noqa: E402

CONF = nova.conf.CONF
objects.register_all()  # Nova's Instance object must be registered before use

# The simulated pool's fixtures (tests/simulated_pool.py); the driver manages the member, host 1.
simulator = simulated_pool.simulator
sim = simulated_pool.sim
managed_host = simulated_pool.managed_host


@pytest.fixture
def xenserver_conf(sim: Any, managed_host: Any) -> Iterator[None]:
    overrides = {
        "connection_url": managed_host.url,
        "connection_username": sim.username,
        "connection_password": sim.password,
    }
    for name, value in overrides.items():
        CONF.set_override(name, value, group="xenserver")
    try:
        yield
    finally:
        for name in overrides:
            CONF.clear_override(name, group="xenserver")


@pytest.fixture
def driver(xenserver_conf: None) -> Iterator[XenAPIDriver]:
    drv = XenAPIDriver(fake.FakeVirtAPI())
    drv.init_host("compute-1")
    try:
        yield drv
    finally:
        drv.cleanup_host("compute-1")
