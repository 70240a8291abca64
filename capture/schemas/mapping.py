"""Dictionary types -> Arrow types, and the column layout of one message type's table.

Table layout (all columns nullable), in this order:

* capture metadata, set by the capture process: ``_recv_time``, ``_recv_time_ns``, ``_stripe``,
  ``_session``, ``_snapshot``, ``_seq``;
* frame/header: ``_type_number`` (5-digit number of the frame header), ``h_seqN``, ``h_sID``,
  ``h_kLen``, ``h_mLen``, ``h_sTim``, ``h_encT``, ``h_sEnv0``, ``h_sRlm0``, ``h_appN``, ``h_mn``,
  ``h_git``;
* key fields (``message.pkey``), then body fields, in dictionary order. A TickerKey / ExpiryKey /
  OptionKey value is flattened to ``<field>_at, _ts, _tk[, _dt][, _xx, _cp]``. A Repeater is one
  ``list<struct<...>>`` column whose members are mapped the same way;
* ``_extra``: compact JSON of whatever the columns could not hold.

Unknown message types get the generic layout: metadata, header, ``_mtyp``, ``message`` (the
message object as compact JSON) and ``_extra``.

Column names are unique case-insensitively (DuckDB and friends fold identifier case), and none is
a partition key of the directory layout (``date``, ``stripe``). A name that is already taken gets
``__2``, ``__3``, ... appended, in column order, so the first holder keeps it. In today's
dictionary only the partition key ``date`` is claimed (by six types' ``date`` field).

Every column type is one that Spark (without flags), Iceberg v2, DuckDB, Polars and pandas read
exactly: no nanosecond timestamps (``_recv_time`` is microseconds, ``_recv_time_ns`` the exact
int64 nanoseconds) and no unsigned integers (UInt/UShort/Byte are stored in the next wider signed
type; the JSON reader still range-checks them with their own unsigned type, ``wire_type``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Final

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from capture.schemas import FieldDef, MessageDef

UTC: Final = "UTC"
TIMESTAMP_US: Final = pa.timestamp("us", tz=UTC)
DICT_STRING: Final = pa.dictionary(pa.int32(), pa.utf8())

SCALAR_TYPES: Final[dict[str, pa.DataType]] = {
    "Float": pa.float64(),  # JSON holds the shortest float32 text; float64 keeps it exactly
    "Double": pa.float64(),
    "Int": pa.int32(),
    "UInt": pa.int64(),  # unsigned types: the next wider signed type (Iceberg, Spark, Java)
    "Long": pa.int64(),
    "Short": pa.int16(),
    "UShort": pa.int32(),
    "Byte": pa.int16(),
    "Enum": DICT_STRING,
    "Flag": DICT_STRING,
    "String": pa.utf8(),
    "Text1": pa.utf8(),
    "Text2": pa.utf8(),
    "DateTime": TIMESTAMP_US,
    "DateKey": pa.date32(),
    "TimeSpan": pa.utf8(),  # JSON form unknown (PROTOCOL 5.6): raw JSON text of the value
}
"""Storage type of every scalar dictionary type."""

INTEGER_WIRE_TYPES: Final[dict[str, pa.DataType]] = {
    "Int": pa.int32(),
    "UInt": pa.uint32(),
    "Long": pa.int64(),
    "Short": pa.int16(),
    "UShort": pa.uint16(),
    "Byte": pa.uint8(),
}
"""Type the JSON reader parses an integer type with: exactly its range, so that a value out of
range fails the read (and goes to ``_extra`` through the slow path) instead of being stored."""

INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    "Int": (-(2**31), 2**31 - 1),
    "UInt": (0, 2**32 - 1),
    "Long": (-(2**63), 2**63 - 1),
    "Short": (-(2**15), 2**15 - 1),
    "UShort": (0, 2**16 - 1),
    "Byte": (0, 2**8 - 1),
}
FLOAT_TYPES: Final = frozenset({"Float", "Double"})
ENUM_TYPES: Final = frozenset({"Enum", "Flag"})
STRING_TYPES: Final = frozenset({"String", "Text1", "Text2"})

KEY_PARTS: Final[dict[str, tuple[str, ...]]] = {
    "TickerKey": ("at", "ts", "tk"),
    "ExpiryKey": ("at", "ts", "tk", "dt"),
    "OptionKey": ("at", "ts", "tk", "dt", "xx", "cp"),
}
"""Members of the JSON key objects, in column order."""

KEY_PART_TYPES: Final[dict[str, str]] = {
    "at": "Enum",  # asset type name, e.g. "EQT"
    "ts": "Enum",  # ticker source name, e.g. "NMS"
    "tk": "String",
    "dt": "DateKey",
    "xx": "Double",  # strike
    "cp": "Enum",  # "Call" / "Put"
}
"""Each key part is converted like the dictionary type given here."""

RECV_TIME_COLUMN: Final = "_recv_time"
RECV_TIME_NS_COLUMN: Final = "_recv_time_ns"

CAPTURE_COLUMNS: Final[tuple[tuple[str, pa.DataType], ...]] = (
    (RECV_TIME_COLUMN, TIMESTAMP_US),  # truncated to microseconds: what every engine reads
    (RECV_TIME_NS_COLUMN, pa.int64()),  # exact: nanoseconds since the epoch
    ("_stripe", DICT_STRING),
    ("_session", DICT_STRING),
    ("_snapshot", pa.bool_()),
    ("_seq", pa.int64()),
)

TYPE_NUMBER_COLUMN: Final = ("_type_number", pa.int32())

HEADER_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("seqN", "Long"),
    ("sID", "Long"),
    ("kLen", "Int"),
    ("mLen", "Int"),
    ("sTim", "DateTime"),
    ("encT", "DateTime"),
    ("sEnv0", "Enum"),
    ("sRlm0", "Enum"),
    ("appN", "Enum"),
    ("mn", "Enum"),
    ("git", "Enum"),
)
"""JSON header members stored as ``h_<name>`` columns, with the dictionary type that converts them.
``mTyp`` is not stored: it is the table's type (a different one goes to ``_extra``)."""

