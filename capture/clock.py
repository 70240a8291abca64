"""Wall-clock sources.  Receive times, partition dates and rotation boundaries are wall time;
tests replace it with one derived from trio's (mock) clock so they stay exact and instant."""

from __future__ import annotations

import time
from typing import Protocol

import trio


class WallClock(Protocol):
    def now_ns(self) -> int: ...


class SystemClock:
    __slots__ = ()

    def now_ns(self) -> int:
        return time.time_ns()


class TrioWallClock:
    """Wall time = ``base_ns`` + trio's clock; with ``trio.testing.MockClock`` it jumps too.

    Usable from worker threads as well (the sink asks for the time there): it reads the run's
    clock object directly rather than through ``trio.current_time()``.
    """

    __slots__ = ("_base", "_clock")

    def __init__(self, base_ns: int) -> None:
        self._clock = trio.lowlevel.current_clock()
        self._base = base_ns - int(self._clock.current_time() * 1e9)

    def now_ns(self) -> int:
        return self._base + int(self._clock.current_time() * 1e9)


def trio_deadline_for(clock: WallClock, wall_ns: int) -> float:
    """The trio deadline at which ``clock`` will read ``wall_ns``."""
    return trio.current_time() + max(0, wall_ns - clock.now_ns()) / 1e9
