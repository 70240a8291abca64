"""The restart loop both supervisors use (capture.restart), on trio's mock clock: when a failed
run is started again, when it is given up, that a long healthy run resets the backoff, and that
a stop ends a backoff at once with nothing started again.

The run here is a plain coroutine function (the loop's input); the two real users are tested
with real workers (tests/test_supervision.py) and real processes (tests/test_groups.py)."""

from __future__ import annotations

import random

import trio
import trio.testing

from capture.backoff import Backoff
from capture.restart import Ending, Failure, Outcome, RestartLimit, keep_running


def limit(initial: float = 1.0, maximum: float = 120.0, restarts: int = 5,
          window: float = 60.0) -> RestartLimit:  # fmt: skip
    return RestartLimit(Backoff(initial, maximum, 2.0, 0.0), restarts, window, random.Random(1))


class Runs:
    """Each run's start time; a run fails after ``lasts`` seconds (one entry per run), or, past
    the list, ends on request at once."""

    def __init__(self, lasts: list[float], *, final: bool = False) -> None:
        self.lasts = lasts
        self.final = final
        self.started: list[float] = []
        self.restarts = 0
        self.backoffs: list[float] = []

    async def run_once(self) -> Failure | None:
        n = len(self.started)
        self.started.append(trio.current_time())
        if n >= len(self.lasts):
            return None
        await trio.sleep(self.lasts[n])
        return Failure(f"failure {n}", final=self.final)

    def backing_off(self, failure: Failure, delay: float) -> None:
        self.backoffs.append(delay)

    def restarting(self) -> None:
        self.restarts += 1


def drive(runs: Runs, lim: RestartLimit, stop_at: float | None = None) -> tuple[Outcome, float]:
    async def main() -> tuple[Outcome, float]:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            if stop_at is not None:

                async def stopper() -> None:
                    await trio.sleep(stop_at)
                    stop.set()

                nursery.start_soon(stopper)
            outcome = await keep_running(
                runs.run_once, lim, stop, backing_off=runs.backing_off, restarting=runs.restarting
            )
            nursery.cancel_scope.cancel()
        return outcome, trio.current_time()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_failed_run_restarts_after_the_backoff_schedule() -> None:
    runs = Runs([0.0, 0.0, 0.0])
    outcome, _ = drive(runs, limit())
    assert outcome == Outcome(Ending.STOPPED)  # the fourth run ended on request
    assert runs.started == [0.0, 1.0, 3.0, 7.0]  # waits of 1, 2, 4 s
    assert runs.backoffs == [1.0, 2.0, 4.0] and runs.restarts == 3


def test_too_many_failures_within_the_window_give_up() -> None:
    runs = Runs([0.0] * 10)
    outcome, _ = drive(runs, limit(restarts=2))
    assert outcome.ending is Ending.GAVE_UP and outcome.failure == Failure("failure 2")
    assert len(runs.started) == 3 and runs.restarts == 2  # the third failure is one too many


def test_a_run_longer_than_the_window_resets_the_backoff() -> None:
    # Fails at once twice (waits 1 s, 2 s), then runs healthy for 100 s (> the 60 s window).
    runs = Runs([0.0, 0.0, 100.0, 0.0])
    drive(runs, limit(restarts=2))
    assert runs.started == [0.0, 1.0, 3.0, 104.0, 106.0]
    assert runs.backoffs == [1.0, 2.0, 1.0, 2.0]  # from backoff_initial again; not given up


def test_a_stop_during_the_backoff_returns_at_once_and_starts_nothing() -> None:
    runs = Runs([0.0, 0.0])
    outcome, ended = drive(runs, limit(initial=120.0), stop_at=5.0)
    assert outcome == Outcome(Ending.STOPPED, Failure("failure 0"), waited=True)
    assert ended == 5.0  # the mock clock did not advance by the 120 s backoff
    assert runs.started == [0.0] and runs.restarts == 0  # no replacement was started


def test_a_run_that_fails_while_stopping_is_not_restarted() -> None:
    runs = Runs([10.0, 0.0])
    outcome, ended = drive(runs, limit(), stop_at=5.0)
    assert outcome == Outcome(Ending.STOPPED, Failure("failure 0"))
    assert ended == 10.0 and runs.started == [0.0] and runs.backoffs == []


def test_a_final_failure_is_not_restarted() -> None:
    runs = Runs([0.0, 0.0], final=True)
    outcome, ended = drive(runs, limit())
    assert outcome == Outcome(Ending.FINAL, Failure("failure 0", final=True))
    assert ended == 0.0 and runs.started == [0.0] and runs.backoffs == []
