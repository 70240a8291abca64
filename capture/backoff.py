"""Reconnect backoff as an immutable value: exponential, capped, jittered (randomness injected)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capture.config import SupervisionConfig


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +/- this fraction of the delay, so 11 stripes do not reconnect in step

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Delay before reconnect number ``attempt`` (0-based): initial * multiplier**attempt,
        capped at ``maximum``, then spread by jitter (never above ``maximum``)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        spread = base * self.jitter
        return min(self.maximum, max(0.0, base + rng.uniform(-spread, spread)))


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
