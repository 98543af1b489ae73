"""Explicit message and HTTP handlers, one module per area.

Every module listed here is imported once (by the dispatcher) so its
``@message``/``@http_handler`` decorators register.  A module that does not
exist yet is skipped; one that exists but fails to import is an error.
To add a module, add its name to ``MODULES`` (one line).
"""

from __future__ import annotations

import importlib
import importlib.util

MODULES = [
    "core",
    "storage",
    "vm",
    "migration",
    "pool_ops",
    "http_disk",
    "xenstore",
]

LOADED: list[str] = []


def load_all() -> list[str]:
    """Import every handler module that exists; return their names."""
    for name in MODULES:
        full = f"{__name__}.{name}"
        if name in LOADED:
            continue
        if importlib.util.find_spec(full) is None:
            continue
        importlib.import_module(full)
        LOADED.append(name)
    return list(LOADED)