PARTITION_KEYS: Final = ("date", "stripe")
"""The local layout's hive directory keys (``<type>/date=YYYY-MM-DD/stripe=<S>/``): readers
with hive partitioning add them as columns, and a file column of the same name is hidden by
(DuckDB, Spark) or clashes with (pyarrow, Polars) the directory's value.  No data column takes
these names: StockMinuteBar's ``date`` and five others are stored as ``date__2``."""

HEADER_PREFIX: Final = "h_"
EXTRA_COLUMN: Final = "_extra"
GENERIC_MTYP_COLUMN: Final = "_mtyp"
GENERIC_MESSAGE_COLUMN: Final = "message"


@dataclass(frozen=True, slots=True)
class Leaf:
    """One scalar JSON value and the column (or struct member) holding it."""

    column: str
    """Column name, or member name inside a Repeater's struct."""
    path: tuple[str, ...]
    """Where the value sits, relative to ``message`` (or to the Repeater item), e.g.
    ``("pkey", "okey", "xx")``, ``("ticker", "tk")``, ``("bidPrice",)``."""
    ftype: str
    """Scalar dictionary type that converts the value (key parts use ``KEY_PART_TYPES``)."""
    type: pa.DataType


@dataclass(frozen=True, slots=True)
class RepeaterColumn:
    """A Repeater: a JSON array of objects, stored as ``list<struct<members>>``."""

    column: str
    name: str
    """JSON member name of the array (capitalised, as in the dictionary)."""
    members: tuple[Leaf, ...]
    """Member leaves; their paths are relative to one array item."""
    type: pa.DataType


Column = Leaf | RepeaterColumn


@dataclass(frozen=True, slots=True)
class TableLayout:
    """Everything the decoder needs to know about one message type's table."""

    message: MessageDef
    columns: tuple[Column, ...]
    """Data columns (keys, then body) in table order."""
    schema: pa.Schema
    """The full table schema (metadata, header, data, ``_extra``)."""


