"""Lose nothing, store nothing twice: SIGKILL the daemon at random moments and at each step
of a commit, restart it, and check what is on disk (see tests/crash_harness.py).

Real processes and real time (a kill is a real kill); counts and durations are bounded.
``bench/chaos.py`` runs the same loop for longer.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from crash_harness import POINTS, Harness

pytestmark = pytest.mark.e2e


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    h.start_simulator()
    yield h  # type: ignore[misc]
    h.stop()


def test_kill_loop_loses_nothing_durable_and_stores_nothing_twice(harness: Harness) -> None:
    rng = random.Random(20261124)
    for cycle in range(22):
        if cycle % 5 == 4:  # some kills land inside a commit, at a named step
            harness.crash_at(rng.choice(POINTS[:4]), hup_at=rng.uniform(0.8, 1.6))
        else:
            run = rng.uniform(0.6, 2.5)
            harness.kill_after(run, hup_at=rng.uniform(0.3, run))
    harness.graceful(4.0)
    counts = harness.check()
    assert counts["required"] > 1000 and counts["files"] > 20, counts


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_commit_step_recovers_to_the_same_correct_state(
    harness: Harness, point: str
) -> None:
    harness.graceful(2.0)  # some committed data first
    harness.crash_at(point)
    harness.graceful(3.0)  # recovery, then a clean stop
    counts = harness.check()
    assert counts["required"] > 100, counts


def test_recovery_twice_changes_nothing(harness: Harness) -> None:
    harness.graceful(2.0)
    harness.crash_at("sink.commit.footer")  # leaves an unfinished file and journal to replay
    harness.graceful(2.0, offline=True)  # recovery only
    first = harness.parquet_rows()
    harness.graceful(2.0, offline=True)  # recovery again
    assert harness.parquet_rows() == first
    assert sum(len(v) for v in first.values()) > 100
    harness.check()
