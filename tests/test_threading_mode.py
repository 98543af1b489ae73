"""Nova 34's nova-compute poisons ``import eventlet``: prove nothing of ours needs it.

The check runs in a fresh interpreter because the poison is process-wide and
irreversible, exactly as nova-compute applies it at start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    from nova import monkey_patch
    monkey_patch.patch(backend="threading")
    try:
        import eventlet  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the eventlet poison did not take effect")

    import xenapi_driver
    failed = []
    for info in pkgutil.walk_packages(xenapi_driver.__path__, "xenapi_driver."):
        if info.name.endswith(".__main__"):
            continue  # entry points run their program when imported
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            if "eventlet" in str(exc):
                failed.append(f"{info.name}: {exc}")
    from nova.virt import driver, fake
    loaded = driver.load_compute_driver(fake.FakeVirtAPI(), "xenapi.XenAPIDriver")
    assert type(loaded).__name__ == "XenAPIDriver", type(loaded)
    if failed:
        raise SystemExit("modules that import eventlet: " + "; ".join(failed))
    print("ok", len(sys.modules))
    """
)


def test_every_module_imports_under_novas_threading_mode() -> None:
    env = dict(os.environ)
    env.pop("OS_NOVA_DISABLE_EVENTLET_PATCHING", None)
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok")
