"""Tests for capture.sink: layout, row groups, rotation, atomic commit, crash and error paths.

All time comes from an injected clock; nothing sleeps.
"""

from __future__ import annotations

import datetime as dt
import errno
import itertools
import os
import re
import shutil
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import capture
from capture.rotation import next_boundary_ns, partition_date
from capture.rowbuffer import BATCH_OVERHEAD_PER_COLUMN
from capture.schemas.mapping import ns_to_timestamp_us
from capture.sink import (
    FOOTER_BYTES_PER_COLUMN_CHUNK,
    CommittedFile,
    PartitionSink,
    SinkClosedError,
    SinkCommitError,
    SinkError,
    SinkOpenError,
    SinkSettings,
    SinkWriteError,
    cleanup_in_progress,
)
from capture.sink import fs as sink_fs

NS = 1_000_000_000
NY = "America/New_York"
STRIPE = "3"


def ns(iso: str) -> int:
    """Exact ns instant of an ISO-8601 string with explicit offset."""
    d = dt.datetime.fromisoformat(iso)
    assert d.tzinfo is not None
    delta = d - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1000


T0 = ns("2024-06-03T14:01:00+00:00")  # boundaries (300 s, UTC) at 14:05, 14:10, ...


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def make_batch(
    n: int,
    *,
    seq0: int,
    recv0: int = T0,
    step_ns: int = 1_000,
    extra_column: bool = False,
) -> pa.RecordBatch:
    cols: dict[str, pa.Array] = {
        "_recv_time_ns": pa.array([recv0 + i * step_ns for i in range(n)], pa.int64()),
        "_seq": pa.array(range(seq0, seq0 + n), pa.int64()),
        "_stripe": pa.array([STRIPE] * n, pa.string()),
        "sym": pa.array([f"SYM{(seq0 + i) % 7}" for i in range(n)], pa.string()),
        "px": pa.array([100.0 + (seq0 + i) / 8 for i in range(n)], pa.float64()),
    }
    if extra_column:
        cols["qty"] = pa.array(range(n), pa.int32())
    return pa.record_batch(cols)


def settings(root: Path, **kw: Any) -> SinkSettings:
    return SinkSettings(root=root, **kw)


def new_sink(root: Path, clock: Clock, *, session: str = "s1", **kw: Any) -> PartitionSink:
    return PartitionSink(settings(root, **kw), stripe=STRIPE, session=session, now_ns=clock)


def visible(root: Path) -> list[Path]:
    return sorted(root.glob("**/*.parquet"))


