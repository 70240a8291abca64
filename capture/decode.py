"""Raw MLink JSON bodies of one message type -> one Arrow record batch (the capture hot path).

Fast path: the bodies are joined with ``\\n`` and handed to Arrow's C++ JSON reader with an
explicit *wire* schema (``header`` struct, ``message`` struct with its ``pkey`` struct) derived
from the dictionary. The structs are then flattened into the table columns with Arrow compute
(dictionary-encoding for enums, ``date32`` casts for date keys, list rebuilding for Repeaters).
No Python object is created per message.

The reader runs with ``unexpected_field_behavior="infer"``: members the dictionary does not know
(schema drift) come back as extra, inferred struct children and are rendered into ``_extra`` with
Arrow compute as well, so a server that permanently sends a new field does not slow capture down.
TimeSpan fields (JSON form unknown) are left out of the wire schema on purpose and take the same
inferred route, so a string or an integer both stay on the fast path.

Anything the reader cannot hold (a mistyped value, a number out of range, a body that is not one
JSON object, a DateTime it cannot parse) makes the read fail for the whole chunk. The offending
bodies are then isolated: Arrow's error names the row (or quotes the value) and those bodies are
set aside, or, without a usable hint, the chunk is bisected. Only the isolated bodies go through
the Python slow path, which stores every value it can in its column and moves the rest, verbatim,
to ``_extra``. The decoder learns from them so that a lasting server-side change does not keep
costing failed reads (see ``BatchDecoder``).

This module must stay free of trio: the capture worker calls it from a worker thread.
"""

from __future__ import annotations

import io
import json
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate, repeat
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
    ns_to_timestamp_us,
    storage_type,
    wire_type,
)

__all__ = ["BatchDecoder", "DecodeResult", "DriftReport"]

_FAST_UNKNOWN_MAX: Final = 128
"""Distinct unknown members in one chunk above which it is decoded on the slow path."""
_MIN_BISECT_ROWS: Final = 4
"""A failing chunk this small goes to the slow path whole instead of being split further."""
_FAILED_READ_BUDGET: Final = 6
"""Bytes of failed reads allowed per ``decode`` call, in multiples of the batch's size, before
failing pieces go to the slow path whole. A read costs about a tenth of decoding the same rows
slowly, so isolating bad bodies pays off until then; past it, most rows are bad anyway."""
_DIRECTED_TRIES: Final = 4
"""Rows pointed at by read errors that are removed from one piece before it is bisected."""
_READ_BLOCK_SIZE: Final = 1 << 20
_MAX_EXACT_DOUBLE: Final = float(2**53)
_NULL_STR: Final = pa.scalar(None, pa.utf8())
_KEY_ENUM_PARTS: Final = frozenset({"at", "ts", "cp"})
_METADATA_NAMES: Final = frozenset([n for n, _ in CAPTURE_COLUMNS] + [TYPE_NUMBER_COLUMN[0]])


# ---------------------------------------------------------------------------------------------
# Public result types


@dataclass(frozen=True)
class DriftReport:
    """What one ``decode`` call saw that the dictionary did not predict."""

    unknown_fields: frozenset[str] = frozenset()
    """Paths of members the dictionary does not know: ``message.prcFramework``,
    ``message.pkey.okey.zz``, ``header.newHdr``, ``message.Legs[].foo``, ``other`` (top level)."""
    mistyped_values: int = 0
    """Values of known fields that their column cannot hold (unexpected JSON kind, out of range,
    unparsable, repeated member name); each is kept verbatim in ``_extra``."""
    slow_path_rows: int = 0
    """Bodies decoded by the Python slow path (rejected bodies included)."""
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
        """Union/sum of two reports, for per-stream accounting."""
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


# ---------------------------------------------------------------------------------------------
# Shape of the JSON objects of one message type


@dataclass(slots=True)
class _ObjectSpec:
    """Known members of one JSON object (``message``, ``pkey``, a key object, a Repeater item)."""

    members: dict[str, _ObjectSpec | Leaf | RepeaterColumn] = field(default_factory=dict)

    @classmethod
    def build(cls, columns: Iterable[Column]) -> _ObjectSpec:
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
    """Type requested from the JSON reader; None = left to inference (TimeSpan)."""
    if ftype == "TimeSpan":
        return None
    if ftype in INTEGER_RANGES:
        return wire_type(ftype)  # the reader range-checks; out of range -> slow path
    if ftype in FLOAT_TYPES:
        return pa.float64()
    if ftype == "DateTime":
        return TIMESTAMP_US  # the reader parses "YYYY-MM-DD HH:MM:SS.ffffff" itself
    return pa.utf8()  # enums and strings; DateKey is cast to date32 afterwards


