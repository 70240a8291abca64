"""Raw MLink JSON bodies of one message type -> one Arrow record batch (the capture hot path).

Fast path: the bodies are joined with ``\\n`` and handed to Arrow's C++ JSON reader with an
explicit *wire* schema (``header`` struct, ``message`` struct with its ``pkey`` struct) that
mirrors the dictionary. The structs are then flattened into the table columns with Arrow compute
(dictionary-encoding for enums, ``date32`` casts for date keys, list rebuilding for Repeaters);
no Python object is created per message.

The reader runs with ``unexpected_field_behavior="infer"``: fields the dictionary does not know
(schema drift) come back as extra, inferred struct children. They are turned into ``_extra`` JSON
with Arrow compute too, so a server that permanently sends a new field does not slow capture down.
TimeSpan fields (JSON form unknown) are deliberately left out of the wire schema and take the
same inferred route, so a string or an integer both stay on the fast path.

Anything the reader cannot hold (a mistyped value, a number out of range, a body that is not one
JSON object, a DateTime it cannot parse) makes ``read_json`` fail for the whole chunk. The chunk
is then bisected until the offending bodies are isolated; only those go through the Python slow
path, which stores every value it can in its column and moves the rest, verbatim, to ``_extra``.

This module must stay free of trio: the capture worker calls it from a worker thread.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from capture.schemas import MessageDef, arrow_schema, lookup
from capture.schemas.mapping import (
    CAPTURE_COLUMNS,
    ENUM_TYPES,
    EXTRA_COLUMN,
    FLOAT_TYPES,
    GENERIC_MESSAGE_COLUMN,
    GENERIC_MTYP_COLUMN,
    HEADER_FIELDS,
    HEADER_PREFIX,
    INTEGER_RANGES,
    STRING_TYPES,
    TIMESTAMP_US,
    TYPE_NUMBER_COLUMN,
    Column,
    Leaf,
    RepeaterColumn,
    layout,
    storage_type,
)

__all__ = ["BatchDecoder", "DecodeResult", "DriftReport"]

# A failing chunk is bisected; chunks this small go to the slow path whole instead.
_MIN_BISECT_ROWS: Final = 4
# Give up bisecting (rest of the batch -> slow path) after this many failed parses per batch.
_MAX_FAILED_PARSES: Final = 48
_READ_BLOCK_SIZE: Final = 1 << 20
_MAX_EXACT_DOUBLE: Final = float(2**53)


# --------------------------------------------------------------------------------------------
# Public result types


@dataclass(frozen=True)
class DriftReport:
    """What one ``decode`` call saw that the dictionary did not predict."""

    unknown_fields: frozenset[str] = frozenset()
    """Paths of members the dictionary does not know, e.g. ``message.prcFramework``,
    ``message.pkey.okey.zz``, ``header.newHdr``, ``message.Legs[].foo``, ``other`` (top level)."""
    mistyped_values: int = 0
    """Values of a known field that had an unexpected JSON type or range (kept in ``_extra``)."""
    slow_path_rows: int = 0
    """Rows decoded by the Python slow path (rejected bodies included)."""
    unknown_enum_values: frozenset[tuple[str, str]] = frozenset()
    """(column, value) for Enum/Flag values outside the dictionary's eSet (stored as sent)."""

    def __bool__(self) -> bool:
        return bool(
            self.unknown_fields
            or self.mistyped_values
            or self.slow_path_rows
            or self.unknown_enum_values
        )

    def merged(self, other: DriftReport) -> DriftReport:
        """Sum of two reports (for per-stream accounting)."""
        return DriftReport(
            unknown_fields=self.unknown_fields | other.unknown_fields,
            mistyped_values=self.mistyped_values + other.mistyped_values,
            slow_path_rows=self.slow_path_rows + other.slow_path_rows,
            unknown_enum_values=self.unknown_enum_values | other.unknown_enum_values,
        )


@dataclass(frozen=True)
class DecodeResult:
    batch: pa.RecordBatch
    """One row per accepted body, in input order; ``batch.schema == decoder.schema``."""
    drift: DriftReport
    rejected: list[tuple[int, bytes, str]]
    """(index, body, reason) for bodies that are not a JSON object; they have no row."""


