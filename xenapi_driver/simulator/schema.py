"""Load the derived XAPI schema and give its types a Python shape.

Why: the simulator implements XAPI *from its datamodel*, so every place
that needs to know a class, a field, a message or a type asks this module
instead of hard-coding it.  ``schema.json`` is produced by
``tools/derive_schema.py`` and committed.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("schema.json")
NULL_REF = "OpaqueRef:NULL"
EPOCH = "19700101T00:00:00Z"

_MAP_RE = re.compile(r"^\((.*)\) map$")


class XDate(str):
    """A datetime value, kept in XAPI's wire format ``YYYYMMDDTHH:MM:SSZ``.

    A ``str`` subclass so records stay JSON-friendly, while the marshaller
    can still emit ``<dateTime.iso8601>``.
    """

    __slots__ = ()


@dataclass(frozen=True)
class Type:
    """A parsed datamodel type.

    ``kind`` is one of string, int, float, bool, datetime, void, enum, ref,
    record, set, map, option, batch (event.from's special result).
    """

    kind: str
    name: str = ""  # enum name, or class name for ref/record
    elem: Type | None = None  # set/option element, map value
    key: Type | None = None  # map key
    text: str = ""

    def zero(self) -> object:
        """The value XAPI uses for a field of this type without a default."""
        k = self.kind
        if k == "string":
            return ""
        if k == "int":
            return 0
        if k == "float":
            return 0.0
        if k == "bool":
            return False
        if k == "datetime":
            return XDate(EPOCH)
        if k == "ref":
            return NULL_REF
        if k == "set":
            return []
        if k in ("map", "record"):
            return {}
        if k == "enum":
            values = load().enums.get(self.name) or [""]
            return values[0]
        return None


@functools.cache
def parse_type(text: str) -> Type:
    """Parse a datamodel type string such as ``(VDI ref -> SR ref) map``."""
    t = text.strip()
    if t in ("string", "int", "float", "bool", "datetime", "void"):
        return Type(t, text=t)
    if t == "event batch":
        return Type("batch", text=t)
    if t.endswith(" set"):
        return Type("set", elem=parse_type(t[:-4]), text=t)
    if t.endswith(" option"):
        return Type("option", elem=parse_type(t[:-7]), text=t)
    m = _MAP_RE.match(t)
    if m:
        inner = m.group(1)
        depth = 0
        for i, ch in enumerate(inner):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and inner.startswith(" -> ", i):
                return Type("map", key=parse_type(inner[:i]), elem=parse_type(inner[i + 4 :]), text=t)
        raise ValueError(f"bad map type {text!r}")
    if t.startswith("enum "):
        return Type("enum", name=t[5:], text=t)
    if t.endswith(" ref"):
        return Type("ref", name=t[:-4], text=t)
    if t.endswith(" record"):
        return Type("record", name=t[:-7], text=t)
    raise ValueError(f"unknown datamodel type {text!r}")


@dataclass
class Field:
    name: str
    type: Type
    qualifier: str  # RW, RO/constructor, RO/runtime
    default: object = None
    has_default: bool = False

    @property
    def rw(self) -> bool:
        return self.qualifier == "RW"

    def initial(self) -> object:
        """A fresh copy of the default value (or the type's zero)."""
        if self.has_default:
            value = copy.deepcopy(self.default)
            if self.type.kind == "datetime":
                value = XDate(value)
            if self.type.kind == "enum":
                return canonical_enum(self.type.name, value)
            if self.type.kind == "map" and self.type.key and self.type.key.kind == "int":
                value = {int(k): v for k, v in value.items()}
            return value
        return self.type.zero()


@dataclass
class Message:
    cls: str
    name: str
    params: list[tuple[str, Type]]
    result: Type
    implicit: bool = False
    session: bool = True
    errors: list[str] = field(default_factory=list)
    defaults: dict[str, object] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.cls}.{self.name}"

    @property
    def required(self) -> int:
        """Number of leading parameters without a default."""
        n = len(self.params)
        while n and self.params[n - 1][0] in self.defaults:
            n -= 1
        return n


@dataclass
class ClassInfo:
    name: str
    fields: dict[str, Field]
    messages: dict[str, Message]

    @property
    def has_uuid(self) -> bool:
        return "uuid" in self.fields


@dataclass
class Schema:
    classes: dict[str, ClassInfo]
    enums: dict[str, list[str]]
    errors: dict[str, list[str] | None]
    relations: list[tuple[str, str, str, str]]
    by_lower: dict[str, str] = field(default_factory=dict)

    def cls(self, name: str) -> ClassInfo:
        return self.classes[name]

    def canonical_class(self, name: str) -> str | None:
        """Map ``vm``/``VM``/``Vm`` to the datamodel's spelling (``VM``)."""
        if name in self.classes:
            return name
        return self.by_lower.get(name.lower())

    def message(self, cls: str, name: str) -> Message | None:
        info = self.classes.get(cls)
        return info.messages.get(name) if info else None


def canonical_enum(enum_name: str, value: str) -> str:
    """XAPI matches enum values case-insensitively; return the schema's spelling."""
    values = load().enums.get(enum_name)
    if not values:
        return value
    if value in values:
        return value
    low = value.lower()
    for v in values:
        if v.lower() == low:
            return v
    raise KeyError(value)


# One-to-many relations XAPI keeps in both directions: the set field on the
# "one" side is maintained from the ref field on the "many" side.
RELATIONS: list[tuple[str, str, str, str]] = [
    ("host", "PBDs", "PBD", "host"),
    ("SR", "PBDs", "PBD", "SR"),
    ("SR", "VDIs", "VDI", "SR"),
    ("VDI", "VBDs", "VBD", "VDI"),
    ("VDI", "crash_dumps", "crashdump", "VDI"),
    ("VDI", "snapshots", "VDI", "snapshot_of"),
    ("VM", "VBDs", "VBD", "VM"),
    ("VM", "VIFs", "VIF", "VM"),
    ("VM", "consoles", "console", "VM"),
    ("VM", "crash_dumps", "crashdump", "VM"),
    ("VM", "snapshots", "VM", "snapshot_of"),
    ("VM", "children", "VM", "parent"),
    ("VM", "VGPUs", "VGPU", "VM"),
    ("VM", "VTPMs", "VTPM", "VM"),
    ("VM", "VUSBs", "VUSB", "VM"),
    ("VM", "attached_PCIs", "PCI", "attached_VMs"),
    ("network", "VIFs", "VIF", "network"),
    ("network", "PIFs", "PIF", "network"),
    ("host", "PIFs", "PIF", "host"),
    ("host", "resident_VMs", "VM", "resident_on"),
    ("host", "host_CPUs", "host_cpu", "host"),
    ("host", "crashdumps", "host_crashdump", "host"),
    ("host", "patches", "host_patch", "host"),
    ("host", "PGPUs", "PGPU", "host"),
    ("host", "PCIs", "PCI", "host"),
    ("host", "PUSBs", "PUSB", "host"),
    ("host", "certificates", "Certificate", "host"),
    ("host", "features", "Feature", "host"),
    ("pool_patch", "host_patches", "host_patch", "pool_patch"),
    ("GPU_group", "PGPUs", "PGPU", "GPU_group"),
    ("GPU_group", "VGPUs", "VGPU", "GPU_group"),
    ("USB_group", "PUSBs", "PUSB", "USB_group"),
    ("USB_group", "VUSBs", "VUSB", "USB_group"),
    ("VMPP", "VMs", "VM", "protection_policy"),
    ("VMSS", "VMs", "VM", "snapshot_schedule"),
    ("VM_appliance", "VMs", "VM", "appliance"),
    ("Bond", "slaves", "PIF", "bond_slave_of"),
    ("Cluster", "cluster_hosts", "Cluster_host", "cluster"),
    ("DR_task", "introduced_SRs", "SR", "introduced_by"),
    ("PVS_site", "servers", "PVS_server", "site"),
    ("PVS_site", "proxies", "PVS_proxy", "site"),
    ("PVS_site", "cache_storage", "PVS_cache_storage", "site"),
    ("task", "subtasks", "task", "subtask_of"),
    ("session", "tasks", "task", "session"),
    ("VGPU_type", "VGPUs", "VGPU", "type"),
    ("network_sriov", "physical_PIF", "PIF", "sriov_physical_PIF_of"),
]


def _build(raw: dict) -> Schema:
    classes: dict[str, ClassInfo] = {}
    param_defaults = raw.get("param_defaults", {})
    for cname, c in raw["classes"].items():
        fields = {}
        for fname, entry in c["fields"].items():
            f = Field(fname, parse_type(entry[0]), entry[1])
            if len(entry) > 2:
                f.default = entry[2]
                f.has_default = True
            fields[fname] = f
        messages = {}
        for mname, m in c["messages"].items():
            messages[mname] = Message(
                cls=cname,
                name=mname,
                params=[(p[0], parse_type(p[1])) for p in m["params"]],
                result=parse_type(m["result"]),
                implicit=bool(m.get("implicit")),
                session=m.get("session", True),
                errors=list(m.get("errors", [])),
                defaults=dict(param_defaults.get(f"{cname}.{mname}", {})),
            )
        classes[cname] = ClassInfo(cname, fields, messages)
    relations = []
    for one, set_field, many, ref_field in RELATIONS:
        a = classes.get(one)
        b = classes.get(many)
        if not a or not b or set_field not in a.fields or ref_field not in b.fields:
            continue
        if a.fields[set_field].type.kind != "set" or b.fields[ref_field].type.kind != "ref":
            continue
        relations.append((one, set_field, many, ref_field))
    schema = Schema(classes, raw["enums"], raw["errors"], relations)
    schema.by_lower = {n.lower(): n for n in classes}
    return schema


@functools.lru_cache(maxsize=1)
def load(path: str | None = None) -> Schema:
    """Load (once) and return the schema."""
    p = Path(path) if path else SCHEMA_PATH
    with open(p, encoding="utf-8") as fh:
        return _build(json.load(fh))
