#!/usr/bin/env python3
"""Derive the simulator's compact schema from XAPI's datamodel dump.

Why: the simulator must be faithful *by construction*, so every class,
field, type, qualifier, default, enum and message comes from XAPI's own
datamodel (``xenapi.json``).  A fresh clone must not need the reference
tree, so the derived facts are committed as
``xenapi_driver/simulator/schema.json``.  Only facts are kept: no
descriptions, docs or release notes.

The datamodel dump lacks two things XAPI knows internally, which are
added here from a small table of facts (see FACTS.md, "Dispatch" and
"Error parameter lists"):

* defaults of trailing message parameters (``login_with_password``
  ``version``/``originator``, ``VM.migrate_send`` ``vgpu_map`` ...),
* parameter lists of errors.

Usage::

    python tools/derive_schema.py [--source xenapi.json] [--output schema.json] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "reference" / "xenapi.json"
DEFAULT_OUTPUT = ROOT / "xenapi_driver" / "simulator" / "schema.json"

# Trailing parameters XAPI declares with a default value (versioned params).
# Value is the Python/JSON form of the default.
PARAM_DEFAULTS: dict[str, dict[str, object]] = {
    "session.login_with_password": {"version": "1.1", "originator": ""},
    "VM.migrate_send": {"vgpu_map": {}, "vdi_format_map": {}},
    "VM.assert_can_migrate": {"vgpu_map": {}, "vdi_format_map": {}},
    "VM.snapshot": {"ignore_vdis": []},
    "VM.import": {"full_restore": False, "force": False},
    "VDI.copy": {"base_vdi": "OpaqueRef:NULL", "into_vdi": "OpaqueRef:NULL"},
    "host.evacuate": {"network": "OpaqueRef:NULL", "evacuate_batch_size": 0},
    "VDI.introduce": {
        "sm_config": {},
        "managed": True,
        "virtual_size": 0,
        "physical_utilisation": 0,
        "metadata_of_pool": "OpaqueRef:NULL",
        "is_a_snapshot": False,
        "snapshot_time": "19700101T00:00:00Z",
        "snapshot_of": "OpaqueRef:NULL",
    },
    "Bond.create": {"mode": "balance-slb", "properties": {}},
    "PIF.introduce": {"managed": True},
}
# <Class>.create_new_blob(obj, name, mime_type, public=false) on every class that has it
BLOB_PUBLIC_DEFAULT = {"public": False}

# Parameters newer XAPI releases added that this datamodel dump predates.
EXTRA_PARAMS: dict[str, list[list[str]]] = {
    "VM.migrate_send": [["vdi_format_map", "(VDI ref -> string) map"]],
    "VM.assert_can_migrate": [["vdi_format_map", "(VDI ref -> string) map"]],
}

# Error parameter lists (XAPI's api_errors); the dump only names errors.
ERROR_PARAMS: dict[str, list[str]] = {
    "MESSAGE_METHOD_UNKNOWN": ["method"],
    "MESSAGE_PARAMETER_COUNT_MISMATCH": ["method", "expected", "received"],
    "MESSAGE_DEPRECATED": [],
    "NOT_IMPLEMENTED": ["function"],
    "HANDLE_INVALID": ["class", "handle"],
    "UUID_INVALID": ["class", "uuid"],
    "MAP_DUPLICATE_KEY": ["type", "param_name", "uuid", "key"],
    "FIELD_TYPE_ERROR": ["field"],
    "INVALID_VALUE": ["field", "value"],
    "SESSION_INVALID": ["handle"],
    "SESSION_AUTHENTICATION_FAILED": ["uname", "message"],
    "SESSION_NOT_REGISTERED": ["handle"],
    "HOST_IS_SLAVE": ["master_IP_address"],
    "HOST_OFFLINE": ["host"],
    "INTERNAL_ERROR": ["message"],
    "EVENTS_LOST": [],
    "EVENT_SUBSCRIPTION_PARSE_FAILURE": ["subscription"],
    "EVENT_FROM_TOKEN_PARSE_FAILURE": ["token"],
    "TASK_CANCELLED": ["task"],
    "VM_BAD_POWER_STATE": ["vm", "expected", "actual"],
    "OTHER_OPERATION_IN_PROGRESS": ["class", "object", "operation_type", "operation_ref"],
    "OPERATION_NOT_ALLOWED": ["reason"],
    "OPERATION_BLOCKED": ["ref", "code"],
    "VM_IS_TEMPLATE": ["vm"],
    "HOST_NOT_ENOUGH_FREE_MEMORY": ["needed", "available"],
    "NO_HOSTS_AVAILABLE": [],
    "VDI_IN_USE": ["vdi", "operation"],
    "VDI_MISSING": ["sr", "vdi"],
    "SR_FULL": ["requested", "maximum"],
    "VM_MIGRATE_FAILED": ["vm", "source", "destination", "msg"],
    "VDI_NOT_IN_MAP": ["vdi"],
    "VIF_NOT_IN_MAP": ["vif"],
    "XENAPI_PLUGIN_FAILURE": ["status", "stdout", "stderr"],
    "XENAPI_MISSING_PLUGIN": ["name"],
    "UNKNOWN_XENAPI_PLUGIN_FUNCTION": ["function"],
    "SR_BACKEND_FAILURE": ["status", "stdout", "stderr"],
    "VALUE_NOT_SUPPORTED": ["field", "value", "reason"],
    "ROLE_NOT_FOUND": [],
    "PERMISSION_DENIED": ["message"],
    "DEVICE_ALREADY_ATTACHED": ["device"],
    "DEVICE_ALREADY_DETACHED": ["device"],
    "DEVICE_ALREADY_EXISTS": ["device"],
    "HOST_HAS_RESIDENT_VMS": ["host"],
    "VM_HOST_INCOMPATIBLE_VERSION": ["host", "vm"],
    "CANNOT_CONTACT_HOST": ["host"],
    "HOST_NOT_DISABLED": [],
    "HOST_IN_USE": ["host", "type", "ref"],
    "HOST_IS_LIVE": ["host"],
    "HOST_POWER_ON_MODE_DISABLED": [],
    "HOST_DISABLED_UNTIL_REBOOT": ["host"],
    "CANNOT_EVACUATE_HOST": ["errors"],
    "IMPORT_ERROR": ["info"],
    "DUPLICATE_VM": ["vm"],
}

_MAP_RE = re.compile(r"^\((.*)\) map$")


def check_type(text: str) -> str:
    """Validate a datamodel type string (raises ValueError) and return it."""
    t = text.strip()
    if t in ("string", "int", "float", "bool", "datetime", "void"):
        return t
    for suffix in (" set", " option"):
        if t.endswith(suffix):
            check_type(t[: -len(suffix)])
            return t
    m = _MAP_RE.match(t)
    if m:
        inner = m.group(1)
        depth = 0
        for i, ch in enumerate(inner):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and inner.startswith(" -> ", i):
                check_type(inner[:i])
                check_type(inner[i + 4 :])
                return t
        raise ValueError(f"bad map type {text!r}")
    if t.startswith("enum ") or t.endswith((" ref", " record")):
        return t
    raise ValueError(f"unknown type {text!r}")


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, ""
    in_str = False
    for ch in text:
        if ch == '"':
            in_str = not in_str
        if not in_str:
            depth += ch in "({["
            depth -= ch in ")}]"
        if ch == sep and depth == 0 and not in_str:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def parse_default(type_: str, text: str) -> object:
    """Turn the datamodel's printed default (OCaml-ish syntax) into JSON."""
    t = type_.strip()
    s = text.strip()
    if t == "string":
        return json.loads(s) if s.startswith('"') else s
    if t == "int":
        return int(s)
    if t == "float":
        return float(s.rstrip(".") or 0) if not s.endswith(".") else float(s[:-1])
    if t == "bool":
        return s == "true"
    if t == "datetime":
        return s.strip('"')
    if t.endswith(" set"):
        inner = s[1:-1] if s.startswith("{") else s
        elem = t[: -len(" set")]
        return [parse_default(elem, p) for p in _split_top(inner)]
    m = _MAP_RE.match(t)
    if m:
        inner = s[1:-1] if s.startswith("{") else s
        out = {}
        for pair in _split_top(inner):
            k, _, v = pair.partition("->")
            out[json.loads(k.strip()) if k.strip().startswith('"') else k.strip()] = (
                json.loads(v.strip()) if v.strip().startswith('"') else v.strip()
            )
        return out
    if t.startswith("enum "):
        return s.strip('"')
    if t.endswith(" ref"):
        return "OpaqueRef:NULL" if s in ("Null", "") else s
    return s


