"""The dom0 sandbox and XAPI's plug-in protocol as Dom0Sandbox.call_plugin runs it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
from plugin_helpers import SESSION, call

from xenapi_driver.simulator.dom0 import XapiError, dom0_python, plugin_files, prepare_sandbox

PLUGINS = [p for p in plugin_files()]
EXECUTABLES = [p for p in PLUGINS if not p.name.endswith(".py")]


def _write_plugin(sandbox, name: str, body: str) -> None:
    path = sandbox.plugins_dir / name
    path.write_text("#!/usr/bin/env python3\n" + body)
    path.chmod(0o755)


def test_layout_follows_the_deployment_guide(dom0):
    root = dom0.root
    assert os.readlink(root / "images") == f"var/run/sr-mount/{dom0.local_sr_uuid}/os-images"
    assert (root / "images").resolve() == dom0.sr_path() / "os-images"
    assert (root / "boot/guest").resolve() == dom0.sr_path() / "os-guest-kernels"
    for plugin in EXECUTABLES:
        installed = dom0.plugins_dir / plugin.name
        assert installed.read_bytes() == plugin.read_bytes()
        assert os.access(installed, os.X_OK), plugin.name
    for tool in (
        "vhd-util",
        "xenstore-read",
        "xenstore-write",
        "xenstore-rm",
        "xenstore-ls",
        "xenstore-exists",
    ):
        assert os.access(dom0.bin_dir / tool, os.X_OK), tool
    assert (root / "lib/XenAPIPlugin.py").is_file()
    assert f"INSTALLATION_UUID='{dom0.host_uuid}'" in (root / "etc/xensource-inventory").read_text()


def test_prepare_is_idempotent(dom0):
    marker = dom0.sr_path() / "os-images" / "keep"
    marker.write_text("x")
    again = prepare_sandbox(
        dom0.root, host_uuid=dom0.host_uuid, xapi_url=dom0.xapi_url, local_sr_uuid=dom0.local_sr_uuid
    )
    assert marker.read_text() == "x"
    assert again.call_plugin("dom0_plugin_version", "get_version", {}, SESSION) == "1.1"


def test_version_plugin(dom0):
    assert call(dom0, "dom0_plugin_version", "get_version") == "1.1"


def test_missing_plugin(dom0):
    for name in ("no_such_plugin", "../dom0_plugin_version", "dom0_utils.py/x", ""):
        with pytest.raises(XapiError) as err:
            call(dom0, name, "get_version")
        assert err.value.code == "XENAPI_MISSING_PLUGIN"
        assert err.value.params == [name]


def test_unknown_function(dom0):
    with pytest.raises(XapiError) as err:
        call(dom0, "dom0_plugin_version", "nope")
    assert err.value.details == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "nope"]


def test_uncaught_exception_is_a_plugin_failure(dom0):
    _write_plugin(
        dom0,
        "boom",
        "import XenAPIPlugin\n"
        "def f(session, args):\n    raise KeyError('where is it')\n"
        "XenAPIPlugin.dispatch({'f': f})\n",
    )
    with pytest.raises(XapiError) as err:
        call(dom0, "boom", "f")
    assert err.value.details == ["XENAPI_PLUGIN_FAILURE", "f", "KeyError", "'where is it'"]


def test_own_failure_is_reraised_verbatim(dom0):
    _write_plugin(
        dom0,
        "own",
        "import XenAPIPlugin\n"
        "def f(session, args):\n    raise XenAPIPlugin.Failure('MY_CODE', ['a', args['x']])\n"
        "XenAPIPlugin.dispatch({'f': f})\n",
    )
    with pytest.raises(XapiError) as err:
        call(dom0, "own", "f", x="<b>&amp;")
    assert err.value.details == ["MY_CODE", "a", "<b>&amp;"]


def test_non_zero_exit(dom0):
    _write_plugin(dom0, "dies", "import sys\nprint('half')\nsys.stderr.write('bad things')\nsys.exit(3)\n")
    with pytest.raises(XapiError) as err:
        call(dom0, "dies", "f")
    assert err.value.code == "XENAPI_PLUGIN_FAILURE"
    assert err.value.params == ["non-zero exit", "half\n", "bad things"]


def test_fault_and_garbage_output(dom0):
    _write_plugin(
        dom0,
        "faulty",
        "import xmlrpc.client as x\nprint(x.dumps(x.Fault(7, 'nope'), methodresponse=True))\n",
    )
    with pytest.raises(XapiError) as err:
        call(dom0, "faulty", "f")
    assert err.value.details == ["XENAPI_PLUGIN_FAILURE", "fault", "7", "nope"]
    _write_plugin(dom0, "garbage", "print('not xml')\n")
    with pytest.raises(XapiError) as err:
        call(dom0, "garbage", "f")
    assert err.value.params[0] == "unparseable output"


def test_arguments_arrive_as_xmlrpc_string_map(dom0):
    _write_plugin(
        dom0,
        "echo",
        "import json, sys, XenAPIPlugin\n"
        "def f(session, args):\n    return json.dumps([session._session, args, sys.version_info[:2]])\n"
        "XenAPIPlugin.dispatch({'f': f})\n",
    )
    session, args, version = json.loads(call(dom0, "echo", "f", a="1", b="x y; rm -rf /"))
    assert session == SESSION
    assert args == {"a": "1", "b": "x y; rm -rf /"}
    expected = subprocess.run(
        [dom0_python(), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tuple(version) == eval(expected)  # noqa: S307 - our own interpreter's output


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugin_syntax_is_python36(plugin):
    """Every plug-in file parses as Python 3.6: with a real 3.6 when present, else ast's 3.6 grammar."""
    source = plugin.read_text()
    python36 = dom0_python()
    version = subprocess.run(
        [python36, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
    ).stdout.strip()
    if version == "3.6":
        result = subprocess.run(
            [
                python36,
                "-c",
                "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])",
                str(plugin),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
    else:
        ast.parse(source, str(plugin), feature_version=(3, 6))
    assert source.startswith("#!/usr/bin/env python3") or plugin.name.endswith(".py")


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugins_use_only_the_standard_library(plugin):
    allowed_local = {p.name[:-3] for p in PLUGINS if p.name.endswith(".py")} | {"XenAPIPlugin", "XenAPI"}
    stdlib = set(sys.stdlib_module_names)
    tree = ast.parse(plugin.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module.split(".")[0]]
        for name in names:
            assert name in stdlib or name in allowed_local, f"{plugin.name} imports {name}"
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
            "Popen",
            "call",
            "run",
            "check_output",
        ):
            for keyword in node.keywords:
                assert keyword.arg != "shell", f"{plugin.name} uses shell="
        assert not (isinstance(node, ast.Name) and node.id == "pickle"), plugin.name
