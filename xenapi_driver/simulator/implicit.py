"""Implicit messages, implemented once from the schema for every class.

Why: XAPI generates ``get_<field>``, ``set_<field>`` (RW fields only),
``add_to_``/``remove_from_`` (maps), ``add_``/``remove_`` (sets),
``get_record``, ``get_all``, ``get_all_records``, ``get_all_records_where``,
``get_by_uuid``, ``get_by_name_label``, ``create`` and ``destroy`` from its
datamodel; so do we, so every class behaves alike without hand-written code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .dbnames import REF_COLUMN, columns
from .errors import XapiError
from .expr import compile_where
from .schema import ClassInfo, Field, Message

if TYPE_CHECKING:  # pragma: no cover
    from .context import CallContext


GENERIC = frozenset(
    (
        "get_record",
        "get_all",
        "get_all_records",
        "get_all_records_where",
        "get_by_uuid",
        "get_by_name_label",
        "destroy",
    )
)


def snapshot(rec: dict) -> dict:
    """A copy of a record deep enough to serialise outside the lock."""
    return {k: (v.copy() if isinstance(v, (list, dict)) else v) for k, v in rec.items()}


def record(ctx: CallContext, cls: str, ref: str) -> dict:
    with ctx.db.lock:
        return snapshot(ctx.db.get(cls, ref))


def all_records(ctx: CallContext, cls: str, pred: Callable[[dict], bool] | None = None) -> dict:
    with ctx.db.lock:
        if pred is None:
            return {ref: snapshot(rec) for ref, rec in ctx.db.items(cls)}
        if getattr(pred, "uses_ref", False):  # field "_ref": the row's own reference
            return {ref: snapshot(rec) for ref, rec in ctx.db.items(cls) if pred({**rec, REF_COLUMN: ref})}
        return {ref: snapshot(rec) for ref, rec in ctx.db.items(cls) if pred(rec)}


def where_columns(info: ClassInfo) -> dict[str, str]:
    """What ``field "..."`` may name: database columns, plus ``_ref`` (the object's reference)."""
    return {**columns(info), REF_COLUMN: REF_COLUMN}


def _field_for(info: ClassInfo, name: str, prefixes: tuple[str, ...]) -> tuple[str, Field] | None:
    for prefix in prefixes:
        if name.startswith(prefix):
            f = info.fields.get(name[len(prefix) :])
            if f is not None:
                return prefix, f
    return None


def run(ctx: CallContext, msg: Message, params: list) -> object:
    """Execute implicit message ``msg`` with already type-checked ``params``."""
    db = ctx.db
    info = db.schema.classes[msg.cls]
    cls = msg.cls
    name = msg.name
    if name == "get_record":
        return record(ctx, cls, params[0])
    if name == "get_all":
        return db.all(cls)
    if name == "get_all_records":
        return all_records(ctx, cls)
    if name == "get_all_records_where":
        return all_records(ctx, cls, compile_where(params[0], where_columns(info)))
    if name == "get_by_uuid":
        return db.by_uuid(cls, params[0])
    if name == "get_by_name_label":
        return db.find(cls, name_label=params[0])
    if name == "create":
        return create_from_record(ctx, info, params[0])
    if name == "destroy":
        db.destroy(cls, params[0])
        return None
    hit = _field_for(info, name, ("get_", "set_", "add_to_", "remove_from_", "add_", "remove_"))
    if hit is None:
        raise XapiError("NOT_IMPLEMENTED", msg.full_name)
    prefix, f = hit
    ref = params[0]
    with db.lock:
        rec = db.get(cls, ref)
        if prefix == "get_":
            value = rec[f.name]
            return value.copy() if isinstance(value, (list, dict)) else value
        if prefix == "set_":
            db.set(cls, ref, f.name, params[1])
            return None
        if prefix == "add_to_":
            db.map_add(cls, ref, f.name, params[1], params[2])
        elif prefix == "remove_from_":
            db.map_remove(cls, ref, f.name, params[1])
        elif prefix == "add_":
            db.set_add(cls, ref, f.name, params[1])
        else:
            db.set_remove(cls, ref, f.name, params[1])
        return None


def create_from_record(ctx: CallContext, info: ClassInfo, args: dict) -> str:
    """``<Class>.create(record)``: constructor fields without a default are required."""
    fields = {}
    for name, f in info.fields.items():
        if f.qualifier == "RO/runtime" or name == "uuid":
            continue
        if name in args:
            fields[name] = args[name]
        elif not f.has_default:
            raise XapiError("FIELD_TYPE_ERROR", name)
    return ctx.db.create(info.name, **fields)
