"""Retention (capture.retention): whole date partitions past a table's bound disappear at once,
never younger than the bound, never the current day; local dates, DST days."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from compact_util import TYPE, duck_rows, ns_of, write_live

from capture import events
from capture.config import Config
from capture.housekeeping import run_once
from capture.retention import apply, expired

NY = "America/New_York"


@pytest.mark.parametrize(
    ("day", "days", "now", "tz", "gone"),
    [
        # UTC: with 2 days, the 7th goes at the start of the 10th, the 8th stays
        ("2026-01-07", 2, "2026-01-09T23:59:59.999999+00:00", "UTC", False),
        ("2026-01-07", 2, "2026-01-10T00:00:00+00:00", "UTC", True),
        ("2026-01-08", 2, "2026-01-10T23:59:59+00:00", "UTC", False),
        ("2026-01-10", 2, "2026-01-10T12:00:00+00:00", "UTC", False),  # the current day
        ("2020-01-01", 0, "2026-01-10T12:00:00+00:00", "UTC", False),  # 0: keep forever
        # local dates: Tokyo's 8th is over at 15:00 UTC on the 8th
        ("2026-01-08", 1, "2026-01-09T14:59:59+00:00", "Asia/Tokyo", False),
        ("2026-01-08", 1, "2026-01-09T15:00:00+00:00", "Asia/Tokyo", True),
        # spring forward on 2026-03-08 (23 h): the 7th is 24 h old only at 01:00 on the 9th
        ("2026-03-07", 1, "2026-03-09T00:59:59-04:00", NY, False),
        ("2026-03-07", 1, "2026-03-09T01:00:00-04:00", NY, True),
        # the DST day itself (23 h): calendar and clock agree at midnight two days on
        ("2026-03-08", 1, "2026-03-09T23:59:59-04:00", NY, False),
        ("2026-03-08", 1, "2026-03-10T00:00:00-04:00", NY, True),
        # fall back on 2026-11-01 (25 h)
        ("2026-11-01", 1, "2026-11-02T23:59:59-05:00", NY, False),
        ("2026-11-01", 1, "2026-11-03T00:00:00-05:00", NY, True),
    ],
)
def test_expiry_boundaries(day: str, days: int, now: str, tz: str, gone: bool) -> None:
    assert expired(dt.date.fromisoformat(day), days, now_ns=ns_of(now), tz=tz) is gone


def config(root: Path, tz: str = "UTC", **retention: object) -> Config:
    return Config.from_mapping(
        {
            "source": {"url": "ws://127.0.0.1:9/mlink/jsonf", "stripes": ["A"]},
            "output": {"root": str(root), "timezone": tz},
            "retention": retention,
        }
    )


def test_partitions_past_the_bound_are_removed_whole_and_counted(tmp_path: Path) -> None:
    seq = 0
    for d in range(4, 10):  # 2026-03-04 .. 2026-03-09, New York
        seq = write_live(tmp_path, start_ns=ns_of(f"2026-03-{d:02d}T12:00:00-05:00"), seconds=600,
                         rows=200, seq0=seq, tz=NY)  # fmt: skip
    events_dir = tmp_path / "capture_events" / "date=2026-03-04" / "stripe=3"
    events_dir.mkdir(parents=True)
    ev = events.Event(time_ns=ns_of("2026-03-04T12:00:00-05:00"), session="s", seq=0,
                      event="connected")  # fmt: skip
    batch = events.to_batch([ev], "3")  # a small events file: compaction reads it too
    pq.write_table(pa.Table.from_batches([batch]), events_dir / "part-x.parquet")
    cfg = config(tmp_path, NY, days=30, tables={TYPE: 2}, journal_archive_days=1)
    archive = tmp_path / "_journal" / "stripe=3" / "archive"
    archive.mkdir(parents=True)
    (archive / "seg-old.mlj").write_bytes(b"x")
    (archive / "seg-new.mlj").write_bytes(b"y")
    now = ns_of("2026-03-09T01:00:00-04:00")
    old = now / 1e9 - 86_400 - 1
    os.utime(archive / "seg-old.mlj", (old, old))

    dry_code, dry = run_once(cfg, now_ns=now, dry_run=True)
    assert dry_code == 0 and len(dry["retention"]["planned"]) == 4  # 3 partitions + 1 segment
    assert len({r[-2] for r in duck_rows(tmp_path)}) == 6

    code, summary = run_once(cfg, now_ns=now)
    assert code == 0
    removed = summary["retention"]["partitions_removed"]
    assert removed == [f"{TYPE}/date=2026-03-0{d}" for d in (4, 5, 6)]
    assert summary["retention"]["files_removed"] > 0
    assert summary["retention"]["journal_segments_removed"] == 1
    assert [p.name for p in archive.iterdir()] == ["seg-new.mlj"]
    # 03-07 is one 24 h day old only at 01:00 EDT on the 9th (03-08 had 23 h): kept until then
    assert {r[-2] for r in duck_rows(tmp_path)} == {
        dt.date(2026, 3, 7), dt.date(2026, 3, 8), dt.date(2026, 3, 9)}  # fmt: skip
    assert (tmp_path / "capture_events" / "date=2026-03-04").is_dir()  # 30 days for the rest
    assert not any((tmp_path / "_compaction" / "trash").rglob("*.parquet"))


def test_a_crash_after_the_rename_leaves_only_trash_that_the_next_run_empties(
    tmp_path: Path,
) -> None:
    write_live(tmp_path, start_ns=ns_of("2026-01-01T12:00:00+00:00"), seconds=60, rows=50)
    write_live(tmp_path, start_ns=ns_of("2026-01-09T12:00:00+00:00"), seconds=60, rows=50, seq0=50)
    trash = tmp_path / "_compaction" / "trash" / TYPE / "date=2026-01-01-1"
    trash.parent.mkdir(parents=True)
    os.rename(tmp_path / TYPE / "date=2026-01-01", trash)  # where a crash would leave it
    assert {r[-2] for r in duck_rows(tmp_path)} == {dt.date(2026, 1, 9)}
    out = apply(tmp_path, lambda _t: 3, tz="UTC", now_ns=ns_of("2026-01-10T00:00:00+00:00"))
    assert out.partitions_removed == [] and not trash.exists()
    assert len(duck_rows(tmp_path)) == 50


def test_retention_config_problems_name_the_key(tmp_path: Path) -> None:
    from capture.config import ConfigError

    with pytest.raises(ConfigError) as err:
        config(tmp_path, days=-1, tables={"NoSuchType": 3, TYPE: "x"}, journal_archive_days=1.5)
    text = "\n".join(err.value.problems)
    assert "retention.days: must be between 0 and 36,500, got -1" in text
    assert "retention.tables.NoSuchType: unknown message type" in text
    assert f"retention.tables.{TYPE}: must be a whole number of days" in text
    assert "retention.journal_archive_days: must be an integer" in text


def test_retention_waits_for_a_running_compaction(tmp_path: Path) -> None:
    from capture import compact

    write_live(tmp_path, start_ns=ns_of("2026-01-01T12:00:00+00:00"), seconds=60, rows=50)
    cfg = config(tmp_path, days=1)
    with compact.lock(tmp_path):
        code, summary = run_once(cfg, now_ns=ns_of("2026-01-10T00:00:00+00:00"))
    assert code == 75 and "another compaction" in summary["error"]
    assert len(duck_rows(tmp_path)) == 50
    assert run_once(cfg, now_ns=ns_of("2026-01-10T00:00:00+00:00"))[0] == 0
    assert not (tmp_path / TYPE).exists() or not list((tmp_path / TYPE).iterdir())


def test_a_missing_root_is_nothing_to_do(tmp_path: Path) -> None:
    code, summary = run_once(config(tmp_path / "nowhere", days=1))
    assert code == 0 and summary["retention"]["partitions_removed"] == []
    assert not (tmp_path / "nowhere").exists()
