"""The simulated market's universe: the underliers, where they trade, their option roots.

Spread over the A..H ranges of both stripe tables plus the explicit M, S, X and V lists, so
every stripe of a capture configuration has something to record.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass

__all__ = ["DEFAULT_UNIVERSE", "EASTERN", "Underlier"]

EASTERN = zoneinfo.ZoneInfo("America/New_York")
"""The market's home time zone: the trading day and the 16:00 expiry close."""


@dataclass(frozen=True, slots=True)
class Underlier:
    """One tradable underlier and the option roots listed on it."""

    tk: str
    spot: float
    vol: float
    kind: str  # "stock", "etf", "index" or "future"
    ts: str = "NMS"
    at: str = "EQT"
    tick: float = 0.01
    roots: tuple[str, ...] = ()  # option roots; () = none listed
    expiry_weekday: int = 4  # Friday; VIX-style products expire on Wednesday (2)

    @property
    def has_book(self) -> bool:
        return self.kind in ("stock", "etf", "future")


def _eq(tk: str, spot: float, vol: float, kind: str = "stock", roots: bool = True) -> Underlier:
    return Underlier(tk, spot, vol, kind, roots=(tk,) if roots else ())


DEFAULT_UNIVERSE: tuple[Underlier, ...] = (
    # NMS equities spread over the A..H ranges of both stripe tables.
    _eq("AAPL", 201.52, 0.25),
    _eq("AMD", 161.30, 0.45),
    _eq("AMZN", 185.40, 0.30),
    _eq("BA", 176.10, 0.35),
    _eq("COIN", 221.75, 0.70),
    _eq("DIS", 101.20, 0.25),
    _eq("F", 11.08, 0.35),
    _eq("GOOG", 172.05, 0.28),
    _eq("GOOGL", 170.63, 0.28),
    _eq("INTC", 30.41, 0.40),
    _eq("JPM", 199.87, 0.22),
    _eq("KO", 62.33, 0.15),
    _eq("META", 497.12, 0.35),
    _eq("MSFT", 418.90, 0.24),
    _eq("NFLX", 648.20, 0.35),
    _eq("NVDA", 120.11, 0.50),
    _eq("ORCL", 124.60, 0.30),
    _eq("PLTR", 24.85, 0.60),
    _eq("SOFI", 7.02, 0.60),
    _eq("TSLA", 178.45, 0.55),
    _eq("UBER", 70.14, 0.40),
    _eq("WMT", 64.88, 0.18),
    _eq("XOM", 114.92, 0.22),
    # ETFs (SPY/QQQ/IWM/VXX sit on the explicit M lists).
    _eq("SPY", 530.27, 0.13, "etf"),
    _eq("QQQ", 452.81, 0.17, "etf"),
    _eq("IWM", 205.36, 0.20, "etf"),
    _eq("VXX", 14.92, 0.60, "etf"),
    _eq("TLT", 92.14, 0.15, "etf"),
    # Index option roots (quoted under at=EQT, ts=NMS like the vendor's SPX example).
    Underlier("SPX", 5304.72, 0.13, "index", roots=("SPX", "SPXW")),
    Underlier("NDX", 18536.65, 0.17, "index", roots=("NDX", "NDXP")),
    Underlier("RUT", 2049.37, 0.20, "index", roots=("RUT", "RUTW")),
    Underlier("XSP", 530.47, 0.13, "index", roots=("XSP",)),
    Underlier("VIX", 12.92, 0.85, "index", roots=("VIX", "VIXW"), expiry_weekday=2),
    # Futures for the X and V stripes; ES and CL list options.
    Underlier("ES", 5321.25, 0.13, "future", ts="CME", at="FUT", tick=0.25, roots=("ES",)),
    Underlier("CL", 78.12, 0.30, "future", ts="NYMEX", at="FUT", tick=0.01, roots=("CL",)),
    Underlier("GC", 2351.40, 0.15, "future", ts="COMEX", at="FUT", tick=0.1),
    Underlier("ZN", 109.515625, 0.06, "future", ts="CBOT", at="FUT", tick=0.015625),
    Underlier("VX", 14.35, 0.60, "future", ts="CFE", at="FUT", tick=0.05, expiry_weekday=2),
)
