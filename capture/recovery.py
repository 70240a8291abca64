"""What is already in committed Parquet, for exactly-once replay of a journal.

Every committed file's footer records its message type, stripe and the range of receive
sequence numbers it holds (``mlink.seq_min``/``mlink.seq_max``).  A journal frame of type T
with sequence s is already stored iff a committed file of T and the same stripe covers s: the
sink files each type's rows in receive order, so the rows of one type in one file are exactly
the frames of that type between its bounds (a replay that skips frames a committed file holds
commits what it wrote before it goes on past them: capture.worker).

A compacted file (capture.compact) holds many such runs, and after an A/B merge not every
stored frame is a row of it (a duplicate captured by the other host was kept instead): the
first compacted file of a unit lists the exact ranges it accounts for in ``mlink.seq_ranges``;
the other files of the unit list none.

Sync code (reads footers); the worker calls it in a thread at start-up.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from capture.events import TABLE as EVENTS_TABLE
from capture.logs import get_logger
from capture.resume import ResumePoints
from capture.schemas.mapping import RECV_TIME_NS_COLUMN
from capture.sink import (
    META_COMPACTED,
    META_MSG_TYPE,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    META_STRIPE,
)

log = get_logger(component="recovery")


EventKey = tuple[int, str, str | None]  # (time ns, event, session): one capture event


@dataclass
class CommittedIndex:
    """Sorted, merged seq ranges per message type, plus the latest header send time seen."""

    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    resume_points: ResumePoints = field(default_factory=ResumePoints)  # from h_sTim statistics
    max_seq: int | None = None
    files: int = 0
    unreadable: list[Path] = field(default_factory=list)  # damaged: their rows count as absent

    def contains(self, msg_type: str, seq: int) -> bool:
        spans = self.ranges.get(msg_type)
        if not spans:
            return False
        i = bisect.bisect_right(spans, (seq, 1 << 63)) - 1
        return i >= 0 and spans[i][0] <= seq <= spans[i][1]


def scan_committed(
    root: Path, stripe: str, *, since_ns: int | None, every_date: bool = False
) -> CommittedIndex:
    """Index the committed files of ``stripe`` from the date of ``since_ns`` (minus a day, for
    any time zone) on: the journal's oldest record, so only files it can refer to.  With
    ``since_ns`` None (the journal holds no message) only the newest date of each table and
    the day before it are read: that is where the highest seq and the latest send time are
    (issue 16: not the footers of every file of every date).  ``every_date``: all of them."""
    first_day = None
    if since_ns is not None:
        first_day = dt.datetime.fromtimestamp(since_ns / 1e9, tz=dt.UTC).date()
        first_day -= dt.timedelta(days=1)
    raw: dict[str, list[tuple[int, int]]] = defaultdict(list)
    index = CommittedIndex()
    if not root.is_dir():
        return index
    for table in root.iterdir():
        if not table.is_dir() or table.name.startswith(("_", ".")):
            continue
        days: list[tuple[dt.date, Path]] = []
        for day_dir in table.glob("date=*"):
            try:
                day = dt.date.fromisoformat(day_dir.name.removeprefix("date="))
            except ValueError:
                continue
            if (day_dir / f"stripe={stripe}").is_dir():
                days.append((day, day_dir))
        if not days:
            continue
        floor = first_day
        if floor is None and not every_date:
            floor = max(days)[0] - dt.timedelta(days=1)
        for day, day_dir in days:
            if floor is not None and day < floor:
                continue
            for path in (day_dir / f"stripe={stripe}").glob("*.parquet"):
                _index_file(path, stripe, raw, index)
    for msg_type, spans in raw.items():
        index.ranges[msg_type] = merge_ranges(spans)
    return index


def merge_ranges(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping and adjacent ranges merged."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def format_seq_ranges(spans: list[tuple[int, int]]) -> str:
    return ",".join(f"{lo}-{hi}" for lo, hi in spans)


def parse_seq_ranges(text: str) -> list[tuple[int, int]]:
    """``"lo-hi,lo-hi"`` -> ranges; ValueError names what is wrong."""
    out = []
    for item in filter(None, text.split(",")):
        lo, sep, hi = item.partition("-")
        if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi):
            raise ValueError(f"bad sequence range {item!r}")
        out.append((int(lo), int(hi)))
    return out


def _index_file(
    path: Path, stripe: str, raw: dict[str, list[tuple[int, int]]], index: CommittedIndex
) -> None:
    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError: a damaged footer
        log.error(
            "unreadable committed file; its rows count as not stored",
            path=str(path),
            error=str(exc),
        )
        index.unreadable.append(path)
        return
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    if kv.get(META_STRIPE) != stripe or META_SEQ_MIN not in kv:
        return
    msg_type = kv[META_MSG_TYPE]
    if META_COMPACTED in kv:
        try:
            spans = parse_seq_ranges(kv.get(META_SEQ_RANGES, ""))
        except ValueError as exc:
            log.error("unreadable sequence ranges; the file's rows count as not stored",
                      path=str(path), error=str(exc))  # fmt: skip
            index.unreadable.append(path)
            return
    else:
        spans = [(int(kv[META_SEQ_MIN]), int(kv[META_SEQ_MAX]))]
    raw[msg_type].extend(spans)
    index.files += 1
    for _, hi in spans:
        index.max_seq = hi if index.max_seq is None else max(index.max_seq, hi)
    # Only int64 columns (timestamp[us] and int64 underneath) say a time: another writer's
    # file may hold anything under these names, and its statistics must stop nothing.
    names = [
        col.name if col.physical_type == "INT64" else None
        for col in (meta.schema.column(i) for i in range(meta.num_columns))
    ]
    if "h_sTim" in names and RECV_TIME_NS_COLUMN in names:
        sent_col, recv_col = names.index("h_sTim"), names.index(RECV_TIME_NS_COLUMN)
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            sent, recv = group.column(sent_col).statistics, group.column(recv_col).statistics
            if sent is None or recv is None or not (sent.has_min_max and recv.has_min_max):
                continue
            # Physical values (int64 microseconds, int64 ns): no conversion that could fail.
            # A row group whose latest send time is implausible offers nothing (capture.resume).
            index.resume_points.offer(msg_type, int(sent.max_raw) * 1000, int(recv.max_raw))


def committed_events(root: Path, stripe: str, *, since_ns: int | None) -> set[EventKey]:
    """(time ns, event, session) of every committed capture-events row of ``stripe`` dated from
    the day before ``since_ns`` on: what a journal replay must not add again."""
    first_day = None
    if since_ns is not None:
        first_day = dt.datetime.fromtimestamp(since_ns / 1e9, tz=dt.UTC).date()
        first_day -= dt.timedelta(days=1)
    keys: set[EventKey] = set()
    table_dir = root / EVENTS_TABLE
    if not table_dir.is_dir():
        return keys
    for day_dir in table_dir.glob("date=*"):
        try:
            day = dt.date.fromisoformat(day_dir.name.removeprefix("date="))
        except ValueError:
            continue
        if first_day is not None and day < first_day:
            continue
        for path in (day_dir / f"stripe={stripe}").glob("*.parquet"):
            try:
                names = pq.read_schema(path).names
                # Exact nanoseconds; files written before _recv_time_ns held them in _recv_time.
                time_col = "_recv_time_ns" if "_recv_time_ns" in names else "_recv_time"
                table = pq.read_table(path, columns=[time_col, "event", "_session"])
            except (OSError, ValueError) as exc:
                log.error("unreadable events file", path=str(path), error=str(exc))
                continue
            times = table.column(time_col).cast(pa.int64()).to_pylist()
            events = table.column("event").cast(pa.string()).to_pylist()
            sessions = table.column("_session").cast(pa.string()).to_pylist()
            keys.update(zip(times, events, sessions, strict=True))
    return keys
