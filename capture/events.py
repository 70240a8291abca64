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

Every row also has ``_recv_time`` (event time, ns UTC), ``_stripe``, ``_session`` and ``_seq``
(the stripe's receive sequence number at that moment, to place the event among data rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

TABLE = "capture_events"

_DICT = pa.dictionary(pa.int32(), pa.string())
_TS = pa.timestamp("ns", tz="UTC")

SCHEMA = pa.schema(
    [
        pa.field("_recv_time", _TS, nullable=False),
        pa.field("_stripe", _DICT),
        pa.field("_session", _DICT),
        pa.field("_seq", pa.int64(), nullable=False),
        pa.field("event", _DICT),
        pa.field("msg_type", _DICT),
        pa.field("result", _DICT),
        pa.field("detail", pa.string()),
        pa.field("gap_start", _TS),
        pa.field("gap_end", _TS),
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

    return pa.RecordBatch.from_arrays(
        [
            pa.array(col("time_ns"), pa.int64()).cast(_TS),
            dictionary([stripe] * len(events)),
            dictionary(col("session")),
            pa.array(col("seq"), pa.int64()),
            dictionary(col("event")),
            dictionary(col("msg_type")),
            dictionary(col("result")),
            pa.array(col("detail"), pa.string()),
            pa.array(col("gap_start_ns"), pa.int64()).cast(_TS),
            pa.array(col("gap_end_ns"), pa.int64()).cast(_TS),
            pa.array(col("count"), pa.int64()),
            pa.array(col("bytes"), pa.int64()),
            pa.array(col("highwater_ts"), pa.int64()),
        ],
        schema=SCHEMA,
    )
