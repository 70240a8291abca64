"""Readers scanning ``**/*.parquet`` while compaction runs see exactly the rows that were there:
never duplicates, never fewer.  A scan whose listed file was swapped away before it opened it
fails with "file not found" (the reader retries); it never returns other rows."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compact_util import arrow_rows, duck_rows, ns_of, write_live

from capture.compact import CompactionSettings, compact

DAYS = ("2026-01-03", "2026-01-04", "2026-01-05")
NOW = ns_of("2026-01-06T12:00:00+00:00")


def _vanished(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("no such file", "no files found", "not found", "failed to open"))


class Reader(threading.Thread):
    def __init__(self, scan: Callable[[], list[tuple[Any, ...]]], expected: Counter[Any]) -> None:
        super().__init__(daemon=True)
        self.scan = scan
        self.expected = expected
        self.stop = threading.Event()
        self.good = 0
        self.vanished = 0
        self.wrong: list[str] = []
        self.scans = threading.Semaphore(0)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                rows = self.scan()
            except Exception as exc:  # noqa: BLE001 - classified below
                if _vanished(exc):
                    self.vanished += 1
                else:
                    self.wrong.append(f"{type(exc).__name__}: {exc}")
                continue
            got = Counter(rows)
            if got != self.expected:
                self.wrong.append(
                    f"{sum(got.values())} rows, {len(got - self.expected)} unexpected, "
                    f"{len(self.expected - got)} missing"
                )
            else:
                self.good += 1
            self.scans.release()


def test_duckdb_and_pyarrow_scans_during_compaction_see_exactly_the_same_rows(
    tmp_path: Path,
) -> None:
    seq = 0
    for i, day in enumerate(DAYS):
        for stripe in ("1", "2"):
            seq = write_live(tmp_path, start_ns=ns_of(f"{day}T09:00:00+00:00"), seconds=3600,
                             rows=500, seq0=seq, stripe=stripe, seed=i)  # fmt: skip
    readers = [
        Reader(lambda: duck_rows(tmp_path), Counter(duck_rows(tmp_path))),
        Reader(lambda: arrow_rows(tmp_path), Counter(arrow_rows(tmp_path))),
    ]
    for r in readers:
        r.start()
    try:
        # hour units first, then the days they become part of: every partition is swapped
        # twice, and each swap happens while both readers are mid-loop
        for granularity in ("hour", "day"):
            for day in DAYS:
                for r in readers:  # each reader completes a scan between two swaps
                    assert r.scans.acquire(timeout=60)
                out = compact(
                    CompactionSettings(root=tmp_path, granularity=granularity, min_age_s=0),
                    now_ns=NOW,
                    dates=[dt.date.fromisoformat(day)],
                )
                assert out.units_compacted >= 1 and not out.failed
        for r in readers:
            assert r.scans.acquire(timeout=60)
    finally:
        for r in readers:
            r.stop.set()
        for r in readers:
            r.join(timeout=60)
    for r in readers:
        assert r.wrong == []
        assert r.good >= 7
    files = sorted(p.name for p in tmp_path.glob("OptionNbboQuote/**/*.parquet"))
    assert len(files) == 6 and all(n.startswith("compacted-") for n in files)
    print(f"scans: {[(r.good, r.vanished) for r in readers]} (good, file vanished)")
