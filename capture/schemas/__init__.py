"""The MLink data dictionary as typed Python objects, and the Arrow table schema per message type.

The dictionary is ``mlink_dictionary.json`` next to this file, generated from SpiderRock's
``DataDictionaryMLink.csv`` by ``tools/gen_schemas.py`` (numbers from PROTOCOL.md Appendix A).
Nothing here touches the network or the CSV at run time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "FieldDef",
    "MessageDef",
    "arrow_schema",
    "by_number",
    "lookup",
    "registry",
]

_DICTIONARY_FILE = "mlink_dictionary.json"


@dataclass(frozen=True, slots=True)
class FieldDef:
    """One row of the data dictionary."""

    name: str
    """JSON field name exactly as in the dictionary (camelCase; Repeater names are capitalised)."""
    fnum: int
    ftype: str
    """Dictionary type: Float, Double, Int, UInt, Long, Short, UShort, Byte, Enum, Flag, String,
    Text1, Text2, DateTime, DateKey, TimeSpan, TickerKey, ExpiryKey, OptionKey or Repeater."""
    enum_values: tuple[str, ...]
    """The eSet for Enum/Flag fields (names as sent on the wire), else ()."""
    is_key: bool
    """fNum 10..17 outside any Repeater: the value lives under ``message.pkey`` in JSON."""
    repeater: str | None
    """Name of the Repeater this field is a member of, else None."""


@dataclass(frozen=True, slots=True)
class MessageDef:
    """One message type: its fields in dictionary order (Repeater members follow their Repeater)."""

    name: str
    number: int
    token: str
    fields: tuple[FieldDef, ...]

    @property
    def key_fields(self) -> tuple[FieldDef, ...]:
        """Fields under ``message.pkey``, in dictionary order."""
        return tuple(f for f in self.fields if f.is_key)

    @property
    def body_fields(self) -> tuple[FieldDef, ...]:
        """Top-level fields directly under ``message`` (Repeaters included, their members not)."""
        return tuple(f for f in self.fields if not f.is_key and f.repeater is None)

    def members(self, repeater: str) -> tuple[FieldDef, ...]:
        """The member fields of one Repeater (the items of its JSON array), in dictionary order."""
        return tuple(f for f in self.fields if f.repeater == repeater)


def _load() -> dict[str, MessageDef]:
    raw = resources.files(__name__).joinpath(_DICTIONARY_FILE).read_bytes()
    doc = json.loads(raw)
    out: dict[str, MessageDef] = {}
    # 22k enum values in 308 distinct sets: one tuple per set, one string per name (every
    # process loads this; the stripe-group processes of capture.groups each have a copy).
    enums: dict[tuple[str, ...], tuple[str, ...]] = {}
    for name, body in doc["messages"].items():
        fields = tuple(
            FieldDef(
                name=sys.intern(f["name"]),
                fnum=f["fnum"],
                ftype=sys.intern(f["type"]),
                enum_values=enums.setdefault(values := tuple(f.get("enum", ())), values),
                is_key=bool(f.get("key", False)),
                repeater=f.get("repeater"),
            )
            for f in body["fields"]
        )
        out[name] = MessageDef(name=name, number=body["number"], token=body["token"], fields=fields)
    return out


@cache
def registry() -> Mapping[str, MessageDef]:
    """All dictionary message types by exact name (read-only, loaded once)."""
    return MappingProxyType(_load())


@cache
def _by_folded_name() -> Mapping[str, MessageDef]:
    return {name.casefold(): msg for name, msg in registry().items()}


@cache
def _by_number() -> Mapping[int, MessageDef]:
    return {msg.number: msg for msg in registry().values()}


def lookup(name: str) -> MessageDef | None:
    """Message type by name, case-insensitively (the server matches msgName that way too)."""
    msg = registry().get(name)
    return msg if msg is not None else _by_folded_name().get(name.casefold())


def by_number(number: int) -> MessageDef | None:
    """Message type by its current protobuf message number (the 5 digits of a frame header)."""
    return _by_number().get(number)


@cache
def arrow_schema(msg_type: str) -> pa.Schema:
    """The Parquet table schema for one message type; unknown types get the generic schema.

    See ``capture.schemas.mapping`` for the column layout.
    """
    # Imported here: the names above serve the configuration check and the stripe-group parent
    # process (capture.groups), which have no use for pyarrow's ~40 MB.
    from capture.schemas.mapping import generic_schema, table_schema

    msg = lookup(msg_type)
    return table_schema(msg) if msg is not None else generic_schema()