def inprogress(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*") if p.name.endswith(".inprogress"))


def duck_rows(glob: str, columns: str = "*") -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    try:
        rel = con.sql(
            f"SELECT {columns} FROM read_parquet('{glob}', hive_partitioning=true) ORDER BY _seq"
        )
        return rel.fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# Commit visibility and readers
# --------------------------------------------------------------------------------------------


def test_nothing_visible_until_boundary_then_one_file_readable_everywhere(tmp_path: Path) -> None:
    clock = Clock(T0)
    sink = new_sink(tmp_path, clock)
    batches = [make_batch(50, seq0=1 + 50 * i, recv0=T0 + i * NS) for i in range(6)]
    for i, b in enumerate(batches):
        clock.now = T0 + i * NS
        assert sink.write("StockBookQuote", b) == []
    assert visible(tmp_path) == []
    assert len(inprogress(tmp_path)) == 1

    clock.now = ns("2024-06-03T14:04:59.999999+00:00")
    assert sink.rotate_due() == []
    assert visible(tmp_path) == []

    # At the boundary the file waits commit_grace_s for rows received before it that are still
    # on their way; such a row goes into this file, not the next interval's.
    clock.now = ns("2024-06-03T14:05:00+00:00")
    assert sink.rotate_due() == []
    clock.now = ns("2024-06-03T14:05:01.999+00:00")
    assert sink.rotate_due() == []
    clock.now = ns("2024-06-03T14:05:02+00:00")
    committed = sink.rotate_due()
    assert len(committed) == 1
    cf = committed[0]
    assert cf.reason == "interval"
    assert (cf.msg_type, cf.date, cf.stripe, cf.rows) == (
        "StockBookQuote",
        dt.date(2024, 6, 3),
        STRIPE,
        300,
    )
    assert (cf.seq_min, cf.seq_max) == (1, 300)
    assert visible(tmp_path) == [cf.path]
    assert inprogress(tmp_path) == []
    assert cf.bytes == cf.path.stat().st_size
    assert cf.path.parent == tmp_path / "StockBookQuote" / "date=2024-06-03" / f"stripe={STRIPE}"

    expected = pa.Table.from_batches(batches)

    # pyarrow: the file itself
    got = pq.read_table(cf.path)
    assert got.equals(expected)

    # pyarrow.dataset with hive partitioning
    ds = pads.dataset(tmp_path / "StockBookQuote", format="parquet", partitioning="hive")
    t = ds.to_table()
    assert t.num_rows == 300
    assert set(t.column("stripe").to_pylist()) == {int(STRIPE)}
    assert t.select(expected.column_names).sort_by("_seq").equals(expected)

    # duckdb
    glob = f"{tmp_path}/StockBookQuote/**/*.parquet"
    rows = duck_rows(glob, "_seq, _recv_time_ns, sym, px, _stripe, date, stripe")
    assert [r[0] for r in rows] == expected.column("_seq").to_pylist()
    assert [r[1] for r in rows] == expected.column("_recv_time_ns").to_pylist()
    assert [r[2] for r in rows] == expected.column("sym").to_pylist()
    assert [r[3] for r in rows] == expected.column("px").to_pylist()
    assert {(r[4], str(r[5]), str(r[6])) for r in rows} == {(STRIPE, "2024-06-03", STRIPE)}

    # polars
    df = pl.scan_parquet(glob, hive_partitioning=True).sort("_seq").collect()
    assert df["_seq"].to_list() == expected.column("_seq").to_pylist()
    assert df["_recv_time_ns"].to_list() == expected.column("_recv_time_ns").to_pylist()
    assert df["px"].to_list() == expected.column("px").to_pylist()
    assert df["sym"].to_list() == expected.column("sym").to_pylist()
    assert {str(v) for v in df["date"].to_list()} == {"2024-06-03"}
    assert {str(v) for v in df["stripe"].to_list()} == {STRIPE}


def test_inprogress_hidden_from_dataset_and_duckdb_while_open(tmp_path: Path) -> None:
    clock = Clock(T0)
    sink = new_sink(tmp_path, clock, row_group_rows=100)
    sink.write("T", make_batch(250, seq0=1))
    sink.rotate_all()  # one committed file with seq 1..250
    # a second file is open and already holds complete row groups on disk
    sink.write("T", make_batch(250, seq0=251))
    [open_file] = inprogress(tmp_path)
    assert open_file.stat().st_size > 0
    assert open_file.name.startswith(".") and not open_file.name.endswith(".parquet")

    ds = pads.dataset(tmp_path / "T", format="parquet", partitioning="hive")
    assert [Path(f) for f in ds.files] == visible(tmp_path)
    assert ds.to_table().num_rows == 250

    rows = duck_rows(f"{tmp_path}/T/**/*.parquet", "_seq")
    assert [r[0] for r in rows] == list(range(1, 251))

    df = pl.scan_parquet(f"{tmp_path}/T/**/*.parquet", hive_partitioning=True).collect()
    assert df.height == 250


def test_commit_order_footer_fsync_rename_dirsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync_fd, real_rename, real_fsync_dir = (
        sink_fs.fsync_fd,
        sink_fs.rename,
        sink_fs.fsync_dir,
    )

    def fsync_fd(fd: int) -> None:
        calls.append("fsync_file")
        real_fsync_fd(fd)

    def rename(src: Path, dst: Path) -> None:
        # at the moment of the rename the source must already be a complete Parquet file
        assert pq.ParquetFile(src).metadata.num_rows == 10
        assert not dst.exists()
        calls.append("rename")
        real_rename(src, dst)

    def fsync_dir(path: Path) -> None:
        calls.append("fsync_dir")
        real_fsync_dir(path)

    clock = Clock(T0)
    sink = new_sink(tmp_path, clock)
    sink.write("T", make_batch(10, seq0=1))
    monkeypatch.setattr(sink_fs, "fsync_fd", fsync_fd)
    monkeypatch.setattr(sink_fs, "rename", rename)
    monkeypatch.setattr(sink_fs, "fsync_dir", fsync_dir)
    sink.rotate_all()
    assert calls == ["fsync_file", "rename", "fsync_dir"]


# --------------------------------------------------------------------------------------------
# Row groups and memory
# --------------------------------------------------------------------------------------------


def row_group_sizes(path: Path) -> list[int]:
    md = pq.ParquetFile(path).metadata
    return [md.row_group(i).num_rows for i in range(md.num_row_groups)]


def test_many_small_batches_make_few_full_row_groups(tmp_path: Path) -> None:
    clock = Clock(T0)
    sink = new_sink(tmp_path, clock, row_group_rows=1_000)
    for i in range(50):
        sink.write("T", make_batch(70, seq0=1 + 70 * i))
    stats = sink.statistics()
    assert stats.row_groups_written == 3
    assert stats.buffered_rows == 3_500 - 3_000
    assert stats.rows_written == 3_500
    [cf] = sink.rotate_all()
    assert row_group_sizes(cf.path) == [1_000, 1_000, 1_000, 500]
    assert pq.read_table(cf.path).column("_seq").to_pylist() == list(range(1, 3_501))


def test_one_large_batch_is_cut_into_row_groups(tmp_path: Path) -> None:
    sink = new_sink(tmp_path, Clock(T0), row_group_rows=1_000)
    sink.write("T", make_batch(2_500, seq0=1))
    assert sink.statistics().buffered_rows == 500
    [cf] = sink.close()
    assert row_group_sizes(cf.path) == [1_000, 1_000, 500]


def test_row_group_bytes_bound(tmp_path: Path) -> None:
    one = make_batch(100, seq0=1)
    held = one.nbytes + BATCH_OVERHEAD_PER_COLUMN * one.num_columns  # what a held batch costs
    sink = new_sink(tmp_path, Clock(T0), row_group_bytes=3 * held)
    for i in range(7):
        sink.write("T", make_batch(100, seq0=1 + 100 * i))
    [cf] = sink.rotate_all()
    assert row_group_sizes(cf.path) == [300, 300, 100]


def test_memory_budget_flushes_largest_buffer(tmp_path: Path) -> None:
    clock = Clock(T0)
    big = make_batch(1_000, seq0=1)
    small = make_batch(100, seq0=1)
    overhead = BATCH_OVERHEAD_PER_COLUMN * big.num_columns  # what holding a batch costs
    big_held, small_held = big.nbytes + overhead, small.nbytes + overhead
    budget = big_held + 2 * small_held
    sink = new_sink(tmp_path, clock, memory_budget_bytes=budget)
    sink.write("Small", small)
    sink.write("Big", big)
    assert sink.statistics().row_groups_written == 0
    assert sink.statistics().buffered_bytes == big_held + small_held

    sink.write("Small", make_batch(100, seq0=101))
    sink.write("Small", make_batch(100, seq0=201))  # now over budget: "Big" is the largest
    stats = sink.statistics()
    assert stats.row_groups_written == 1
    assert stats.buffered_bytes == 3 * small_held
    assert stats.buffered_bytes <= budget

    files = {cf.msg_type: cf for cf in sink.close()}
    assert row_group_sizes(files["Big"].path) == [1_000]
    assert row_group_sizes(files["Small"].path) == [300]


def test_dictionary_and_struct_columns_with_changing_dictionaries(tmp_path: Path) -> None:
    # the decoder emits dictionary-encoded strings whose dictionary differs per batch
    def batch(syms: list[str], seq0: int) -> pa.RecordBatch:
        n = len(syms)
        return pa.record_batch(
            {
                "_recv_time_ns": pa.array([T0 + i for i in range(n)], pa.int64()),
                "_seq": pa.array(range(seq0, seq0 + n), pa.int64()),
                "sym": pa.array(syms).dictionary_encode(),
                "key": pa.array([{"tk": s, "n": i} for i, s in enumerate(syms)]),
            }
        )

    sink = new_sink(tmp_path, Clock(T0), row_group_rows=4)
    sink.write("T", batch(["x", "y", "x"], 1))
    sink.write("T", batch(["z", "q", "z", "w"], 4))
    [cf] = sink.close()
    t = pq.read_table(cf.path)
    assert t.column("sym").to_pylist() == ["x", "y", "x", "z", "q", "z", "w"]
    assert pa.types.is_dictionary(t.schema.field("sym").type)
    rows = duck_rows(f"{tmp_path}/T/**/*.parquet", "sym, key.tk")
    assert [r[0] for r in rows] == [r[1] for r in rows] == t.column("sym").to_pylist()


# --------------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------------


def test_footer_budget_bounds_the_row_groups_open_files_hold(tmp_path: Path) -> None:
    """An open file keeps every written row group's metadata until it is committed: with many
    small row groups (many busy stripes, a small budget) a file is committed before its
    interval ends once the sink's open footers would exceed the budget.  Nothing is lost."""
    clock = Clock(T0)
    columns = len(make_batch(1, seq0=1).schema)  # flat: one column chunk per field
    per_group = columns * FOOTER_BYTES_PER_COLUMN_CHUNK
    sink = new_sink(tmp_path, clock, row_group_rows=1024, footer_budget_bytes=10 * per_group)
    committed: list[CommittedFile] = []
    for i in range(60):  # 60 row groups of 1024 rows, all in one rotation interval
        committed += sink.write("T", make_batch(1024, seq0=1 + 1024 * i))
        assert sink.open_footer_bytes <= 10 * per_group
    assert {cf.reason for cf in committed} == {"footer"}
    committed += sink.close()
    assert sum(cf.rows for cf in committed) == 60 * 1024
    groups = [pq.ParquetFile(cf.path).metadata.num_row_groups for cf in committed]
    assert max(groups) <= 11 and len(committed) >= 6  # instead of one file of 60 row groups
    ranges = sorted((cf.seq_min, cf.seq_max) for cf in committed)
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    # Without the bound (the default: the sink's memory budget, 256 MB here) one file.
    other = new_sink(tmp_path / "default", clock, row_group_rows=1024)
    for i in range(60):
        assert other.write("T", make_batch(1024, seq0=1 + 1024 * i)) == []
    assert len(other.close()) == 1


def test_open_files_are_bounded_and_the_least_recently_written_is_committed(
    tmp_path: Path,
) -> None:
    """max_open_files (limits.max_open_types): a flood of types never holds more files open;
    the file written longest ago is committed first, and no row is lost."""
    clock = Clock(T0)
    sink = new_sink(tmp_path, clock, max_open_files=3)
    committed: list[CommittedFile] = []
    committed += sink.write("Busy", make_batch(2, seq0=1))
    for i in range(10):
        committed += sink.write(f"T{i}", make_batch(1, seq0=100 + i))
        committed += sink.write("Busy", make_batch(1, seq0=200 + i))  # keeps it recent
        assert sink.open_file_count <= 3
    assert {cf.reason for cf in committed} == {"open_files"}
    assert all(cf.msg_type != "Busy" for cf in committed)  # never the least recently written
    committed += sink.close()
    assert sum(cf.rows for cf in committed) == 2 + 10 + 10
    assert {cf.msg_type for cf in committed} == {"Busy", *(f"T{i}" for i in range(10))}


def test_size_bound_rotates_and_seq_ranges_tile(tmp_path: Path) -> None:
    clock = Clock(T0)
    sink = new_sink(tmp_path, clock, row_group_rows=500, max_file_bytes=20_000)
    committed: list[CommittedFile] = []
    for i in range(40):
        committed += sink.write("T", make_batch(100, seq0=1 + 100 * i))
    assert committed, "the size bound never rotated"
    assert {cf.reason for cf in committed} == {"size"}
    committed += sink.close()
    assert committed[-1].reason == "shutdown"

    assert sorted(visible(tmp_path)) == sorted(cf.path for cf in committed)
    assert sum(cf.rows for cf in committed) == 4_000
    # each file holds a contiguous seq run; together they tile 1..4000 without overlap
    ranges = sorted((cf.seq_min, cf.seq_max) for cf in committed)
    assert ranges[0][0] == 1 and ranges[-1][1] == 4_000
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert lo == hi + 1
    for cf in committed:
        seqs = pq.read_table(cf.path).column("_seq").to_pylist()
        assert seqs == list(range(cf.seq_min, cf.seq_max + 1))
    # names sort in write order
    assert [p.name for p in sorted(cf.path for cf in committed)] == [
        cf.path.name for cf in committed
    ]


def test_idle_and_interval_rotation(tmp_path: Path) -> None:
    clock = Clock(ns("2024-06-03T14:00:30+00:00"))
    sink = new_sink(tmp_path, clock)
    sink.write("Quiet", make_batch(5, seq0=1, recv0=clock.now))
    sink.write("Busy", make_batch(5, seq0=1, recv0=clock.now))
    clock.now = ns("2024-06-03T14:04:50+00:00")
    sink.write("Busy", make_batch(5, seq0=6, recv0=clock.now))

    clock.now = ns("2024-06-03T14:05:30+00:00")  # Quiet: no write for 300 s
    reasons = {cf.msg_type: cf.reason for cf in sink.rotate_due()}
    assert reasons == {"Quiet": "idle", "Busy": "interval"}
    assert sink.statistics().open_files == 0


def test_write_after_boundary_commits_previous_file_first(tmp_path: Path) -> None:
    clock = Clock(ns("2024-06-03T14:04:59+00:00"))
    sink = new_sink(tmp_path, clock)
    assert sink.write("T", make_batch(5, seq0=1, recv0=clock.now)) == []
    clock.now = ns("2024-06-03T14:05:01+00:00")
    [cf] = sink.write("T", make_batch(5, seq0=6, recv0=clock.now))
    assert (cf.reason, cf.seq_min, cf.seq_max) == ("interval", 1, 5)
    [cf2] = sink.close()
    assert (cf2.seq_min, cf2.seq_max) == (6, 10)


def test_rotate_all_close_idempotent_and_closed_sink_refuses_writes(tmp_path: Path) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    sink.write("A", make_batch(5, seq0=1))
    sink.write("B", make_batch(5, seq0=1))
    manual = sink.rotate_all()
    assert sorted((cf.msg_type, cf.reason) for cf in manual) == [("A", "manual"), ("B", "manual")]
    assert sink.rotate_all() == []

    sink.write("A", make_batch(5, seq0=6))
    [shutdown] = sink.close()
    assert shutdown.reason == "shutdown"
    assert sink.close() == []
    assert sink.rotate_due() == []
    with pytest.raises(SinkClosedError):
        sink.write("A", make_batch(5, seq0=11))
    stats = sink.statistics()
    assert (stats.files_committed, stats.rows_committed, stats.open_files) == (3, 15, 0)
    assert stats.bytes_committed == sum(p.stat().st_size for p in visible(tmp_path))


def test_schema_change_commits_open_file(tmp_path: Path) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    sink.write("T", make_batch(5, seq0=1))
    [cf] = sink.write("T", make_batch(5, seq0=6, extra_column=True))
    assert (cf.reason, cf.rows) == ("schema", 5)
    [cf2] = sink.close()
    assert "qty" in pq.read_schema(cf2.path).names
    assert "qty" not in pq.read_schema(cf.path).names


# --------------------------------------------------------------------------------------------
# Crash and start-up cleanup
# --------------------------------------------------------------------------------------------


def test_crash_never_exposes_partial_file_and_cleanup_quarantines(tmp_path: Path) -> None:
    clock = Clock(T0)
    crashed = new_sink(tmp_path, clock, session="before", row_group_rows=100)
    crashed.write("T", make_batch(100, seq0=1))
    [good] = crashed.rotate_all()
    crashed.write("T", make_batch(350, seq0=101))  # 3 row groups on disk, no footer
    [partial] = inprogress(tmp_path)
    partial_bytes = partial.read_bytes()
    assert partial_bytes  # there is something to recover
    # "crash": the writer is never closed.  `crashed` stays referenced so no finaliser runs.

    restarted = new_sink(tmp_path, clock, session="after")
    moved = cleanup_in_progress(tmp_path)
    assert len(moved) == 1
    [dest] = moved
    rel = partial.parent.relative_to(tmp_path)
    assert dest == tmp_path / "_quarantine" / "inprogress" / rel / partial.name[1:]
    assert dest.read_bytes() == partial_bytes
    assert inprogress(tmp_path) == []
    assert not dest.name.endswith(".parquet")

    assert visible(tmp_path) == [good.path]
    for p in visible(tmp_path):
        assert pq.ParquetFile(p).metadata.num_rows > 0  # every visible file opens
    assert pads.dataset(tmp_path / "T", format="parquet").to_table().num_rows == 100
    # pyarrow.dataset on the whole root skips _quarantine
    root_ds = pads.dataset(tmp_path, format="parquet")
    assert all("_quarantine" not in f for f in root_ds.files)

    restarted.write("T", make_batch(10, seq0=451))
    [after] = restarted.close()
    assert after.path != good.path
    assert restarted.session_tag in after.path.name
    assert len(visible(tmp_path)) == 2
    assert cleanup_in_progress(tmp_path) == []
    del crashed


def test_cleanup_can_be_limited_to_some_stripes(tmp_path: Path) -> None:
    clock = Clock(T0)
    keep = []
    for stripe in ("1", "2", "3"):
        s = PartitionSink(settings(tmp_path), stripe=stripe, session="x", now_ns=clock)
        s.write("T", make_batch(5, seq0=1))
        keep.append(s)
    moved = cleanup_in_progress(tmp_path, ["1", "3"])
    assert sorted(m.parent.name for m in moved) == ["stripe=1", "stripe=3"]
    assert [p.parent.name for p in inprogress(tmp_path)] == ["stripe=2"]
    keep[1].close()
    assert len(visible(tmp_path)) == 1


def test_partition_directory_removed_externally_is_recreated(tmp_path: Path) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    sink.write("T", make_batch(5, seq0=1))
    [first] = sink.rotate_all()
    shutil.rmtree(tmp_path / "T")  # e.g. a retention job deleted the date
    sink.write("T", make_batch(5, seq0=6))
    [second] = sink.close()
    assert second.path.parent == first.path.parent
    assert visible(tmp_path) == [second.path]


def test_cleanup_on_missing_root(tmp_path: Path) -> None:
    assert cleanup_in_progress(tmp_path / "nope") == []


# --------------------------------------------------------------------------------------------
# Time zones, DST, date partition
# --------------------------------------------------------------------------------------------


def boundaries(start_ns: int, interval: int, tz: str, count: int) -> list[int]:
    out, t = [], start_ns
    for _ in range(count):
        t = next_boundary_ns(t, interval, tz)
        out.append(t)
    return out


def test_dst_spring_forward_new_york_5min() -> None:
    # 2024-03-10: 02:00 EST (07:00Z) jumps to 03:00 EDT. Local 02:xx does not exist.
    got = boundaries(ns("2024-03-10T01:52:00-05:00"), 300, NY, 4)
    assert got == [
        ns("2024-03-10T01:55:00-05:00"),  # 06:55Z
        ns("2024-03-10T03:00:00-04:00"),  # 07:00Z: the next local :00 that exists
        ns("2024-03-10T03:05:00-04:00"),
        ns("2024-03-10T03:10:00-04:00"),
    ]
    assert [b - a for a, b in itertools.pairwise(got)] == [300 * NS] * 3


def test_dst_fall_back_new_york_5min() -> None:
    # 2024-11-03: 02:00 EDT (06:00Z) falls back to 01:00 EST. Local 01:xx happens twice.
    got = boundaries(ns("2024-11-03T01:52:00-04:00"), 300, NY, 4)
    assert got == [
        ns("2024-11-03T01:55:00-04:00"),  # 05:55Z
        ns("2024-11-03T01:00:00-05:00"),  # 06:00Z: second 01:00
        ns("2024-11-03T01:05:00-05:00"),
        ns("2024-11-03T01:10:00-05:00"),
    ]
    assert [b - a for a, b in itertools.pairwise(got)] == [300 * NS] * 3


def test_dst_hourly_boundaries_new_york() -> None:
    assert boundaries(ns("2024-11-02T23:30:00-04:00"), 3600, NY, 4) == [
        ns("2024-11-03T00:00:00-04:00"),
        ns("2024-11-03T01:00:00-04:00"),
        ns("2024-11-03T01:00:00-05:00"),
        ns("2024-11-03T02:00:00-05:00"),
    ]
    assert boundaries(ns("2024-03-09T23:30:00-05:00"), 3600, NY, 4) == [
        ns("2024-03-10T00:00:00-05:00"),
        ns("2024-03-10T01:00:00-05:00"),
        ns("2024-03-10T03:00:00-04:00"),
        ns("2024-03-10T04:00:00-04:00"),
    ]


def test_boundary_is_strictly_after_now_and_aligned_in_zone() -> None:
    on = ns("2024-06-03T14:05:00+00:00")
    assert next_boundary_ns(on, 300, "UTC") == on + 300 * NS
    assert next_boundary_ns(on - 1, 300, "UTC") == on
    # half-hour zone: local top of the hour is UTC :30
    assert next_boundary_ns(
        ns("2024-01-01T00:00:00+00:00"), 3600, "Asia/Kolkata"
    ) == ns("2024-01-01T00:30:00+00:00")
    # daily boundary is local midnight, also across DST
    assert next_boundary_ns(ns("2024-03-10T12:00:00-04:00"), 86_400, NY) == ns(
        "2024-03-11T00:00:00-04:00"
    )


def test_partition_date_local_and_dst() -> None:
    cases = [
        ("2024-03-10T04:59:59.999999+00:00", NY, dt.date(2024, 3, 9)),
        ("2024-03-10T05:00:00+00:00", NY, dt.date(2024, 3, 10)),  # local midnight EST
        ("2024-03-11T03:59:59+00:00", NY, dt.date(2024, 3, 10)),  # 23-hour day
        ("2024-03-11T04:00:00+00:00", NY, dt.date(2024, 3, 11)),  # local midnight EDT
        ("2024-11-04T04:59:59+00:00", NY, dt.date(2024, 11, 3)),  # 25-hour day
        ("2024-11-04T05:00:00+00:00", NY, dt.date(2024, 11, 4)),
        ("2024-06-03T23:59:59+00:00", "UTC", dt.date(2024, 6, 3)),
        # Santiago springs forward at local midnight: 2024-09-08 starts at 01:00 -03
        ("2024-09-08T03:59:59+00:00", "America/Santiago", dt.date(2024, 9, 7)),
        ("2024-09-08T04:00:00+00:00", "America/Santiago", dt.date(2024, 9, 8)),
    ]
    # twice, in an order that hits and misses the per-tz cache
    for iso, tz, want in cases + cases[::-1]:
        assert partition_date(ns(iso), tz) == want, iso
    assert partition_date(ns("2024-03-10T04:59:59.999999+00:00") + 999, NY) == dt.date(2024, 3, 9)


def test_date_partition_in_non_utc_zone(tmp_path: Path) -> None:
    recv = ns("2024-06-04T02:00:00+00:00")  # 22:00 on 2024-06-03 in New York
    sink = new_sink(tmp_path, Clock(recv), tz=NY)
    sink.write("T", make_batch(3, seq0=1, recv0=recv))
    [cf] = sink.close()
    assert cf.date == dt.date(2024, 6, 3)
    assert cf.path.parent.parent.name == "date=2024-06-03"
    # the file name carries the UTC start
    assert cf.path.name.startswith("part-20240604T020000Z-")


def test_batch_straddling_local_midnight_is_split(tmp_path: Path) -> None:
    midnight = ns("2024-06-04T00:00:00-04:00")
    sink = new_sink(tmp_path, Clock(midnight), tz=NY)
    written = sink.write("T", make_batch(10, seq0=1, recv0=midnight - 5 * NS, step_ns=NS))
    files = {cf.date: cf for cf in [*written, *sink.close()]}
    assert sorted(files) == [dt.date(2024, 6, 3), dt.date(2024, 6, 4)]
    assert (files[dt.date(2024, 6, 3)].seq_min, files[dt.date(2024, 6, 3)].seq_max) == (1, 5)
    assert (files[dt.date(2024, 6, 4)].seq_min, files[dt.date(2024, 6, 4)].seq_max) == (6, 10)


@pytest.mark.parametrize("interval", [0, -300, 7, 7_000, 172_800])
def test_interval_must_divide_a_day(tmp_path: Path, interval: int) -> None:
    with pytest.raises(ValueError, match="rotate_interval_s"):
        SinkSettings(root=tmp_path, rotate_interval_s=interval)
    with pytest.raises(ValueError, match="interval_s"):
        next_boundary_ns(T0, interval, "UTC")


def test_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tz"):
        SinkSettings(root=tmp_path, tz="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="compression"):
        SinkSettings(root=tmp_path, compression="lzo")
    with pytest.raises(ValueError, match="compression_level"):
        SinkSettings(root=tmp_path, compression="snappy", compression_level=3)
    with pytest.raises(ValueError, match="row_group_rows"):
        SinkSettings(root=tmp_path, row_group_rows=0)
    assert SinkSettings(root=tmp_path, rotate_interval_s=86_400).rotate_interval_s == 86_400


# --------------------------------------------------------------------------------------------
# Footer, types, names, input validation
# --------------------------------------------------------------------------------------------


def test_footer_metadata_and_recv_time_type(tmp_path: Path) -> None:
    sink = new_sink(tmp_path, Clock(T0), session="sessionA")
    batch = make_batch(40, seq0=1_000, step_ns=1_001)  # not whole microseconds
    batch = batch.add_column(0, "_recv_time", ns_to_timestamp_us(batch.column("_recv_time_ns")))
    sink.write("OptionNbboQuote", batch)
    [cf] = sink.close()

    pf = pq.ParquetFile(cf.path)
    meta = {k.decode(): v.decode() for k, v in pf.metadata.metadata.items()}
    assert {k: v for k, v in meta.items() if k.startswith("mlink.")} == {
        "mlink.msg_type": "OptionNbboQuote",
        "mlink.stripe": STRIPE,
        "mlink.session": "sessionA",
        "mlink.seq_min": "1000",
        "mlink.seq_max": "1039",
        "mlink.rows": "40",
        "mlink.writer": f"mlink-capture {capture.__version__}",
    }
    assert pf.metadata.format_version == "2.6"
    assert pf.schema_arrow.field("_recv_time").type == pa.timestamp("us", "UTC")
    assert pf.schema_arrow.field("_recv_time_ns").type == pa.int64()
    assert "_stripe" in pf.schema_arrow.names
    assert "date" not in pf.schema_arrow.names and "stripe" not in pf.schema_arrow.names
    logical = pf.schema.column(pf.schema_arrow.get_field_index("_recv_time")).logical_type
    assert "isAdjustedToUTC=true" in str(logical) and "microseconds" in str(logical)
    rg = pf.metadata.row_group(0)
    assert rg.column(0).compression == "ZSTD"
    assert rg.column(0).statistics is not None and rg.column(0).statistics.has_min_max

    con = duckdb.connect()
    try:
        desc = con.sql(f"DESCRIBE SELECT _recv_time FROM read_parquet('{cf.path}')").fetchall()
        assert desc[0][1] == "TIMESTAMP WITH TIME ZONE"
        sql = f"SELECT epoch_us(_recv_time), _recv_time_ns FROM read_parquet('{cf.path}')"
        got = con.sql(sql).fetchall()
    finally:
        con.close()
    exact = [T0 + i * 1_001 for i in range(40)]
    assert [r[1] for r in got] == exact
    assert [r[0] for r in got] == [ns // 1_000 for ns in exact]


def test_file_names_sortable_and_unique_per_session(tmp_path: Path) -> None:
    clock = Clock(T0)
    a = new_sink(tmp_path, clock, session="a1")
    long_session = "0190c5a1-7c3e-7a11-9f00-aaaaaaaaaaaa"
    b = new_sink(tmp_path, clock, session=long_session)
    assert a.session_tag == "a1"
    assert re.fullmatch(r"[0-9a-f]{12}", b.session_tag)
    assert b.session_tag != new_sink(tmp_path, clock, session=long_session[:-1] + "b").session_tag
    for s in (a, b):
        s.write("T", make_batch(3, seq0=1))
        s.rotate_all()
        s.write("T", make_batch(3, seq0=4))
    names = [cf.path.name for cf in a.close() + b.close()]
    names += [p.name for p in visible(tmp_path)]
    pattern = re.compile(r"part-20240603T140100Z-[0-9A-Za-z]+-\d{6}\.parquet")
    assert all(pattern.fullmatch(n) for n in names), names
    assert len(set(visible(tmp_path))) == 4


@pytest.mark.parametrize("msg_type", ["", "../evil", "_hidden", ".dot", "a/b", "k=v"])
def test_unsafe_msg_type_rejected(tmp_path: Path, msg_type: str) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    with pytest.raises(ValueError, match="msg_type"):
        sink.write(msg_type, make_batch(1, seq0=1))
    assert list(tmp_path.iterdir()) == []


def test_bad_batches_rejected(tmp_path: Path) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    good = make_batch(3, seq0=1)
    no_seq = good.drop_columns(["_seq"])
    ns_time = good.set_column(0, "_recv_time_ns", good.column(0).cast(pa.timestamp("ns", "UTC")))
    null_seq = good.set_column(1, "_seq", pa.array([1, None, 3], pa.int64()))
    for bad, match in ((no_seq, "_seq"), (ns_time, "_recv_time_ns"), (null_seq, "nulls")):
        with pytest.raises(ValueError, match=match):
            sink.write("T", bad)
    assert sink.write("T", good.slice(0, 0)) == []
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="stripe"):
        PartitionSink(settings(tmp_path), stripe="a/b", session="s")


# --------------------------------------------------------------------------------------------
# OS errors: nothing partial becomes visible, SinkError carries errno and path
# --------------------------------------------------------------------------------------------


def test_enospc_on_fsync_keeps_tree_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    sink.write("T", make_batch(20, seq0=1))

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sink_fs, "fsync_fd", no_space)
    with pytest.raises(SinkCommitError) as info:
        sink.rotate_all()
    err = info.value
    assert isinstance(err, SinkError) and isinstance(err, OSError)
    assert err.errno == errno.ENOSPC
    assert "Errno 28" in str(err) and "fsync" in str(err)
    assert (err.msg_type, err.seq_min, err.seq_max, err.committed) == ("T", 1, 20, ())
    [left] = inprogress(tmp_path)
    assert err.path == left and err.filename == str(left)
    assert visible(tmp_path) == []
    assert sink.statistics().open_files == 0
    assert sink.statistics().files_aborted == 1

    # once space is back: the sink keeps working, and start-up cleanup quarantines the file
    monkeypatch.undo()
    sink.write("T", make_batch(5, seq0=21))
    [cf] = sink.close()
    assert visible(tmp_path) == [cf.path]
    assert [p.name for p in cleanup_in_progress(tmp_path)] == [left.name[1:]]


def test_real_enospc_when_opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    # every write to /dev/full fails with the kernel's own ENOSPC (the writer writes the
    # Parquet magic as soon as it is opened)
    monkeypatch.setattr(sink_fs, "open_output", lambda path: pa.OSFile("/dev/full", "wb"))
    sink = new_sink(tmp_path, Clock(T0))
    with pytest.raises(SinkOpenError) as info:
        sink.write("T", make_batch(5, seq0=1))
    assert info.value.errno == errno.ENOSPC
    assert visible(tmp_path) == []
    assert inprogress(tmp_path) == []  # it held no rows: removed
    assert sink.statistics().open_files == 0


def test_real_enospc_while_writing_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    streams: list[Any] = []
    real_open = sink_fs.open_output

    def recording_open(path: Path) -> Any:
        stream = real_open(path)
        streams.append(stream)
        return stream

    monkeypatch.setattr(sink_fs, "open_output", recording_open)
    sink = new_sink(tmp_path, Clock(T0), row_group_rows=100)
    sink.write("T", make_batch(50, seq0=1))
    # the disk "fills up": from now on the open file's descriptor writes to /dev/full, so the
    # next row group gets a real ENOSPC from the kernel
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, streams[0].fileno())
    finally:
        os.close(full)
    with pytest.raises(SinkWriteError) as info:
        sink.write("T", make_batch(60, seq0=51))  # crosses row_group_rows -> first disk write
    err = info.value
    assert err.errno == errno.ENOSPC
    assert (err.msg_type, err.seq_min, err.seq_max) == ("T", 1, 110)
    assert visible(tmp_path) == []
    assert len(inprogress(tmp_path)) == 1  # kept for recovery
    stats = sink.statistics()
    assert (stats.open_files, stats.buffered_bytes, stats.files_aborted) == (0, 0, 1)
    # the sink stays usable for the next file
    sink.write("T", make_batch(5, seq0=111))
    [cf] = sink.close()
    assert pq.read_table(cf.path).column("_seq").to_pylist() == list(range(111, 116))