# --------------------------------------------------------------------------------------------
# Shape of the JSON objects of one message type


@dataclass(slots=True)
class _ObjectSpec:
    """Known members of one JSON object (``message``, ``pkey``, a key object, a Repeater item)."""

    members: dict[str, _ObjectSpec | Leaf | RepeaterColumn] = field(default_factory=dict)

    @classmethod
    def build(cls, columns: Iterable[Column], depth: int = 0) -> _ObjectSpec:
        root = cls()
        for col in columns:
            if isinstance(col, RepeaterColumn):
                root.members[col.name] = col
                continue
            node = root
            for part in col.path[:-1]:
                child = node.members.setdefault(part, cls())
                assert isinstance(child, _ObjectSpec)
                node = child
            node.members[col.path[-1]] = col
        return root


def _wire_type(ftype: str) -> pa.DataType | None:
    """Type requested from the JSON reader; None = let the reader infer (TimeSpan)."""
    if ftype == "TimeSpan":
        return None
    if ftype in INTEGER_RANGES:
        return storage_type(ftype)  # the reader range-checks; out of range -> slow path
    if ftype in FLOAT_TYPES:
        return pa.float64()
    if ftype == "DateTime":
        return TIMESTAMP_US
    return pa.utf8()  # enums, strings, DateKey (cast to date32 afterwards)


def _wire_struct(spec: _ObjectSpec, items: dict[str, _ObjectSpec]) -> pa.StructType:
    fields = []
    for name, member in spec.members.items():
        if isinstance(member, _ObjectSpec):
            fields.append(pa.field(name, _wire_struct(member, items)))
        elif isinstance(member, RepeaterColumn):
            item = _wire_struct(items[member.column], items)
            fields.append(pa.field(name, pa.list_(item)))
        else:
            wtype = _wire_type(member.ftype)
            if wtype is not None:
                fields.append(pa.field(name, wtype))
    return pa.struct(fields)


_HEADER_SPEC: Final = _ObjectSpec(
    {
        name: Leaf(HEADER_PREFIX + name, (name,), ftype, storage_type(ftype))
        for name, ftype in HEADER_FIELDS
    }
)
_HEADER_WIRE: Final = pa.struct(
    [pa.field("mTyp", pa.utf8())]
    + [pa.field(n, _wire_type(t)) for n, t in HEADER_FIELDS if _wire_type(t) is not None]
)


# --------------------------------------------------------------------------------------------
# Vectorised JSON text for _extra


_ANY = pa.Array | pa.ChunkedArray
_NULL_STR: Final = pa.scalar(None, pa.utf8())
_CONTROL_CHARS: Final = r"[\x00-\x1f]"


def _json_string_text(arr: Any) -> Any:
    """JSON string literals for a utf8 array (nulls stay null)."""
    escaped = pc.replace_substring(arr, "\\", "\\\\")
    escaped = pc.replace_substring(escaped, '"', '\\"')
    out = pc.binary_join_element_wise('"', escaped, '"', "")
    if pc.any(pc.match_substring_regex(arr, _CONTROL_CHARS)).as_py():
        # Rare: control characters need \\uXXXX escapes; let Python do those values.
        values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in arr.to_pylist()]
        out = pa.array(values, pa.utf8())
    return out


def _json_value_text(arr: Any) -> tuple[Any, Any]:
    """JSON text for an inferred column, and a mask of rows it cannot render exactly.

    Returns (text array or None, bool mask or None). Text is null where the value is null.
    """
    t = arr.type
    if pa.types.is_null(t):
        return None, None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _json_string_text(arr), None
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.utf8()), None
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false"), None
    if pa.types.is_floating(t):
        # int64 and float mixed in one column come back as double: large integers lost digits.
        inexact = pc.fill_null(pc.greater_equal(pc.abs(arr), _MAX_EXACT_DOUBLE), False)
        text = pc.cast(arr, pa.utf8())
        text = pc.replace_substring_regex(text, "^nan$", "NaN")
        text = pc.replace_substring_regex(text, "^(-?)inf$", "${1}Infinity")
        return text, inexact
    # Nested values or inferred timestamps: the original text is not recoverable here.
    return None, pc.is_valid(arr)


