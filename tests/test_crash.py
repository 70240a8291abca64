"""Lose nothing, store nothing twice: SIGKILL the daemon at random moments and at each step
of a commit, restart it, and check what is on disk (see tests/crash_harness.py).

Real processes and real time (a kill is a real kill); counts and durations are bounded.
``bench/chaos.py`` runs the same loop for longer.
"""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import pytest
from crash_harness import POINTS, Harness

pytestmark = pytest.mark.e2e
FRAMES = 200  # what a run waits for its log to say durable (the simulator sends ~300/s)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    h.start_simulator()
    yield h  # type: ignore[misc]
    h.stop()


@pytest.mark.slow  # 14 daemon runs: the longest test of the suite without the Spark ones
def test_kill_loop_loses_nothing_durable_and_stores_nothing_twice(harness: Harness) -> None:
    rng = random.Random(20261124)
    steps = iter(POINTS[:4])  # each step of a commit once, between random kills
    for cycle in range(13):
        if cycle % 3 == 2:  # some kills land inside a commit, at a named step
            harness.crash_at(next(steps), hup_at=rng.uniform(0.2, 0.8))
        else:
            run = rng.uniform(0.4, 1.6)
            harness.kill_after(run, hup_at=rng.uniform(0.2, run))
    harness.graceful(durable=FRAMES)
    counts = harness.check()
    # Every run commits (SIGHUP, the stop): more files than kills, whatever the machine's speed.
    assert counts["required"] > 1000 and counts["files"] > 13, counts


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_commit_step_recovers_to_the_same_correct_state(
    harness: Harness, point: str
) -> None:
    harness.graceful(durable=FRAMES)  # some committed data first
    harness.crash_at(point, hup_at=0.2)  # SIGHUP (commit) from then on until it dies
    harness.graceful(durable=FRAMES)  # recovery, new frames, then a clean stop
    counts = harness.check()
    assert counts["required"] > 100, counts


def test_recovery_twice_changes_nothing(harness: Harness) -> None:
    harness.graceful(durable=FRAMES)
    harness.crash_at("sink.commit.footer", hup_at=0.2)  # an unfinished file, a journal to replay
    harness.graceful(offline=True)  # recovery only
    first = harness.parquet_rows()
    harness.graceful(offline=True)  # recovery again
    assert harness.parquet_rows() == first
    assert sum(len(v) for v in first.values()) > 100
    harness.check()


def test_the_gap_ledger_survives_sigkill_exactly_once(harness: Harness) -> None:
    """Issue 15, item 5: connect, logon, disconnect, gap and recovery rows of runs that were
    killed with SIGKILL are all in capture_events, once each (they go through the journal)."""
    runs = [0.4, 0.1, 0.7, 0.3]  # s after a run said its first frame durable (its events too)
    for seconds in runs:
        harness.kill_after(seconds, durable=1)
    harness.graceful(durable=FRAMES)
    rows = duckdb.sql(
        "SELECT epoch_ns(_recv_time), event, _session, result, epoch_ns(gap_start), "
        f"epoch_ns(gap_end) FROM read_parquet('{harness.root}/capture_events/**/*.parquet')"
    ).fetchall()
    keys = [(t, ev, s) for t, ev, s, *_ in rows]
    assert len(keys) == len(set(keys)), "an event is stored twice"
    sessions = {s for _, ev, s, result, *_ in rows if ev == "connect" and result == "ok"}
    assert len(sessions) == len(runs) + 1
    for s in sessions:
        assert [ev for _, ev, s2, *_ in rows if s2 == s].count("logon") == 1, s
        assert [ev for _, ev, s2, *_ in rows if s2 == s].count("disconnect") == 1, s
    assert sum(ev == "recovery" for _, ev, *_ in rows) == len(runs) + 1
    gaps = sorted((start, end) for _, ev, _, _, start, end in rows if ev == "gap")
    assert len(gaps) == len(runs)  # one per outage, the killed runs' included
    ends = {start for _, ev, _, _, start, _ in rows if ev == "disconnect"}
    for start, end in gaps:
        assert start < end and start in ends  # from the last frame the killed run journaled
    harness.check()
