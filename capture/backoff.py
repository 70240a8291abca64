"""Reconnect backoff as an immutable value: exponential, capped, jittered (randomness injected)."""

from __future__ import annotations

import random
from dataclasses import dataclass


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