def _join_fragments(fragments: Sequence[Any], length: int) -> Any:
    """``,"k":v`` fragments (nullable) -> ``{"k":v,...}`` or null when every fragment is null."""
    if not fragments:
        return pa.nulls(length, pa.utf8())
    joined = pc.binary_join_element_wise(
        *fragments, "", null_handling="replace", null_replacement=""
    )
    body = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 1), "}", "")
    return pc.if_else(pc.equal(joined, ""), _NULL_STR, body)


def _fragment(name: str, text: Any) -> Any:
    prefix = "," + json.dumps(name, ensure_ascii=False) + ":"
    return pc.binary_join_element_wise(prefix, text, "", null_handling="emit_null")


# --------------------------------------------------------------------------------------------
# Slow path: exact JSON decoding in Python


class _JsonInt(str):
    """A JSON integer, kept as its text (exact for any width)."""

    __slots__ = ()


class _JsonFloat(str):
    """A JSON number with a fraction/exponent, or NaN/Infinity, kept as its text."""

    __slots__ = ()


class _JsonObject(dict[str, Any]):
    """A JSON object; repeated member names are kept in ``dups`` instead of being overwritten."""

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
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Partial(list[tuple[str, Any]]):
    """Members of one object that go to ``_extra`` (values may be nested _Partial objects)."""

    __slots__ = ()


def _dumps(value: Any) -> str:
    """Compact JSON that reproduces what was parsed (numbers as their original text)."""
    if isinstance(value, _JsonInt | _JsonFloat):
        return str.__str__(value)
    if isinstance(value, str):
        # Lone surrogates come from invalid UTF-8 (surrogateescape): write them as \\udcXX
        # escapes, which keeps _extra valid UTF-8 and the original bytes recoverable.
        return json.dumps(value, ensure_ascii=_SURROGATE.search(value) is not None)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, _JsonObject):
        return _dump_pairs(value.pairs())
    if isinstance(value, _Partial):
        return _dump_pairs(value)
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    raise TypeError(f"unexpected JSON value {type(value).__name__}")


def _dump_pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    return "{" + ",".join(f"{_dumps(k)}:{_dumps(v)}" for k, v in pairs) + "}"


class _Bad:
    """Marker: the value cannot be held by its column."""


_BAD: Final = _Bad()

_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?"
)
_DATEKEY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DATE = date(1970, 1, 1)


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
        number = float(value)
        if math.isinf(number) and "Infinity" not in value:
            return _BAD  # out of double range: the text is not representable
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
    if type(value) is not str:
        return _BAD
    m = _DATETIME.fullmatch(value)
    if m is None:
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
        sign = -1 if zone[0] == "-" else 1
        zone_digits = zone[1:].replace(":", "")
        offset = sign * timedelta(hours=int(zone_digits[:2]), minutes=int(zone_digits[2:] or 0))
    delta = dt.replace(tzinfo=timezone.utc) - offset - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + int(digits[:6])


def _conv_datekey(value: Any) -> Any:
    if type(value) is not str:
        return _BAD
    m = _DATEKEY.fullmatch(value)
    if m is None:
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


@dataclass(slots=True)
class _SlowRow:
    values: dict[str, Any] = field(default_factory=dict)
    extra: _Partial = field(default_factory=_Partial)
    unknown: set[str] = field(default_factory=set)
    mistyped: int = 0


# --------------------------------------------------------------------------------------------
# Per-call bookkeeping


@dataclass(slots=True)
class _Run:
    unknown: set[str] = field(default_factory=set)
    mistyped: int = 0
    enums: set[tuple[str, str]] = field(default_factory=set)
    failed_parses: int = 0
    fast: list[tuple[list[int], pa.Table]] = field(default_factory=list)
    slow: list[int] = field(default_factory=list)


class _ChunkFailed(Exception):
    """The fast path cannot hold this chunk as a whole."""


# --------------------------------------------------------------------------------------------
# The decoder


