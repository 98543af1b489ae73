"""Fixtures for image-layer tests: the XAPI simulator, a loopback Glance and Nova's image API.

Everything real: the simulator over XML-RPC with the real XenAPI SDK, the
real dom0 ``glance``/``kernel`` plug-ins run as processes in the simulated
dom0, Nova's own ``nova.image.glance.API`` (glanceclient) talking HTTP to a
loopback Glance, VHD files written and read with the VHD library.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("xenapi_driver.simulator.api", reason="the XAPI simulator has not landed")

sys.path.insert(0, str(Path(__file__).parent))

import nova.conf  # noqa: E402
import nova.context  # noqa: E402

from nova import objects  # noqa: E402
from tests.glance_server import TOKEN, GlanceServer  # noqa: E402
from xenapi_driver.session import XenAPISession  # noqa: E402
from xenapi_driver.simulator import api  # noqa: E402

CONF = nova.conf.CONF
objects.register_all()


@pytest.fixture(scope="module")
def simulator() -> Iterator[Any]:
    sim = api.start(hosts=1)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def glance() -> Iterator[GlanceServer]:
    server = GlanceServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sim(simulator: Any) -> Any:
    simulator.reset()
    return simulator


@pytest.fixture
def conf(sim: Any, glance: GlanceServer) -> Iterator[Any]:
    """nova.conf as an operator would write it; tests override handler and cache options."""
    overrides = {
        ("api_servers", "glance"): [glance.endpoint],
        ("connection_url", "xenserver"): sim.pool.master.url,
        ("connection_username", "xenserver"): sim.username,
        ("connection_password", "xenserver"): sim.password,
        ("cache_images", "xenserver"): "none",
        ("vhd_coalesce_poll_interval", "xenserver"): 0.0,
        ("vhd_coalesce_max_attempts", "xenserver"): 3,
    }
    for (name, group), value in overrides.items():
        CONF.set_override(name, value, group=group)
    try:
        yield CONF
    finally:
        for name, group in overrides:
            CONF.clear_override(name, group=group)
        for name in ("image_handler", "cache_images", "image_compression_level"):
            CONF.clear_override(name, group="xenserver")


@pytest.fixture
def session(conf: Any) -> Iterator[XenAPISession]:
    s = XenAPISession.from_conf()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def context() -> Any:
    return nova.context.RequestContext("user-1", "project-1", auth_token=TOKEN, is_admin=False)


@pytest.fixture
def sr_ref(sim: Any) -> str:
    return sim.pool.master.local_sr


@pytest.fixture
def sr_dir(sim: Any, sr_ref: str) -> Path:
    uuid = sim.pool.db.get("SR", sr_ref)["uuid"]
    return sim.pool.master.sr_path(uuid)
