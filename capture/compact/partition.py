"""One partition: its files planned into units, the due units rewritten (merged with the peers'
rows when configured) into the work area, and the work area exchanged with the partition."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capture import dirswap
from capture.compact.coverage import _gaps, _write_coverage
from capture.compact.names import (
    COMPACTED_PREFIX,
    HOST_COLUMN,
    META_INPUTS,
    META_PEER_INPUTS,
    META_UNIT,
    _is_input,
)
from capture.compact.planning import (
    NS,
    _Input,
    _needs_work,
    _peer_digest,
    _read_input,
    _Unit,
    _unit_of,
)
from capture.compact.rewriting import _normalize, _with_host, _write_outputs, sort_rows
from capture.compact.settings import _Context
from capture.compact.swap import _finish_work_dir, _listing, _work_dir
from capture.events import TABLE as EVENTS_TABLE
from capture.faultpoints import crash_point
from capture.logs import get_logger
from capture.recovery import format_seq_ranges, merge_ranges
from capture.sink import (
    INPROGRESS_SUFFIX,
    META_COMPACTED,
    META_HOST,
    META_MSG_TYPE,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    META_SESSION,
    META_STRIPE,
    META_WRITER,
    WRITER_ID,
)

log = get_logger(component="compact")


def _compact_partition(ctx: _Context, table: str, day: dt.date, stripe: str) -> None:
    s = ctx.settings
    rel = Path(table) / f"date={day.isoformat()}" / f"stripe={stripe}"
    visible = s.root / rel
    before = _listing(visible)
    if s.granularity == "day" and any(n.endswith(INPROGRESS_SUFFIX) for n in before):
        # A daemon writes into a past day only when it replays its journal: let it finish.
        # (Hour units share today's directory with the open file: see _finish_work_dir.)
        ctx.outcome.skipped.append(f"{rel}: a file is being written")
        return
    if any(not (visible / n).is_file() or (visible / n).is_symlink() for n in before):
        ctx.outcome.skipped.append(f"{rel}: holds something other than files (left alone)")
        return
    inputs: list[_Input] = []
    for name in sorted(before):
        if _is_input(table, name):
            inputs.append(_read_input(visible / name, 0, s.host_id))
    for side, peer in enumerate(s.peers, start=1):
        if table == EVENTS_TABLE:
            break  # each root keeps its own events; the merge writes the coverage reports
        pdir = peer / rel
        for name in sorted(_listing(pdir)):
            if _is_input(table, name):
                inputs.append(_read_input(pdir / name, side, f"peer{side}"))
    units: dict[str, _Unit] = {}
    for inp in inputs:
        tag, end = _unit_of(inp, day, s.granularity, s.tz)
        unit = units.setdefault(tag, _Unit(tag, end))
        unit.end_ns = max(unit.end_ns, end)
        unit.inputs.append(inp)
    horizon = ctx.now_ns - s.min_age_s * NS
    due = []
    pending = list(units.values())
    while pending:
        unit = pending.pop(0)
        if unit.end_ns > horizon or any(i.max_ns >= horizon for i in unit.inputs):
            continue  # open (or too young): never touched
        if not _needs_work(unit):
            continue
        size = sum(i.nbytes for i in unit.inputs)
        if size > s.max_unit_bytes and unit.tag.startswith("day:"):
            # Too big to sort in memory at once: this day is compacted hour by hour.
            hours: dict[str, _Unit] = {}
            for inp in unit.inputs:
                tag, end = _unit_of(inp, day, "hour", s.tz)
                hours.setdefault(tag, _Unit(tag, end)).inputs.append(inp)
            pending.extend(hours.values())
            continue
        if size > s.max_unit_bytes:
            ctx.outcome.skipped.append(f"{rel} {unit.tag}: {size} Arrow bytes > max_unit_bytes")
            continue
        due.append(unit)
    if not due:
        return
    if ctx.dry_run:
        for unit in due:
            rows = sum(i.rows for i in unit.inputs)
            ctx.outcome.planned.append(f"{rel} {unit.tag}: {len(unit.inputs)} files, {rows} rows")
        return
    work = _work_dir(s.root, table, day, stripe)
    if work.exists():
        _finish_work_dir(visible, work)
    work.mkdir(parents=True)
    replaced: set[str] = set()
    generation = f"{ctx.now_ns:x}"
    for unit in due:
        outputs = _rewrite_unit(ctx, table, day, stripe, unit, work, generation)
        replaced.update(i.path.name for i in unit.inputs if i.side == 0)
        ctx.outcome.files_out += len(outputs)
        ctx.outcome.bytes_out += sum(p.stat().st_size for p in outputs)
    for name in sorted(before - replaced):  # every other file stays, under its name
        os.link(visible / name, work / name)
    dirswap.fsync_dir(work)
    crash_point("compact.built")
    if _listing(visible) != before:
        shutil.rmtree(work)
        ctx.outcome.skipped.append(f"{rel}: changed while being compacted (next run)")
        return
    if not visible.exists():
        visible.mkdir(parents=True)
        dirswap.fsync_dir(visible.parent)
    dirswap.exchange(visible, work)
    dirswap.fsync_dir(visible.parent)
    dirswap.fsync_dir(work.parent)
    crash_point("compact.exchanged")
    _finish_work_dir(visible, work)
    crash_point("compact.done")
    ctx.outcome.units_compacted += len(due)
    log.info("compact.partition", partition=str(rel), units=[u.tag for u in due])


def _rewrite_unit(
    ctx: _Context,
    table: str,
    day: dt.date,
    stripe: str,
    unit: _Unit,
    work: Path,
    generation: str,
) -> list[Path]:
    s = ctx.settings
    parts: list[pa.Table] = []
    sides: list[int] = []
    for inp in unit.inputs:
        parts.append(pq.read_table(inp.path))
        sides.append(inp.side)
    merging = ctx.merge is not None and any(sides)
    # The _host column exists only where rows of several hosts meet (one host's data keeps
    # the live schema, so `SELECT *` over a glob needs no union_by_name for it).
    if merging or any(HOST_COLUMN in p.column_names for p in parts):
        parts = [_with_host(p, i.host) for p, i in zip(parts, unit.inputs, strict=True)]
    parts = _normalize(parts)
    rows_in = sum(p.num_rows for p in parts)
    if merging:
        lo = min(i.min_ns for i in unit.inputs)
        hi = max(i.max_ns for i in unit.inputs)
        gaps = [g for g in _gaps(ctx, day, stripe) if g[1] < hi and g[2] > lo]
        merged, report = ctx.merge(parts, sides, table, gaps, stripe=stripe)
        _write_coverage(ctx, table, day, stripe, unit, report)
    else:
        merged = pa.concat_tables(parts, promote_options="permissive")
    merged = sort_rows(merged, table, s.sort)
    own = [i for i in unit.inputs if i.side == 0]
    ranges = merge_ranges([r for i in own for r in i.own_ranges()])
    first_meta = {
        META_SEQ_RANGES: format_seq_ranges(ranges),
        META_INPUTS: json.dumps(sorted(i.path.name for i in own)),
        META_PEER_INPUTS: json.dumps(_peer_digest(unit.inputs)),
    }
    if ranges:
        first_meta[META_SEQ_MIN] = str(ranges[0][0])
        first_meta[META_SEQ_MAX] = str(ranges[-1][1])
    hosts = [s.host_id]
    if HOST_COLUMN in merged.column_names:
        found = pc.unique(merged.column(HOST_COLUMN).cast(pa.string())).to_pylist()
        hosts = sorted({str(h) for h in found if h is not None})
    common = {
        META_MSG_TYPE: table,
        META_STRIPE: stripe,
        META_SESSION: "compaction",
        META_WRITER: WRITER_ID,
        META_COMPACTED: "1",
        META_UNIT: unit.tag,
        META_HOST: s.host_id if hosts == [s.host_id] else ",".join(hosts),
    }
    tag = unit.tag.split(":", 1)[1].replace("-", "")
    base = f"{COMPACTED_PREFIX}{tag}-g{generation}"
    paths = _write_outputs(merged, work, base, first_meta, common, table, s)
    ctx.outcome.files_in += len(unit.inputs)
    ctx.outcome.rows_in += rows_in
    ctx.outcome.rows_out += merged.num_rows
    ctx.outcome.bytes_in += sum(i.path.stat().st_size for i in unit.inputs)
    ctx.outcome.duplicates_dropped += rows_in - merged.num_rows
    return paths
