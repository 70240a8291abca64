"""The A/B merge's side of the events table: ``gap`` events read from every root, and the coverage
report of a unit written as a file of the events table."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capture import dirswap
from capture.compact.names import (
    COVERAGE_PREFIX,
    _is_input,
)
from capture.compact.planning import (
    _Unit,
)
from capture.compact.rewriting import _fsync_file
from capture.compact.settings import _Context
from capture.events import TABLE as EVENTS_TABLE
from capture.sink import (
    META_HOST,
    META_MSG_TYPE,
    META_ROWS,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SESSION,
    META_STRIPE,
    META_WRITER,
    WRITER_ID,
)

_TS_NS: Final = pa.timestamp("ns", tz="UTC")


def _gaps(ctx: _Context, day: dt.date, stripe: str) -> list[tuple[str, int, int]]:
    """``gap`` events of every side for this date and stripe: (host, start ns, end ns)."""
    s = ctx.settings
    rel = Path(EVENTS_TABLE) / f"date={day.isoformat()}" / f"stripe={stripe}"
    out: list[tuple[str, int, int]] = []
    for side, root in enumerate([s.root, *s.peers]):
        default_host = s.host_id if side == 0 else f"peer{side}"
        for path in sorted((root / rel).glob("*.parquet")):
            if not _is_input(EVENTS_TABLE, path.name):
                continue
            pf = pq.ParquetFile(path)
            kv = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()}
            host = kv.get(META_HOST, default_host)
            t = pf.read(columns=["event", "gap_start", "gap_end"])
            gaps = t.filter(pc.equal(t.column("event").cast(pa.string()), "gap"))
            for start, end in zip(
                gaps.column("gap_start").cast(_TS_NS).cast(pa.int64()).to_pylist(),
                gaps.column("gap_end").cast(_TS_NS).cast(pa.int64()).to_pylist(),
                strict=True,
            ):
                if start is not None and end is not None:
                    out.append((host, start, end))
    return out


def _write_coverage(
    ctx: _Context, table: str, day: dt.date, stripe: str, unit: _Unit, report: pa.Table
) -> None:
    """The A/B coverage report of one unit as a file of the events table (replaced whole on a
    rerun: its name is fixed per table and unit)."""
    s = ctx.settings
    directory = s.root / EVENTS_TABLE / f"date={day.isoformat()}" / f"stripe={stripe}"
    directory.mkdir(parents=True, exist_ok=True)
    tag = unit.tag.split(":", 1)[1].replace("-", "")
    final = directory / f"{COVERAGE_PREFIX}{table}-{tag}.parquet"
    tmp = directory / f".{final.name}.inprogress"
    meta = {
        META_MSG_TYPE: EVENTS_TABLE,
        META_STRIPE: stripe,
        META_SESSION: "compaction",
        META_SEQ_MIN: "0",
        META_SEQ_MAX: "0",
        META_ROWS: str(report.num_rows),
        META_WRITER: WRITER_ID,
    }
    report = report.replace_schema_metadata(None)
    pq.write_table(report.replace_schema_metadata(meta), tmp, compression="zstd")
    _fsync_file(tmp)
    os.replace(tmp, final)
    dirswap.fsync_dir(directory)