def _wire_struct(
    spec: _ObjectSpec, items: dict[str, _ObjectSpec], loose: Collection[str] = ()
) -> pa.StructType:
    """The struct the reader is asked for; TimeSpan and ``loose`` leaves are left to inference."""
    fields = []
    for name, member in spec.members.items():
        if isinstance(member, _ObjectSpec):
            fields.append(pa.field(name, _wire_struct(member, items, loose)))
        elif isinstance(member, RepeaterColumn):
            fields.append(pa.field(name, pa.list_(_wire_struct(items[member.column], items))))
        elif member.column not in loose and (wire := _wire_type(member.ftype)) is not None:
            fields.append(pa.field(name, wire))
    return pa.struct(fields)


_HEADER_LEAVES: Final = tuple(
    Leaf(HEADER_PREFIX + name, (name,), ftype, storage_type(ftype)) for name, ftype in HEADER_FIELDS
)
_HEADER_SPEC: Final = _ObjectSpec({leaf.path[0]: leaf for leaf in _HEADER_LEAVES})
_HEADER_WIRE: Final = pa.struct([pa.field("mTyp", pa.utf8()), *_wire_struct(_HEADER_SPEC, {})])
_HEADER_WIRE_NAMES: Final = frozenset(f.name for f in _HEADER_WIRE)


# ---------------------------------------------------------------------------------------------
# Vectorised JSON text for _extra

# Arrow arrays and chunked arrays are used interchangeably below; pyarrow has no type stubs.
_Arr = Any


def _json_string_text(arr: _Arr) -> _Arr:
    """JSON string literals for a utf8 array (nulls stay null)."""
    if pc.any(pc.match_substring_regex(arr, r"[\x00-\x1f]")).as_py():
        # Rare: control characters need \uXXXX escapes; let Python render this column.
        values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in arr.to_pylist()]
        return pa.array(values, pa.utf8())
    escaped = pc.replace_substring(arr, "\\", "\\\\")
    escaped = pc.replace_substring(escaped, '"', '\\"')
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _json_value_text(arr: _Arr) -> tuple[_Arr | None, _Arr | None]:
    """(JSON text, rows that cannot be rendered exactly) for a column the reader inferred."""
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _json_string_text(arr), None
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.utf8()), None
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false"), None
    if pa.types.is_floating(t):
        # Integers mixed with fractions are inferred as double: big integers lost digits there.
        inexact = pc.fill_null(pc.greater_equal(pc.abs(arr), _MAX_EXACT_DOUBLE), False)
        text = pc.cast(arr, pa.utf8())
        text = pc.replace_substring_regex(text, "^nan$", "NaN")
        text = pc.replace_substring_regex(text, "^(-?)inf$", "${1}Infinity")
        return text, inexact
    # Nested values, or strings the reader turned into timestamps: text not recoverable here.
    return None, pc.is_valid(arr)


def _fragment(name: str, text: _Arr) -> _Arr:
    """``,"name":text`` (null where text is null)."""
    prefix = "," + json.dumps(name, ensure_ascii=False) + ":"
    return pc.binary_join_element_wise(prefix, text, "", null_handling="emit_null")


def _join_fragments(fragments: Sequence[_Arr]) -> _Arr | None:
    """Fragments -> ``{"k":v,...}`` per row, null where every fragment is null."""
    if not fragments:
        return None
    # (binary_join_element_wise's null_handling="skip" is not used: it drops trailing rows
    # whose inputs are all null in pyarrow 26; "replace" with leading commas is equivalent.)
    joined = pc.binary_join_element_wise(
        *fragments, "", null_handling="replace", null_replacement=""
    )
    body = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 1), "}", "")
    return pc.if_else(pc.equal(joined, ""), _NULL_STR, body)


# ---------------------------------------------------------------------------------------------
# Slow path: exact JSON decoding in Python


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


# ---------------------------------------------------------------------------------------------
# Bookkeeping


class _ChunkFailed(Exception):
    """The fast path cannot hold this chunk as a whole."""


class _TooWide(Exception):
    """The chunk holds more distinct unknown members than the fast path renders cheaply."""


