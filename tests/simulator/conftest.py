"""Fixtures for the simulator's tests: a running pool and SDK sessions.

Everything goes through the real ``XenAPI`` SDK over HTTP on loopback.
"""

from __future__ import annotations

import contextlib
import xmlrpc.client

import pytest
import XenAPI

from xenapi_driver.simulator import api


@pytest.fixture(scope="module")
def sim():
    """A 3-host pool shared by one test module (reset between modules)."""
    s = api.start(hosts=3)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def session(sim):
    """A logged-in SDK session on the master; logged out afterwards."""
    s = XenAPI.Session(sim.url)
    s.xenapi.login_with_password(sim.username, sim.password, "1.0", "sim-tests")
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.xenapi.session.logout()
        s.close() if hasattr(s, "close") else None


@pytest.fixture
def xapi(session):
    return session.xenapi


@pytest.fixture
def raw(sim, session):
    """A bare XML-RPC proxy (no SDK unwrapping) plus the session ref."""
    proxy = xmlrpc.client.ServerProxy(sim.url)
    return proxy, session._session


def _failure(call, *args):
    """Run an SDK call expected to fail; return ErrorDescription."""
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details


@pytest.fixture
def failure():
    """``failure(call, *args)`` -> the XAPI ErrorDescription the call raised."""
    return _failure
