"""XAPI's query language for ``get_all_records_where``.

Why: clients filter on the server with expressions such as
``field "is_a_template"="false" and field "is_control_domain"="false"``;
the simulator must accept exactly what XAPI's ``Db_filter`` accepts and
give the same answers, surprises included:

* values are ``"literal"`` or ``field "column"``, where the column is the
  *database* name (``name__label``, ``memory__static_max``; see
  :mod:`.dbnames`); strings have no escapes;
  the only comparison is ``=`` (exact, case-sensitive string equality on
  the database form: ``true``/``false``, decimal numbers, enum values as
  the datamodel spells them, e.g. ``Running``);
* ``and`` and ``or`` have the *same* precedence and group left to right:
  ``a or b and c`` is ``(a or b) and c``;
* ``not`` binds more loosely than both: ``not a and b`` is
  ``not (a and b)`` -- use parentheses;
* ``true``, ``false`` and parentheses.

Errors are XAPI's: a malformed expression is ``INVALID_VALUE [expr, why]``
(``Db_filter.Expression_error``); a column the table lacks is
``INTERNAL_ERROR ["missing field", column, ""]`` (``DBCache_NotFound``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import XapiError

Predicate = Callable[[dict], bool]
Value = Callable[[dict], str]

_TOKEN = re.compile(r'\s*(?:(\()|(\))|(=)|"([^"]*)"|(field|and|or|not|true|false))')


def _fail(expr: str, why: str) -> XapiError:
    return XapiError("INVALID_VALUE", expr, f"invalid expression: {why}")


def _missing(column: str, columns: dict[str, str] | set[str]) -> XapiError:
    hint = ""
    if isinstance(columns, dict):
        wanted = [c for c, f in columns.items() if f == column and c != column]
        if wanted:
            hint = f"XAPI's database calls API field {column!r} {wanted[0]!r}"
    return XapiError("INTERNAL_ERROR", "missing field", column, hint)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = expr.rstrip(" \t\n")
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _fail(expr, f"unexpected text at {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        lp, rp, eq, string, word = m.groups()
        if lp:
            out.append(("(", lp))
        elif rp:
            out.append((")", rp))
        elif eq:
            out.append(("=", eq))
        elif string is not None:
            out.append(("str", string))
        else:
            out.append((word, word))
    return out


def as_text(value: object) -> str:
    """The string XAPI's database holds for a value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "(" + " ".join(f"'{as_text(v)}'" for v in value) + ")"
    if isinstance(value, dict):
        return "(" + " ".join(f"('{as_text(k)}' '{as_text(v)}')" for k, v in value.items()) + ")"
    return str(value)


def compile_where(expr: str, columns: dict[str, str] | set[str] | None = None) -> Predicate:
    """Compile ``expr`` into a predicate over a record dict.

    ``columns`` maps the class's database column names to record keys (a set
    means both spellings are the same); a column outside it fails loudly, as
    in XAPI, instead of silently matching nothing.  Without ``columns`` the
    name is used as the record key.
    """
    toks = _tokens(expr)
    pos = 0
    used: set[str] = set()

    def peek() -> str | None:
        return toks[pos][0] if pos < len(toks) else None

    def take(kind: str | None = None) -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise _fail(expr, "unexpected end")
        tok = toks[pos]
        if kind is not None and tok[0] != kind:
            raise _fail(expr, f"expected {kind!r}, got {tok[1]!r}")
        pos += 1
        return tok

    def value() -> Value:
        kind, text = take()
        if kind == "field":
            _, name = take("str")
            key = name
            if columns is not None:
                if name not in columns:
                    raise _missing(name, columns)
                key = columns[name] if isinstance(columns, dict) else name
            used.add(key)
            return lambda rec: as_text(rec.get(key, ""))
        if kind == "str":
            return lambda rec: text
        raise _fail(expr, f"expected 'field \"name\"' or a quoted string, got {text!r}")

    def operand() -> Predicate:
        kind = peek()
        if kind == "not":
            take()
            inner = chain()  # not takes everything up to ')' or the end
            return lambda rec: not inner(rec)
        if kind == "(":
            take()
            inner = chain()
            take(")")
            return inner
        if kind == "true":
            take()
            return lambda rec: True
        if kind == "false":
            take()
            return lambda rec: False
        left = value()
        take("=")
        right = value()
        return lambda rec: left(rec) == right(rec)

    def chain() -> Predicate:
        result = operand()
        while peek() in ("and", "or"):
            op = take()[0]
            rhs = operand()
            if op == "and":
                result = (lambda a, b: lambda rec: a(rec) and b(rec))(result, rhs)
            else:
                result = (lambda a, b: lambda rec: a(rec) or b(rec))(result, rhs)
        return result

    if not toks:
        raise _fail(expr, "empty expression")
    pred = chain()
    if pos != len(toks):
        raise _fail(expr, f"unexpected {toks[pos][1]!r}")

    def predicate(rec: dict) -> bool:
        return pred(rec)

    predicate.uses_ref = "_ref" in used  # type: ignore[attr-defined]
    return predicate
