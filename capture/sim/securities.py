"""The securities of the simulated market and their mutable state.

A :class:`Security` is one key (ticker, expiry or option) with what the generators need to
price it; :class:`UnderlierState` and :class:`OptionState` are what moves between updates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from capture.sim.encoding import KEY_PARTS
from capture.sim.universe import Underlier

__all__ = ["KEY_TYPES", "OptionState", "Security", "UnderlierState", "ticker_obj"]

KEY_TYPES = frozenset({"TickerKey", "ExpiryKey", "OptionKey"})
"""Dictionary field types that hold a security key."""


@dataclass(slots=True)
class UnderlierState:
    """Mutable state of one underlier."""

    u: Underlier
    spot: float
    volume: int = 0
    cluster: int = 0
    cluster_size: int = 0
    last_print: float = 0.0
    last_bid: float = 0.0
    last_ask: float = 0.0
    bid_sz: int = 0
    ask_sz: int = 0


@dataclass(slots=True)
class OptionState:
    """Mutable state of one option series (quote fields shared by quote, print and implied)."""

    bid: float = 0.0
    ask: float = 0.0
    bid_time: int = 0
    ask_time: int = 0
    net_ts: int = 0
    volume: int = 0
    cluster: int = 0
    bid_count: int = 0
    ask_count: int = 0
    bid_volume: int = 0
    ask_volume: int = 0
    quote: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Security:
    """A security key: the JSON key object plus what the generators need to price it."""

    kind: str  # "ticker", "expiry", "option"
    obj: Mapping[str, Any]
    u: Underlier
    expiry: dt.date | None = None
    strike: float = 0.0
    call: bool = True

    @property
    def ident(self) -> tuple[Hashable, ...]:
        return tuple(self.obj[p] for p in KEY_PARTS if p in self.obj)


def ticker_obj(u: Underlier, tk: str | None = None) -> dict[str, Any]:
    return {"at": u.at, "ts": u.ts, "tk": tk or u.tk}