def storage_type(ftype: str) -> pa.DataType:
    """Arrow storage type of a scalar dictionary type."""
    try:
        return SCALAR_TYPES[ftype]
    except KeyError:
        raise ValueError(f"{ftype!r} is not a scalar dictionary type") from None


def wire_type(ftype: str) -> pa.DataType:
    """Type the JSON reader is asked for when it parses an integer dictionary type."""
    return INTEGER_WIRE_TYPES[ftype]


def ns_to_timestamp_us(ns: pa.Array) -> pa.Array:
    """int64 nanoseconds since the epoch -> timestamp[us, UTC], rounded toward the past (like
    ``ns // 1000``: a row's microsecond never lies after its exact time). Nulls stay null."""
    truncated = pc.divide(ns, 1000)  # integer division truncates toward zero
    below = pc.and_(pc.less(ns, 0), pc.not_equal(pc.multiply(truncated, 1000), ns))
    floored = pc.if_else(below, pc.subtract(truncated, 1), truncated)
    return floored.cast(pa.int64()).view(TIMESTAMP_US)


def _leaves(field: FieldDef, prefix: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], str]]:
    """(column name, JSON path, converting type) for one non-Repeater field."""
    parts = KEY_PARTS.get(field.ftype)
    if parts is None:
        return [(field.name, (*prefix, field.name), field.ftype)]
    return [(f"{field.name}_{p}", (*prefix, field.name, p), KEY_PART_TYPES[p]) for p in parts]


class _Names:
    """Hands out column names, unique case-insensitively; later claimants get a suffix."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._taken = {name.casefold() for name in reserved}

    def claim(self, name: str) -> str:
        candidate, n = name, 1
        while candidate.casefold() in self._taken:
            n += 1
            candidate = f"{name}__{n}"
        self._taken.add(candidate.casefold())
        return candidate


def _leaf_list(fields: Sequence[FieldDef], prefix: tuple[str, ...], names: _Names) -> list[Leaf]:
    out = []
    for field in fields:
        for column, path, ftype in _leaves(field, prefix):
            out.append(Leaf(names.claim(column), path, ftype, storage_type(ftype)))
    return out


def _metadata_fields() -> list[pa.Field]:
    fields = [pa.field(name, dtype) for name, dtype in CAPTURE_COLUMNS]
    fields.append(pa.field(*TYPE_NUMBER_COLUMN))
    fields += [pa.field(HEADER_PREFIX + n, storage_type(t)) for n, t in HEADER_FIELDS]
    return fields


def reserved_names() -> tuple[str, ...]:
    """Names the capture metadata, header and ``_extra`` columns occupy in every table."""
    return (*(f.name for f in _metadata_fields()), EXTRA_COLUMN)


@cache
def layout(msg: MessageDef) -> TableLayout:
    """Column layout of ``msg``'s table (cached per message definition)."""
    names = _Names((*reserved_names(), *PARTITION_KEYS))
    columns: list[Column] = []
    columns += _leaf_list(msg.key_fields, ("pkey",), names)
    for field in msg.body_fields:
        if field.ftype != "Repeater":
            columns += _leaf_list([field], (), names)
            continue
        members = tuple(_leaf_list(msg.members(field.name), (), _Names()))
        item = pa.struct([pa.field(m.column, m.type) for m in members])
        columns.append(RepeaterColumn(names.claim(field.name), field.name, members, pa.list_(item)))
    fields = _metadata_fields()
    fields += [pa.field(c.column, c.type) for c in columns]
    fields.append(pa.field(EXTRA_COLUMN, pa.utf8()))
    return TableLayout(message=msg, columns=tuple(columns), schema=pa.schema(fields))


def table_schema(msg: MessageDef) -> pa.Schema:
    """The full Arrow schema of ``msg``'s table."""
    return layout(msg).schema


@cache
def generic_schema() -> pa.Schema:
    """Schema for message types that are not in the dictionary."""
    fields = _metadata_fields()
    fields += [
        pa.field(GENERIC_MTYP_COLUMN, pa.utf8()),
        pa.field(GENERIC_MESSAGE_COLUMN, pa.utf8()),
        pa.field(EXTRA_COLUMN, pa.utf8()),
    ]
    return pa.schema(fields)
