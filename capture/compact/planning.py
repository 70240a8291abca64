"""Planning: the partitions under the roots, their files as compaction sees them (``_Input``,
read from the footers alone), the units they fall into, and which units need a rewrite."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pyarrow.parquet as pq

from capture.compact.names import (
    META_PEER_INPUTS,
    META_UNIT,
)
from capture.errors import CompactionError
from capture.recovery import parse_seq_ranges
from capture.rotation import day_start_ns
from capture.schemas.mapping import RECV_TIME_COLUMN
from capture.sink import (
    META_COMPACTED,
    META_HOST,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    RECV_NS_COLUMN,
)

NS: Final = 1_000_000_000
HOUR_NS: Final = 3600 * NS


@dataclass(frozen=True, slots=True)
class _Input:
    path: Path
    side: int  # 0: own root; 1..: peers
    host: str
    rows: int
    nbytes: int  # Arrow (uncompressed) bytes, from the footer
    min_ns: int
    max_ns: int
    meta: dict[str, str]

    @property
    def compacted(self) -> bool:
        return META_COMPACTED in self.meta

    def own_ranges(self) -> list[tuple[int, int]]:
        if self.side != 0:
            return []
        if self.compacted:
            return parse_seq_ranges(self.meta.get(META_SEQ_RANGES, ""))
        if META_SEQ_MIN in self.meta:
            return [(int(self.meta[META_SEQ_MIN]), int(self.meta[META_SEQ_MAX]))]
        return []


@dataclass
class _Unit:
    tag: str  # "day:2026-01-02" | "hour:2026-01-02T13"
    end_ns: int
    inputs: list[_Input] = field(default_factory=list)


def _table_dirs(root: Path, tables: Sequence[str] | None) -> Iterator[Path]:
    if not root.is_dir():
        return
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(("_", ".")):
            continue
        if tables is None or d.name in tables:
            yield d


def _partitions(
    roots: Sequence[Path], tables: Sequence[str] | None, dates: Sequence[dt.date] | None
) -> list[tuple[str, dt.date, str]]:
    """(table, date, stripe) of every partition in any of ``roots``."""
    found: set[tuple[str, dt.date, str]] = set()
    for root in roots:
        for tdir in _table_dirs(root, tables):
            for ddir in tdir.glob("date=*"):
                try:
                    day = dt.date.fromisoformat(ddir.name.removeprefix("date="))
                except ValueError:
                    continue
                if dates is not None and day not in dates:
                    continue
                for sdir in ddir.glob("stripe=*"):
                    if sdir.is_dir():
                        found.add((tdir.name, day, sdir.name.removeprefix("stripe=")))
    return sorted(found)


def _recv_bounds(meta: pq.FileMetaData) -> tuple[int, int]:
    """[min, max] receive time (ns) from the row groups' statistics."""
    schema = meta.schema.to_arrow_schema()
    name = RECV_NS_COLUMN if RECV_NS_COLUMN in schema.names else RECV_TIME_COLUMN
    idx = schema.get_field_index(name)
    typ = schema.field(idx).type
    scale = 1 if name == RECV_NS_COLUMN else {"s": NS, "ms": 10**6, "us": 1000, "ns": 1}[typ.unit]
    col = next(i for i in range(meta.num_columns) if meta.schema.column(i).name == name)
    lo, hi = None, None
    for rg in range(meta.num_row_groups):
        st = meta.row_group(rg).column(col).statistics
        if st is None or not st.has_min_max:
            raise CompactionError(f"no statistics for {name}")
        lo = st.min_raw if lo is None else min(lo, st.min_raw)
        hi = st.max_raw if hi is None else max(hi, st.max_raw)
    if lo is None or hi is None:
        return 0, 0
    return int(lo) * scale, int(hi) * scale


_WIDTH: Final = {"INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def _arrow_bytes(meta: pq.FileMetaData) -> int:
    """About the Arrow (in-memory) bytes of a file, from its footer: fixed-width columns by
    their width, the rest by their uncompressed size.  Not the pages' sizes alone: those
    depend on the encoding (a delta-encoded time column is a fraction of its 8 bytes a row),
    and a compacted file must weigh what its rows weigh in memory, or a day once compacted by
    hours would look small enough to be merged into one day the next run."""
    total = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            width = _WIDTH.get(col.physical_type)
            total += col.num_values * width if width else col.total_uncompressed_size
    return total


def _read_input(path: Path, side: int, default_host: str) -> _Input:
    meta = pq.read_metadata(path)
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    lo, hi = _recv_bounds(meta) if meta.num_rows else (0, 0)
    nbytes = _arrow_bytes(meta)
    return _Input(
        path=path,
        side=side,
        host=kv.get(META_HOST, default_host),
        rows=meta.num_rows,
        nbytes=nbytes,
        min_ns=lo,
        max_ns=hi,
        meta=kv,
    )


def _unit_of(inp: _Input, day: dt.date, granularity: str, tz: str) -> tuple[str, int]:
    if granularity == "day":
        return f"day:{day.isoformat()}", day_start_ns(day + dt.timedelta(days=1), tz)
    start = inp.min_ns // HOUR_NS * HOUR_NS
    stamp = dt.datetime.fromtimestamp(start // NS, dt.UTC).strftime("%Y-%m-%dT%H")
    return f"hour:{stamp}", start + HOUR_NS


def _peer_digest(inputs: Sequence[_Input]) -> dict[str, str]:
    by_side: dict[int, list[str]] = {}
    for i in inputs:
        if i.side:
            st = i.path.stat()
            by_side.setdefault(i.side, []).append(f"{i.path.name}:{st.st_size}")
    return {
        str(side): hashlib.blake2b("\n".join(sorted(names)).encode(), digest_size=8).hexdigest()
        for side, names in sorted(by_side.items())
    }


def _needs_work(unit: _Unit) -> bool:
    own = [i for i in unit.inputs if i.side == 0]
    if any(not i.compacted or i.meta.get(META_UNIT) != unit.tag for i in own):
        return True
    if not any(i.side for i in unit.inputs):
        return False
    recorded = {}
    for i in own:
        if META_PEER_INPUTS in i.meta:
            recorded = json.loads(i.meta[META_PEER_INPUTS])
    return bool(recorded != _peer_digest(unit.inputs))
