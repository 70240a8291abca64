"""Per-stripe counters: written by the stripe's tasks, read by the health file."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from capture.states import StripeState


@dataclass(slots=True)
class StripeStats:
    """Mutable counters owned by one stripe; ``snapshot()`` gives the health view."""

    stripe: str
    state: StripeState = StripeState.STARTING
    session: str | None = None
    connected_since_ns: int | None = None
    last_frame_ns: int | None = None
    last_data_ns: int | None = None
    last_alive_ns: int | None = None  # last data frame or heartbeat: the stream is alive
    messages: int = 0
    control_messages: int = 0
    heartbeats: int = 0
    bytes: int = 0
    snapshot_rows: int = 0
    rows_written: int = 0
    files_committed: int = 0
    connects: int = 0
    restarts: int = 0
    quarantined: int = 0
    garbage_bytes: int = 0
    drift_rows: int = 0
    type_number_mismatches: int = 0  # frame numbers that differ from the dictionary's (§9.3)
    reader_wait_s: float = 0.0
    durable_seq: int | None = None  # highest receive sequence number fsynced in the journal
    journal_lag: int = 0  # frames received but not yet fsynced
    last_error: str | None = None
    streams: dict[str, str] = field(default_factory=dict)  # msg type -> ack result/phase
    rows_by_type: dict[str, int] = field(default_factory=dict)  # rows written per message type

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "session": self.session,
            "connected_since": _iso(self.connected_since_ns),
            "last_frame": _iso(self.last_frame_ns),
            "last_data": _iso(self.last_data_ns),
            "last_alive": _iso(self.last_alive_ns),
            "messages": self.messages,
            "control_messages": self.control_messages,
            "heartbeats": self.heartbeats,
            "bytes": self.bytes,
            "snapshot_rows": self.snapshot_rows,
            "rows_written": self.rows_written,
            "files_committed": self.files_committed,
            "connects": self.connects,
            "restarts": self.restarts,
            "quarantined_frames": self.quarantined,
            "garbage_bytes": self.garbage_bytes,
            "drift_rows": self.drift_rows,
            "type_number_mismatches": self.type_number_mismatches,
            "reader_wait_seconds": round(self.reader_wait_s, 3),
            "durable_seq": self.durable_seq,
            "journal_lag_frames": self.journal_lag,
            "streams": dict(self.streams),
            "last_error": self.last_error,
        }


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")
