"""MLinkStream filters (PROTOCOL.md §6.1): the ``where`` clause and the ``view`` field list.

Both are checked against the message type's dictionary fields when the stream is requested;
a bad one raises :class:`~capture.errors.WhereError` (the stream is answered ``Error``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from capture.errors import WhereError
from capture.schemas import FieldDef, MessageDef
from capture.sim.encoding import fmt_double, utc_text

__all__ = ["Predicate", "compile_where", "parse_view"]


_NUMERIC = frozenset({"Float", "Double", "Int", "UInt", "Long", "Short", "UShort", "Byte"})
_TOKEN = re.compile(r"\s*(\(|\)|&|\||[^()&|]+)")
_OPS = frozenset({"eq", "ne", "gt", "ge", "lt", "le", "sw", "ew", "cv", "nv", "cb"})

Predicate = Callable[[Mapping[str, Any]], bool]


def _flat_key(v: Mapping[str, Any]) -> str:
    parts = [str(v.get("tk", "")), str(v.get("ts", "")), str(v.get("at", ""))]
    if "dt" in v:
        parts.append(str(v["dt"]))
    if "xx" in v:
        parts.append(fmt_double(float(v["xx"])))
        parts.append("C" if v.get("cp") == "Call" else "P" if v.get("cp") == "Put" else "")
    return "-".join(parts)


def _field_index(mdef: MessageDef) -> dict[str, FieldDef]:
    return {f.name.casefold(): f for f in mdef.fields if f.repeater is None}


def compile_where(text: str, mdef: MessageDef) -> Predicate:
    """Compile an MLinkStream ``where`` clause against a message type's fields.

    Supports ``field:op:value`` with ops eq ne gt ge lt le sw ew cv (contains) nv (does not
    contain) cb (between, ``lo$hi``), key sub-fields (``okey.tk``) and flat keys
    (``ticker:eq:AAPL-NMS-EQT``), ``&`` (also ``%26``), ``|`` and parentheses.  Field names are
    case-insensitive; absent fields compare as their default (0 / ``""``).
    """
    tokens = [t.strip() for t in _TOKEN.findall(text.replace("%26", "&")) if t.strip()]
    if not tokens:
        raise WhereError("empty where clause")
    fields_by_name = _field_index(mdef)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def expr() -> Predicate:
        nonlocal pos
        terms = [term()]
        while peek() == "|":
            pos += 1
            terms.append(term())
        return terms[0] if len(terms) == 1 else (lambda v: any(t(v) for t in terms))

    def term() -> Predicate:
        nonlocal pos
        factors = [factor()]
        while peek() == "&":
            pos += 1
            factors.append(factor())
        return factors[0] if len(factors) == 1 else (lambda v: all(f(v) for f in factors))

    def factor() -> Predicate:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise WhereError("where clause ends early")
        pos += 1
        if tok == "(":
            inner = expr()
            if peek() != ")":
                raise WhereError("unbalanced parentheses in where clause")
            pos += 1
            return inner
        if tok in (")", "&", "|"):
            raise WhereError(f"unexpected {tok!r} in where clause")
        return _condition(tok, fields_by_name)

    pred = expr()
    if pos != len(tokens):
        raise WhereError(f"unexpected {tokens[pos]!r} in where clause")
    return pred


def _condition(text: str, fields_by_name: Mapping[str, FieldDef]) -> Predicate:
    parts = text.split(":", 2)
    if len(parts) != 3:
        raise WhereError(f"bad condition {text!r} (expected field:op:value)")
    path, op, want = parts[0].strip(), parts[1].strip().casefold(), parts[2].strip()
    if op not in _OPS:
        raise WhereError(f"unknown operator {op!r} in {text!r}")
    name, _, sub = path.casefold().partition(".")
    f = fields_by_name.get(name)
    if f is None:
        raise WhereError(f"unknown field {path!r} in where clause")
    if sub and (f.ftype not in ("TickerKey", "ExpiryKey", "OptionKey") or sub not in _SUBS):
        raise WhereError(f"unknown sub-field {path!r} in where clause")
    numeric = f.ftype in _NUMERIC or sub == "xx"

    def get(values: Mapping[str, Any]) -> Any:
        v = values.get(f.name)
        if sub:
            return v.get(sub, "") if isinstance(v, Mapping) else ""
        if isinstance(v, Mapping):
            return _flat_key(v)
        if f.ftype == "DateTime" and isinstance(v, int):
            return utc_text(v)
        if v is None:
            return 0 if numeric else ""
        return v

    def num(s: str) -> float:
        try:
            return float(s)
        except ValueError:
            raise WhereError(f"{path} needs a number, got {s!r}") from None

    if op == "cb":
        lo_s, sep, hi_s = want.partition("$")
        if not sep:
            raise WhereError(f"cb needs lo$hi, got {want!r}")
        if numeric:
            lo, hi = num(lo_s), num(hi_s)
            return lambda v: lo <= float(get(v)) <= hi
        lo_t, hi_t = lo_s.casefold(), hi_s.casefold()
        return lambda v: lo_t <= str(get(v)).casefold() <= hi_t
    if op in ("sw", "ew", "cv", "nv"):
        w = want.casefold()
        text_ops: dict[str, Callable[[str], bool]] = {
            "sw": lambda s: s.startswith(w),
            "ew": lambda s: s.endswith(w),
            "cv": lambda s: w in s,
            "nv": lambda s: w not in s,
        }
        check = text_ops[op]
        return lambda v: check(_text(get(v)).casefold())
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }
    cmp = compare[op]
    if numeric:
        target = num(want)
        return lambda v: cmp(float(get(v)), target)
    target_t = want.casefold()
    return lambda v: cmp(_text(get(v)).casefold(), target_t)


_SUBS = frozenset({"at", "ts", "tk", "dt", "xx", "cp"})


def _text(v: Any) -> str:
    if isinstance(v, float):
        return fmt_double(v)
    return str(v)


def parse_view(text: str, mdef: MessageDef) -> frozenset[str]:
    """``view``: field names separated by ``|`` (the examples) or ``,`` (the description)."""
    names = [n.strip().casefold() for n in re.split(r"[|,]", text) if n.strip()]
    index = _field_index(mdef)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise WhereError(f"unknown field(s) in view: {', '.join(unknown)}")
    return frozenset(names)
