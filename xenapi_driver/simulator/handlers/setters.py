"""Explicit setters XAPI's datamodel declares (``VDI.set_name_label``, ``VIF.add_ipv4_allowed`` ...).

Each one that no dedicated handler claims changes its field.  This module is loaded last (see
``handlers/__init__.py``) so it never shadows a handler with real checks.
"""

from __future__ import annotations

from xenapi_driver.simulator.handlers import storage
from xenapi_driver.simulator.handlers.vm_state import refresh_vm
from xenapi_driver.simulator.registry import message


def _field_setter(cls: str, field: str, after=None):
    def setter(ctx, ref: str, value) -> None:
        ctx.db.set(cls, ref, field, value)
        if after is not None:
            after(ctx.db, ref)

    return setter


def _set_adder(cls: str, field: str, add: bool):
    def change(ctx, ref: str, value) -> None:
        (ctx.db.set_add if add else ctx.db.set_remove)(cls, ref, field, value)

    return change


def _map_changer(cls: str, field: str, add: bool):
    def add_to(ctx, ref: str, key, value) -> None:
        ctx.db.map_add(cls, ref, field, key, value)

    def remove_from(ctx, ref: str, key) -> None:
        ctx.db.map_remove(cls, ref, field, key)

    return add_to if add else remove_from


_REFRESH = {"VM": refresh_vm, "VDI": storage.refresh_vdi}


def register_plain_setters() -> None:
    """``VDI.set_name_label``, ``VM.set_VCPUs_max``, ``VIF.add_ipv4_allowed`` ... as XAPI's datamodel
    declares them explicitly: each one changes its field (checks live in dedicated handlers)."""
    from xenapi_driver.simulator import registry, schema

    s = schema.load()
    for cls in ("VM", "VDI", "VBD", "VIF", "SR", "PBD", "network"):
        info = s.classes[cls]
        for name, msg in info.messages.items():
            if msg.implicit or registry.lookup_message(f"{cls}.{name}") is not None:
                continue
            for prefix, arity in (
                ("set_", 2),
                ("add_to_", 3),
                ("remove_from_", 2),
                ("add_", 2),
                ("remove_", 2),
            ):
                field = name[len(prefix) :]
                if not name.startswith(prefix) or field not in info.fields or len(msg.params) != arity:
                    continue
                kind = info.fields[field].type.kind
                if prefix == "set_":
                    func = _field_setter(cls, field, _REFRESH.get(cls))
                elif prefix in ("add_to_", "remove_from_") and kind == "map":
                    func = _map_changer(cls, field, prefix == "add_to_")
                elif prefix in ("add_", "remove_") and kind == "set":
                    func = _set_adder(cls, field, prefix == "add_")
                else:
                    continue
                message(f"{cls}.{name}")(func)
                break


register_plain_setters()
