"""Values on the wire: type checking of parameters and XAPI's encoding.

Why: XAPI is strict about parameter types (checked against the datamodel)
and particular about its encoding (64-bit ints as decimal strings, strings
as untyped ``<value>``, ``<dateTime.iso8601>`` as ``20250319T04:16:24Z``,
void as ``""``).  Clients written against the simulator must meet the same
rules, so both directions live here.
"""

from __future__ import annotations

import datetime as _dt
import json
import xmlrpc.client
from xml.sax.saxutils import escape

from .errors import XapiError
from .schema import NULL_REF, Type, XDate, canonical_enum, load

__all__ = [
    "coerce",
    "to_wire",
    "to_json",
    "xml_value",
    "xml_response",
    "xml_fault",
    "now",
    "xdate",
]


class Int32(int):
    """A 32-bit int XAPI sends as ``<i4>`` (e.g. event.from's ``valid_ref_counts``), not as a string."""

    __slots__ = ()


def now() -> XDate:
    """The current time as an XAPI datetime."""
    return XDate(_dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H:%M:%SZ"))


def xdate(value: object) -> XDate:
    """Normalise an incoming datetime (``DateTime``, ``datetime`` or string)."""
    if isinstance(value, XDate):
        return value
    if isinstance(value, xmlrpc.client.DateTime):
        text = value.value
    elif isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.UTC)
        text = value.strftime("%Y%m%dT%H:%M:%SZ")
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(value)
    text = text.strip()
    for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S"):
        try:
            parsed = _dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        return XDate(parsed.strftime("%Y%m%dT%H:%M:%SZ"))
    raise ValueError(text)


def _bad(where: str, value: object) -> XapiError:
    return XapiError("FIELD_TYPE_ERROR", where)


def coerce(t: Type, value: object, where: str) -> object:
    """Check ``value`` against datamodel type ``t`` and convert it to Python form.

    Raises ``FIELD_TYPE_ERROR [where]`` (XAPI's error for a value of the wrong
    type) or ``INVALID_VALUE`` for an unknown enum value.
    """
    k = t.kind
    if k == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise XapiError("INVALID_VALUE", where, "invalid UTF-8") from None
        raise _bad(where, value)
    if k == "ref":
        if isinstance(value, str):
            return value
        raise _bad(where, value)
    if k == "int":
        if isinstance(value, bool):
            raise _bad(where, value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _bad(where, value) from None
        raise _bad(where, value)
    if k == "float":
        if isinstance(value, bool):
            raise _bad(where, value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _bad(where, value) from None
        raise _bad(where, value)
    if k == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _bad(where, value)
    if k == "datetime":
        try:
            return xdate(value)
        except (TypeError, ValueError):
            raise _bad(where, value) from None
    if k == "enum":
        if not isinstance(value, str):
            raise _bad(where, value)
        try:
            return canonical_enum(t.name, value)
        except KeyError:
            raise XapiError("INVALID_VALUE", where, value) from None
    if k == "set":
        if not isinstance(value, (list, tuple)):
            raise _bad(where, value)
        assert t.elem is not None
        return [coerce(t.elem, v, where) for v in value]
    if k == "map":
        if not isinstance(value, dict):
            raise _bad(where, value)
        assert t.elem is not None and t.key is not None
        return {coerce(t.key, kk, where): coerce(t.elem, vv, where) for kk, vv in value.items()}
    if k == "record":
        if not isinstance(value, dict):
            raise _bad(where, value)
        info = load().classes.get(t.name)
        if info is None:
            return dict(value)
        out = {}
        for fname, fvalue in value.items():
            f = info.fields.get(fname)
            if f is None:
                continue  # XAPI ignores unknown fields in a record
            out[fname] = coerce(f.type, fvalue, fname)
        return out
    if k == "option":
        if value is None or value == "":
            return None
        assert t.elem is not None
        return coerce(t.elem, value, where)
    return value


def to_wire(value: object) -> object:
    """Convert a Python value to what XAPI sends over XML-RPC (ints as strings)."""
    if isinstance(value, str):
        if type(value) is XDate:
            return xmlrpc.client.DateTime(str(value))
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if type(value) is Int32 else str(value)
    if isinstance(value, float):
        return value
    if value is None:
        return ""
    if isinstance(value, dict):
        return {_key(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_wire(v) for v in value]
    return value


def _key(k: object) -> str:
    if isinstance(k, bool):
        return "true" if k else "false"
    return str(k)


def to_json(value: object) -> object:
    """Convert a Python value to XAPI's JSON-RPC form (ints as numbers)."""
    if isinstance(value, (str, bool, int, float)):
        return str(value) if type(value) is XDate else value
    if value is None:
        return ""
    if isinstance(value, dict):
        return {_key(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    return str(value)


# --- XML-RPC encoding in XAPI's style ---------------------------------------


def _xml(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        if type(value) is XDate:
            out.append(f"<value><dateTime.iso8601>{value}</dateTime.iso8601></value>")
        else:
            out.append(f"<value>{escape(value)}</value>")
    elif isinstance(value, bool):
        out.append("<value><boolean>1</boolean></value>" if value else "<value><boolean>0</boolean></value>")
    elif isinstance(value, int):
        if type(value) is Int32:
            out.append(f"<value><i4>{value}</i4></value>")
        else:
            out.append(f"<value>{value}</value>")
    elif isinstance(value, float):
        out.append(f"<value><double>{value!r}</double></value>")
    elif value is None:
        out.append("<value></value>")
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for k, v in value.items():
            out.append(f"<member><name>{escape(_key(k))}</name>")
            _xml(v, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif isinstance(value, (list, tuple, set, frozenset)):
        out.append("<value><array><data>")
        for v in value:
            _xml(v, out)
        out.append("</data></array></value>")
    elif isinstance(value, xmlrpc.client.DateTime):
        out.append(f"<value><dateTime.iso8601>{value.value}</dateTime.iso8601></value>")
    else:
        out.append(f"<value>{escape(str(value))}</value>")


def xml_value(value: object) -> str:
    """One XML-RPC ``<value>`` as XAPI writes it (used for ``task.result``)."""
    out: list[str] = []
    _xml(value, out)
    return "".join(out)


def xml_response(status_struct: dict) -> bytes:
    """A ``methodResponse`` carrying XAPI's ``{Status, Value|ErrorDescription}`` struct."""
    out = ["<?xml version='1.0'?>\n<methodResponse><params><param>"]
    _xml(status_struct, out)
    out.append("</param></params></methodResponse>\n")
    return "".join(out).encode("utf-8")


def xml_fault(code: int, message: str) -> bytes:
    """A plain XML-RPC fault (what XAPI sends for e.g. an impossible Async form)."""
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode("utf-8")


def success(value: object) -> dict:
    return {"Status": "Success", "Value": "" if value is None else value}


def failure(details: list[str]) -> dict:
    return {"Status": "Failure", "ErrorDescription": [str(d) for d in details]}


def json_dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


__all__ += ["success", "failure", "json_dumps", "NULL_REF"]
