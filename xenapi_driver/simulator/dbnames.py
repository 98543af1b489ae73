"""XAPI's database column names, as ``get_all_records_where`` sees them.

Why: XAPI's ``Db_filter`` looks fields up in database rows, not API records.
The datamodel groups some fields into namespaces (``name``, ``memory``,
``VCPUs`` ...) and the database joins a namespace and its member with a
double underscore: the API's ``name_label`` is the column ``name__label``,
``memory_static_max`` is ``memory__static_max``.  Real clients write
``field "name__label" = "x"``; the API spelling of a namespaced field is a
missing column there (``INTERNAL_ERROR ["missing field", name, ""]``).
Flat fields (``power_state``, ``is_a_template``, ``other_config``) have one
spelling.  The object's reference is the column ``_ref``.
"""

from __future__ import annotations

from functools import cache

from .schema import ClassInfo

REF_COLUMN = "_ref"

# Namespaces of XAPI's datamodel (idl/datamodel*.ml ``namespace ~name:``), by class.
# ``name`` (label, description) belongs to every class that has ``name_label``.
NAMESPACES: dict[str, tuple[str, ...]] = {
    "VM": ("memory", "VCPUs", "actions", "PV", "HVM"),
    "host": ("memory", "API_version"),
    "host_metrics": ("memory",),
    "VM_metrics": ("memory", "VCPUs"),
    "VIF": ("qos",),
    "VBD": ("qos",),
}
NAME_FIELDS = ("name_label", "name_description")


def column_of(cls: str, field: str) -> str:
    """The database column holding API field ``field`` of class ``cls``."""
    if field in NAME_FIELDS:
        return "name__" + field[len("name_") :]
    for ns in NAMESPACES.get(cls, ()):
        if field.startswith(ns + "_"):
            return f"{ns}__{field[len(ns) + 1 :]}"
    return field


@cache
def _columns(cls: str, fields: tuple[str, ...]) -> dict[str, str]:
    return {column_of(cls, f): f for f in fields}


def columns(info: ClassInfo) -> dict[str, str]:
    """Column name -> API field name, for every field of a class."""
    return _columns(info.name, tuple(info.fields))
