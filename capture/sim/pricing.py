"""Pricing helpers of the simulated market: Black-76 with greeks, tick and strike grids."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "RATE",
    "Greeks",
    "black",
    "floor_to",
    "option_tick",
    "round_to",
    "strike_step",
]

RATE = 0.0431
"""The risk-free rate of the model (and the carry of futures)."""


def _ncdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _npdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True, slots=True)
class Greeks:
    """An option's model price and its greeks."""

    price: float
    delta: float
    gamma: float
    theta: float  # per day
    vega: float  # per vol point (0.01)
    vanna: float
    volga: float
    rho: float
    phi: float


def black(fwd: float, strike: float, years: float, vol: float, call: bool, df: float) -> Greeks:
    """Black-76 on the forward, with spot-style greeks (df = discount factor)."""
    sd = max(vol * math.sqrt(years), 1e-6)
    d1 = (math.log(fwd / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    if call:
        price = df * (fwd * _ncdf(d1) - strike * _ncdf(d2))
        delta = df * _ncdf(d1)
    else:
        price = df * (strike * _ncdf(-d2) - fwd * _ncdf(-d1))
        delta = -df * _ncdf(-d1)
    pdf = _npdf(d1)
    gamma = df * pdf / (fwd * sd)
    vega = df * fwd * pdf * math.sqrt(years) / 100.0
    theta = -(df * fwd * pdf * vol / (2.0 * math.sqrt(years))) / 365.0
    vanna = -df * pdf * d2 / vol / 100.0
    volga = vega * d1 * d2 / vol / 100.0
    rho = strike * years * df * (_ncdf(d2) if call else -_ncdf(-d2)) / 100.0
    phi = -years * fwd * df * (_ncdf(d1) if call else -_ncdf(-d1)) / 100.0
    return Greeks(max(price, 0.0), delta, gamma, theta, vega, vanna, volga, rho, phi)


def round_to(x: float, tick: float) -> float:
    return round(round(x / tick) * tick, 10)


def floor_to(x: float, tick: float) -> float:
    return round(math.floor(x / tick + 1e-9) * tick, 10)


def option_tick(root: str, price: float) -> float:
    if root in ("SPX", "SPXW", "NDX", "NDXP"):
        return 0.05 if price < 3 else 0.10
    if root in ("ES",):
        return 0.05 if price < 5 else 0.25
    return 0.01 if price < 3 else 0.05


def strike_step(spot: float) -> float:
    for bound, step in ((5, 0.5), (25, 1.0), (100, 2.5), (250, 5.0), (1000, 10.0), (3000, 25.0)):
        if spot < bound:
            return step
    return 50.0 if spot < 10_000 else 100.0