class _Chunk:
    """Drift and rows-to-redo-slowly collected while converting one parsed chunk."""

    def __init__(self) -> None:
        self.unknown: set[str] = set()
        self.mistyped = 0
        self._masks: list[_Arr] = []
        self._rows: set[int] = set()

    def redo_slowly(self, mask: _Arr) -> None:
        """Rows where ``mask`` is true go through the slow path."""
        self._masks.append(mask)

    def redo_rows_slowly(self, rows: Iterable[int]) -> None:
        self._rows.update(rows)

    def slow_rows(self) -> set[int]:
        out = set(self._rows)
        for mask in self._masks:
            if pc.any(mask).as_py():
                out.update(pc.indices_nonzero(mask).to_pylist())
        return out


@dataclass(slots=True)
class _Run:
    """State of one ``decode`` call."""

    bodies: Sequence[bytes]
    read_budget: int
    """Bytes of failed reads still allowed."""
    decoded: dict[int, _SlowRow | str] = field(default_factory=dict)
    """Slow-path results computed early (while isolating), by body index."""
    unknown: set[str] = field(default_factory=set)
    mistyped: int = 0
    fast: list[tuple[list[int], pa.Table]] = field(default_factory=list)
    slow: list[int] = field(default_factory=list)


_Piece = tuple[list[int], list[bytes], bytes | None, int, int]
"""(body indices, their lines, the lines joined if at hand, read attempts, pre-screen version)."""

_ROW_HINT: Final = re.compile(r" in row (\d+)\s*$")
_VALUE_HINTS: Final = (
    re.compile(r"couldn't parse:(.+)$", re.S),
    re.compile(r"Failed to parse string: '(.+)' as a scalar of type", re.S),
)


# ---------------------------------------------------------------------------------------------
# The decoder