def derive(source: list[dict]) -> dict:
    """Build the compact schema dict from the parsed datamodel list."""
    classes: dict[str, dict] = {}
    enums: dict[str, list[str]] = {}
    error_names: set[str] = set(ERROR_PARAMS)
    for cls in source:
        name = cls["name"]
        fields = {}
        for f in cls["fields"]:
            ftype = check_type(f["type"])
            default = parse_default(ftype, f["default"]) if "default" in f else None
            entry = [ftype, f["qualifier"]]
            if "default" in f:
                entry.append(default)
            fields[f["name"]] = entry
        messages = {}
        for m in cls["messages"]:
            params = [[p["name"], check_type(p["type"])] for p in m["params"]]
            has_session = bool(params) and params[0][1] == "session ref" and params[0][0] == "session_id"
            if has_session:
                params = params[1:]
            full = f"{name}.{m['name']}"
            params += EXTRA_PARAMS.get(full, [])
            result = m["result"][0] if m["result"] else "void"
            if result.startswith(("a ", "an ")):
                result = "event batch"  # event.from's special result
            else:
                check_type(result)
            entry = {"params": params, "result": result}
            if not has_session:
                entry["session"] = False
            if m.get("implicit"):
                entry["implicit"] = True
            errs = sorted({e["name"] for e in m.get("errors", [])})
            error_names.update(errs)
            if errs:
                entry["errors"] = errs
            messages[m["name"]] = entry
        # XAPI serves get_all_records_where (hidden from the docs) for every
        # class that has get_all_records.
        if "get_all_records" in messages and "get_all_records_where" not in messages:
            messages["get_all_records_where"] = {
                "params": [["expr", "string"]],
                "result": messages["get_all_records"]["result"],
                "implicit": True,
            }
        for e in cls.get("enums", []):
            enums[e["name"]] = [v["name"] for v in e["values"]]
        classes[name] = {"fields": fields, "messages": messages}
    errors = {n: ERROR_PARAMS.get(n) for n in sorted(error_names)}
    param_defaults = dict(PARAM_DEFAULTS)
    for cname, c in classes.items():
        blob = c["messages"].get("create_new_blob")
        if blob and blob["params"] and blob["params"][-1][0] == "public":
            param_defaults[f"{cname}.create_new_blob"] = BLOB_PUBLIC_DEFAULT
    for full, defaults in param_defaults.items():
        cname, _, mname = full.partition(".")
        names = [p[0] for p in classes[cname]["messages"][mname]["params"]]
        tail = names[len(names) - len(defaults) :]
        if set(tail) != set(defaults):
            raise ValueError(f"defaults of {full} must cover its trailing parameters, got {sorted(defaults)}")
    return {
        "source": "xapi-project/xen-api datamodel (xenapi.json)",
        "classes": classes,
        "enums": dict(sorted(enums.items())),
        "errors": errors,
        "param_defaults": param_defaults,
    }


def render(schema: dict) -> str:
    """Compact JSON with one class (or section) per line, for readable diffs."""

    def dump(v: object) -> str:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=True)

    lines = ["{"]
    for key, value in schema.items():
        if isinstance(value, dict) and key in ("classes", "enums", "errors", "param_defaults"):
            lines.append(f"{dump(key)}:{{")
            items = [f"{dump(k)}:{dump(v)}" for k, v in value.items()]
            lines.append(",\n".join(items))
            lines.append("},")
        else:
            lines.append(f"{dump(key)}:{dump(value)},")
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--check", action="store_true", help="exit 1 if the output is out of date")
    args = ap.parse_args(argv)
    if not args.source.exists():
        print(f"error: datamodel {args.source} not found; pass --source PATH", file=sys.stderr)
        return 2
    schema = derive(json.loads(args.source.read_text(encoding="utf-8")))
    text = render(schema)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run tools/derive_schema.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    n_msgs = sum(len(c["messages"]) for c in schema["classes"].values())
    print(f"wrote {args.output}: {len(schema['classes'])} classes, {n_msgs} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
