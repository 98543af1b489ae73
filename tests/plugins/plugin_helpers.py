"""Helpers shared by the plug-in tests (a module of its own: every test area has a conftest)."""

from __future__ import annotations

import uuid
from pathlib import Path

from xapi_double import XapiDouble

from xenapi_driver.simulator.dom0 import Dom0Sandbox, prepare_sandbox

SESSION = "OpaqueRef:plugin-test-session"


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


def call(sandbox: Dom0Sandbox, plugin: str, fn: str, _timeout: float = 60, **args: str) -> str:
    """host.call_plugin on ``sandbox`` (string arguments, as XAPI passes them)."""
    return sandbox.call_plugin(plugin, fn, {k: str(v) for k, v in args.items()}, SESSION, timeout=_timeout)
