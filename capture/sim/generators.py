"""The hand-written generators of the core types, and the option quote model they share.

Values are meant to survive a quant's glance: option quotes come from a Black-Scholes (Black-76
for futures) model with a skew, bid < ask, sizes and cumulative sizes are consistent, enums
come from the dictionary eSet, ns timestamps are ordered ``srcTimestamp < netTimestamp <=
header sTim`` and ``bidTime``/``askTime`` are US/Central ms since midnight derived from
``srcTimestamp`` (PROTOCOL.md §5.6).  Each generator draws only from the market's seeded
``random.Random``, so a run is reproducible.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from capture.sim.encoding import EPOCH, central_ms
from capture.sim.pricing import (
    RATE,
    Greeks,
    black,
    floor_to,
    option_tick,
    round_to,
    strike_step,
)
from capture.sim.securities import OptionState, Security, UnderlierState, ticker_obj
from capture.sim.universe import EASTERN

if TYPE_CHECKING:
    from capture.sim.market import Market

__all__ = ["CORE_TYPES", "GENERATED_TYPES", "GENERATORS", "Generator"]

CORE_TYPES: tuple[str, ...] = (
    "OptionNbboQuote",
    "OptionPrint",
    "StockBookQuote",
    "StockPrint",
    "LiveImpliedQuote",
    "LiveSurfaceCurve",
)
"""The message types the simulator generates by default."""

_OPT_EXCH: tuple[str, ...] = tuple(
    "CBOE ISE PHLX MIAX AMEX BOX C2 NSDQ BATS GMNI EDGO MCRY MPRL EMLD MEMX SPHR".split()
)
_STK_EXCH: tuple[str, ...] = tuple(
    "NSDQ ARCA NYSE BATS EDGX EDGA IEX MEMX PSX BTSY NQBX AMEX CHX LTSE MPRL".split()
)
_OPT_PRT_TYPES = ("AUTO",) * 12 + ("ISOI", "SLAN", "MLET", "MASL", "OPEN")
_NS_PER_YEAR = 365 * 86_400 * 10**9

Generator = Callable[["Market", tuple[Hashable, ...], Mapping[str, Any], int], dict[str, Any]]
"""Body values of one record: ``(market, pkey, key values, header send time ns)``."""


def _times(m: Market, sent_ns: int) -> tuple[int, int]:
    """``(srcTimestamp, netTimestamp)`` a little before the header send time."""
    net = sent_ns - m.rng.randint(20_000, 400_000)
    src = net - m.rng.randint(5_000, 250_000)
    return src, net


def _years(expiry: dt.date, now_ns: int) -> float:
    close = dt.datetime.combine(expiry, dt.time(16, 0), tzinfo=EASTERN)
    ns = (close - EPOCH) // dt.timedelta(microseconds=1) * 1000 - now_ns
    return max(ns / _NS_PER_YEAR, 1.0 / (365 * 24))


def _vol(sec: Security, fwd: float, years: float) -> tuple[float, float]:
    """``(atm vol, surface vol at this strike)``: a term structure and a put skew."""
    atm = sec.u.vol * (1.0 + 0.08 * math.exp(-years * 12))
    if sec.kind != "option":
        return atm, atm
    m = math.log(sec.strike / fwd) / max(atm * math.sqrt(years), 1e-6)
    return atm, max(0.02, atm * (1.0 - 0.07 * m + 0.02 * m * m))


def _price(m: Market, sec: Security, now_ns: int) -> tuple[float, float, float, float, Greeks]:
    """``(spot, forward, years, surface vol, greeks)`` for an option key."""
    us = m.underlier_state[sec.u.tk]
    assert sec.expiry is not None
    years = _years(sec.expiry, now_ns)
    sdiv = 0.0 if sec.u.kind == "future" else 0.0046
    fwd = us.spot if sec.u.kind == "future" else us.spot * math.exp((RATE - sdiv) * years)
    _, svol = _vol(sec, fwd, years)
    g = black(fwd, sec.strike, years, svol, sec.call, math.exp(-RATE * years))
    return us.spot, fwd, years, svol, g


def _quote_option(m: Market, pkey: tuple[Hashable, ...], now_ns: int) -> tuple[OptionState, bool]:
    """Move the underlier, re-quote the option; returns its state and "price changed"."""
    sec = m.security(pkey)
    us = m.underlier_state[sec.u.tk]
    m.step(us)
    st = m.option_state.setdefault(pkey, OptionState())
    _, _, _, _, g = _price(m, sec, now_ns)
    root = str(sec.obj["tk"])
    tick = option_tick(root, g.price)
    width = max(tick, round_to(0.012 * g.price + tick, tick))
    bid = floor_to(g.price - width / 2 + tick / 2, tick)
    ask = max(round_to(bid + width, tick), tick)
    if bid < 0:
        bid = 0.0
    if ask <= bid:
        ask = round_to(bid + tick, tick)
    src, net = _times(m, now_ns)
    changed = (bid, ask) != (st.bid, st.ask)
    if bid != st.bid or not st.bid_time:
        st.bid_time = central_ms(src)
    if ask != st.ask or not st.ask_time:
        st.ask_time = central_ms(src)
    st.bid, st.ask, st.net_ts = bid, ask, net
    rng = m.rng
    exch = ("CBOE",) if root in ("SPX", "SPXW", "VIX", "VIXW", "XSP") else _OPT_EXCH
    if sec.u.kind == "future":
        exch = ("CME",)
    bid_size = rng.randint(1, 150) if bid > 0 else 0
    ask_size = rng.randint(1, 150)
    st.quote = {
        "bidPrice": bid,
        "askPrice": ask,
        "bidSize": bid_size,
        "askSize": ask_size,
        "cumBidSize": bid_size + rng.randint(0, 300) if bid > 0 else 0,
        "cumAskSize": ask_size + rng.randint(0, 300),
        "bidExch": rng.choice(exch) if bid > 0 else "None",
        "askExch": rng.choice(exch),
        "bidMask": _mask(rng) if bid > 0 else 0,
        "askMask": _mask(rng),
        "bidPrice2": round_to(bid - tick, tick) if bid - tick > 0 else 0.0,
        "askPrice2": round_to(ask + tick, tick),
        "cumBidSize2": rng.randint(1, 800) if bid - tick > 0 else 0,
        "cumAskSize2": rng.randint(1, 800),
        "srcTimestamp": src,
    }
    return st, changed


def _mask(rng: random.Random) -> int:
    """A random exchange bit mask (the exchanges at the best price)."""
    m = 0
    for _ in range(rng.randint(1, 4)):
        m |= 1 << rng.randrange(16)
    return m


def _gen_option_nbbo(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    st, changed = _quote_option(m, pkey, now)
    q = dict(st.quote)
    src = q.pop("srcTimestamp")
    out: dict[str, Any] = {"updateType": "PrcChange" if changed else "SizeOnly", **q}
    if m.rng.random() < 0.1:
        out["bidMktType" if m.rng.random() < 0.5 else "askMktType"] = m.rng.choice(
            ("Regular", "CustInterest", "Rotation")
        )
    out.update(bidTime=st.bid_time, askTime=st.ask_time, srcTimestamp=src)
    out["netTimestamp"] = st.net_ts
    return out


def _gen_option_print(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    st, _ = _quote_option(m, pkey, now)
    rng = m.rng
    q = st.quote
    side = rng.choice(("Bid", "Ask", "Ask", "Bid", "Mid"))
    bid, ask = float(q["bidPrice"]), float(q["askPrice"])
    if side == "Bid" and bid > 0:
        price = bid
    elif side == "Mid" and bid > 0:
        price = round((bid + ask) / 2, 4)
    else:
        side, price = "Ask", ask
    size = rng.choice((1, 1, 2, 3, 5, 10, 10, 20, 25, 50, 100))
    st.volume += size
    st.cluster += 1
    if side == "Bid":
        st.bid_count += 1
        st.bid_volume += size
    elif side == "Ask":
        st.ask_count += 1
        st.ask_volume += size
    prt_ts = now - rng.randint(200_000, 900_000)
    net = prt_ts + rng.randint(20_000, 200_000)
    return {
        "prtExch": q["askExch"] if side == "Ask" else q["bidExch"] or q["askExch"],
        "prtSize": size,
        "prtPrice": price,
        "prtClusterNum": st.cluster,
        "prtClusterSize": size,
        "prtType": rng.choice(_OPT_PRT_TYPES),
        "prtOrders": rng.randint(1, 3),
        "prtVolume": st.volume,
        "bidCount": st.bid_count,
        "askCount": st.ask_count,
        "bidVolume": st.bid_volume,
        "askVolume": st.ask_volume,
        "ebid": bid,
        "eask": ask,
        "ebsz": q["bidSize"],
        "easz": q["askSize"],
        "eage": round(rng.uniform(0.0001, 2.0), 4),
        **{
            k: q[k]
            for k in (
                "bidPrice",
                "askPrice",
                "bidPrice2",
                "askPrice2",
                "bidSize",
                "askSize",
                "cumBidSize",
                "cumAskSize",
                "cumBidSize2",
                "cumAskSize2",
                "bidMask",
                "askMask",
            )
        },
        "prtSide": side,
        "prtTimestamp": prt_ts,
        "netTimestamp": net,
        "oqNetTimestamp": st.net_ts,
        "timestamp": net + rng.randint(1_000, 50_000),
    }


def _gen_implied(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    st, _ = _quote_option(m, pkey, now)
    sec = m.security(pkey)
    spot, fwd, years, svol, g = _price(m, sec, now)
    atm, _ = _vol(sec, fwd, years)
    bid, ask = float(st.quote["bidPrice"]), float(st.quote["askPrice"])
    vega_pt = max(g.vega, 1e-4)
    mid = (bid + ask) / 2 if bid > 0 else ask / 2
    is_fut = sec.u.kind == "future"
    df = math.exp(-RATE * years)

    def slide(mult: float) -> float:
        shifted = black(fwd * mult, sec.strike, years, svol, sec.call, df).price
        return round(shifted - g.price, 2)

    rng = m.rng
    net = now - rng.randint(10_000, 60_000)
    return {
        "ticker": ticker_obj(sec.u),
        "uPrc": round(spot, 4),
        "uOff": round(rng.uniform(-0.05, 0.05), 4),
        "years": years,
        "xAxis": math.log(sec.strike / fwd) / (atm * math.sqrt(years)),
        "rate": RATE,
        "sdiv": RATE if is_fut else 0.0046,
        "oBid": bid,
        "oAsk": ask,
        "oBidIv": max(0.01, svol - (g.price - bid) / vega_pt / 100) if bid > 0 else 0.0,
        "oAskIv": max(0.01, svol + (ask - g.price) / vega_pt / 100),
        "atmVol": atm,
        "sVol": svol,
        "sPrc": g.price,
        "sMark": min(max(g.price, bid), ask) if bid > 0 else min(g.price, mid * 2),
        "veSlope": round(-0.0012 * (1 + rng.uniform(-0.2, 0.2)), 6),
        "de": g.delta,
        "ga": g.gamma,
        "th": g.theta,
        "ve": g.vega,
        "va": g.vanna,
        "vo": g.volga,
        "ro": g.rho,
        "ph": 0.0 if is_fut else g.phi,
        "deDecay": g.theta * g.gamma * 0.01,
        "up50": slide(1.5),
        "dn50": slide(0.5),
        "up15": slide(1.15),
        "dn15": slide(0.85),
        "up06": slide(1.06),
        "dn08": slide(0.92),
        "priceType": "Future" if is_fut else "Equity",
        "calcSource": "Tick",
        "srcTimestamp": int(st.quote["srcTimestamp"]),
        "netTimestamp": net,
        "timestamp": net,
    }


def _gen_surface(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    sec = m.security(pkey)
    us = m.underlier_state[sec.u.tk]
    spot = m.step(us)
    assert sec.expiry is not None
    years = _years(sec.expiry, now)
    is_fut = sec.u.kind == "future"
    sdiv = RATE if is_fut else 0.0046
    fwd = spot if is_fut else spot * math.exp((RATE - sdiv) * years)
    atm, _ = _vol(sec, fwd, years)
    rng = m.rng
    tick = sec.u.tick
    skew = [round(0.012 * (i + 1) ** 1.45 * (1 + rng.uniform(-0.05, 0.05)), 4) for i in range(6)]
    err_xx = round_to(fwd * (1 + rng.uniform(-0.05, 0.05)), strike_step(spot))
    fit_ts = now - rng.randint(100_000, 900_000)
    out: dict[str, Any] = {
        "ticker": ticker_obj(sec.u),
        "uPrc": round(spot, 4),
        "uBid": round_to(spot - tick / 2, tick),
        "uAsk": round_to(spot + tick / 2, tick),
        "years": years,
        "rate": RATE,
        "sdiv": sdiv,
        "symbolRatio": 1.0,
        "exType": "European" if sec.u.kind == "index" else "American",
        "modelType": "LogNormalExact",
        "priceType": "Future" if is_fut else "Equity",
        "axisVolRT": atm * math.sqrt(years),
        "axisFUPrc": round(fwd, 3),
        "atmStrike": round(fwd, 2),
        "moneynessType": "LogStd",
        "cpAdjType": "SDiv",
        "priceQuoteType": "Vol",
        "atmVol": atm,
        "atmCen": atm * 0.977,
        "atmVolHist": atm * 1.065,
        "atmCenHist": atm * 1.019,
        "uPrcRatio": 1.0,
        "minAtmVol": atm * 0.93,
        "maxAtmVol": atm * 1.07,
        "atmVega": black(fwd, fwd, years, atm, True, 1.0).vega,
        "slope": round(-0.31 * (1 + rng.uniform(-0.1, 0.1)), 4),
        "varSwapFV": atm * 1.097,
        "gridType": "SRCubic",
        "fitPowerC": 1.0,
        "fitPowerP": 1.0,
        "minXAxis": -4.5,
        "maxXAxis": 3.5,
        "surfaceFit": "ConvexSpline",
        **{f"skewC{i + 1:02d}": c for i, c in enumerate(skew)},
        "cCnt": rng.randint(10, 60),
        "pCnt": rng.randint(10, 60),
        "fitAvgErr": round(rng.uniform(-0.005, 0.005), 4),
        "fitAvgAbsErr": round(rng.uniform(0.001, 0.02), 4),
        "fitMaxPrcErr": round(rng.uniform(0.01, 0.08), 3),
        "fitErrXX": err_xx,
        "fitErrCP": rng.choice(("Call", "Put")),
        "fitErrDe": round(rng.uniform(-0.5, 0.5), 4),
        "tradingSession": "RegularMkt",
        "tradeableStatus": "OK",
        "surfaceResult": "OK",
        "skewCounter": m.bump(("skew", pkey)),
        "sdivCounter": m.bump(("sdiv", sec.u.tk)),
        "sTimestamp": fit_ts,
        "timestamp": fit_ts + rng.randint(50_000, 400_000),
    }
    return out


def _book(m: Market, us: UnderlierState) -> tuple[float, float]:
    spot = m.step(us)
    tick = us.u.tick
    spread_ticks = 1 if spot < 300 or us.u.kind == "future" else m.rng.randint(1, 3)
    bid = floor_to(spot, tick)
    return bid, round_to(bid + spread_ticks * tick, tick)


def _gen_stock_book(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    us = m.underlier_state[m.security(pkey).u.tk]
    bid, ask = _book(m, us)
    rng = m.rng
    changed = (bid, ask) != (us.last_bid, us.last_ask)
    us.last_bid, us.last_ask = bid, ask
    us.bid_sz, us.ask_sz = rng.randint(1, 40), rng.randint(1, 40)
    tick = us.u.tick
    src, net = _times(m, now)
    return {
        "updateType": "PrcChange" if changed else "SizeOnly",
        "marketStatus": "Open",
        "bidPrice1": bid,
        "bidSize1": us.bid_sz,
        "bidExch1": rng.choice(_STK_EXCH),
        "bidMask1": _mask(rng),
        "askPrice1": ask,
        "askSize1": us.ask_sz,
        "askExch1": rng.choice(_STK_EXCH),
        "askMask1": _mask(rng),
        "bidPrice2": round_to(bid - tick, tick),
        "bidSize2": rng.randint(1, 80),
        "bidExch2": rng.choice(_STK_EXCH),
        "bidMask2": _mask(rng),
        "askPrice2": round_to(ask + tick, tick),
        "askSize2": rng.randint(1, 80),
        "askExch2": rng.choice(_STK_EXCH),
        "askMask2": _mask(rng),
        "srcTimestamp": src,
        "netTimestamp": net,
    }


def _gen_stock_print(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    us = m.underlier_state[m.security(pkey).u.tk]
    bid, ask = _book(m, us)
    rng = m.rng
    odd = rng.random() < 0.15
    size = rng.randint(1, 99) if odd else 100 * rng.choice((1, 1, 1, 2, 3, 5, 10))
    side = rng.choice(("Bid", "Ask", "Ask", "Bid", "Mid"))
    price = bid if side == "Bid" else ask if side == "Ask" else round((bid + ask) / 2, 4)
    if rng.random() < 0.4 and us.cluster:
        us.cluster_size += size
    else:
        us.cluster += 1
        us.cluster_size = size
    us.volume += size
    if not odd:
        us.last_print = price
    prt_ts = now - rng.randint(100_000, 600_000)
    net = prt_ts + rng.randint(10_000, 80_000)
    return {
        "prtExch": rng.choice(_STK_EXCH),
        "prtSize": size,
        "prtPrice": price,
        "prtClusterNum": us.cluster,
        "prtClusterSize": us.cluster_size,
        "prtVolume": us.volume,
        "mrkPrice": us.last_print,
        "prtType": "OddLot" if odd else "RegularSequence",
        "prtCond1": 37 if odd else 0,
        "ebid": bid,
        "eask": ask,
        "ebsz": us.bid_sz or rng.randint(1, 40),
        "easz": us.ask_sz or rng.randint(1, 40),
        "eage": round(rng.uniform(0.0001, 0.5), 4),
        "prtSide": side,
        "prtTimestamp": prt_ts,
        "netTimestamp": net,
        "timestamp": net + rng.randint(1_000, 30_000),
    }


def _gen_future_book(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    us = m.underlier_state[m.security(pkey).u.tk]
    bid, ask = _book(m, us)
    rng = m.rng
    tick = us.u.tick
    src, net = _times(m, now)
    out: dict[str, Any] = {"updateType": "PrcChange", "marketStatus": "Open"}
    for lvl in range(1, 5):
        out[f"bidPrice{lvl}"] = round_to(bid - (lvl - 1) * tick, tick)
        out[f"askPrice{lvl}"] = round_to(ask + (lvl - 1) * tick, tick)
        out[f"bidSize{lvl}"] = rng.randint(1, 60) * lvl
        out[f"askSize{lvl}"] = rng.randint(1, 60) * lvl
        out[f"bidOrders{lvl}"] = rng.randint(1, 25)
        out[f"askOrders{lvl}"] = rng.randint(1, 25)
    out.update(srcTimestamp=src, netTimestamp=net)
    return out


def _gen_future_print(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    sec = m.security(pkey)
    us = m.underlier_state[sec.u.tk]
    bid, ask = _book(m, us)
    rng = m.rng
    side = rng.choice(("Bid", "Ask"))
    size = rng.randint(1, 20)
    us.cluster += 1
    us.volume += size
    prt_ts = now - rng.randint(100_000, 600_000)
    net = prt_ts + rng.randint(10_000, 80_000)
    return {
        "prtExch": sec.u.ts,
        "prtSize": size,
        "prtPrice": bid if side == "Bid" else ask,
        "prtClusterNum": us.cluster,
        "prtClusterSize": size,
        "prtOrders": rng.randint(1, 4),
        "prtQuan": size,
        "prtVolume": us.volume,
        "bid": bid,
        "ask": ask,
        "bsz": rng.randint(1, 60),
        "asz": rng.randint(1, 60),
        "age": round(rng.uniform(0.0001, 0.5), 4),
        "prtSide": side,
        "prtTimestamp": prt_ts,
        "netTimestamp": net,
        "timestamp": net + rng.randint(1_000, 30_000),
    }


GENERATORS: dict[str, Generator] = {
    "OptionNbboQuote": _gen_option_nbbo,
    "OptionPrint": _gen_option_print,
    "LiveImpliedQuote": _gen_implied,
    "LiveSurfaceCurve": _gen_surface,
    "StockBookQuote": _gen_stock_book,
    "StockPrint": _gen_stock_print,
    "FutureBookQuote": _gen_future_book,
    "FuturePrint": _gen_future_print,
}
"""The hand-written generator of each type it exists for."""

GENERATED_TYPES: tuple[str, ...] = tuple(GENERATORS)
"""Types with a hand-written generator; every other dictionary type uses the generic one."""
