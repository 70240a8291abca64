"""A journal record on disk: its layout, the records a reader yields, encoding and decoding.

Pure: no I/O.  Every reader and writer of the journal packs and unpacks records here, so the
layout is stated once.

Record layout (little-endian; 40-byte header, then ``payload_len`` payload bytes)::

    offset size  field
      0     4    magic        b"MLJR"
      4     1    version      1 (2 for an EVENT record: a reader before events refuses it)
      5     1    kind         1 SESSION, 2 MESSAGE, 3 SEAL, 4 EVENT
      6     1    flags        MESSAGE: bit 0 = text message; SESSION: bit 0 = resumed; SEAL: 0
      7     1    reserved     0
      8     4    payload_len  u32
     12     8    time_ns      i64  MESSAGE: recv_ns; SESSION: wall_ns; SEAL: time sealed
     20     8    first_seq    u64  MESSAGE: seq of its first data frame; otherwise 0
     28     4    n_data       u32  MESSAGE: data frames completed in it; otherwise 0
     32     4    header_crc   CRC-32 of bytes 0..31
     36     4    record_crc   CRC-32 of bytes 0..31 followed by the payload
                              (computed as zlib.crc32(payload, header_crc))

    MESSAGE payload  the WebSocket message; a text message is stored UTF-8 encoded
    SESSION payload  UTF-8 JSON {"session": str, "stripe": str, "context": {...}}
    EVENT payload    UTF-8 JSON object: a capture event (capture.events.Event's fields);
                     first_seq: the journal position, next_seq from then on
    SEAL payload     48 bytes: u64 offset of this record, u64 records before it (SESSION and
                     MESSAGE), u64 min_seq, u64 max_seq, u64 next_seq, u32 flags (bit 0:
                     min/max valid, bit 1: next_seq valid), u32 reserved = 0
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from zlib import crc32

__all__ = [
    "ALLOWED_FLAGS",
    "CRCS",
    "EVENT_VERSION",
    "FLAG_RESUMED",
    "FLAG_TEXT",
    "HEADER",
    "HEADER_SIZE",
    "KIND_EVENT",
    "KIND_MESSAGE",
    "KIND_SEAL",
    "KIND_SESSION",
    "KIND_VERSION",
    "MAGIC",
    "MAX_SESSION_PAYLOAD",
    "PREFIX",
    "PREFIX_SIZE",
    "SEAL_BODY",
    "SEAL_HAS_NEXT",
    "SEAL_HAS_RANGE",
    "SEAL_SIZE",
    "VERSION",
    "VERSIONS",
    "EventRecord",
    "MessageRecord",
    "Record",
    "SessionRecord",
    "decode_event",
    "decode_session",
    "encode_record",
    "encode_seal",
    "encode_session_payload",
    "pack_crcs",
    "pack_prefix",
]

MAGIC: Final = b"MLJR"
VERSION: Final = 1
KIND_SESSION: Final = 1
KIND_MESSAGE: Final = 2
KIND_SEAL: Final = 3
KIND_EVENT: Final = 4
EVENT_VERSION: Final = 2  # an older reader refuses (JournalFormatError) instead of cutting it
FLAG_TEXT: Final = 0x01  # MESSAGE
FLAG_RESUMED: Final = 0x01  # SESSION
ALLOWED_FLAGS: Final = {
    KIND_SESSION: FLAG_RESUMED,
    KIND_MESSAGE: FLAG_TEXT,
    KIND_SEAL: 0,
    KIND_EVENT: 0,
}
KIND_VERSION: Final = {KIND_SESSION: 1, KIND_MESSAGE: 1, KIND_SEAL: 1, KIND_EVENT: EVENT_VERSION}
VERSIONS: Final = frozenset(KIND_VERSION.values())

PREFIX: Final = struct.Struct("<4sBBBBIqQI")  # the CRC-covered header fields
HEADER: Final = struct.Struct("<4sBBBBIqQIII")
CRCS: Final = struct.Struct("<II")
SEAL_BODY: Final = struct.Struct("<QQQQQII")
SEAL_HAS_RANGE: Final = 0x01
SEAL_HAS_NEXT: Final = 0x02

HEADER_SIZE: Final = HEADER.size  # 40
PREFIX_SIZE: Final = PREFIX.size  # 32
SEAL_SIZE: Final = HEADER_SIZE + SEAL_BODY.size  # 88
MAX_SESSION_PAYLOAD: Final = 2**20

# Bound once: the hot path calls these per message.
pack_prefix = PREFIX.pack
pack_crcs = CRCS.pack


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Start of a connection session.  ``resumed`` marks the copy a rolled segment begins with:
    the same session continuing, so a replay must not reset its frame decoder there."""

    session: str
    stripe: str
    wall_ns: int
    context: Mapping[str, Any]
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One received WebSocket message (``payload`` is UTF-8 when ``is_text``)."""

    recv_ns: int
    first_seq: int
    n_data: int
    is_text: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A capture event (connect, disconnect, logon, gap, ...: capture.events) journaled when it
    happened, so that it is as durable as the data.  ``seq``: the journal position it was
    written at (not below the event's own ``seq`` field)."""

    time_ns: int
    seq: int
    fields: Mapping[str, Any]


Record = SessionRecord | MessageRecord | EventRecord


def encode_record(
    kind: int, flags: int, time_ns: int, first_seq: int, n_data: int, payload: bytes
) -> bytes:
    version = KIND_VERSION[kind]
    prefix = pack_prefix(MAGIC, version, kind, flags, 0, len(payload), time_ns, first_seq, n_data)
    hcrc = crc32(prefix)
    return prefix + pack_crcs(hcrc, crc32(payload, hcrc)) + payload


def encode_session_payload(session: str, stripe: str, context: Mapping[str, Any]) -> bytes:
    if not isinstance(session, str) or not isinstance(stripe, str):
        raise TypeError("session and stripe must be str")
    text = json.dumps(
        {"session": session, "stripe": stripe, "context": dict(context)},
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    payload = text.encode("utf-8")
    if len(payload) > MAX_SESSION_PAYLOAD:
        raise ValueError(f"session context too large ({len(payload)} bytes of JSON)")
    return payload


def decode_event(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def decode_session(payload: bytes, wall_ns: int, flags: int) -> SessionRecord | None:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    session, stripe, context = obj.get("session"), obj.get("stripe"), obj.get("context")
    if not (isinstance(session, str) and isinstance(stripe, str) and isinstance(context, dict)):
        return None
    return SessionRecord(session, stripe, wall_ns, context, bool(flags & FLAG_RESUMED))


def encode_seal(
    offset: int,
    records: int,
    min_seq: int | None,
    max_seq: int | None,
    next_seq: int | None,
    now_ns: int,
) -> bytes:
    flags = (SEAL_HAS_RANGE if min_seq is not None else 0) | (
        SEAL_HAS_NEXT if next_seq is not None else 0
    )
    body = SEAL_BODY.pack(offset, records, min_seq or 0, max_seq or 0, next_seq or 0, flags, 0)
    return encode_record(KIND_SEAL, 0, now_ns, 0, 0, body)
