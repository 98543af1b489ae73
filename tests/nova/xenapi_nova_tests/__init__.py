"""Nova-based tests for xenapi-driver, run by a testtools-compatible runner.

Nova's own test machinery (``nova.test``, ``_VirtDriverTestCase``, the
functional harness) relies on testtools/fixtures and on Nova choosing its
concurrency mode before anything imports eventlet, so these modules are run
with ``python -m xenapi_nova_tests._runner`` (stdlib unittest) in a child
process, never collected by pytest; ``tests/nova/test_nova_suites.py`` does
that from our single ``pytest`` command. See ``tests/nova/README.md``.

Importing this package first is what makes that safe: it picks Nova's
concurrency mode (native threads unless the environment says otherwise) and
registers Nova's objects, exactly as ``nova.tests.unit`` does for Nova's tree.
"""

import importlib.util
import os
from pathlib import Path

# Native threads, as nova-compute runs by default in Nova 34. Set
# OS_NOVA_DISABLE_EVENTLET_PATCHING=0 to run the same tests monkey-patched.
os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")

import nova.tests.unit  # noqa: E402,F401  (must be Nova's first test import: it patches)

import nova.virt  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]
API_PASTE_INI = REPO_ROOT / "tests" / "etc" / "api-paste.ini"

# ``compute_driver = xenapi.XenAPIDriver`` makes Nova import nova.virt.xenapi,
# our one-file shim that ``pip install`` (./run setup) places in Nova's tree.
# In a checkout that was not installed, let Nova find the same file in the
# repository instead, so the tests exercise the real loading path either way.
if importlib.util.find_spec("nova.virt.xenapi") is None:
    nova.virt.__path__.append(str(REPO_ROOT / "nova" / "virt"))


def simulator_available() -> bool:
    """True once the XAPI simulator's public API has landed."""
    try:
        return importlib.util.find_spec("xenapi_driver.simulator.api") is not None
    except ImportError:
        return False


SIMULATOR_MISSING = (
    "xenapi_driver.simulator.api does not exist yet: the XenAPIDriver runs of Nova's "
    "suites need the XAPI simulator (INTERFACES.md section 2)"
)


def xenapi_suite_skip_reason() -> str | None:
    """Why the XenAPIDriver runs of Nova's suites cannot run here (no simulator), or None."""
    if not simulator_available():
        return SIMULATOR_MISSING
    return None


def tolerate_newer_dependencies() -> None:
    """Undo Nova's warnings-as-errors for one deprecation Nova 34 itself triggers.

    Nova's ``WarningsFixture`` turns SQLAlchemy deprecation warnings raised
    from Nova's code into errors, for Nova's gate which pins SQLAlchemy 2.0.
    Nova 34 only requires ``SQLAlchemy>=1.4.13`` and pip installs 2.1, which
    deprecates the ``noload()`` that Nova's DB API uses on every instance
    query. Call after the fixture is in place (after ``TestCase.setUp``).
    """
    import warnings

    from sqlalchemy import exc as sqla_exc

    warnings.filterwarnings(
        "ignore", message=r"The noload\(\) option is deprecated", category=sqla_exc.SADeprecationWarning
    )