class BatchDecoder:
    """Decodes batches of raw JSON bodies of one message type into ``self.schema`` batches.

    Not thread-safe per instance (it keeps no state between calls except caches, but use one
    decoder per worker). Construction is cheap after the first one per type.
    """

    def __init__(self, msg_type: str) -> None:
        self.msg_type = msg_type
        self.schema: pa.Schema = arrow_schema(msg_type)
        self._msg: MessageDef | None = lookup(msg_type)
        self._core_schema = pa.schema(
            [f for f in self.schema if f.name not in _METADATA_NAMES]
        )
        self._columns: tuple[Column, ...] = ()
        self._spec = _ObjectSpec()
        self._items: dict[str, _ObjectSpec] = {}
        if self._msg is None:
            return
        self._columns = layout(self._msg).columns
        self._spec = _ObjectSpec.build(self._columns)
        self._items = {
            c.column: _ObjectSpec.build(c.members)
            for c in self._columns
            if isinstance(c, RepeaterColumn)
        }
        wire = pa.schema(
            [
                pa.field("header", _HEADER_WIRE),
                pa.field("message", _wire_struct(self._spec, self._items)),
            ]
        )
        self._parse_options = pj.ParseOptions(
            explicit_schema=wire, unexpected_field_behavior="infer"
        )
        self._read_options = pj.ReadOptions(use_threads=True, block_size=_READ_BLOCK_SIZE)
        self._enum_sets = {
            c.column: pa.array(sorted(_enum_values(self._msg, c)), pa.utf8())
            for c in self._columns
            if isinstance(c, Leaf) and c.ftype in ENUM_TYPES and c.path[-1] not in _KEY_ENUMS
        }

    # -- public -------------------------------------------------------------------------------

    def decode(
        self,
        bodies: Sequence[bytes],
        *,
        type_numbers: Sequence[int],
        recv_ns: Sequence[int],
        snapshot: Sequence[bool],
        seq: Sequence[int],
        stripe: str,
        session: str,
    ) -> DecodeResult:
        n = len(bodies)
        for name, values in (
            ("type_numbers", type_numbers),
            ("recv_ns", recv_ns),
            ("snapshot", snapshot),
            ("seq", seq),
        ):
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} bodies")

        run = _Run()
        rejected: list[tuple[int, bytes, str]] = []
        if self._msg is not None and n:
            self._fast_path(bodies, run)
        else:
            run.slow = list(range(n))

        slow_rows: list[_SlowRow] = []
        slow_index: list[int] = []
        for i in sorted(run.slow):
            row = self._slow_row(bodies[i])
            if isinstance(row, str):
                rejected.append((i, bodies[i], row))
                continue
            run.unknown |= row.unknown
            run.mistyped += row.mistyped
            slow_rows.append(row)
            slow_index.append(i)

        parts = [table for _, table in run.fast]
        order = [i for idx, _ in run.fast for i in idx]
        if slow_rows:
            parts.append(self._slow_table(slow_rows))
            order += slow_index
        core = pa.concat_tables(parts) if parts else self._core_schema.empty_table()
        if any(a > b for a, b in zip(order, order[1:], strict=False)):
            core = core.take(pc.sort_indices(pa.array(order, pa.int64())))
            order.sort()
        if len(order) == n:
            meta = self._metadata(type_numbers, recv_ns, snapshot, seq, stripe, session)
        else:
            meta = self._metadata(
                [type_numbers[i] for i in order],
                [recv_ns[i] for i in order],
                [snapshot[i] for i in order],
                [seq[i] for i in order],
                stripe,
                session,
            )
        core = core.combine_chunks()
        arrays = meta + [core.column(i).chunks[0] if core.num_rows else
                         pa.array([], f.type) for i, f in enumerate(self._core_schema)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        drift = DriftReport(
            unknown_fields=frozenset(run.unknown),
            mistyped_values=run.mistyped,
            slow_path_rows=len(run.slow),
            unknown_enum_values=frozenset(run.enums),
        )
        return DecodeResult(batch=batch, drift=drift, rejected=rejected)

    # -- metadata -----------------------------------------------------------------------------

    def _metadata(
        self,
        type_numbers: Sequence[int],
        recv_ns: Sequence[int],
        snapshot: Sequence[bool],
        seq: Sequence[int],
        stripe: str,
        session: str,
    ) -> list[pa.Array]:
        n = len(recv_ns)
        zeros = pa.repeat(pa.scalar(0, pa.int32()), n)
        types = dict(CAPTURE_COLUMNS)
        return [
            pa.array(recv_ns, pa.int64()).view(types["_recv_time"]),
            pa.DictionaryArray.from_arrays(zeros, pa.array([stripe], pa.utf8())),
            pa.DictionaryArray.from_arrays(zeros, pa.array([session], pa.utf8())),
            pa.array(snapshot, pa.bool_()),
            pa.array(seq, pa.int64()),
            pa.array(type_numbers, TYPE_NUMBER_COLUMN[1]),
        ]

    # -- fast path ----------------------------------------------------------------------------

    def _fast_path(self, bodies: Sequence[bytes], run: _Run) -> None:
        n = len(bodies)
        joined = b"\n".join(bodies)
        framed = (
            joined[:1] == b"{"
            and joined[-1:] == b"}"
            and joined.count(b"\n") == n - 1
            and joined.count(b"\n{") == n - 1
            and joined.count(b"}\n") == n - 1
        )
        if framed and _valid_utf8(joined):
            self._fast_chunk(list(range(n)), list(bodies), run, joined)
            return
        # Screen bodies one by one: keep the well-formed ones on the fast path.
        idx: list[int] = []
        lines: list[bytes] = []
        for i, body in enumerate(bodies):
            line = body.strip(b" \t\r\n")
            if line[:1] != b"{" or line[-1:] != b"}" or not _valid_utf8(line):
                run.slow.append(i)
                continue
            if b"\n" in line or b"\r" in line:
                # Raw CR/LF can only be whitespace between JSON tokens: blank them out.
                line = line.replace(b"\r", b" ").replace(b"\n", b" ")
            idx.append(i)
            lines.append(line)
        if idx:
            self._fast_chunk(idx, lines, run, None)

    def _fast_chunk(
        self, idx: list[int], lines: list[bytes], run: _Run, joined: bytes | None
    ) -> None:
        try:
            table = self._read(lines, joined)
            keep_table, slow_positions = self._convert(table)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, _ChunkFailed):
            run.failed_parses += 1
            if len(idx) <= _MIN_BISECT_ROWS or run.failed_parses > _MAX_FAILED_PARSES:
                run.slow += idx
                return
            mid = len(idx) // 2
            self._fast_chunk(idx[:mid], lines[:mid], run, None)
            self._fast_chunk(idx[mid:], lines[mid:], run, None)
            return
        if slow_positions:
            run.slow += [idx[p] for p in slow_positions]
            idx = [i for p, i in enumerate(idx) if p not in slow_positions]
        run.fast.append((idx, keep_table))

    def _read(self, lines: list[bytes], joined: bytes | None) -> pa.Table:
        data = joined if joined is not None else b"\n".join(lines)
        table = pj.read_json(
            io.BytesIO(data),
            read_options=self._read_options,
            parse_options=self._parse_options,
        )
        if table.num_rows != len(lines):
            raise _ChunkFailed("row count mismatch")  # a line held no object, or two
        return table

    def _convert(self, table: pa.Table) -> tuple[pa.Table, set[int]]:
        """Wire table -> core columns (header, data, _extra); also rows to redo slowly."""
        n = table.num_rows
        ctx = _FastContext(n)
        top_fragments: list[Any] = []

        header = table.column("header")
        header_fragments = self._unknown_members(header, _HEADER_WIRE, (), "header", ctx)
        mtyp = pc.struct_field(header, "mTyp")
        wrong_type = pc.fill_null(pc.not_equal(mtyp, self.msg_type), False)
        header_fragments.append(
            _fragment("mTyp", pc.if_else(wrong_type, _json_string_text(mtyp), _NULL_STR))
        )
        columns: list[Any] = []
        for name, ftype in HEADER_FIELDS:
            leaf = _HEADER_SPEC.members[name]
            assert isinstance(leaf, Leaf)
            columns.append(self._finish_leaf(leaf, pc.struct_field(header, name), ctx))
        top_fragments.append(_fragment("header", _join_fragments(header_fragments, n)))

        message = table.column("message")
        message_text = self._object_columns(message, self._spec, "message", columns, ctx)
        top_fragments.append(_fragment("message", message_text))

        for name in table.column_names:
            if name not in ("header", "message"):
                self._unknown_value(name, table.column(name), name, top_fragments, ctx)

        columns.append(_join_fragments(top_fragments, n))
        core = pa.Table.from_arrays(columns, schema=self._core_schema)
        return core, ctx.slow_rows()

    def _object_columns(
        self, obj: Any, spec: _ObjectSpec, path: str, columns: list[Any], ctx: _FastContext
    ) -> Any:
        """Append the columns of ``spec``'s leaves (in layout order) and return _extra text
        for the unknown members of ``obj``. Only called for the message tree."""
        fragments = self._unknown_members(obj, None, spec, path, ctx)
        # Nested objects first (their leaves are emitted in layout order below).
        nested_text: dict[str, Any] = {}
        for name, member in spec.members.items():
            if isinstance(member, _ObjectSpec):
                child = pc.struct_field(obj, name)
                nested_text[name] = self._object_columns_collect(
                    child, member, f"{path}.{name}", ctx
                )
                fragments.append(_fragment(name, nested_text[name][1]))
        if path == "message":
            for col in self._columns:
                columns.append(self._column_array(obj, col, nested_text, ctx))
        return _join_fragments(fragments, ctx.length)

    def _object_columns_collect(
        self, obj: Any, spec: _ObjectSpec, path: str, ctx: _FastContext
    ) -> tuple[Any, Any]:
        fragments = self._unknown_members(obj, None, spec, path, ctx)
        for name, member in spec.members.items():
            if isinstance(member, _ObjectSpec):
                child = pc.struct_field(obj, name)
                _, text = self._object_columns_collect(child, member, f"{path}.{name}", ctx)
                fragments.append(_fragment(name, text))
        return obj, _join_fragments(fragments, ctx.length)

    def _column_array(
        self, message: Any, col: Column, nested: dict[str, Any], ctx: _FastContext
    ) -> Any:
        if isinstance(col, RepeaterColumn):
            return self._finish_repeater(col, pc.struct_field(message, col.name), ctx)
        arr = message
        for part in col.path:
            if part not in {f.name for f in arr.type}:
                return pa.nulls(ctx.length, col.type)  # inferred field absent from this chunk
            arr = pc.struct_field(arr, part)
        return self._finish_leaf(col, arr, ctx)

    def _finish_leaf(self, leaf: Leaf, arr: Any, ctx: _FastContext) -> Any:
        ftype = leaf.ftype
        if ftype in ENUM_TYPES:
            encoded = pc.dictionary_encode(arr)
            allowed = self._enum_sets.get(leaf.column)
            if allowed is not None:
                self._check_enum(leaf.column, encoded, allowed, ctx)
            return encoded
        if ftype == "DateKey":
            return pc.cast(arr, pa.date32())  # ArrowInvalid -> chunk goes to bisection
        if ftype == "TimeSpan":
            if pa.types.is_string(arr.type):
                return arr
            if pa.types.is_integer(arr.type):
                return pc.cast(arr, pa.utf8())
            if pa.types.is_null(arr.type):
                return pa.nulls(len(arr), pa.utf8())
            ctx.mark_slow(pc.is_valid(arr))  # float/bool/object: exact text lives in the body
            return pa.nulls(len(arr), pa.utf8())
        return arr

    def _check_enum(self, column: str, encoded: Any, allowed: pa.Array, ctx: _FastContext) -> None:
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        for chunk in chunks:
            values = chunk.dictionary
            unknown = pc.filter(values, pc.invert(pc.is_in(values, value_set=allowed)))
            for value in unknown.to_pylist():
                ctx.enums.add((column, value))

    def _finish_repeater(self, col: RepeaterColumn, arr: Any, ctx: _FastContext) -> Any:
        spec = self._items[col.column]
        chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
        out = []
        offset = 0
        for chunk in chunks:
            items = chunk.values
            unknown = self._unknown_paths(items.type, spec)
            for upath in unknown:
                ctx.unknown.add(f"message.{col.name}[].{upath}")
                hit = pc.is_valid(_field_path(chunk.flatten(), upath))
                parents = pc.filter(pc.list_parent_indices(chunk), hit)
                ctx.mark_slow_positions(p + offset for p in parents.to_pylist())
            members = []
            for leaf in col.members:
                sub = items
                for part in leaf.path:
                    sub = pc.struct_field(sub, part) if sub is not None else None
                members.append(self._finish_leaf_array(leaf, sub, len(items), ctx))
            item_type = col.type.value_type
            rebuilt = pa.StructArray.from_arrays(
                members, fields=list(item_type), mask=items.is_null()
            )
            out.append(
                pa.ListArray.from_arrays(
                    chunk.offsets, rebuilt, type=col.type, mask=chunk.is_null()
                )
            )
            offset += len(chunk)
        return pa.chunked_array(out, col.type)

    def _finish_leaf_array(self, leaf: Leaf, arr: Any, length: int, ctx: _FastContext) -> Any:
        result = self._finish_leaf(leaf, arr, ctx)
        if isinstance(result, pa.ChunkedArray):
            result = result.combine_chunks()
        if result.type != leaf.type:
            result = result.cast(leaf.type)
        return result

    def _unknown_paths(self, struct_type: pa.DataType, spec: _ObjectSpec) -> list[str]:
        """Dotted paths of members of ``struct_type`` that ``spec`` does not know."""
        out = []
        for f in struct_type:
            member = spec.members.get(f.name)
            if member is None:
                out.append(f.name)
            elif isinstance(member, _ObjectSpec) and pa.types.is_struct(f.type):
                out += [f"{f.name}.{p}" for p in self._unknown_paths(f.type, member)]
        return out

    def _unknown_members(
        self,
        obj: Any,
        wire: pa.StructType | None,
        spec: _ObjectSpec | tuple[()],
        path: str,
        ctx: _FastContext,
    ) -> list[Any]:
        """``,"k":v`` fragments for the members of ``obj`` that are neither in ``wire`` nor in
        ``spec`` (inferred by the reader), and the drift bookkeeping for them."""
        known: set[str]
        if isinstance(spec, _ObjectSpec):
            known = set(spec.members)
        else:
            assert wire is not None
            known = {f.name for f in wire}
        fragments: list[Any] = []
        for f in obj.type:
            if f.name in known:
                continue
            self._unknown_value(f.name, pc.struct_field(obj, f.name), f"{path}.{f.name}",
                                fragments, ctx)
        return fragments

    def _unknown_value(
        self, name: str, arr: Any, path: str, fragments: list[Any], ctx: _FastContext
    ) -> None:
        if pa.types.is_null(arr.type):
            return  # only JSON nulls: nothing to keep (null means absent)
        ctx.unknown.add(path)
        text, inexact = _json_value_text(arr)
        if inexact is not None:
            ctx.mark_slow(inexact)
        if text is not None:
            fragments.append(_fragment(name, text))

    # -- slow path ----------------------------------------------------------------------------

    def _slow_row(self, body: bytes) -> _SlowRow | str:
        """Decode one body exactly in Python; a str return value is the rejection reason."""
        try:
            text = body.decode("utf-8", "surrogateescape")
            obj = _DECODER.decode(text)
        except (ValueError, RecursionError) as exc:
            return f"invalid JSON: {exc}"
        if not isinstance(obj, _JsonObject):
            return f"JSON {type(obj).__name__} is not an object"
        row = _SlowRow()
        message_seen = False
        for key, value in obj.pairs():
            if key == "header" and isinstance(value, _JsonObject) and "header" not in row.values:
                row.values["header"] = True
                sub = _Partial()
                for hkey, hvalue in value.pairs():
                    if hkey == "mTyp":
                        if hvalue != self.msg_type:
                            sub.append((hkey, hvalue))
                        continue
                    self._slow_member(hkey, hvalue, _HEADER_SPEC, row, sub, "header", row.values)
                if sub:
                    row.extra.append((key, sub))
            elif key == "message" and isinstance(value, _JsonObject) and not message_seen:
                message_seen = True
                if self._msg is None:
                    mtyp = obj.get("header", {}).get("mTyp") if isinstance(
                        obj.get("header"), _JsonObject
                    ) else None
                    row.values[GENERIC_MTYP_COLUMN] = mtyp if _is_text(mtyp) else None
                    row.values[GENERIC_MESSAGE_COLUMN] = _dumps(value)
                    continue
                sub = _Partial()
                self._slow_object(value, self._spec, row, sub, "message", row.values)
                if sub:
                    row.extra.append((key, sub))
            else:
                if key in ("header", "message"):
                    row.mistyped += 1
                else:
                    row.unknown.add(key)
                row.extra.append((key, value))
        row.values.pop("header", None)
        return row

    def _slow_object(
        self,
        obj: _JsonObject,
        spec: _ObjectSpec,
        row: _SlowRow,
        extra: _Partial,
        path: str,
        out: dict[str, Any],
    ) -> None:
        for key, value in obj.pairs():
            self._slow_member(key, value, spec, row, extra, path, out)

    def _slow_member(
        self,
        key: str,
        value: Any,
        spec: _ObjectSpec,
        row: _SlowRow,
        extra: _Partial,
        path: str,
        out: dict[str, Any],
    ) -> None:
        member = spec.members.get(key)
        if member is None:
            row.unknown.add(f"{path}.{key}")
            extra.append((key, value))
            return
        if value is None:
            return
        if isinstance(member, Leaf):
            converted = _CONVERTERS[member.ftype](value)
            if converted is _BAD or member.column in out:
                row.mistyped += 1
                extra.append((key, value))
            else:
                out[member.column] = converted
                if member.ftype in ENUM_TYPES:
                    allowed = self._enum_sets.get(member.column)
                    if allowed is not None and converted not in allowed.to_pylist():
                        pass  # reported from the table below, like the fast path
        elif isinstance(member, _ObjectSpec):
            if not isinstance(value, _JsonObject):
                row.mistyped += 1
                extra.append((key, value))
                return
            sub = _Partial()
            self._slow_object(value, member, row, sub, f"{path}.{key}", out)
            if sub:
                extra.append((key, sub))
        else:
            self._slow_repeater(key, value, member, row, extra, path, out)

    def _slow_repeater(
        self,
        key: str,
        value: Any,
        col: RepeaterColumn,
        row: _SlowRow,
        extra: _Partial,
        path: str,
        out: dict[str, Any],
    ) -> None:
        if not isinstance(value, list) or col.column in out:
            row.mistyped += 1
            extra.append((key, value))
            return
        spec = self._items[col.column]
        items: list[dict[str, Any] | None] = []
        complete = True
        for item in value:
            if not isinstance(item, _JsonObject):
                complete = complete and item is None
                if item is not None:
                    row.mistyped += 1
                items.append(None)
                continue
            values: dict[str, Any] = {}
            sub = _Partial()
            self._slow_object(item, spec, row, sub, f"{path}.{key}[]", values)
            complete = complete and not sub
            items.append(values)
        out[col.column] = items
        if not complete:
            extra.append((key, value))  # the whole original array: item positions stay exact

    def _slow_table(self, rows: list[_SlowRow]) -> pa.Table:
        arrays = []
        for f in self._core_schema:
            if f.name == EXTRA_COLUMN:
                values = [_dump_pairs(r.extra) if r.extra else None for r in rows]
            else:
                values = [r.values.get(f.name) for r in rows]
            arrays.append(pa.array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=self._core_schema)


