"""init_host refuses to start when the managed host's dom0 plug-ins are missing or too old."""

from __future__ import annotations

from typing import Any

import pytest

from nova.virt import fake
from xenapi_driver import exception
from xenapi_driver.driver import XenAPIDriver

VERSION_PLUGIN = "dom0_plugin_version"


def _plugin_file(host: Any) -> Any:
    return host.root / "etc" / "xapi.d" / "plugins" / VERSION_PLUGIN


def test_init_host_checks_the_plugin_version(xenserver_conf: None) -> None:
    drv = XenAPIDriver(fake.FakeVirtAPI())
    drv.init_host("compute-1")
    drv.cleanup_host("compute-1")


def test_missing_plugins_refuse_start_with_the_install_command(
    xenserver_conf: None, managed_host: Any
) -> None:
    plugin = _plugin_file(managed_host)
    saved = plugin.read_bytes()
    plugin.unlink()
    drv = XenAPIDriver(fake.FakeVirtAPI())
    try:
        with pytest.raises(exception.XenAPIPluginVersionError, match="install-plugins"):
            drv.init_host("compute-1")
    finally:
        plugin.write_bytes(saved)
        plugin.chmod(0o755)
        drv.cleanup_host("compute-1")


def test_older_plugins_refuse_start(xenserver_conf: None, managed_host: Any) -> None:
    plugin = _plugin_file(managed_host)
    saved = plugin.read_bytes()
    text = saved.decode()
    assert "return dom0_utils.PLUGIN_VERSION" in text
    plugin.write_text(text.replace("return dom0_utils.PLUGIN_VERSION", 'return "0.9"'))
    drv = XenAPIDriver(fake.FakeVirtAPI())
    try:
        with pytest.raises(exception.XenAPIPluginVersionError):
            drv.init_host("compute-1")
    finally:
        plugin.write_bytes(saved)
        drv.cleanup_host("compute-1")
