"""The shape of the JSON objects of one message type: which members each object (``header``,
``message``, ``pkey``, a key object, a Repeater item) is known to have, and the struct types the
Arrow JSON reader is asked for (the *wire* schema)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa

from capture.schemas.mapping import (
    FLOAT_TYPES,
    HEADER_FIELDS,
    HEADER_PREFIX,
    INTEGER_RANGES,
    TIMESTAMP_US,
    Column,
    Leaf,
    RepeaterColumn,
    storage_type,
    wire_type,
)

_TOP_NAMES: Final = frozenset({"header", "message"})


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
