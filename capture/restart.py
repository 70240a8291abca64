"""Restarting what fails: the restart-intensity policy and the one loop that applies it.

Used by both supervisors: the stripe supervisor (capture.supervisor: a stripe's worker, in this
process) and the stripe-group parent (capture.groups: a group's process).  The loop alone
decides:

* **backoff**: the n-th failure within ``restart_window`` waits ``Backoff.delay(n)`` before the
  restart (``supervision.backoff_*``);
* **giving up**: a failure within ``restart_window`` seconds of ``max_restarts`` others is one
  too many; so is a failure the run itself calls final (a group that exits "all my stripes
  failed");
* **reset after a healthy run**: failures older than ``restart_window`` are forgotten, so a run
  that lasted longer than the window starts the backoff from ``backoff_initial`` again;
* **stop**: a stop requested while it waits out a backoff ends the wait at once, and nothing is
  started again; a run that fails while a stop is under way is not restarted.

It knows nothing of workers or processes: the caller gives it one run (a coroutine function that
returns ``None`` when it ended on request, or a :class:`Failure`) and hooks for what to show
while it waits and before it restarts.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from capture.backoff import Backoff

if TYPE_CHECKING:
    from capture.config import SupervisionConfig


class RestartLimit:
    """Restart intensity, the supervisors' policy (``supervision.*``): a failure within
    ``window`` seconds of ``limit`` others is one too many; otherwise the next restart waits
    the backoff delay of the failures in the window."""

    def __init__(self, backoff: Backoff, limit: int, window: float, rng: random.Random) -> None:
        self.backoff = backoff
        self.limit = limit
        self.window = window
        self.rng = rng
        self._failures: deque[float] = deque()

    @classmethod
    def of(cls, policy: SupervisionConfig, rng: random.Random) -> RestartLimit:
        p = policy
        backoff = Backoff(p.backoff_initial, p.backoff_max, p.backoff_multiplier, p.backoff_jitter)
        return cls(backoff, p.max_restarts, p.restart_window, rng)

    def failed(self, now: float) -> float | None:
        """Record a failure at ``now``: the delay before the restart, or None (give up)."""
        failures = self._failures
        failures.append(now)
        while failures and now - failures[0] > self.window:
            failures.popleft()
        if len(failures) > self.limit:
            return None
        return self.backoff.delay(len(failures) - 1, self.rng)

    @property
    def recent(self) -> int:
        """Failures within the window, as of the last one."""
        return len(self._failures)


@dataclass(frozen=True)
class Failure:
    """How one run failed: ``error`` for the logs and the health file; ``final``: the run's own
    verdict that a restart cannot help (it is not restarted)."""

    error: str
    exc: BaseException | None = None
    final: bool = False


class Ending(enum.Enum):
    STOPPED = "stopped"  # ended on request, or stopped while failing or waiting to restart
    FINAL = "final"  # the run said a restart cannot help
    GAVE_UP = "gave_up"  # failed too often within the window


@dataclass(frozen=True)
class Outcome:
    """Why :func:`keep_running` returned, and the last failure (None: the last run ended on
    request)."""


    ending: Ending
    failure: Failure | None = None
    waited: bool = False  # stopped while waiting out a backoff (nothing runs now)


async def keep_running(
    run_once: Callable[[], Awaitable[Failure | None]],
    limit: RestartLimit,
    stop: trio.Event,
    *,
    backing_off: Callable[[Failure, float], None] = lambda failure, delay: None,
    restarting: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run ``run_once`` until it ends on request, a stop is requested (``stop`` set), or it has
    failed for good; restart it after each other failure, waiting out the backoff first.

    ``backing_off(failure, delay)`` is called as the wait begins, ``restarting()`` after it,
    just before the next run.  ``Cancelled`` and ``KeyboardInterrupt`` are never caught."""
    while True:
        failure = await run_once()
        if failure is None:
            return Outcome(Ending.STOPPED)
        if stop.is_set():
            return Outcome(Ending.STOPPED, failure)
        if failure.final:
            return Outcome(Ending.FINAL, failure)
        delay = limit.failed(trio.current_time())
        if delay is None:
            return Outcome(Ending.GAVE_UP, failure)
        backing_off(failure, delay)
        with trio.move_on_after(delay):
            await stop.wait()
        if stop.is_set():  # no replacement is started
            return Outcome(Ending.STOPPED, failure, waited=True)
        restarting()
