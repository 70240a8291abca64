"""The slow path: exact JSON decoding of one body in Python.

Used for the bodies the fast path (Arrow's JSON reader) cannot hold, and for message types the
dictionary does not describe. Every value its column can hold is stored there; the rest goes,
verbatim (numbers keep their original text, repeated member names are kept), to ``_extra``.
What had to be moved is reported (``_Mistyped``) so that the decoder can learn from it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import pyarrow as pa

from capture.decode.shape import _HEADER_SPEC, _ObjectSpec
from capture.schemas import MessageDef
from capture.schemas.mapping import (
    ENUM_TYPES,
    EXTRA_COLUMN,
    FLOAT_TYPES,
    GENERIC_MESSAGE_COLUMN,
    GENERIC_MTYP_COLUMN,
    INTEGER_RANGES,
    STRING_TYPES,
    Leaf,
)


class _JsonInt(str):
    """A JSON integer, kept as its text (exact at any width)."""

    __slots__ = ()


class _JsonFloat(str):
    """A JSON number with a fraction or exponent, or NaN/Infinity, kept as its text."""

    __slots__ = ()


class _JsonObject(dict[str, Any]):
    """A JSON object that also keeps repeated member names (``dups``) instead of overwriting."""

    __slots__ = ("dups",)

    def __init__(self) -> None:
        super().__init__()
        self.dups: list[tuple[str, Any]] = []

    def pairs(self) -> Iterator[tuple[str, Any]]:
        yield from self.items()
        yield from self.dups


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    for key, value in pairs:
        if key in obj:
            obj.dups.append((key, value))
        else:
            obj[key] = value
    return obj


_DECODER: Final = json.JSONDecoder(
    parse_int=_JsonInt,
    parse_float=_JsonFloat,
    parse_constant=_JsonFloat,
    object_pairs_hook=_object_pairs,
)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class _Partial(list[tuple[str, Any]]):
    """Members of one object that go to ``_extra``; values may be nested ``_Partial`` objects."""

    __slots__ = ()


def _dumps(value: Any) -> str:
    """Compact JSON reproducing what was parsed (numbers keep their original text)."""
    if isinstance(value, _JsonInt | _JsonFloat):
        return str.__str__(value)
    if isinstance(value, str):
        # Lone surrogates come from invalid UTF-8 (surrogateescape). \udcXX escapes keep _extra
        # valid UTF-8 and the original bytes recoverable (encode with "surrogateescape").
        return json.dumps(value, ensure_ascii=_SURROGATE.search(value) is not None)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, _JsonObject):
        return _dump_pairs(value.pairs())
    if isinstance(value, _Partial):
        return _dump_pairs(value)
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    raise TypeError(f"not a decoded JSON value: {type(value).__name__}")


def _dump_pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    return "{" + ",".join(f"{_dumps(k)}:{_dumps(v)}" for k, v in pairs) + "}"


class _Bad:
    """Marker: the value cannot be held by its column."""

    __slots__ = ()


_BAD: Final = _Bad()
_DATETIME: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?"
)
_DATEKEY: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _is_text(value: Any) -> bool:
    return type(value) is str and (value.isascii() or _SURROGATE.search(value) is None)


def _conv_integer(lo: int, hi: int) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        if type(value) is _JsonInt:
            number = int(value)
            if lo <= number <= hi:
                return number
        return _BAD

    return conv


def _conv_float(value: Any) -> Any:
    if type(value) is _JsonInt or type(value) is _JsonFloat:
        number = float(value)  # correctly rounded, like Arrow's parser
        if math.isinf(number) and "Infinity" not in value:
            return _BAD  # beyond the double range: not representable
        return number
    return _BAD


def _conv_text(value: Any) -> Any:
    return value if _is_text(value) else _BAD


def _conv_timespan(value: Any) -> Any:
    if type(value) is _JsonInt or type(value) is _JsonFloat:
        return str.__str__(value)
    return _conv_text(value)


def _conv_datetime(value: Any) -> Any:
    """``YYYY-MM-DD[( |T)HH:MM[:SS[.f{1,9}]]][Z|+HH[:MM]]`` -> microseconds since the epoch."""
    if type(value) is not str or (m := _DATETIME.fullmatch(value)) is None:
        return _BAD
    year, month, day, hh, mm, ss, frac, zone = m.groups()
    digits = (frac or "").ljust(9, "0")
    if digits[6:] != "000":
        return _BAD  # finer than a microsecond: cannot be held exactly
    try:
        dt = datetime(int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0))
    except ValueError:
        return _BAD
    offset = timedelta()
    if zone and zone != "Z":
        zone_digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(zone_digits[:2]), minutes=int(zone_digits[2:] or 0))
        offset = -offset if zone[0] == "-" else offset
    delta = dt.replace(tzinfo=UTC) - offset - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + int(digits[:6])


def _conv_datekey(value: Any) -> Any:
    if type(value) is not str or (m := _DATEKEY.fullmatch(value)) is None:
        return _BAD
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return _BAD


_CONVERTERS: Final[dict[str, Callable[[Any], Any]]] = {
    **{ftype: _conv_integer(lo, hi) for ftype, (lo, hi) in INTEGER_RANGES.items()},
    **dict.fromkeys(FLOAT_TYPES, _conv_float),
    **dict.fromkeys(ENUM_TYPES | STRING_TYPES, _conv_text),
    "TimeSpan": _conv_timespan,
    "DateTime": _conv_datetime,
    "DateKey": _conv_datekey,
}


def _json_kind(value: Any) -> str:
    """Kind of a slow-path JSON value, as the reader would see it."""
    if value is None:
        return "null"
    if isinstance(value, _JsonInt | _JsonFloat):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "array"
    return "object"


_WIRE_KIND: Final[dict[str, str]] = {
    **dict.fromkeys(INTEGER_RANGES, "number"),
    **dict.fromkeys(FLOAT_TYPES, "number"),
    **dict.fromkeys(ENUM_TYPES | STRING_TYPES | {"DateTime", "DateKey"}, "string"),
}
"""JSON kind the explicit wire schema expects per dictionary type (TimeSpan: inferred)."""

_KIND_START: Final[dict[str, bytes]] = {
    "string": b'"',
    "number": b"[-0-9NI]",
    "object": b"\\{",
    "array": b"\\[",
    "bool": b"[tf]",
    "null": b"n",
}
"""First byte(s) of a JSON value of each kind, as a regex class."""


@dataclass(frozen=True, slots=True)
class _Mistyped:
    """A value the slow path had to move to ``_extra``, and what the decoder can learn from it."""

    name: str
    """JSON member name."""
    expected: str | None
    """JSON kind the wire schema expects there (None: inferred, or not worth learning from)."""
    kind: str
    """JSON kind that arrived."""
    loose_column: str | None = None
    """The column, if the fast path can read it loosely (message leaves, not header/items)."""


@dataclass(slots=True)
class _SlowRow:
    values: dict[str, Any] = field(default_factory=dict)
    extra: _Partial = field(default_factory=_Partial)
    unknown: set[str] = field(default_factory=set)
    mistyped: list[_Mistyped] = field(default_factory=list)


class _SlowPath:
    """Decodes single bodies of one message type exactly, in Python."""

    def __init__(
        self,
        msg_type: str,
        msg: MessageDef | None,
        spec: _ObjectSpec,
        items: dict[str, _ObjectSpec],
        loose_capable: frozenset[str],
        core_schema: pa.Schema,
    ) -> None:
        self.msg_type = msg_type
        self._msg = msg
        self._spec = spec
        self._items = items
        self._loose_capable = loose_capable
        """Columns the fast path can read loosely (message leaves, not header or item values)."""
        self._core_schema = core_schema

    def row(self, body: bytes) -> _SlowRow | str:
        """Decode one body exactly in Python; a str result is the reason to reject it."""
        try:
            obj = _DECODER.decode(body.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError) as exc:
            return f"invalid JSON: {exc}"
        if not isinstance(obj, _JsonObject):
            return f"a JSON {_json_kind(obj)}, not an object"
        row = _SlowRow()
        seen_header = seen_message = False
        for key, value in obj.pairs():
            if key == "header" and not seen_header and isinstance(value, _JsonObject):
                seen_header = True
                sub = _Partial()
                for hkey, hvalue in value.pairs():
                    if hkey != "mTyp":
                        self._member(hkey, hvalue, _HEADER_SPEC, "header", row, sub, row.values)
                    elif self._msg is None and _is_text(hvalue):
                        row.values[GENERIC_MTYP_COLUMN] = hvalue
                    elif self._msg is None or hvalue != self.msg_type:
                        sub.append((hkey, hvalue))
                if sub:
                    row.extra.append((key, sub))
            elif key == "message" and not seen_message and isinstance(value, _JsonObject):
                seen_message = True
                if self._msg is None:
                    row.values[GENERIC_MESSAGE_COLUMN] = _dumps(value)
                    continue
                sub = _Partial()
                for mkey, mvalue in value.pairs():
                    self._member(mkey, mvalue, self._spec, "message", row, sub, row.values)
                if sub:
                    row.extra.append((key, sub))
            elif value is None and key in ("header", "message"):
                pass  # JSON null: same as absent, as on the fast path
            else:
                if key in ("header", "message"):  # not an object, or a repeated member
                    row.mistyped.append(_Mistyped(key, "object", _json_kind(value)))
                else:
                    row.unknown.add(key)
                row.extra.append((key, value))
        return row

    def _member(
        self,
        key: str,
        value: Any,
        spec: _ObjectSpec,
        path: str,
        row: _SlowRow,
        extra: _Partial,
        out: dict[str, Any],
    ) -> None:
        """Store one member of an object into ``out`` (column -> value) or into ``extra``."""
        member = spec.members.get(key)
        if member is None:
            row.unknown.add(f"{path}.{key}")
            extra.append((key, value))
        elif value is None:
            pass  # JSON null: same as absent
        elif isinstance(member, Leaf):
            converted = _CONVERTERS[member.ftype](value)
            if member.column in out:  # a repeated member name: keep the later value
                row.mistyped.append(_Mistyped(key, None, "duplicate"))
                extra.append((key, value))
            elif converted is _BAD:
                loose = member.column if member.column in self._loose_capable else None
                kind = _json_kind(value)
                row.mistyped.append(_Mistyped(key, _WIRE_KIND.get(member.ftype), kind, loose))
                extra.append((key, value))
            else:
                out[member.column] = converted
        elif isinstance(member, _ObjectSpec):
            if not isinstance(value, _JsonObject):
                row.mistyped.append(_Mistyped(key, "object", _json_kind(value)))
                extra.append((key, value))
                return
            sub = _Partial()
            for k, v in value.pairs():
                self._member(k, v, member, f"{path}.{key}", row, sub, out)
            if sub:
                extra.append((key, sub))
        elif not isinstance(value, list) or member.column in out:
            expected = "array" if member.column not in out else None
            row.mistyped.append(_Mistyped(key, expected, _json_kind(value)))
            extra.append((key, value))
        else:
            items_spec = self._items[member.column]
            items: list[dict[str, Any] | None] = []
            complete = True
            for item in value:
                if not isinstance(item, _JsonObject):
                    if item is not None:  # cannot be pre-screened by name: isolated per batch
                        row.mistyped.append(_Mistyped(key, None, _json_kind(item)))
                        complete = False
                    items.append(None)
                    continue
                values: dict[str, Any] = {}
                sub = _Partial()
                for k, v in item.pairs():
                    self._member(k, v, items_spec, f"{path}.{key}[]", row, sub, values)
                complete = complete and not sub
                items.append(values)
            out[member.column] = items
            if not complete:
                extra.append((key, value))  # the whole array, so item positions stay exact

    def table(self, rows: list[_SlowRow]) -> pa.Table:
        arrays = []
        for f in self._core_schema:
            if f.name == EXTRA_COLUMN:
                values = [_dump_pairs(r.extra) if r.extra else None for r in rows]
            else:
                values = [r.values.get(f.name) for r in rows]
            arrays.append(pa.array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=self._core_schema)
