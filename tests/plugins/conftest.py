"""Fixtures for the dom0 plug-in tests: sandboxes, a XAPI double, a plug-in caller."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _path in (_REPO_ROOT, _HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from xapi_double import XapiDouble  # noqa: E402

from xenapi_driver.simulator.dom0 import Dom0Sandbox, prepare_sandbox  # noqa: E402

SESSION = "OpaqueRef:plugin-test-session"


@pytest.fixture
def xapi() -> Iterator[XapiDouble]:
    double = XapiDouble()
    try:
        yield double
    finally:
        double.stop()


class Hosts:
    """Creates dom0 sandboxes, each a host of the XAPI double with its own address."""

    def __init__(self, base: Path, xapi: XapiDouble) -> None:
        self.base = base
        self.xapi = xapi
        self.created: list[Dom0Sandbox] = []

    def new(self, address: str = "127.0.0.1", name: str | None = None) -> Dom0Sandbox:
        sr_uuid = str(uuid.uuid4())
        host_uuid = self.xapi.add_host(address, sr_uuid=sr_uuid)
        root = self.base / (name or f"dom0-{len(self.created)}")
        sandbox = prepare_sandbox(root, host_uuid=host_uuid, xapi_url=self.xapi.url, local_sr_uuid=sr_uuid)
        sandbox.address = address  # type: ignore[attr-defined]
        self.created.append(sandbox)
        return sandbox

    def stop(self) -> None:
        for sandbox in self.created:
            sandbox.stop_sshd()


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


def call(sandbox: Dom0Sandbox, plugin: str, fn: str, _timeout: float = 60, **args: str) -> str:
    """host.call_plugin on ``sandbox`` (string arguments, as XAPI passes them)."""
    return sandbox.call_plugin(plugin, fn, {k: str(v) for k, v in args.items()}, SESSION, timeout=_timeout)
