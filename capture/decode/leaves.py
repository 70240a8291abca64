"""Leaf conversion on the fast path: the values Arrow's JSON reader produced for one leaf (read
with its wire type, or inferred) -> the values of its column, vectorised."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from capture.decode.bookkeeping import _ChunkFailed
from capture.decode.jsontext import (
    _MAX_EXACT_DOUBLE,
    _NULL_STR,
    _Arr,
    _json_string_text,
    _json_value_text,
)
from capture.schemas.mapping import (
    ENUM_TYPES,
    FLOAT_TYPES,
    INTEGER_RANGES,
    STRING_TYPES,
    TIMESTAMP_US,
    Leaf,
)


def _strict_leaf(leaf: Leaf, arr: _Arr | None) -> _Arr:
    """Values read with the leaf's wire type -> its storage type."""
    if arr is None:  # pragma: no cover - explicit wire members are always present
        raise _ChunkFailed(f"{leaf.column} missing from the wire table")
    if leaf.ftype in ENUM_TYPES:
        return pc.dictionary_encode(arr)
    if leaf.ftype == "DateKey":
        return pc.cast(arr, pa.date32())  # ArrowInvalid -> isolation of the bad body
    if leaf.ftype in INTEGER_RANGES and arr.type != leaf.type:
        return pc.cast(arr, leaf.type)  # unsigned wire type -> wider signed: always exact
    return arr


def _loose_leaf(leaf: Leaf, arr: _Arr | None, length: int) -> tuple[_Arr, _Arr | None, _Arr | None]:
    """Inferred values of one leaf -> (column values, JSON text of the values the column cannot
    hold (or None), rows whose exact text only the slow path can keep (or None))."""
    if arr is None or pa.types.is_null(arr.type):
        return pa.nulls(length, leaf.type), None, None
    t, ftype = arr.type, leaf.ftype
    if ftype == "TimeSpan":
        if pa.types.is_string(t):
            return arr, None, None
        if pa.types.is_integer(t):
            return pc.cast(arr, pa.utf8()), None, None
        return pa.nulls(length, pa.utf8()), None, pc.is_valid(arr)
    if ftype in INTEGER_RANGES and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        lo, hi = INTEGER_RANGES[ftype]
        fits = pc.and_(pc.greater_equal(arr, lo), pc.less_equal(arr, hi))
        inexact = None
        if pa.types.is_floating(t):
            # A JSON integer among fractions is inferred as double: keep exact ones only.
            small = pc.less(pc.abs(arr), _MAX_EXACT_DOUBLE)
            fits = pc.and_(fits, pc.and_(small, pc.equal(pc.floor(arr), arr)))
            inexact = pc.fill_null(pc.invert(small), False)
        fits = pc.fill_null(fits, False)
        value = pc.cast(pc.if_else(fits, arr, pa.scalar(None, t)), leaf.type, safe=False)
        text, _ = _json_value_text(pc.if_else(fits, pa.scalar(None, t), arr))
        return value, text, inexact
    if ftype in FLOAT_TYPES and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return pc.cast(arr, pa.float64(), safe=False), None, None
    if (ftype in ENUM_TYPES or ftype in STRING_TYPES) and pa.types.is_string(t):
        return _strict_leaf(leaf, arr), None, None
    if ftype == "DateKey" and pa.types.is_string(t):
        # strptime rolls impossible dates over (02-30 -> 03-02): keep only exact round trips.
        parsed = pc.strptime(arr, format="%Y-%m-%d", unit="s", error_is_null=True)
        exact = pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), arr), False)
        value = pc.cast(pc.if_else(exact, parsed, pa.scalar(None, parsed.type)), pa.date32())
        return value, _json_string_text(pc.if_else(exact, _NULL_STR, arr)), None
    if ftype == "DateTime" and pa.types.is_timestamp(t):
        return pc.cast(arr, TIMESTAMP_US), None, None
    if ftype == "DateTime" and pa.types.is_string(t):
        return pa.nulls(length, leaf.type), None, pc.is_valid(arr)
    text, inexact = _json_value_text(arr)  # wrong kind altogether: all values to _extra
    return pa.nulls(length, leaf.type), text, inexact


def _flatten(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    """Every non-struct value of the table by dotted path (parent nulls propagate)."""
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    names = table.column_names
    if len(set(names)) != len(names):  # a member name with a dot in it shadows a path
        raise _ChunkFailed("ambiguous member names")
    return dict(zip(names, table.columns, strict=True))


def _member(obj: _Arr, path: Sequence[str]) -> _Arr | None:
    """Nested struct member, or None when the reader produced no such child (inferred field)."""
    for part in path:
        if obj.type.get_field_index(part) < 0:
            return None
        obj = pc.struct_field(obj, part)
    return obj


def _as_array(arr: _Arr) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
