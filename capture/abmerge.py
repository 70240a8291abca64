"""Redundant capture (A/B): merge the copies of one unit captured by several hosts.

MLink conflates each connection on its own, so two hosts capturing the same stripe receive
different subsets of the updates; sequence numbers are each host's own.  The merge is the
union of the copies minus exact duplicates:

* a row's *content* is every column except what the capturing host stamps on it (receive time,
  ``_recv_time_ns``, ``_stripe``, ``_session``, ``_snapshot``, ``_seq``, ``_host``) and the
  server's per-connection encode time ``h_encT``: type (the table), instrument key, source
  timestamps (``h_sTim``, body timestamps), sequence header and body;
* content seen k times by one side and m times by another is kept max(k, m) times (a side that
  legitimately received the same record twice keeps both);
* of the copies of one row, the earliest received is kept (its ``_host`` says whose it is).

Merging is idempotent and order-free (max is), so a rerun with more peer data, or a peer that
already merged our copy, gives the same rows.

The coverage report (rows for the events table): per hour and host, the rows only that host
saw; per gap one host recorded (``gap`` events), the rows the other hosts captured inside it.

Pure pyarrow, vectorised (sorts and run boundaries); no per-row Python except for list or
struct columns (Repeaters), which are compared through their JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from capture import events

__all__ = ["HOST_STAMPED", "Gap", "merge"]

HOST_STAMPED: Final = frozenset(
    {"_recv_time", "_recv_time_ns", "_stripe", "_session", "_snapshot", "_seq", "_host", "h_encT"}
)
_NS: Final = 1_000_000_000
_HOUR: Final = 3600 * _NS

Gap = tuple[str, int, int]  # (host that had it, start ns, end ns)


def _recv_ns(t: pa.Table) -> pa.ChunkedArray:
    if "_recv_time_ns" in t.column_names:
        return t.column("_recv_time_ns").cast(pa.int64())
    return t.column("_recv_time").cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())


def _comparable(col: pa.ChunkedArray) -> pa.Array:
    arr = col.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        return arr.cast(t.value_type)
    if pa.types.is_nested(t):
        return pa.array(
            [None if v is None else json.dumps(v, sort_keys=True, default=str)
             for v in arr.to_pylist()],
            pa.string(),
        )  # fmt: skip
    return arr


def _same_as_previous(arr: pa.Array) -> pa.Array:
    """Row i (i >= 1) equals row i-1, nulls (and NaNs) equal to each other."""
    a, b = arr.slice(1), arr.slice(0, len(arr) - 1)
    same = pc.fill_null(pc.equal(a, b), False)
    same = pc.or_(same, pc.and_(pc.is_null(a), pc.is_null(b)))
    if pa.types.is_floating(arr.type):
        same = pc.or_(same, pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False))
    return same


def _starts(changes: pa.Array) -> pa.Array:
    """[True] + changes."""
    return pa.concat_arrays([pa.array([True]), changes.cast(pa.bool_())])


def merge(
    parts: Sequence[pa.Table],
    sides: Sequence[int],
    table: str,
    gaps: Sequence[Gap] = (),
    *,
    stripe: str = "",
) -> tuple[pa.Table, pa.Table]:
    """The merged rows of ``parts`` (each from side ``sides[i]``; 0 is this root), and the
    coverage report as a table in the events schema."""
    t = pa.concat_tables(parts, promote_options="permissive")
    n = t.num_rows
    side = pa.chunked_array(
        [pa.array([s] * p.num_rows, pa.int32()) for p, s in zip(parts, sides, strict=True)],
        pa.int32(),
    ).combine_chunks()
    recv = _recv_ns(t).combine_chunks()
    if n == 0:
        return t, _report([], stripe)
    content = [c for c in t.column_names if c not in HOST_STAMPED]
    keys = {f"c{i}": _comparable(t.column(c)) for i, c in enumerate(content)}
    keys["side"] = side
    keys["recv"] = recv
    order = pc.sort_indices(
        pa.table(keys), sort_keys=[(k, "ascending", "at_end") for k in keys]
    )
    diff = pa.array([False] * (n - 1))
    for i in range(len(content)):
        col = keys[f"c{i}"].take(order)
        diff = pc.or_(diff, pc.invert(_same_as_previous(col)))
    new_content = _starts(diff)
    s_side = side.take(order)
    new_run = pc.or_(new_content, _starts(pc.not_equal(s_side.slice(1), s_side.slice(0, n - 1))))
    pos = pa.array(range(n), pa.int64())
    run_start = pc.fill_null_forward(pc.if_else(new_run, pos, pa.scalar(None, pa.int64())))
    occurrence = pc.subtract(pos, run_start)
    group = pc.cumulative_sum(new_content.cast(pa.int64()))
    s_recv = recv.take(order)
    second = pa.table({"g": group, "o": occurrence, "r": s_recv})
    order2 = pc.sort_indices(second, sort_keys=[("g", "ascending"), ("o", "ascending"),
                                                 ("r", "ascending")])  # fmt: skip
    g2, o2 = group.take(order2), occurrence.take(order2)
    new_key = _starts(
        pc.or_(
            pc.not_equal(g2.slice(1), g2.slice(0, n - 1)),
            pc.not_equal(o2.slice(1), o2.slice(0, n - 1)),
        )
    )
    firsts = pc.indices_nonzero(new_key)
    ends = pa.concat_arrays([firsts.slice(1), pa.array([n], pa.uint64())])
    copies = pc.subtract(ends.cast(pa.int64()), firsts.cast(pa.int64()))
    keep = order.take(order2.take(firsts))
    merged = t.take(keep)
    return merged, _coverage(merged, copies, gaps, table, stripe)


def _coverage(
    merged: pa.Table, copies: pa.Array, gaps: Sequence[Gap], table: str, stripe: str
) -> pa.Table:
    recv = _recv_ns(merged).combine_chunks()
    hosts = merged.column("_host").cast(pa.string()).combine_chunks()
    hour = pc.multiply(pc.divide(recv, _HOUR), _HOUR)
    out: list[events.Event] = []
    only = pc.equal(copies, 1)
    per = pa.table({"hour": hour, "host": hosts, "only": only.cast(pa.int64())})
    grouped = per.group_by(["hour", "host"]).aggregate([("only", "sum"), ("only", "count")])
    for row in sorted(grouped.to_pylist(), key=lambda r: (r["hour"], r["host"])):
        out.append(
            events.Event(
                time_ns=row["hour"],
                session="compaction",
                seq=0,
                event="coverage",
                msg_type=table,
                result=f"only {row['host']}",
                detail=json.dumps({"kept_rows_of_host": row["only_count"]}),
                gap_start_ns=row["hour"],
                gap_end_ns=row["hour"] + _HOUR,
                count=row["only_sum"],
            )
        )
    for host, start, end in sorted(gaps, key=lambda g: (g[1], g[0])):
        inside = pc.and_(pc.and_(pc.greater(recv, start), pc.less(recv, end)),
                         pc.not_equal(hosts, host))  # fmt: skip
        covered = int(pc.sum(inside.cast(pa.int64())).as_py() or 0)
        others = sorted(set(pc.filter(hosts, inside).to_pylist()) - {None})
        out.append(
            events.Event(
                time_ns=start,
                session="compaction",
                seq=0,
                event="coverage_gap",
                msg_type=table,
                result=f"gap {host}",
                detail=json.dumps({"covered_by": others}),
                gap_start_ns=start,
                gap_end_ns=end,
                count=covered,
            )
        )
    return _report(out, stripe)


def _report(rows: list[events.Event], stripe: str) -> pa.Table:
    return pa.Table.from_batches([events.to_batch(rows, stripe)], schema=events.SCHEMA)
