"""A simulated two-host pool per test module, shared by the fixtures of several test areas.

tests/driver, tests/volumes (and through it tests/agent, tests/console) and
tests/resize all start the same XAPI simulator pool; the fixtures live here
once and each area's conftest imports them (tests/ is no package of test
modules, so this is imported as ``tests.simulated_pool`` like ``tests.sshd``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from xenapi_driver.simulator import api


@contextlib.contextmanager
def running_pool(hosts: int = 2) -> Iterator[Any]:
    """A started simulator with one pool of ``hosts`` hosts, stopped on exit."""
    sim = api.start(hosts=hosts)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def simulator() -> Iterator[Any]:
    """A two-host pool for the module; tests get it reset through ``sim``."""
    with running_pool(hosts=2) as sim:
        yield sim


@pytest.fixture
def sim(simulator: Any) -> Any:
    simulator.reset()
    return simulator


@pytest.fixture
def managed_host(sim: Any) -> Any:
    """The driver manages the pool member (host 1), so every call crosses the master."""
    return sim.pools[0].hosts[1]