# --------------------------------------------------------------------------------------------
# helpers


_METADATA_NAMES: Final = frozenset([name for name, _ in CAPTURE_COLUMNS] + [TYPE_NUMBER_COLUMN[0]])
_KEY_ENUMS: Final = frozenset({"at", "ts", "cp"})


def _enum_values(msg: MessageDef, leaf: Column) -> tuple[str, ...]:
    assert isinstance(leaf, Leaf)
    name = leaf.path[-1]
    for f in msg.fields:
        if f.name == name and f.repeater is None:
            return f.enum_values
    return ()


def _valid_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _field_path(arr: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        arr = pc.struct_field(arr, part)
    return arr


class _FastContext:
    """Drift and slow-row bookkeeping while converting one parsed chunk."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.unknown: set[str] = set()
        self.enums: set[tuple[str, str]] = set()
        self._masks: list[Any] = []
        self._positions: set[int] = set()

    def mark_slow(self, mask: Any) -> None:
        self._masks.append(mask)

    def mark_slow_positions(self, positions: Iterable[int]) -> None:
        self._positions.update(positions)

    def slow_rows(self) -> set[int]:
        out = set(self._positions)
        for mask in self._masks:
            if pc.any(mask).as_py():
                out.update(pc.indices_nonzero(mask).to_pylist())
        return out