class BatchDecoder:
    """Decodes batches of raw JSON bodies of one message type into ``self.schema`` batches.

    ``decode`` is synchronous and CPU-bound: call it from a worker thread. An instance is meant
    to be reused for every batch of its type (one per worker, not shared between threads): it
    learns from the rows that needed the slow path. A known field whose values turn out not to
    fit the wire type (an Int above 2**31, a Float sent as a string...) is from then on read by
    inference and sorted into column or ``_extra`` with Arrow compute ("loose" fields); a field
    that arrives with mixed JSON kinds (sometimes a number, sometimes a string), which the
    reader cannot hold in one column, gets a byte-pattern pre-screen that sends exactly those
    bodies to the slow path without a failed read first.
    """

    def __init__(self, msg_type: str) -> None:
        self.msg_type = msg_type
        self.schema: pa.Schema = arrow_schema(msg_type)
        self._msg: MessageDef | None = lookup(msg_type)
        self._core_schema = pa.schema([f for f in self.schema if f.name not in _METADATA_NAMES])
        self._columns: tuple[Column, ...] = ()
        self._spec = _ObjectSpec()
        self._items: dict[str, _ObjectSpec] = {}
        self._enum_sets: dict[str, pa.Array] = {}
        self._loose: set[str] = set()
        self._loose_capable: frozenset[str] = frozenset()
        self._screen_patterns: set[bytes] = set()
        self._screen: re.Pattern[bytes] | None = None
        self._screen_version = 0
        # Member names this type can have (every level), and a generous colon budget per row
        # (DateTime values hold two colons each; Repeaters repeat their item's names).
        self._known_names: frozenset[bytes] = frozenset()
        self._colons_per_row = 0
        if self._msg is None:
            return  # generic schema: the slow path renders the message as JSON text
        self._columns = layout(self._msg).columns
        self._spec = _ObjectSpec.build(self._columns)
        self._items = {
            c.column: _ObjectSpec.build(c.members)
            for c in self._columns
            if isinstance(c, RepeaterColumn)
        }
        self._loose_capable = frozenset(c.column for c in self._columns if isinstance(c, Leaf))
        self._known_names = frozenset(
            name.encode()
            for name in _spec_names(self._spec, self._items) | _HEADER_WIRE_NAMES | _TOP_NAMES
        )
        self._colons_per_row = 3 * len(self._known_names) + 64
        self._read_options = pj.ReadOptions(use_threads=True, block_size=_READ_BLOCK_SIZE)
        self._rebuild_parse_options()
        by_name = {f.name: f for f in self._msg.fields if f.repeater is None}
        for col in self._columns:
            if isinstance(col, Leaf) and col.ftype in ENUM_TYPES:
                fdef = by_name.get(col.path[-1])
                if col.path[-1] not in _KEY_ENUM_PARTS and fdef is not None:
                    self._enum_sets[col.column] = pa.array(fdef.enum_values, pa.utf8())

    @property
    def loose_fields(self) -> frozenset[str]:
        """Columns read by inference because their values did not fit the wire type."""
        return frozenset(self._loose)

    def _rebuild_parse_options(self) -> None:
        wire = pa.schema(
            [
                pa.field("header", _HEADER_WIRE),
                pa.field("message", _wire_struct(self._spec, self._items, self._loose)),
            ]
        )
        self._parse_options = pj.ParseOptions(
            explicit_schema=wire, unexpected_field_behavior="infer"
        )

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

        run = _Run(bodies, read_budget=_FAILED_READ_BUDGET * sum(map(len, bodies)))
        if self._msg is not None and n:
            self._fast_path(bodies, run)
        else:
            run.slow = list(range(n))

        rejected: list[tuple[int, bytes, str]] = []
        slow_rows: list[_SlowRow] = []
        slow_index: list[int] = []
        learned: list[_Mistyped] = []
        for i in sorted(run.slow):
            row = run.decoded[i] if i in run.decoded else self._slow_row(bodies[i])
            if isinstance(row, str):
                rejected.append((i, bodies[i], row))
                continue
            run.unknown |= row.unknown
            run.mistyped += len(row.mistyped)
            learned += row.mistyped
            slow_rows.append(row)
            slow_index.append(i)
        if learned and self._msg is not None:
            self._learn(learned)

        parts = [table for _, table in run.fast]
        order = [i for idx, _ in run.fast for i in idx]
        if slow_rows:
            parts.append(self._slow_table(slow_rows))
            order += slow_index
        core = pa.concat_tables(parts) if parts else self._core_schema.empty_table()
        if len(parts) > 1:
            core = core.take(pc.sort_indices(pa.array(order, pa.int64())))
            order.sort()
        core = core.combine_chunks()

        if len(order) != n:  # rejected bodies have no row
            type_numbers = [type_numbers[i] for i in order]
            recv_ns = [recv_ns[i] for i in order]
            snapshot = [snapshot[i] for i in order]
            seq = [seq[i] for i in order]
        arrays = _metadata_arrays(type_numbers, recv_ns, snapshot, seq, stripe, session)
        arrays += [_single_chunk(core.column(i), f.type) for i, f in enumerate(self._core_schema)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        drift = DriftReport(
            unknown_fields=frozenset(run.unknown),
            mistyped_values=run.mistyped,
            slow_path_rows=len(run.slow),
            unknown_enum_values=self._unknown_enum_values(batch),
        )
        return DecodeResult(batch=batch, drift=drift, rejected=rejected)

    # -- learning from the slow path ----------------------------------------------------------

    def _learn(self, mistyped: list[_Mistyped]) -> bool:
        """Update loose fields and pre-screen patterns; True if the pre-screen changed."""
        loose_before = len(self._loose)
        patterns_before = len(self._screen_patterns)
        for m in mistyped:
            if m.expected == m.kind:
                # Right JSON kind, value out of reach of the wire type (range, fraction, an
                # unparsable date): read the column by inference and sort values vectorised.
                # Header and Repeater-item values cannot be read loosely: isolated per batch.
                if m.loose_column is not None:
                    self._loose.add(m.loose_column)
            elif m.expected is not None:
                # A JSON kind the reader cannot mix with the expected one in a column: send
                # bodies with exactly this member/kind pairing to the slow path up front. The
                # pattern cannot match a body holding the expected kind there.
                name = re.escape(json.dumps(m.name, ensure_ascii=False).encode())
                self._screen_patterns.add(name + b":" + _KIND_START[m.kind])
        if len(self._loose) != loose_before:
            self._rebuild_parse_options()
        if len(self._screen_patterns) == patterns_before:
            return False
        self._screen = re.compile(b"|".join(sorted(self._screen_patterns)))
        self._screen_version += 1
        return True

    # -- fast path ----------------------------------------------------------------------------

    def _fast_path(self, bodies: Sequence[bytes], run: _Run) -> None:
        n = len(bodies)
        joined = b"\n".join(bodies)
        if self._too_many_names(joined, n):
            run.slow = list(range(n))
            return
        # Every body starts a line with "{", so each yields at least one row or a read error;
        # with exactly n rows read, row i is body i. (A raw LF inside a body can only split it
        # into unbalanced lines, which fail to parse, or add rows.)
        if all(map(bytes.startswith, bodies, repeat(b"{"))) and _is_utf8(joined):
            hits = self._screened(bodies, joined)
            if not hits:
                self._fast_lines(list(range(n)), list(bodies), joined, run)
                return
            run.slow += sorted(hits)
            idx = [i for i in range(n) if i not in hits]
            self._fast_lines(idx, [bodies[i] for i in idx], None, run)
            return
        idx = []
        lines = []
        for i, body in enumerate(bodies):
            line = body.strip(b" \t\r\n")
            if line[:1] != b"{" or line[-1:] != b"}" or not _is_utf8(line):
                run.slow.append(i)
                continue
            if b"\n" in line or b"\r" in line:
                # A raw CR/LF can only be whitespace between JSON tokens: blank it.
                line = line.replace(b"\r", b" ").replace(b"\n", b" ")
            idx.append(i)
            lines.append(line)
        hits = self._screened(lines, None)
        if hits:
            run.slow += [idx[p] for p in sorted(hits)]
            idx = [i for p, i in enumerate(idx) if p not in hits]
            lines = [line for p, line in enumerate(lines) if p not in hits]
        if idx:
            self._fast_lines(idx, lines, None, run)

    def _screened(self, lines: Sequence[bytes], joined: bytes | None) -> set[int]:
        """Positions of the lines that match a learned pre-screen pattern."""
        if self._screen is None:
            return set()
        if joined is None:
            return {p for p, line in enumerate(lines) if self._screen.search(line) is not None}
        ends = list(accumulate(len(line) + 1 for line in lines))  # offset after each "\n"
        return {bisect_right(ends, m.start()) for m in self._screen.finditer(joined)}

    def _fast_lines(
        self, idx: list[int], lines: list[bytes], joined: bytes | None, run: _Run
    ) -> None:
        """Decode ``lines`` (the bodies ``idx``) fast; isolate the bodies the reader rejects.

        A failed read is retried as a single block, which makes Arrow's "in row N" absolute;
        such a row, or the rows holding the value a conversion error quotes, go to the slow
        path and the rest is read again. Without a usable hint the piece is bisected.
        """
        version = self._screen_version
        pending: list[_Piece] = [(idx, lines, joined, 0, version)]
        while pending:
            idx, lines, joined, tries, version = pending.pop()
            if version != self._screen_version:  # learned something since it was queued
                if hits := self._screened(lines, None):
                    run.slow += [idx[p] for p in sorted(hits)]
                    idx = [i for p, i in enumerate(idx) if p not in hits]
                    lines = [line for p, line in enumerate(lines) if p not in hits]
                    joined = None
                if not idx:
                    continue
            version = self._screen_version
            data = joined if joined is not None else b"\n".join(lines)
            single_block = tries > 0
            try:
                table = self._read(data, len(lines), single_block)
                if self._unknown_count(table) > _FAST_UNKNOWN_MAX:
                    raise _TooWide
                core, chunk = self._convert(table)
            except _TooWide:
                # Rendering _extra costs Arrow calls per distinct unknown member (superlinear:
                # 10,000 distinct names in 50 rows took 32 s); the slow path is linear in the
                # bytes.  A server inventing names in every message goes there.
                run.slow += idx
                continue
            except (pa.ArrowException, _ChunkFailed) as exc:
                run.read_budget -= len(data)
                if len(idx) <= _MIN_BISECT_ROWS or run.read_budget < 0:
                    run.slow += idx
                    continue
                if tries == 0:
                    # Row hints count lines: make sure a body is exactly one line from here on.
                    lines = [line.replace(b"\n", b" ") if b"\n" in line else line for line in lines]
                    if not single_block and len(data) >= _READ_BLOCK_SIZE:
                        pending.append((idx, lines, None, 1, version))  # for an absolute row hint
                        continue
                suspects = _suspects(exc, lines) if tries <= _DIRECTED_TRIES else set()
                if suspects:
                    self._isolate([idx[p] for p in sorted(suspects)], run)
                    keep = [p for p in range(len(idx)) if p not in suspects]
                    rest = ([idx[p] for p in keep], [lines[p] for p in keep])
                    pending.append((*rest, None, tries + 1, version))
                else:
                    mid = len(idx) // 2
                    pending.append((idx[mid:], lines[mid:], None, 1, version))
                    pending.append((idx[:mid], lines[:mid], None, 1, version))
                continue
            run.unknown |= chunk.unknown
            run.mistyped += chunk.mistyped
            slow = chunk.slow_rows()
            if slow:
                keep_mask = [p not in slow for p in range(len(idx))]
                run.slow += [i for p, i in enumerate(idx) if p in slow]
                idx = [i for p, i in enumerate(idx) if keep_mask[p]]
                core = core.filter(pa.array(keep_mask, pa.bool_()))
            if idx:
                run.fast.append((idx, core))

    def _isolate(self, indices: list[int], run: _Run) -> None:
        """Send bodies a read error pointed at to the slow path now, and learn from them at
        once: the rest of the batch is then pre-screened instead of failing read after read."""
        run.slow += indices
        learned: list[_Mistyped] = []
        for i in indices:
            row = run.decoded[i] = self._slow_row(run.bodies[i])
            if not isinstance(row, str):
                learned += row.mistyped
        if learned:
            self._learn(learned)

    def _read(self, data: bytes, rows: int, single_block: bool) -> pa.Table:
        options = self._read_options
        if single_block:
            options = pj.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16))
        table = pj.read_json(
            io.BytesIO(data), read_options=options, parse_options=self._parse_options
        )
        if table.num_rows != rows:
            raise _ChunkFailed("row count mismatch")  # some line held no object, or two
        return table

    def _too_many_names(self, joined: bytes, rows: int) -> bool:
        """True if the bodies hold more distinct member names the dictionary does not know
        than the fast path handles cheaply.  Arrow's reader infers one struct child per
        distinct name, superlinearly (400,000 names in 200 rows: 13 s), so this is decided
        before the read: first by a colon count (C speed; only a chunk averaging more colons
        per row than its type could have is looked at), then by the set of names.  A member
        takes at least 4 bytes (``"":0``), so a chunk too short to hold more members than that
        needs no count at all (the common case: counting costs 0.4 us per row, GIL held)."""
        limit = rows * self._colons_per_row
        if len(joined) <= 4 * limit or joined.count(b":") <= limit:
            return False
        plain = joined.replace(b"\\\\", b"").replace(b'\\"', b"")
        names = set(_MEMBER_NAME.findall(plain))
        return len(names - self._known_names) > _FAST_UNKNOWN_MAX

    def _unknown_count(self, table: pa.Table) -> int:
        """Distinct members the dictionary does not know, in the chunk's inferred schema."""
        count = 0
        for f in table.schema:
            if f.name == "header" and pa.types.is_struct(f.type):
                count += sum(1 for h in f.type if h.name not in _HEADER_WIRE_NAMES)
            elif f.name == "message" and pa.types.is_struct(f.type):
                count += len(_unknown_paths(f.type, self._spec))
            else:
                count += 1
        return count

    def _convert(self, table: pa.Table) -> tuple[pa.Table, _Chunk]:
        """Wire table -> core columns (header, data, _extra), plus rows to redo slowly."""
        n = table.num_rows
        chunk = _Chunk()
        flat = _flatten(table)  # "message.pkey.okey.xx" -> values (structs only, not lists)
        columns: list[_Arr] = []
        top: list[_Arr] = []

        header = table.column("header")
        header_known = {f.name for f in _HEADER_WIRE}
        header_extra = self._unknown_members(header, header_known, "header", chunk)
        mtyp = flat["header.mTyp"]
        other_type = pc.fill_null(pc.not_equal(mtyp, self.msg_type), False)
        if pc.any(other_type).as_py():
            mtyp_text = pc.if_else(other_type, _json_string_text(mtyp), _NULL_STR)
            header_extra.append(_fragment("mTyp", mtyp_text))
        for leaf in _HEADER_LEAVES:
            columns.append(_strict_leaf(leaf, flat.get("header." + leaf.path[0])))
        if (text := _join_fragments(header_extra)) is not None:
            top.append(_fragment("header", text))

        message = table.column("message")
        loose_extra: dict[tuple[str, ...], list[_Arr]] = {}
        for col in self._columns:
            if isinstance(col, RepeaterColumn):
                columns.append(self._repeater_array(col, flat["message." + col.name], chunk))
            elif col.ftype != "TimeSpan" and col.column not in self._loose:
                columns.append(_strict_leaf(col, flat.get(".".join(("message", *col.path)))))
            else:
                # Inferred: may be anything, an object included (which _flatten took apart).
                value, text, slow = _loose_leaf(col, _member(message, col.path), n)
                columns.append(value)
                if text is not None:
                    chunk.mistyped += pc.count(text).as_py()
                    fragment = _fragment(col.path[-1], text)
                    loose_extra.setdefault(col.path[:-1], []).append(fragment)
                if slow is not None:
                    chunk.redo_slowly(slow)
        if (text := self._object_extra(message, self._spec, (), loose_extra, chunk)) is not None:
            top.append(_fragment("message", text))

        for name in table.column_names:
            if name not in ("header", "message"):
                self._unknown_value(name, table.column(name), name, top, chunk)

        extra = _join_fragments(top)
        columns.append(extra if extra is not None else pa.nulls(n, pa.utf8()))
        return pa.Table.from_arrays(columns, schema=self._core_schema), chunk

    def _object_extra(
        self,
        obj: _Arr,
        spec: _ObjectSpec,
        path: tuple[str, ...],
        loose_extra: dict[tuple[str, ...], list[_Arr]],
        chunk: _Chunk,
    ) -> _Arr | None:
        """``_extra`` text for what ``obj`` holds beyond its columns (recursively), or None."""
        dotted = ".".join(("message", *path))
        fragments = self._unknown_members(obj, set(spec.members), dotted, chunk)
        fragments += loose_extra.get(path, [])
        for name, member in spec.members.items():
            if isinstance(member, _ObjectSpec):
                child = pc.struct_field(obj, name)
                text = self._object_extra(child, member, (*path, name), loose_extra, chunk)
                if text is not None:
                    fragments.append(_fragment(name, text))
        return _join_fragments(fragments)

    def _unknown_members(self, obj: _Arr, known: set[str], path: str, chunk: _Chunk) -> list[_Arr]:
        fragments: list[_Arr] = []
        for f in obj.type:
            if f.name not in known:
                member = pc.struct_field(obj, f.name)
                self._unknown_value(f.name, member, f"{path}.{f.name}", fragments, chunk)
        return fragments

    @staticmethod
    def _unknown_value(
        name: str, arr: _Arr, path: str, fragments: list[_Arr], chunk: _Chunk
    ) -> None:
        if pa.types.is_null(arr.type):
            return  # only JSON nulls: nothing to keep (null means absent)
        chunk.unknown.add(path)
        text, inexact = _json_value_text(arr)
        if inexact is not None:
            chunk.redo_slowly(inexact)
        if text is not None:
            fragments.append(_fragment(name, text))

    def _repeater_array(self, col: RepeaterColumn, arr: _Arr, chunk: _Chunk) -> _Arr:
        spec = self._items[col.column]
        item_fields = list(col.type.value_type)
        out = []
        row_offset = 0
        for lists in arr.chunks:
            items = lists.flatten()  # the items of the non-null lists, in order
            parents = pc.list_parent_indices(lists)
            bad_items = []
            for path in _unknown_paths(items.type, spec):
                chunk.unknown.add(f"message.{col.name}[].{path}")
                bad_items.append(pc.is_valid(_member(items, tuple(path.split(".")))))
            members = []
            for leaf in col.members:
                arr_leaf = _member(items, leaf.path)
                if leaf.ftype == "TimeSpan":
                    value, text, slow = _loose_leaf(leaf, arr_leaf, len(items))
                    if text is not None:  # values the item cannot hold: redo the row slowly
                        bad_items.append(pc.is_valid(text))
                    if slow is not None:
                        bad_items.append(slow)
                else:
                    value = _strict_leaf(leaf, arr_leaf)
                members.append(_as_array(value))
            for bad in bad_items:
                rows = pc.unique(pc.filter(parents, bad)).to_pylist()
                chunk.redo_rows_slowly(r + row_offset for r in rows)
            lengths = pc.fill_null(pc.list_value_length(lists), 0)
            offsets = pa.concat_arrays(
                [pa.array([0], pa.int32()), pc.cast(pc.cumulative_sum(lengths), pa.int32())]
            )
            rebuilt = pa.StructArray.from_arrays(members, fields=item_fields, mask=items.is_null())
            out.append(
                pa.ListArray.from_arrays(offsets, rebuilt, type=col.type, mask=lists.is_null())
            )
            row_offset += len(lists)
        return pa.chunked_array(out, col.type)

    def _unknown_enum_values(self, batch: pa.RecordBatch) -> frozenset[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for column, allowed in self._enum_sets.items():
            arr = batch.column(column)
            used = arr.dictionary.take(pc.unique(arr.indices.drop_null()))
            for value in pc.filter(used, pc.invert(pc.is_in(used, value_set=allowed))).to_pylist():
                found.add((column, value))
        return frozenset(found)

    # -- slow path ----------------------------------------------------------------------------

    def _slow_row(self, body: bytes) -> _SlowRow | str:
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
                        self._slow_member(
                            hkey, hvalue, _HEADER_SPEC, "header", row, sub, row.values
                        )
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
                    self._slow_member(mkey, mvalue, self._spec, "message", row, sub, row.values)
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

    def _slow_member(
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
                self._slow_member(k, v, member, f"{path}.{key}", row, sub, out)
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
                    self._slow_member(k, v, items_spec, f"{path}.{key}[]", row, sub, values)
                complete = complete and not sub
                items.append(values)
            out[member.column] = items
            if not complete:
                extra.append((key, value))  # the whole array, so item positions stay exact

    def _slow_table(self, rows: list[_SlowRow]) -> pa.Table:
        arrays = []
        for f in self._core_schema:
            if f.name == EXTRA_COLUMN:
                values = [_dump_pairs(r.extra) if r.extra else None for r in rows]
            else:
                values = [r.values.get(f.name) for r in rows]
            arrays.append(pa.array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=self._core_schema)


# ---------------------------------------------------------------------------------------------
# Leaf conversion (fast path)


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


def _suspects(exc: Exception, lines: Sequence[bytes]) -> set[int]:
    """Lines a read error points at (empty when it does not point anywhere useful)."""
    message = str(exc)
    if (m := _ROW_HINT.search(message)) is not None:
        row = int(m.group(1))
        return {row} if row < len(lines) else set()
    for pattern in _VALUE_HINTS:
        if (m := pattern.search(message)) is not None:
            value = m.group(1).encode("utf-8", "surrogateescape")
            needles = (b":" + value + b",", b":" + value + b"}", b'"' + value + b'"')
            found = {p for p, line in enumerate(lines) if any(x in line for x in needles)}
            return found if len(found) <= max(_MIN_BISECT_ROWS, len(lines) // 8) else set()
    return set()


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


# Over text without escaped quotes and backslashes: linear (each try ends at the next quote).
_MEMBER_NAME: Final = re.compile(rb'"([^"]*)":')
_TOP_NAMES: Final = frozenset({"header", "message"})


def _spec_names(spec: _ObjectSpec, items: dict[str, _ObjectSpec]) -> set[str]:
    """Every member name of ``spec`` at any level, Repeater items included."""
    out: set[str] = set()
    for name, member in spec.members.items():
        out.add(name)
        if isinstance(member, _ObjectSpec):
            out |= _spec_names(member, items)
        elif isinstance(member, RepeaterColumn):
            out |= _spec_names(items[member.column], items)
    return out


def _unknown_paths(struct_type: pa.DataType, spec: _ObjectSpec) -> list[str]:
    """Dotted paths of the members of ``struct_type`` that ``spec`` does not know."""
    out = []
    for f in struct_type:
        member = spec.members.get(f.name)
        if member is None:
            if not pa.types.is_null(f.type):
                out.append(f.name)
        elif isinstance(member, _ObjectSpec) and pa.types.is_struct(f.type):
            out += [f"{f.name}.{p}" for p in _unknown_paths(f.type, member)]
    return out


def _as_array(arr: _Arr) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _single_chunk(col: pa.ChunkedArray, dtype: pa.DataType) -> pa.Array:
    if col.num_chunks == 1:
        return col.chunk(0)
    return pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], dtype)


def _metadata_arrays(
    type_numbers: Sequence[int],
    recv_ns: Sequence[int],
    snapshot: Sequence[bool],
    seq: Sequence[int],
    stripe: str,
    session: str,
) -> list[pa.Array]:
    zeros = pa.repeat(pa.scalar(0, pa.int32()), len(recv_ns))
    exact = pa.array(recv_ns, pa.int64())
    return [
        ns_to_timestamp_us(exact),
        exact,
        pa.DictionaryArray.from_arrays(zeros, pa.array([stripe], pa.utf8())),
        pa.DictionaryArray.from_arrays(zeros, pa.array([session], pa.utf8())),
        pa.array(snapshot, pa.bool_()),
        pa.array(seq, pa.int64()),
        pa.array(type_numbers, TYPE_NUMBER_COLUMN[1]),
    ]


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