def test_rename_failure_leaves_only_hidden_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    sink.write("T", make_batch(5, seq0=1))

    def fail(src: Path, dst: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))

    monkeypatch.setattr(sink_fs, "rename", fail)
    with pytest.raises(SinkCommitError) as info:
        sink.close()
    assert info.value.errno == errno.EIO
    assert visible(tmp_path) == []
    assert len(inprogress(tmp_path)) == 1
    assert sink.close() == []  # still idempotent after a failed shutdown


def test_directory_fsync_failure_reports_the_committed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    sink.write("T", make_batch(5, seq0=1))

    def fail(path: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(sink_fs, "fsync_dir", fail)
    with pytest.raises(SinkCommitError) as info:
        sink.rotate_all()
    [cf] = info.value.committed
    assert info.value.msg_type is None  # no rows were lost
    assert visible(tmp_path) == [cf.path]
    assert pq.read_table(cf.path).num_rows == 5


def test_one_failed_commit_does_not_block_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = new_sink(tmp_path, Clock(T0))
    sink.write("A", make_batch(5, seq0=1))
    sink.write("B", make_batch(5, seq0=1))
    real = sink_fs.fsync_fd
    calls = 0

    def first_fails(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(sink_fs, "fsync_fd", first_fails)
    with pytest.raises(SinkCommitError) as info:
        sink.close()
    assert info.value.msg_type == "A"
    assert [cf.msg_type for cf in info.value.committed] == ["B"]
    assert visible(tmp_path) == [info.value.committed[0].path]


def test_rows_are_filed_by_the_interval_of_their_receive_time(tmp_path: Path) -> None:
    boundary = ns("2024-06-03T14:05:00+00:00")
    clock = Clock(boundary - 10 * NS)
    sink = new_sink(tmp_path, clock)
    # A batch that spans the boundary is split; the earlier interval's file is committed at
    # once, since rows of the later interval have arrived for that type.
    first = sink.write("T", make_batch(10, seq0=1, recv0=boundary - 5 * NS, step_ns=NS))
    assert [(cf.rows, cf.seq_min, cf.seq_max) for cf in first] == [(5, 1, 5)]
    # Another type's rows received before the boundary but written after it go to a file of
    # the earlier interval, committed once the grace period is over.
    clock.now = boundary + NS
    late = sink.write("U", make_batch(3, seq0=11, recv0=boundary - 3 * NS, step_ns=NS))
    assert late == []
    clock.now = boundary + 2 * NS  # grace (2 s) over: the straggler file is committed
    u_files = sink.rotate_due()
    assert [(cf.msg_type, cf.rows) for cf in u_files] == [("U", 3)]
    for path in visible(tmp_path):  # both committed files hold only rows before the boundary
        recv = pq.read_table(path).column("_recv_time_ns").to_pylist()
        assert max(recv) < boundary
    closed = sink.close()
    assert [(cf.msg_type, cf.rows, cf.seq_min) for cf in closed] == [("T", 5, 6)]
