"""Explicit message and HTTP handlers, one module per area.

Every module listed here is imported once (by the dispatcher) so its
``@message``/``@http_handler`` decorators register.  A module that does not
exist yet is skipped; one that fails to import is logged (with its
traceback) and recorded in ``FAILED`` so the rest of the simulator works.
To add a module, add its name to ``MODULES`` (one line).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

LOG = logging.getLogger(__name__)

MODULES = [
    "core",
    "storage",
    "vm_state",
    "placement",
    "vm_metrics",
    "vif",
    "domains",
    "vm_power",
    "vm_suspend",
    "vm_copy",
    "vm_provision",
    "vm_config",
    "vm_xenstore",
    "host_power",
    "migration",
    "pool_ops",
    "http_disk",
    "xenstore",
    "xva",
    "setters",  # last: plain setters only where no module above has a handler
]

LOADED: list[str] = []
FAILED: dict[str, str] = {}


def load_all() -> list[str]:
    """Import every handler module that exists; return their names."""
    for name in MODULES:
        full = f"{__name__}.{name}"
        if name in LOADED:
            continue
        if importlib.util.find_spec(full) is None:
            continue
        try:
            importlib.import_module(full)
        except Exception as e:  # noqa: BLE001 - keep the simulator usable, but say so loudly
            LOG.exception("simulator handler module %s failed to import", full)
            FAILED[name] = f"{type(e).__name__}: {e}"
            continue
        FAILED.pop(name, None)
        LOADED.append(name)
    return list(LOADED)
