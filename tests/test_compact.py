"""Compaction (capture.compact): closed partitions become few sorted files with large row groups,
what users read is unchanged, recovery and verify still account for every frame."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from compact_util import (
    NS,
    TYPE,
    arrow_rows,
    duck_rows,
    ns_of,
    parquet_files,
    quote_batch,
    quote_rows,
    write_lake_layout_file,
    write_live,
)

from capture import compact as compact_mod
from capture import dirswap
from capture.compact import CompactionSettings, compact, partition, planning, rewriting
from capture.recovery import scan_committed
from capture.sink import PartitionSink, SinkSettings
from capture.verify import verify

DAY1 = ns_of("2026-01-05T10:00:00+00:00")
DAY2 = ns_of("2026-01-06T10:00:00+00:00")
NOW = ns_of("2026-01-06T12:00:00+00:00")


def two_days(root: Path, **kw: object) -> int:
    nxt = write_live(root, start_ns=DAY1, seconds=7200, rows=12_000, **kw)  # type: ignore[arg-type]
    return write_live(root, start_ns=DAY2, seconds=1200, rows=2_000, seq0=nxt, **kw)  # type: ignore[arg-type]


def day_dir(root: Path, day: str, stripe: str = "3", table: str = TYPE) -> Path:
    return root / table / f"date={day}" / f"stripe={stripe}"


def test_closed_day_becomes_one_sorted_file_and_users_read_the_same_rows(tmp_path: Path) -> None:
    two_days(tmp_path)
    before_duck, before_arrow = duck_rows(tmp_path), arrow_rows(tmp_path)
    today_files = sorted(day_dir(tmp_path, "2026-01-06").iterdir())
    index_before = scan_committed(tmp_path, "3", since_ns=None)
    assert len(list(day_dir(tmp_path, "2026-01-05").iterdir())) == 24

    out = compact(CompactionSettings(root=tmp_path, row_group_rows=5_000, sort="instrument"),
                  now_ns=NOW)  # fmt: skip

    assert out.units_compacted == 1 and out.rows_in == out.rows_out == 12_000
    assert duck_rows(tmp_path) == before_duck
    assert arrow_rows(tmp_path) == before_arrow
    files = sorted(day_dir(tmp_path, "2026-01-05").iterdir())
    assert len(files) == 1 and files[0].name.startswith("compacted-20260105-")
    assert sorted(day_dir(tmp_path, "2026-01-06").iterdir()) == today_files  # current day
    meta = pq.read_metadata(files[0])
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5_000, 5_000, 2_000]
    # sorted by instrument key, then receive time: what a key filter's row-group skip needs
    t = pq.read_table(files[0])
    keys = list(zip(*(t.column(c).to_pylist() for c in compact_mod.key_columns(TYPE)),
                    t.column("_recv_time").cast(pa.int64()).to_pylist(), strict=True))  # fmt: skip
    assert keys == sorted(keys)
    col = meta.row_group(0).column(t.schema.get_field_index("okey_tk"))
    assert col.compression == "ZSTD" and "RLE_DICTIONARY" in col.encodings
    assert t.schema.names == pq.read_schema(today_files[0]).names  # one host: the live schema
    assert meta.metadata[b"mlink.host"] == b"local"
    # the journal accounting still finds every frame stored, verify finds nothing wrong
    assert scan_committed(tmp_path, "3", since_ns=None).ranges == index_before.ranges
    report = verify(tmp_path)
    assert report.ok, report.render()
    assert report.rows[(TYPE, "2026-01-05", "3")] == 12_000


def test_rerun_is_idempotent_and_dry_run_changes_nothing(tmp_path: Path) -> None:
    two_days(tmp_path)
    listing = {p: p.stat().st_mtime_ns for p in parquet_files(tmp_path)}
    dry = compact(CompactionSettings(root=tmp_path), now_ns=NOW, dry_run=True)
    assert dry.planned and dry.planned[0].startswith(f"{TYPE}/date=2026-01-05/stripe=3 day:")
    assert {p: p.stat().st_mtime_ns for p in parquet_files(tmp_path)} == listing
    compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    after = {p: p.stat().st_mtime_ns for p in parquet_files(tmp_path)}
    again = compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert again.units_compacted == 0
    assert {p: p.stat().st_mtime_ns for p in parquet_files(tmp_path)} == after
    assert not (tmp_path / "_compaction" / "work").exists() or not any(
        (tmp_path / "_compaction" / "work").rglob("*.parquet")
    )


def test_day_not_closed_until_min_age_after_its_end(tmp_path: Path) -> None:
    two_days(tmp_path)
    end_of_day1 = ns_of("2026-01-06T00:00:00+00:00")
    s = CompactionSettings(root=tmp_path, min_age_s=600)
    assert compact(s, now_ns=end_of_day1 + 599 * 10**9).units_compacted == 0
    assert compact(s, now_ns=end_of_day1 + 600 * 10**9).units_compacted == 1


def test_local_day_in_new_york(tmp_path: Path) -> None:
    # 2026-01-05 in New York ends at 05:00 UTC on the 6th
    write_live(tmp_path, start_ns=ns_of("2026-01-05T23:00:00-05:00"), seconds=7200, rows=1_000,
               tz="America/New_York")  # fmt: skip
    before = duck_rows(tmp_path)
    assert {r[-2] for r in before} == {dt.date(2026, 1, 5), dt.date(2026, 1, 6)}
    s = CompactionSettings(root=tmp_path, tz="America/New_York", min_age_s=0)
    assert compact(s, now_ns=ns_of("2026-01-06T04:59:59+00:00")).units_compacted == 0
    assert compact(s, now_ns=ns_of("2026-01-06T05:00:00+00:00")).units_compacted == 1
    assert duck_rows(tmp_path) == before


def test_hour_granularity_leaves_the_open_hour_alone(tmp_path: Path) -> None:
    write_live(tmp_path, start_ns=DAY2 - 2 * 3600 * 10**9, seconds=3 * 3600 - 60, rows=3_000)
    before = duck_rows(tmp_path)
    now = DAY2 + 10 * 60 * 10**9  # 10:10: 08:00 and 09:00 closed, 10:00 open
    out = compact(CompactionSettings(root=tmp_path, granularity="hour", min_age_s=300), now_ns=now)
    assert out.units_compacted == 2
    names = sorted(p.name for p in day_dir(tmp_path, "2026-01-06").iterdir())
    compacted = [n for n in names if n.startswith("compacted-")]
    assert [n.split("-")[1] for n in compacted] == ["20260106T08", "20260106T09"]
    assert all(n.startswith("part-20260106T10") for n in names if n not in compacted)
    assert duck_rows(tmp_path) == before
    assert verify(tmp_path).ok


def test_late_file_after_compaction_is_merged_by_the_next_run(tmp_path: Path) -> None:
    nxt = two_days(tmp_path)
    compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    # a restart's journal replay commits yesterday's last frames into yesterday's partition
    write_live(tmp_path, start_ns=DAY1 + 7300 * 10**9, seconds=10, rows=50, seq0=nxt,
               session="sess2")  # fmt: skip
    before = duck_rows(tmp_path)
    assert compact(CompactionSettings(root=tmp_path), now_ns=NOW).units_compacted == 1
    assert duck_rows(tmp_path) == before
    assert len(list(day_dir(tmp_path, "2026-01-05").iterdir())) == 1
    index = scan_committed(tmp_path, "3", since_ns=None)
    assert index.contains(TYPE, nxt + 49) and index.contains(TYPE, 0)
    assert verify(tmp_path).ok


def test_target_file_size_splits_and_only_the_first_file_carries_the_ranges(
    tmp_path: Path,
) -> None:
    two_days(tmp_path)
    before = duck_rows(tmp_path)
    s = CompactionSettings(root=tmp_path, row_group_rows=1_024, target_file_bytes=100_000)
    compact(s, now_ns=NOW)
    files = sorted(day_dir(tmp_path, "2026-01-05").iterdir())
    assert len(files) > 2
    metas = [pq.read_metadata(f).metadata for f in files]
    assert [b"mlink.seq_ranges" in m for m in metas] == [True] + [False] * (len(files) - 1)
    assert duck_rows(tmp_path) == before
    index = scan_committed(tmp_path, "3", since_ns=None)
    assert index.ranges[TYPE][0][0] == 0 and index.contains(TYPE, 11_999)
    assert verify(tmp_path).ok


def test_old_ns_files_and_new_recv_time_ns_files_compact_together(tmp_path: Path) -> None:
    nxt = write_live(tmp_path, start_ns=DAY1, seconds=600, rows=600)
    write_lake_layout_file(tmp_path, start_ns=DAY1 + 600 * 10**9, seconds=600, rows=600,
                           seq0=nxt)  # fmt: skip
    con = duckdb.connect()
    exact = sorted(con.execute(
        f"SELECT _seq, coalesce(_recv_time_ns, epoch_ns(_recv_time)) FROM read_parquet("
        f"'{tmp_path}/{TYPE}/**/*.parquet', union_by_name = true)").fetchall())  # fmt: skip
    compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    t = pq.read_table(next(day_dir(tmp_path, "2026-01-05").iterdir()))
    assert t.schema.field("_recv_time").type == pa.timestamp("us", tz="UTC")
    assert sorted(zip(t.column("_seq").to_pylist(), t.column("_recv_time_ns").to_pylist(),
                      strict=True)) == exact  # fmt: skip


def test_partition_that_changes_while_compacted_is_left_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nxt = two_days(tmp_path)
    real = rewriting._fsync_file
    added: list[bool] = []

    def fsync_then_commit(path: Path) -> None:  # a daemon's late commit lands meanwhile
        real(path)
        if not added:
            added.append(True)
            write_live(tmp_path, start_ns=DAY1 + 7300 * 10**9, seconds=10, rows=20, seq0=nxt,
                       session="late")  # fmt: skip

    monkeypatch.setattr(rewriting, "_fsync_file", fsync_then_commit)
    before_run = compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert before_run.skipped and "changed while being compacted" in before_run.skipped[0]
    rows = duck_rows(tmp_path)
    assert len(rows) == 14_020
    monkeypatch.setattr(rewriting, "_fsync_file", real)
    assert compact(CompactionSettings(root=tmp_path), now_ns=NOW).units_compacted == 1
    assert duck_rows(tmp_path) == rows


def test_file_committed_into_the_old_directory_after_the_swap_is_moved_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nxt = two_days(tmp_path)
    real = dirswap.exchange
    late: list[str] = []

    def exchange_then_late_commit(a: Path, b: Path) -> None:
        real(a, b)
        # a sink that had resolved the old directory commits its file there
        write_live(tmp_path / "elsewhere", start_ns=DAY1 + 7300 * 10**9, seconds=10, rows=20,
                   seq0=nxt, session="late")  # fmt: skip
        src = next((tmp_path / "elsewhere").rglob("*.parquet"))
        os.rename(src, b / src.name)
        late.append(src.name)

    monkeypatch.setattr(dirswap, "exchange", exchange_then_late_commit)
    before = duck_rows(tmp_path)
    compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    names = {p.name for p in day_dir(tmp_path, "2026-01-05").iterdir()}
    assert late[0] in names
    assert len(duck_rows(tmp_path)) == len(before) + 20


def test_no_exchange_support_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_days(tmp_path)
    before = sorted(parquet_files(tmp_path))
    monkeypatch.setattr(dirswap, "supported", lambda _d: False)
    with pytest.raises(dirswap.ExchangeUnsupported):
        compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert sorted(parquet_files(tmp_path)) == before


def test_rename_exchange_works_on_this_file_system(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "1").touch()
    assert dirswap.supported(tmp_path)
    dirswap.exchange(a, b)
    assert os.listdir(b) == ["1"] and os.listdir(a) == []
    with pytest.raises(OSError):
        dirswap.exchange(a, tmp_path / "missing")


def test_a_second_run_is_refused_while_one_holds_the_lock(tmp_path: Path) -> None:
    two_days(tmp_path)
    with compact_mod.lock(tmp_path), pytest.raises(BlockingIOError):
        compact(CompactionSettings(root=tmp_path), now_ns=NOW)


def test_unreadable_file_fails_its_partition_only(tmp_path: Path) -> None:
    two_days(tmp_path)
    write_live(tmp_path, start_ns=DAY1, seconds=60, rows=100, stripe="4")
    bad = next(day_dir(tmp_path, "2026-01-05", "4").iterdir())
    bad.write_bytes(b"PAR1 not really")
    out = compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert out.units_compacted == 1
    assert len(out.failed) == 1 and "stripe=4" in out.failed[0]
    assert bad.read_bytes() == b"PAR1 not really"


def test_the_default_underlier_sort_and_measured_encodings_keep_every_row(
    tmp_path: Path,
) -> None:
    two_days(tmp_path)
    before = duck_rows(tmp_path)
    compact(CompactionSettings(root=tmp_path), now_ns=NOW)  # default: sort = "underlier"
    assert duck_rows(tmp_path) == before
    path = next(day_dir(tmp_path, "2026-01-05").iterdir())
    t = pq.read_table(path)
    keys = list(zip(t.column("okey_tk").to_pylist(),
                    t.column("_recv_time").cast(pa.int64()).to_pylist(), strict=True))  # fmt: skip
    assert keys == sorted(keys)
    meta = pq.read_metadata(path)
    rg = meta.row_group(0)
    encodings = {rg.column(i).path_in_schema: rg.column(i).encodings for i in range(rg.num_columns)}
    # measured: the receive time is not dictionary encoded (unique values), the ticker is
    assert "RLE_DICTIONARY" not in encodings["_recv_time"]
    assert "RLE_DICTIONARY" in encodings["okey_tk"]
    assert compact_mod.key_columns(TYPE, "underlier") == ["okey_at", "okey_ts", "okey_tk"]


def test_odd_names_and_foreign_files_survive_and_odd_directories_are_ignored(
    tmp_path: Path,
) -> None:
    two_days(tmp_path)
    part = day_dir(tmp_path, "2026-01-05")
    (part / "_SUCCESS").write_text("")
    (part / "notes.txt").write_text("operator was here")
    (part / ".keep").write_bytes(b"")
    (tmp_path / TYPE / "date=yesterday" / "stripe=3").mkdir(parents=True)
    (tmp_path / TYPE / "date=2026-01-04").mkdir()  # an empty date
    (tmp_path / "_quarantine" / "x").mkdir(parents=True)
    before = duck_rows(tmp_path)
    out = compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert out.units_compacted == 1 and not out.failed
    names = sorted(p.name for p in part.iterdir())
    assert names[:2] == [".keep", "_SUCCESS"] and names[2].startswith("compacted-20260105-")
    assert len(names) == 4
    assert (part / "notes.txt").read_text() == "operator was here"
    assert duck_rows(tmp_path) == before
    # a directory inside a partition: not ours to swap away
    (day_dir(tmp_path, "2026-01-06") / "sub").mkdir()
    later = compact(CompactionSettings(root=tmp_path, min_age_s=0),
                    now_ns=ns_of("2026-01-08T00:00:00+00:00"))  # fmt: skip
    assert later.units_compacted == 0 and "other than files" in later.skipped[0]


def test_inputs_that_cannot_be_merged_fail_their_partition_and_change_nothing(
    tmp_path: Path,
) -> None:
    nxt = two_days(tmp_path)
    part = day_dir(tmp_path, "2026-01-05")
    odd = pa.table({"_recv_time": pa.array([DAY1], pa.timestamp("ns", tz="UTC")),
                    "_seq": pa.array([nxt], pa.int64()),
                    "okey_tk": pa.array([7], pa.int64())})  # a ticker that is a number  # fmt: skip
    meta = {"mlink.msg_type": TYPE, "mlink.stripe": "3", "mlink.seq_min": str(nxt),
            "mlink.seq_max": str(nxt), "mlink.rows": "1"}  # fmt: skip
    pq.write_table(odd.replace_schema_metadata(meta), part / "part-odd.parquet")
    listing = sorted(p.name for p in part.iterdir())
    out = compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert out.units_compacted == 0 and len(out.failed) == 1 and "stripe=3" in out.failed[0]
    assert sorted(p.name for p in part.iterdir()) == listing
    assert not [p for p in (tmp_path / "_compaction" / "work").rglob("*") if p.is_file()]


def test_a_damaged_sequence_range_footer_is_reported_by_recovery_and_verify(
    tmp_path: Path,
) -> None:
    two_days(tmp_path)
    compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    path = next(day_dir(tmp_path, "2026-01-05").iterdir())
    t = pq.read_table(path)
    kv = dict(pq.read_metadata(path).metadata)
    kv[b"mlink.seq_ranges"] = b"12-3,x"
    pq.write_table(t.replace_schema_metadata(kv), path)
    index = scan_committed(tmp_path, "3", since_ns=None)
    assert index.unreadable == [path] and not index.contains(TYPE, 5)
    report = verify(tmp_path)
    assert not report.ok and "mlink.seq_ranges: bad sequence range '12-3'" in report.render()


def test_leftover_work_of_a_partition_removed_since_brings_nothing_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_days(tmp_path)

    def broken(a: Path, b: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dirswap, "exchange", broken)
    monkeypatch.setattr(dirswap, "supported", lambda _d: True)
    hourly = CompactionSettings(root=tmp_path, granularity="hour", min_age_s=0)
    out = compact(hourly, now_ns=DAY1 + 5400 * 10**9)  # 11:30: 10:00 closed, 11:00 open
    assert len(out.failed) == 1 and "Input/output error" in out.failed[0]
    assert any((tmp_path / "_compaction" / "work").rglob("part-*.parquet"))  # links left
    monkeypatch.undo()
    import shutil

    shutil.rmtree(tmp_path / TYPE / "date=2026-01-05")  # retention, meanwhile
    again = compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert again.recovered == [f"{TYPE}/date=2026-01-05/stripe=3"]
    assert not (tmp_path / TYPE / "date=2026-01-05").exists()
    assert {r[-2] for r in duck_rows(tmp_path)} == {dt.date(2026, 1, 6)}


def test_a_day_too_big_for_memory_is_compacted_hour_by_hour(tmp_path: Path) -> None:
    two_days(tmp_path)
    before = duck_rows(tmp_path)
    sizes = sum(  # the day's Arrow bytes as compaction estimates them from the footers
        planning._arrow_bytes(pq.read_metadata(p))
        for p in day_dir(tmp_path, "2026-01-05").iterdir()
    )
    s = CompactionSettings(root=tmp_path, max_unit_bytes=sizes * 2 // 3)
    out = compact(s, now_ns=NOW)
    names = sorted(p.name for p in day_dir(tmp_path, "2026-01-05").iterdir())
    assert [n.split("-")[1] for n in names] == ["20260105T10", "20260105T11"]
    assert out.units_compacted == 2 and duck_rows(tmp_path) == before
    assert compact(s, now_ns=NOW).units_compacted == 0  # and it stays that way
    tiny = compact(CompactionSettings(root=tmp_path, max_unit_bytes=1000, min_age_s=0),
                   now_ns=ns_of("2026-01-08T00:00:00+00:00"))  # fmt: skip
    assert tiny.units_compacted == 0 and "max_unit_bytes" in tiny.skipped[0]
    assert verify(tmp_path).ok


def test_after_a_crash_a_damaged_replaced_list_leaves_the_old_files_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_days(tmp_path)
    write_live(tmp_path, start_ns=DAY1, seconds=60, rows=100, stripe="4")
    before = duck_rows(tmp_path)
    real = partition._finish_work_dir
    monkeypatch.setattr(partition, "_finish_work_dir", lambda v, w: [])  # crash after swap
    compact(CompactionSettings(root=tmp_path), now_ns=NOW, dates=[dt.date(2026, 1, 5)])
    monkeypatch.setattr(partition, "_finish_work_dir", real)
    new = next(day_dir(tmp_path, "2026-01-05").iterdir())
    kv = dict(pq.read_metadata(new).metadata)
    kv[b"mlink.inputs"] = b"[not json"
    pq.write_table(pq.read_table(new).replace_schema_metadata(kv), new)
    work = tmp_path / "_compaction" / "work" / TYPE / "date=2026-01-05" / "stripe=3"
    assert len(list(work.glob("part-*.parquet"))) == 24  # the old set
    out = compact(CompactionSettings(root=tmp_path), now_ns=NOW)
    assert any("stripe=3" in f and "left in place" in f for f in out.failed)
    assert len(list(work.glob("part-*.parquet"))) == 24  # neither moved back nor deleted
    assert duck_rows(tmp_path) == before  # no row twice, none missing


def open_sink(root: Path, clock: list[int]) -> PartitionSink:
    return PartitionSink(SinkSettings(root=root, rotate_interval_s=300), stripe="3",
                         session="live", now_ns=lambda: clock[0])  # fmt: skip


def feed(
    sink: PartitionSink, clock: list[int], start: int, n: int, seq0: int, every_s: int = 1
) -> int:
    """``n`` one-row batches, one every ``every_s`` seconds from ``start``, as a daemon writes
    them (rotating on its interval)."""
    for i in range(n):
        recv = start + i * every_s * 10**9
        recs = quote_rows(1, seq0=seq0 + i, recv0=recv, step_ns=1, seed=i)
        clock[0] = recs[0]["_recv_time"]
        sink.write(TYPE, quote_batch(recs))
        sink.rotate_due()
    return seq0 + n


def test_todays_closed_hours_are_compacted_beside_the_file_a_daemon_has_open(
    tmp_path: Path,
) -> None:
    clock = [DAY2 - 2 * 3600 * 10**9]
    sink = open_sink(tmp_path, clock)
    seq = feed(sink, clock, clock[0], 700, 0, every_s=10)  # 08:00-09:56
    seq = feed(sink, clock, DAY2 + 60 * 10**9, 50, seq)  # 10:01-10:01:50, file open
    assert any(p.name.endswith(".inprogress") for p in day_dir(tmp_path, "2026-01-06").iterdir())
    out = compact(CompactionSettings(root=tmp_path, granularity="hour", min_age_s=60),
                  now_ns=DAY2 + 600 * 10**9)  # fmt: skip
    assert out.units_compacted == 2 and not out.failed and not out.skipped
    seq = feed(sink, clock, DAY2 + 120 * 10**9, 50, seq)  # the daemon goes on writing
    sink.close()  # and commits into the swapped directory
    names = sorted(p.name for p in day_dir(tmp_path, "2026-01-06").iterdir())
    assert [n.split("-")[1] for n in names if n.startswith("compacted-")] == [
        "20260106T08", "20260106T09"]  # fmt: skip
    assert not [n for n in names if n.endswith(".inprogress")]
    assert sorted(r[0] for r in duck_rows(tmp_path)) == list(range(seq))
    assert verify(tmp_path).ok


def test_a_commit_between_the_last_listing_and_the_swap_is_kept_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [DAY2 - 2 * 3600 * 10**9]
    sink = open_sink(tmp_path, clock)
    seq = feed(sink, clock, clock[0], 300, 0, every_s=10)  # 08:00-08:50
    seq = feed(sink, clock, DAY2 + 60 * 10**9, 50, seq)  # open at the swap
    real = dirswap.exchange

    def commit_then_exchange(a: Path, b: Path) -> None:
        sink.rotate_all()  # renamed in the old directory, after its link was made in the new
        real(a, b)

    monkeypatch.setattr(dirswap, "exchange", commit_then_exchange)
    out = compact(CompactionSettings(root=tmp_path, granularity="hour", min_age_s=60),
                  now_ns=DAY2 + 600 * 10**9)  # fmt: skip
    assert not out.failed
    names = sorted(p.name for p in day_dir(tmp_path, "2026-01-06").iterdir())
    assert not [n for n in names if n.endswith(".inprogress")]  # the stale link is gone
    assert sorted(r[0] for r in duck_rows(tmp_path)) == list(range(seq))
    sink.close()


def test_the_events_table_is_compacted_and_its_coverage_reports_kept(tmp_path: Path) -> None:
    """capture_events gets small files every day too: they are compacted like a data table;
    an A/B coverage report beside them stays as it is; recovery's key set is unchanged."""
    from capture import events
    from capture.recovery import committed_events

    root = tmp_path / "data"
    start = ns_of("2026-01-05T13:00:00+00:00")
    clock = [start]
    sink = PartitionSink(SinkSettings(root=root, rotate_interval_s=300), stripe="3",
                         session="sess1", now_ns=lambda: clock[0])  # fmt: skip
    for i in range(40):  # one event a minute: eight 5-minute files
        clock[0] = start + i * 60 * NS
        kind = "gap" if i % 10 == 3 else "connected"
        ev = events.Event(time_ns=clock[0], session="sess1", seq=i, event=kind, detail=f"n{i}",
                          gap_start_ns=clock[0] - NS if kind == "gap" else None,
                          gap_end_ns=clock[0] if kind == "gap" else None)  # fmt: skip
        sink.write(events.TABLE, events.to_batch([ev], "3"))
        sink.rotate_due()
    sink.close()
    directory = root / events.TABLE / "date=2026-01-05" / "stripe=3"
    report = directory / "coverage-OptionNbboQuote-20260105.parquet"
    pq.write_table(pa.table({"event": ["coverage"], "count": [5]}), report)
    report_bytes = report.read_bytes()
    parts_before = sorted(p.name for p in directory.glob("part-*.parquet"))
    assert len(parts_before) >= 8
    con = duckdb.connect()
    query = (f"SELECT _seq, event, detail, _recv_time_ns, gap_start_ns FROM read_parquet("
             f"'{root}/{events.TABLE}/**/part-*.parquet') ORDER BY _seq")  # fmt: skip
    before = con.execute(query).fetchall()
    keys_before = committed_events(root, "3", since_ns=None)

    out = compact(CompactionSettings(root=root), now_ns=ns_of("2026-01-07T00:00:00+00:00"))
    assert out.failed == [] and out.units_compacted == 1, out
    names = sorted(p.name for p in directory.glob("*.parquet"))
    assert [n for n in names if n.startswith("part-")] == []
    assert len([n for n in names if n.startswith("compacted-")]) == 1
    assert report.read_bytes() == report_bytes  # the coverage report is not an input
    after = con.execute(query.replace("part-*", "compacted-*")).fetchall()
    assert after == before and len(after) == 40
    assert committed_events(root, "3", since_ns=None) == keys_before
    again = compact(CompactionSettings(root=root), now_ns=ns_of("2026-01-07T00:00:00+00:00"))
    assert again.units_compacted == 0
