"""Fixtures for the dom0 plug-in tests: sandboxes, a XAPI double, a plug-in caller."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _path in (_REPO_ROOT, _HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from plugin_helpers import Hosts  # noqa: E402
from xapi_double import XapiDouble  # noqa: E402

from xenapi_driver.simulator.dom0 import Dom0Sandbox  # noqa: E402


@pytest.fixture
def xapi() -> Iterator[XapiDouble]:
    double = XapiDouble()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def hosts(tmp_path, xapi) -> Iterator[Hosts]:
    factory = Hosts(tmp_path, xapi)
    try:
        yield factory
    finally:
        factory.stop()


@pytest.fixture
def dom0(hosts) -> Dom0Sandbox:
    return hosts.new("127.0.0.1", "dom0")
