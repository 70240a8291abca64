"""The capture-events table: what happened to each stripe's connection, written like data.

``ROOT/capture_events/date=YYYY-MM-DD/stripe=<S>/part-*.parquet`` (lower case: no MLink message
type is named like that).  One row per event:

========== =====================================================================================
event      meaning (other columns used)
========== =====================================================================================
connect    a connection attempt (``session``; ``result`` ok, or ``detail`` with the error)
logon      MLinkAdmin received (``result`` = state, ``detail``)
stream_ack MLinkStreamAck (``msg_type``, ``result``, ``detail``)
checkpoint MLinkStreamCheckPt (``msg_type``, ``result`` = state, ``count`` = numMessagesSent,
           ``highwater_ts``)
disconnect a session ended (``detail`` = reason, ``gap_start`` = last frame received)
gap        no data could be received from ``gap_start`` (last frame of the previous session or
           of the previous run) to ``gap_end`` (first frame of the next one).  With resume the
           server re-sends the latest record of every key that changed in between; the updates
           in between are lost: this is what a user asks for with "which intervals are missing"
recovery   start-up recovery of the journal (``detail``, ``bytes``, ``count`` = records)
========== =====================================================================================

Every row also has ``_recv_time`` (event time, timestamp[us, UTC]) with ``_recv_time_ns`` (the
same instant, exact int64 nanoseconds), ``_stripe``, ``_session`` and ``_seq`` (the stripe's
receive sequence number at that moment, to place the event among data rows).  ``gap_start`` and
``gap_end`` are microsecond timestamps too, with their exact nanoseconds in ``gap_start_ns`` and
``gap_end_ns`` (they equal the ``_recv_time_ns`` of the frames around the gap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from capture.schemas.mapping import TIMESTAMP_US, ns_to_timestamp_us

TABLE = "capture_events"

_DICT = pa.dictionary(pa.int32(), pa.string())
_TS = TIMESTAMP_US

SCHEMA = pa.schema(
    [
        pa.field("_recv_time", _TS, nullable=False),
        pa.field("_recv_time_ns", pa.int64(), nullable=False),
        pa.field("_stripe", _DICT),
        pa.field("_session", _DICT),
        pa.field("_seq", pa.int64(), nullable=False),
        pa.field("event", _DICT),
        pa.field("msg_type", _DICT),
        pa.field("result", _DICT),
        pa.field("detail", pa.string()),
        pa.field("gap_start", _TS),
        pa.field("gap_start_ns", pa.int64()),
        pa.field("gap_end", _TS),
        pa.field("gap_end_ns", pa.int64()),
        pa.field("count", pa.int64()),
        pa.field("bytes", pa.int64()),
        pa.field("highwater_ts", pa.int64()),
    ]
)


@dataclass(frozen=True, slots=True)
class Event:
    time_ns: int
    session: str | None
    seq: int
    event: str
    msg_type: str | None = None
    result: str | None = None
    detail: str | None = None
    gap_start_ns: int | None = None
    gap_end_ns: int | None = None
    count: int | None = None
    bytes: int | None = None
    highwater_ts: int | None = None


def to_batch(events: Sequence[Event], stripe: str) -> pa.RecordBatch:
    def col(name: str) -> list[object]:
        return [getattr(e, name) for e in events]

    def dictionary(values: list[object]) -> pa.Array:
        return pa.array(values, pa.string()).dictionary_encode()

    def ns(name: str) -> pa.Array:
        return pa.array(col(name), pa.int64())

    recv, gap_start, gap_end = ns("time_ns"), ns("gap_start_ns"), ns("gap_end_ns")
    return pa.RecordBatch.from_arrays(
        [
            ns_to_timestamp_us(recv),
            recv,
            dictionary([stripe] * len(events)),
            dictionary(col("session")),
            pa.array(col("seq"), pa.int64()),
            dictionary(col("event")),
            dictionary(col("msg_type")),
            dictionary(col("result")),
            pa.array(col("detail"), pa.string()),
            ns_to_timestamp_us(gap_start),
            gap_start,
            ns_to_timestamp_us(gap_end),
            gap_end,
            pa.array(col("count"), pa.int64()),
            pa.array(col("bytes"), pa.int64()),
            pa.array(col("highwater_ts"), pa.int64()),
        ],
        schema=SCHEMA,
    )
