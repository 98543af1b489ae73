"""XAPI's query language for ``get_all_records_where``.

Why: clients (the old Nova driver, XenCenter, our driver) filter on the
server with expressions such as ``field "is_a_template"="false" and not
field "is_control_domain"="true"``.  Grammar (XAPI's ``Db_filter``)::

    expr  := term ("or" term)*
    term  := unary ("and" unary)*
    unary := "not" unary | "(" expr ")" | "true" | "false" | value "=" value | value "<>" value
    value := 'field' STRING | STRING

Comparisons are on the string form XAPI stores: booleans ``true``/``false``,
numbers in decimal, enums case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import XapiError

_TOKEN = re.compile(r'\s*(?:(\()|(\))|(<>|=)|"((?:[^"\\]|\\.)*)"|([A-Za-z_][A-Za-z0-9_]*))')

Predicate = Callable[[dict], bool]


def _fail(expr: str, why: str) -> XapiError:
    return XapiError("INTERNAL_ERROR", f"invalid expression {expr!r}: {why}")


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = expr.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _fail(expr, f"unexpected text at {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        lp, rp, op, string, word = m.groups()
        if lp:
            out.append(("(", lp))
        elif rp:
            out.append((")", rp))
        elif op:
            out.append(("op", op))
        elif string is not None:
            out.append(("str", re.sub(r"\\(.)", r"\1", string)))
        else:
            out.append(("word", word.lower()))
    return out


def as_text(value: object) -> str:
    """The string XAPI's database would hold for a scalar value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "(" + " ".join(f"'{as_text(v)}'" for v in value) + ")"
    if isinstance(value, dict):
        return "(" + " ".join(f"('{as_text(k)}' '{as_text(v)}')" for k, v in value.items()) + ")"
    return str(value)


def compile_where(expr: str, fields: dict[str, str] | None = None) -> Predicate:
    """Compile ``expr`` into a predicate over a record dict.

    ``fields`` maps the class's field names to their type kind (``enum``,
    ``string`` ...): a typo fails loudly instead of silently matching
    nothing, and enum fields compare case-insensitively as in XAPI.
    """
    toks = _tokens(expr)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise _fail(expr, "unexpected end")
        tok = toks[pos]
        pos += 1
        return tok

    def value() -> tuple[Callable[[dict], str], bool]:
        kind, text = take()
        if kind == "word" and text == "field":
            k2, name = take()
            if k2 != "str":
                raise _fail(expr, "expected a quoted field name after 'field'")
            if fields is not None and name not in fields:
                raise _fail(expr, f"unknown field {name!r}")
            is_enum = fields is not None and fields[name] == "enum"
            return (lambda rec: as_text(rec.get(name, ""))), is_enum
        if kind == "str":
            return (lambda rec: text), False
        raise _fail(expr, f"expected 'field \"name\"' or a quoted string, got {text!r}")

    def unary() -> Predicate:
        tok = peek()
        if tok is None:
            raise _fail(expr, "unexpected end")
        if tok == ("word", "not"):
            take()
            inner = unary()
            return lambda rec: not inner(rec)
        if tok[0] == "(":
            take()
            inner = disj()
            if take()[0] != ")":
                raise _fail(expr, "missing ')'")
            return inner
        if tok == ("word", "true"):
            take()
            return lambda rec: True
        if tok == ("word", "false"):
            take()
            return lambda rec: False
        left, lenum = value()
        kind, op = take()
        if kind != "op":
            raise _fail(expr, f"expected '=' or '<>', got {op!r}")
        right, renum = value()
        if lenum or renum:

            def eq(rec: dict) -> bool:
                return left(rec).lower() == right(rec).lower()

        else:

            def eq(rec: dict) -> bool:
                return left(rec) == right(rec)

        if op == "=":
            return eq
        return lambda rec: not eq(rec)

    def conj() -> Predicate:
        parts = [unary()]
        while peek() == ("word", "and"):
            take()
            parts.append(unary())
        return parts[0] if len(parts) == 1 else (lambda rec: all(p(rec) for p in parts))

    def disj() -> Predicate:
        parts = [conj()]
        while peek() == ("word", "or"):
            take()
            parts.append(conj())
        return parts[0] if len(parts) == 1 else (lambda rec: any(p(rec) for p in parts))

    if not toks:
        raise _fail(expr, "empty expression")
    pred = disj()
    if pos != len(toks):
        raise _fail(expr, f"unexpected {toks[pos][1]!r}")
    return pred
