"""A seeded, self-consistent fake market for the MLink simulator, and its JSON wire encoding.

The market holds the server-side cache: the latest record of every primary key of every
generated message type, exactly what an MLinkStream snapshot replays (PROTOCOL.md §7.1).
``update()`` produces the next record for one pkey and replaces the cached one (create/replace
semantics, §5.2).

Values are meant to survive a quant's glance: underliers random-walk on their tick grid, option
quotes come from a Black-Scholes (Black-76 for futures) model with a skew, bid < ask, sizes and
cumulative sizes are consistent, enums come from the dictionary eSet, ns timestamps are ordered
``srcTimestamp < netTimestamp <= header sTim``, ``bidTime``/``askTime`` are US/Central ms since
midnight derived from ``srcTimestamp`` (§5.6), and DateTime strings are UTC.  Every dictionary
type without a hand-written generator can still be produced from its FieldDefs
(:func:`generic_values`), for all-type and schema-drift tests.

Wire encoding (§5.4-§5.6): body fields at their default (0, 0.0, enum ``None``, ``""``) are
omitted, whole-valued numbers print without a fraction, ``Float`` fields print the shortest
decimal of their float32 value, keys nest under ``pkey``.  All randomness comes from one seeded
``random.Random``; all times come from the caller, so a run is reproducible.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
import struct
import zoneinfo
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capture import stripes as stripe_rules
from capture.schemas import FieldDef, MessageDef, lookup

__all__ = [
    "CORE_TYPES",
    "DEFAULT_UNIVERSE",
    "GENERATED_TYPES",
    "Market",
    "Record",
    "Underlier",
    "central_ms",
    "encode_message",
    "fmt_double",
    "fmt_float32",
    "generic_values",
    "is_default",
    "utc_text",
]

# ---------------------------------------------------------------------------------------------
# Wire encoding
# ---------------------------------------------------------------------------------------------

_F32 = struct.Struct("<f")
_INT_TYPES = frozenset({"Int", "UInt", "Long", "Short", "UShort", "Byte"})
_STR_TYPES = frozenset({"Enum", "Flag", "String", "Text1", "Text2"})
_KEY_TYPES = frozenset({"TickerKey", "ExpiryKey", "OptionKey"})
_KEY_PARTS = ("at", "ts", "tk", "dt", "xx", "cp")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CENTRAL = zoneinfo.ZoneInfo("America/Chicago")
_EASTERN = zoneinfo.ZoneInfo("America/New_York")
_NS_PER_DAY = 86_400 * 10**9
_NS_PER_YEAR = 365 * _NS_PER_DAY


def to_float32(x: float) -> float:
    """``x`` rounded to the nearest float32, as a Python float."""
    value: float = _F32.unpack(_F32.pack(x))[0]
    return value


def fmt_float32(x: float) -> str:
    """The shortest decimal that reads back as the same float32; whole values without fraction.

    This is how the server prints ``Float`` fields (a 4-byte float server-side, §10):
    ``141.69``, ``4``, ``1.9e-05``.
    """
    if not math.isfinite(x):
        raise ValueError(f"cannot encode non-finite float {x!r}")  # JSON form unknown (§5.5)
    v = to_float32(x)
    if v.is_integer() and abs(v) < 1e16:
        return str(int(v))
    for digits in range(1, 10):
        text = f"{v:.{digits}g}"
        if to_float32(float(text)) == v:
            return text
    return repr(v)  # pragma: no cover - nine significant digits always round-trip a float32


def fmt_double(x: float) -> str:
    """Shortest round-trip decimal of a double; whole values without fraction (``"xx":4550``)."""
    if not math.isfinite(x):
        raise ValueError(f"cannot encode non-finite float {x!r}")
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def utc_text(ns: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC, microseconds, truncated) — header and DateTime form."""
    t = _EPOCH + dt.timedelta(microseconds=ns // 1000)
    return f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond:06d}"


def central_ms(ns: int) -> int:
    """Milliseconds since midnight, US/Central, of a ns-since-epoch time (``bidTime``, §5.6)."""
    t = (_EPOCH + dt.timedelta(microseconds=ns // 1000)).astimezone(_CENTRAL)
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


def is_default(ftype: str, value: Any) -> bool:
    """Whether a body value is the server default, i.e. omitted on the wire (§5.5)."""
    if value is None:
        return True
    if ftype in _STR_TYPES:
        return value == "" or (ftype in ("Enum", "Flag") and value == "None")
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, list | tuple | dict):
        return len(value) == 0
    return False


def _enc_scalar(ftype: str, v: Any) -> str:
    # Dispatch on the Python value first, so a drifted value (an Int field that became a float,
    # a new field) is still written the way a server would write it.
    if isinstance(v, bool):
        raise TypeError("booleans are not an MLink JSON type (use the YesNo enum)")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return fmt_float32(v) if ftype == "Float" else fmt_double(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True)
    if isinstance(v, dt.date):
        return f'"{v.isoformat()}"'
    if isinstance(v, Mapping):
        return _enc_key(v)
    raise TypeError(f"cannot encode {type(v).__name__} for a {ftype} field")


def _enc_key(key: Mapping[str, Any]) -> str:
    parts = []
    for part in _KEY_PARTS:
        if part in key:
            v = key[part]
            text = fmt_double(float(v)) if part == "xx" else json.dumps(v, ensure_ascii=True)
            parts.append(f'"{part}":{text}')
    return "{" + ",".join(parts) + "}"


def _enc_value(f: FieldDef, v: Any, mdef: MessageDef) -> str:
    if f.ftype == "DateTime" and isinstance(v, int):
        return f'"{utc_text(v)}"'
    if f.ftype == "Repeater":
        members = mdef.members(f.name)
        items = []
        for item in v:
            inner = [
                f'"{m.name}":{_enc_value(m, item[m.name], mdef)}'
                for m in members
                if not is_default(m.ftype, item.get(m.name))
            ]
            items.append("{" + ",".join(inner) + "}")
        return "[" + ",".join(items) + "]"
    return _enc_scalar(f.ftype, v)


def encode_message(
    mdef: MessageDef,
    values: Mapping[str, Any],
    *,
    view: Collection[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The JSON ``message`` object of one record, compact, ASCII.

    ``values`` maps dictionary field names to Python values (key objects as dicts, DateTime as
    ns ints or text, Repeaters as lists of dicts).  ``view`` is an optional set of case-folded
    field names to keep (MLinkStream ``view``; the pkey is always sent).  ``extra`` appends
    fields the dictionary does not know (schema drift).
    """
    parts: list[str] = []
    keys = [
        f'"{f.name}":{_enc_value(f, values[f.name], mdef)}'
        for f in mdef.key_fields
        if values.get(f.name) is not None
    ]
    if keys:
        parts.append('"pkey":{' + ",".join(keys) + "}")
    for f in mdef.body_fields:
        v = values.get(f.name)
        if is_default(f.ftype, v):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue  # NaN/Infinity have no known JSON form (§5.5): leave the field out
        if view is not None and f.name.casefold() not in view:
            continue
        parts.append(f'"{f.name}":{_enc_value(f, v, mdef)}')
    for name, v in (extra or {}).items():
        parts.append(f"{json.dumps(name)}:{_enc_scalar('Double', v)}")
    return "{" + ",".join(parts) + "}"


# ---------------------------------------------------------------------------------------------
# Universe
# ---------------------------------------------------------------------------------------------


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
_RATE = 0.0431


# ---------------------------------------------------------------------------------------------
# Pricing helpers
# ---------------------------------------------------------------------------------------------


def _ncdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _npdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True, slots=True)
class _Greeks:
    price: float
    delta: float
    gamma: float
    theta: float  # per day
    vega: float  # per vol point (0.01)
    vanna: float
    volga: float
    rho: float
    phi: float


def _black(fwd: float, strike: float, years: float, vol: float, call: bool, df: float) -> _Greeks:
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
    return _Greeks(max(price, 0.0), delta, gamma, theta, vega, vanna, volga, rho, phi)


def _round_to(x: float, tick: float) -> float:
    return round(round(x / tick) * tick, 10)


def _floor_to(x: float, tick: float) -> float:
    return round(math.floor(x / tick + 1e-9) * tick, 10)


def _option_tick(root: str, price: float) -> float:
    if root in ("SPX", "SPXW", "NDX", "NDXP"):
        return 0.05 if price < 3 else 0.10
    if root in ("ES",):
        return 0.05 if price < 5 else 0.25
    return 0.01 if price < 3 else 0.05


def _strike_step(spot: float) -> float:
    for bound, step in ((5, 0.5), (25, 1.0), (100, 2.5), (250, 5.0), (1000, 10.0), (3000, 25.0)):
        if spot < bound:
            return step
    return 50.0 if spot < 10_000 else 100.0


# ---------------------------------------------------------------------------------------------
# Records and state
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Record:
    """One cached record: the latest version of one pkey of one message type.

    Treat as immutable once published: subscriptions and the snapshot hold references.
    """

    mdef: MessageDef
    pkey: tuple[Hashable, ...]
    values: Mapping[str, Any]
    stripes: frozenset[str]
    sent_ns: int
    """Header ``sTim`` in ns, truncated to the microsecond the header shows."""
    sid: int
    seqn: int
    _message: str | None = None

    @property
    def msg_type(self) -> str:
        return self.mdef.name

    def message_json(self) -> str:
        """The encoded ``message`` object (computed once, shared by every connection)."""
        if self._message is None:
            self._message = encode_message(self.mdef, self.values)
        return self._message


@dataclass(slots=True)
class _UState:
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
class _OState:
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
class _Sec:
    """A security key: the JSON key object plus what the generators need to price it."""

    kind: str  # "ticker", "expiry", "option"
    obj: Mapping[str, Any]
    u: Underlier
    expiry: dt.date | None = None
    strike: float = 0.0
    call: bool = True

    @property
    def ident(self) -> tuple[Hashable, ...]:
        return tuple(self.obj[p] for p in _KEY_PARTS if p in self.obj)


def _ticker_obj(u: Underlier, tk: str | None = None) -> dict[str, Any]:
    return {"at": u.at, "ts": u.ts, "tk": tk or u.tk}


# ---------------------------------------------------------------------------------------------
# The market
# ---------------------------------------------------------------------------------------------

Generator = Callable[["Market", tuple[Hashable, ...], Mapping[str, Any], int], dict[str, Any]]


class Market:
    """Server-side cache plus the generators that keep it moving.

    ``types``: message types to generate from the start; more can be added later with
    :meth:`ensure_type` (any dictionary type, through the generic generator).
    ``symbols``: restrict the universe to these underlier tickers (None: all).
    ``stripes``: restrict the universe to keys in any of these stripe codes (None: all).
    ``start_ns``: wall-clock time of creation; the initial cache is stamped over the
    ``warmup_ns`` before it, so a ``highwaterTs`` resume has older and newer records to tell
    apart.
    """

    def __init__(
        self,
        *,
        seed: int,
        start_ns: int,
        types: Iterable[str] = CORE_TYPES,
        universe: Sequence[Underlier] = DEFAULT_UNIVERSE,
        symbols: Collection[str] | None = None,
        stripes: Collection[str] | None = None,
        stripe_table: str = stripe_rules.DEFAULT_TABLE,
        expiries: int = 3,
        strikes: int = 3,
        generic_max_keys: int = 64,
        warmup_ns: int = 60 * 10**9,
    ) -> None:
        self.rng = random.Random(seed)
        self.stripe_table = stripe_rules.get_table(stripe_table)
        self.start_ns = start_ns
        self.warmup_ns = warmup_ns
        self.generic_max_keys = generic_max_keys
        self.today = (
            (_EPOCH + dt.timedelta(microseconds=start_ns // 1000)).astimezone(_EASTERN).date()
        )
        wanted = set(symbols) if symbols is not None else None
        self.universe = tuple(u for u in universe if wanted is None or u.tk in wanted)
        self._stripe_filter = frozenset(stripes) if stripes is not None else None
        self._ustate = {u.tk: _UState(u, u.spot) for u in self.universe}
        self._ostate: dict[tuple[Hashable, ...], _OState] = {}
        self._n_expiries = expiries
        self._n_strikes = strikes
        self._cache: dict[str, dict[tuple[Hashable, ...], Record]] = {}
        self._keys: dict[str, list[tuple[Hashable, ...]]] = {}
        self._key_values: dict[str, dict[tuple[Hashable, ...], dict[str, Any]]] = {}
        self._sec_of: dict[tuple[Hashable, ...], _Sec] = {}
        self._stripes_of: dict[tuple[Hashable, ...], frozenset[str]] = {}
        self._seq: dict[int, int] = {}
        self._counters: dict[Hashable, int] = {}
        self.tickers = [s for s in self._securities("ticker") if self._keep(s)]
        self.options = [s for s in self._securities("option") if self._keep(s)]
        self.expiry_keys = [s for s in self._securities("expiry") if self._keep(s)]
        for name in types:
            if not self.ensure_type(name):
                raise ValueError(f"unknown message type {name!r}")

    # -- public ---------------------------------------------------------------------------------

    @property
    def types(self) -> tuple[str, ...]:
        """Message types currently generated (canonical names)."""
        return tuple(self._cache)

    def has_type(self, name: str) -> bool:
        return name in self._cache

    def ensure_type(self, name: str) -> bool:
        """Start generating ``name`` (canonical or any case); False if not a dictionary type."""
        mdef = lookup(name)
        if mdef is None:
            return False
        if mdef.name in self._cache:
            return True
        keys = self._key_domain(mdef)
        self._keys[mdef.name] = [k for k, _ in keys]
        self._key_values[mdef.name] = dict(keys)
        cache: dict[tuple[Hashable, ...], Record] = {}
        self._cache[mdef.name] = cache
        # Warm-up: one record per pkey, stamped over the warm-up window in a random order.
        n = len(keys)
        if n:
            times = sorted(
                self.start_ns - self.warmup_ns + self.rng.randrange(self.warmup_ns)
                for _ in range(n)
            )
            order = list(range(n))
            self.rng.shuffle(order)
            for i, t in zip(order, times, strict=True):
                pkey = keys[i][0]
                cache[pkey] = self._make(mdef, pkey, t)
            # Cache order = pkey order, so snapshots are deterministic and easy to read.
            self._cache[mdef.name] = {k: cache[k] for k, _ in keys}
        return True

    def snapshot(self, msg_type: str) -> list[Record]:
        """The cached latest record of every pkey of ``msg_type`` (canonical name)."""
        return list(self._cache.get(msg_type, {}).values())

    def pkey_count(self, msg_type: str) -> int:
        return len(self._keys.get(msg_type, ()))

    def update(self, msg_type: str, now_ns: int) -> Record | None:
        """Generate the next record for a random pkey of ``msg_type``, cache and return it."""
        keys = self._keys.get(msg_type)
        if not keys:
            return None
        pkey = keys[self.rng.randrange(len(keys))]
        mdef = self._cache[msg_type][pkey].mdef
        rec = self._make(mdef, pkey, now_ns)
        self._cache[msg_type][pkey] = rec
        return rec

    # -- universe -------------------------------------------------------------------------------

    def _keep(self, sec: _Sec) -> bool:
        if self._stripe_filter is None:
            return True
        return bool(self._sec_stripes(sec) & self._stripe_filter)

    def _sec_stripes(self, sec: _Sec) -> frozenset[str]:
        return stripe_rules.stripes_of(
            str(sec.obj["tk"]), str(sec.obj["ts"]), str(sec.obj["at"]), self.stripe_table
        )

    def _expiries(self, u: Underlier) -> list[dt.date]:
        out: list[dt.date] = []
        if u.kind == "future" and u.ts in ("CME", "CBOT", "COMEX"):
            d = self.today  # quarterly third-Friday style contracts
            while len(out) < max(1, self._n_expiries - 1):
                d = (d.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
                if d.month % 3 == 0:
                    out.append(_third_weekday(d.year, d.month, 4))
            return out
        d = self.today + dt.timedelta(days=1)
        while len(out) < self._n_expiries:
            if d.weekday() == u.expiry_weekday:
                out.append(d)
            d += dt.timedelta(days=1)
        return out

    def _securities(self, kind: str) -> list[_Sec]:
        out: list[_Sec] = []
        for u in self.universe:
            if kind == "ticker":
                if u.kind != "future":
                    out.append(_Sec("ticker", _ticker_obj(u), u))
            elif kind == "expiry":
                roots = u.roots or ((u.tk,) if u.kind == "future" else ())
                for root in roots:
                    for d in self._expiries(u):
                        obj = {**_ticker_obj(u, root), "dt": d.isoformat()}
                        out.append(_Sec("expiry", obj, u, expiry=d))
            else:
                step = _strike_step(u.spot)
                atm = _round_to(u.spot, step)
                for root in u.roots:
                    for d in self._expiries(u):
                        for k in range(-self._n_strikes, self._n_strikes + 1):
                            strike = round(atm + k * step, 6)
                            if strike <= 0:
                                continue
                            for cp in ("Call", "Put"):
                                obj = {
                                    **_ticker_obj(u, root),
                                    "dt": d.isoformat(),
                                    "xx": strike,
                                    "cp": cp,
                                }
                                out.append(_Sec("option", obj, u, d, strike, cp == "Call"))
        return out

    def _futures(self) -> list[_Sec]:
        return [s for s in self.expiry_keys if s.u.kind == "future" and s.obj["tk"] == s.u.tk]

    def _security_domain(self, ftype: str, name: str, mdef: MessageDef) -> list[_Sec]:
        if ftype == "OptionKey":
            return self.options
        if ftype == "TickerKey":
            return self.tickers
        # ExpiryKey: futures for future-market types, option expiries otherwise.
        if name == "fkey" or mdef.token.startswith("Fut"):
            return self._futures()
        return [s for s in self.expiry_keys if s.u.roots]

    def _key_domain(self, mdef: MessageDef) -> list[tuple[tuple[Hashable, ...], dict[str, Any]]]:
        """Every pkey of a type: ``(identity tuple, key field values)`` in a stable order."""
        kfields = mdef.key_fields
        if mdef.name in _GENERATORS:
            sec_field = kfields[0]
            domain = self._security_domain(sec_field.ftype, sec_field.name, mdef)
            if mdef.name in ("StockBookQuote", "StockPrint"):
                domain = [s for s in domain if s.u.has_book]
            out = []
            for sec in domain:
                values: dict[str, Any] = {sec_field.name: dict(sec.obj)}
                for extra in kfields[1:]:  # LiveSurfaceCurve: surfaceType
                    values[extra.name] = "Live"
                out.append(self._register(mdef, sec, values))
            return out
        return self._generic_key_domain(mdef)

    def _register(
        self, mdef: MessageDef, sec: _Sec | None, values: dict[str, Any]
    ) -> tuple[tuple[Hashable, ...], dict[str, Any]]:
        ident: list[Hashable] = []
        for f in mdef.key_fields:
            v = values[f.name]
            ident.append(tuple(v[p] for p in _KEY_PARTS if p in v) if isinstance(v, dict) else v)
        pkey = tuple(ident)
        if sec is not None:
            self._sec_of[pkey] = sec
            self._stripes_of[pkey] = self._sec_stripes(sec)
        else:
            self._stripes_of[pkey] = frozenset()
        return pkey, values

    def _generic_key_domain(
        self, mdef: MessageDef
    ) -> list[tuple[tuple[Hashable, ...], dict[str, Any]]]:
        kfields = mdef.key_fields
        if not kfields:
            return [self._register(mdef, None, {})]
        domains: list[list[Any]] = []
        sec_index = -1
        for i, f in enumerate(kfields):
            if f.ftype in _KEY_TYPES:
                secs = list(self._security_domain(f.ftype, f.name, mdef))
                self.rng.shuffle(secs)
                if sec_index < 0:
                    sec_index = i
                    domains.append(secs)
                else:
                    domains.append(secs[:1])
            else:
                domains.append(_small_domain(f, self.today, self.rng))
        if sec_index > 0:  # iterate securities slowest, so a capped domain still spans stripes
            domains.insert(0, domains.pop(sec_index))
            kfields = (kfields[sec_index], *kfields[:sec_index], *kfields[sec_index + 1 :])
        out = []
        for combo in itertools.islice(itertools.product(*domains), self.generic_max_keys):
            values: dict[str, Any] = {}
            first_sec: _Sec | None = None
            for f, v in zip(kfields, combo, strict=True):
                if isinstance(v, _Sec):
                    values[f.name] = dict(v.obj)
                    first_sec = first_sec or v
                else:
                    values[f.name] = v
            out.append(self._register(mdef, first_sec, values))
        return out

    # -- record construction --------------------------------------------------------------------

    def _next_seq(self, sid: int) -> int:
        self._seq[sid] = n = self._seq.get(sid, _seq_base(sid)) + 1
        return n

    def _bump(self, counter: Hashable) -> int:
        """A named counter that starts at a plausible mid-day value and rises by one."""
        n = self._counters.get(counter, 1_000 + self.rng.randrange(50_000)) + 1
        self._counters[counter] = n
        return n

    def _make(self, mdef: MessageDef, pkey: tuple[Hashable, ...], now_ns: int) -> Record:
        sent_ns = (now_ns // 1000) * 1000
        keyvals = self._key_values[mdef.name][pkey]
        gen = _GENERATORS.get(mdef.name)
        body = gen(self, pkey, keyvals, sent_ns) if gen else self._generic(mdef, pkey, sent_ns)
        values = {**keyvals, **body}
        sid = _sender_id(mdef.token)
        return Record(
            mdef=mdef,
            pkey=pkey,
            values=values,
            stripes=self._stripes_of.get(pkey, frozenset()),
            sent_ns=sent_ns,
            sid=sid,
            seqn=self._next_seq(sid),
        )

    def _times(self, sent_ns: int) -> tuple[int, int]:
        """``(srcTimestamp, netTimestamp)`` a little before the header send time."""
        net = sent_ns - self.rng.randint(20_000, 400_000)
        src = net - self.rng.randint(5_000, 250_000)
        return src, net

    def _step(self, us: _UState) -> float:
        """One random-walk step of an underlier (about one second of diffusion)."""
        u = us.u
        sigma = u.vol * math.sqrt(1.0 / (252 * 6.5 * 3600))
        us.spot = max(u.tick, _round_to(us.spot * math.exp(self.rng.gauss(0.0, sigma)), u.tick))
        return us.spot

    def _sec(self, pkey: tuple[Hashable, ...]) -> _Sec:
        return self._sec_of[pkey]

    def _years(self, expiry: dt.date, now_ns: int) -> float:
        close = dt.datetime.combine(expiry, dt.time(16, 0), tzinfo=_EASTERN)
        ns = (close - _EPOCH) // dt.timedelta(microseconds=1) * 1000 - now_ns
        return max(ns / _NS_PER_YEAR, 1.0 / (365 * 24))

    def _vol(self, sec: _Sec, fwd: float, years: float) -> tuple[float, float]:
        """``(atm vol, surface vol at this strike)``: a term structure and a put skew."""
        atm = sec.u.vol * (1.0 + 0.08 * math.exp(-years * 12))
        if sec.kind != "option":
            return atm, atm
        m = math.log(sec.strike / fwd) / max(atm * math.sqrt(years), 1e-6)
        return atm, max(0.02, atm * (1.0 - 0.07 * m + 0.02 * m * m))

    def _price(self, sec: _Sec, now_ns: int) -> tuple[float, float, float, float, _Greeks]:
        """``(spot, forward, years, surface vol, greeks)`` for an option key."""
        us = self._ustate[sec.u.tk]
        assert sec.expiry is not None
        years = self._years(sec.expiry, now_ns)
        sdiv = 0.0 if sec.u.kind == "future" else 0.0046
        fwd = us.spot if sec.u.kind == "future" else us.spot * math.exp((_RATE - sdiv) * years)
        _, svol = self._vol(sec, fwd, years)
        g = _black(fwd, sec.strike, years, svol, sec.call, math.exp(-_RATE * years))
        return us.spot, fwd, years, svol, g

    def _quote_option(self, pkey: tuple[Hashable, ...], now_ns: int) -> tuple[_OState, bool]:
        """Move the underlier, re-quote the option; returns its state and "price changed"."""
        sec = self._sec(pkey)
        us = self._ustate[sec.u.tk]
        self._step(us)
        st = self._ostate.setdefault(pkey, _OState())
        _, _, _, _, g = self._price(sec, now_ns)
        root = str(sec.obj["tk"])
        tick = _option_tick(root, g.price)
        width = max(tick, _round_to(0.012 * g.price + tick, tick))
        bid = _floor_to(g.price - width / 2 + tick / 2, tick)
        ask = max(_round_to(bid + width, tick), tick)
        if bid < 0:
            bid = 0.0
        if ask <= bid:
            ask = _round_to(bid + tick, tick)
        src, net = self._times(now_ns)
        changed = (bid, ask) != (st.bid, st.ask)
        if bid != st.bid or not st.bid_time:
            st.bid_time = central_ms(src)
        if ask != st.ask or not st.ask_time:
            st.ask_time = central_ms(src)
        st.bid, st.ask, st.net_ts = bid, ask, net
        rng = self.rng
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
            "bidPrice2": _round_to(bid - tick, tick) if bid - tick > 0 else 0.0,
            "askPrice2": _round_to(ask + tick, tick),
            "cumBidSize2": rng.randint(1, 800) if bid - tick > 0 else 0,
            "cumAskSize2": rng.randint(1, 800),
            "srcTimestamp": src,
        }
        return st, changed

    def _generic(self, mdef: MessageDef, pkey: tuple[Hashable, ...], now_ns: int) -> dict[str, Any]:
        sec = self._sec_of.get(pkey)
        spot = self._step(self._ustate[sec.u.tk]) if sec is not None else None
        return generic_values(mdef, self.rng, now_ns, spot=spot, today=self.today)


def _third_weekday(year: int, month: int, weekday: int) -> dt.date:
    d = dt.date(year, month, 1)
    d += dt.timedelta(days=(weekday - d.weekday()) % 7)
    return d + dt.timedelta(days=14)


def _mask(rng: random.Random) -> int:
    m = 0
    for _ in range(rng.randint(1, 4)):
        m |= 1 << rng.randrange(16)
    return m


_SENDER_IDS = {"OptMktData": 20417, "EqtMktData": 18409, "OptAnalytics": 21133}
_SENDER_IDS["OptSurface"] = 21133


def _sender_id(token: str) -> int:
    """A stable non-zero ``sID`` per data product (data headers carry one; admin ones 0)."""
    if token in _SENDER_IDS:
        return _SENDER_IDS[token]
    return 10_000 + sum(ord(c) * (i + 1) for i, c in enumerate(token)) % 20_000


def _seq_base(sid: int) -> int:
    return (sid * 7919) % 90_000 + 1_000


def _small_domain(f: FieldDef, today: dt.date, rng: random.Random) -> list[Any]:
    """Two plausible values for a non-security key field of a generic type."""
    t = f.ftype
    if t in ("Enum", "Flag"):
        vals = [v for v in f.enum_values if v != "None"] or list(f.enum_values)
        return vals[:2]
    if t in _INT_TYPES:
        return [1, 2]
    if t == "DateKey":
        return [today]
    if t == "DateTime":
        midnight = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
        return [(midnight - _EPOCH) // dt.timedelta(microseconds=1) * 1000]
    if t in ("Float", "Double"):
        return [1.0]
    return ["SIM1", "SIM2"]


_MONEY_WORDS = ("price", "prc", "bid", "ask", "mark", "close", "open", "high", "low", "last")


def generic_values(
    mdef: MessageDef,
    rng: random.Random,
    now_ns: int,
    *,
    spot: float | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """Body values for any dictionary type, from its FieldDefs alone.

    Enum/Flag values come from the eSet, numbers fit their type, price-like names sit near
    ``spot`` when the key has an underlier, ``*Timestamp`` Longs are ns near ``now_ns``,
    DateTime fields are UTC ns, repeaters get one or two items.  About a quarter of the fields
    are left at their default so the omission rule is exercised.  ``TimeSpan`` fields are never
    filled: their JSON form is unknown (§5.6).
    """
    day = today or (_EPOCH + dt.timedelta(microseconds=now_ns // 1000)).date()
    out: dict[str, Any] = {}
    for f in mdef.body_fields:
        if f.ftype == "Repeater":
            members = mdef.members(f.name)
            out[f.name] = [
                _generic_scalars(members, rng, now_ns, spot, day, 0.0)
                for _ in range(rng.randint(1, 2))
            ]
            continue
        out.update(_generic_scalars((f,), rng, now_ns, spot, day, 0.25))
    return out


def _generic_scalars(
    fields: Iterable[FieldDef],
    rng: random.Random,
    now_ns: int,
    spot: float | None,
    day: dt.date,
    p_default: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        if f.ftype in ("TimeSpan", "Repeater") or rng.random() < p_default:
            continue
        v = _generic_scalar(f, rng, now_ns, spot, day)
        if v is not None:
            out[f.name] = v
    return out


def _generic_scalar(
    f: FieldDef, rng: random.Random, now_ns: int, spot: float | None, day: dt.date
) -> Any:
    name = f.name.lower()
    t = f.ftype
    if t in ("Enum", "Flag"):
        vals = [v for v in f.enum_values if v != "None"]
        return rng.choice(vals) if vals else None
    if t in ("Float", "Double"):
        if spot is not None and any(w in name for w in _MONEY_WORDS):
            v = spot * (1.0 + rng.uniform(-0.01, 0.01))
            return round(v, 2)
        v = round(rng.uniform(-1.0, 1.0) if "err" in name else rng.uniform(0.0, 1.0), 4)
        return to_float32(v) if t == "Float" else v
    if t == "Long":
        if "timestamp" in name or name.endswith("ts"):
            return now_ns - rng.randint(10_000, 5_000_000)
        return rng.randint(1, 10**12)
    if t == "Int":
        if name.endswith("time"):
            return central_ms(now_ns)
        return rng.randint(1, 100_000)
    if t == "UInt":
        return rng.randint(1, 65_535)
    if t == "Short":
        return rng.randint(1, 1_000)
    if t == "UShort":
        return rng.randint(1, 5_000)
    if t == "Byte":
        return rng.randint(1, 255)
    if t == "DateTime":
        return now_ns - rng.randint(0, 5_000_000)
    if t == "DateKey":
        return day
    if t in ("String", "Text1", "Text2"):
        return "SIM" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3))
    if t in _KEY_TYPES:
        return None  # non-key security references are left out (default)
    return None


# ---------------------------------------------------------------------------------------------
# Hand-written generators for the core types
# ---------------------------------------------------------------------------------------------


def _gen_option_nbbo(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    st, changed = m._quote_option(pkey, now)
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
    st, _ = m._quote_option(pkey, now)
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
    st, _ = m._quote_option(pkey, now)
    sec = m._sec(pkey)
    spot, fwd, years, svol, g = m._price(sec, now)
    atm, _ = m._vol(sec, fwd, years)
    bid, ask = float(st.quote["bidPrice"]), float(st.quote["askPrice"])
    vega_pt = max(g.vega, 1e-4)
    mid = (bid + ask) / 2 if bid > 0 else ask / 2
    is_fut = sec.u.kind == "future"
    df = math.exp(-_RATE * years)

    def slide(mult: float) -> float:
        shifted = _black(fwd * mult, sec.strike, years, svol, sec.call, df).price
        return round(shifted - g.price, 2)

    rng = m.rng
    net = now - rng.randint(10_000, 60_000)
    return {
        "ticker": _ticker_obj(sec.u),
        "uPrc": round(spot, 4),
        "uOff": round(rng.uniform(-0.05, 0.05), 4),
        "years": years,
        "xAxis": math.log(sec.strike / fwd) / (atm * math.sqrt(years)),
        "rate": _RATE,
        "sdiv": _RATE if is_fut else 0.0046,
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
    sec = m._sec(pkey)
    us = m._ustate[sec.u.tk]
    spot = m._step(us)
    assert sec.expiry is not None
    years = m._years(sec.expiry, now)
    is_fut = sec.u.kind == "future"
    sdiv = _RATE if is_fut else 0.0046
    fwd = spot if is_fut else spot * math.exp((_RATE - sdiv) * years)
    atm, _ = m._vol(sec, fwd, years)
    rng = m.rng
    tick = sec.u.tick
    skew = [round(0.012 * (i + 1) ** 1.45 * (1 + rng.uniform(-0.05, 0.05)), 4) for i in range(6)]
    err_xx = _round_to(fwd * (1 + rng.uniform(-0.05, 0.05)), _strike_step(spot))
    fit_ts = now - rng.randint(100_000, 900_000)
    out: dict[str, Any] = {
        "ticker": _ticker_obj(sec.u),
        "uPrc": round(spot, 4),
        "uBid": _round_to(spot - tick / 2, tick),
        "uAsk": _round_to(spot + tick / 2, tick),
        "years": years,
        "rate": _RATE,
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
        "atmVega": _black(fwd, fwd, years, atm, True, 1.0).vega,
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
        "skewCounter": m._bump(("skew", pkey)),
        "sdivCounter": m._bump(("sdiv", sec.u.tk)),
        "sTimestamp": fit_ts,
        "timestamp": fit_ts + rng.randint(50_000, 400_000),
    }
    return out


def _book(m: Market, us: _UState) -> tuple[float, float]:
    spot = m._step(us)
    tick = us.u.tick
    spread_ticks = 1 if spot < 300 or us.u.kind == "future" else m.rng.randint(1, 3)
    bid = _floor_to(spot, tick)
    return bid, _round_to(bid + spread_ticks * tick, tick)


def _gen_stock_book(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    us = m._ustate[m._sec(pkey).u.tk]
    bid, ask = _book(m, us)
    rng = m.rng
    changed = (bid, ask) != (us.last_bid, us.last_ask)
    us.last_bid, us.last_ask = bid, ask
    us.bid_sz, us.ask_sz = rng.randint(1, 40), rng.randint(1, 40)
    tick = us.u.tick
    src, net = m._times(now)
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
        "bidPrice2": _round_to(bid - tick, tick),
        "bidSize2": rng.randint(1, 80),
        "bidExch2": rng.choice(_STK_EXCH),
        "bidMask2": _mask(rng),
        "askPrice2": _round_to(ask + tick, tick),
        "askSize2": rng.randint(1, 80),
        "askExch2": rng.choice(_STK_EXCH),
        "askMask2": _mask(rng),
        "srcTimestamp": src,
        "netTimestamp": net,
    }


def _gen_stock_print(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    us = m._ustate[m._sec(pkey).u.tk]
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
    us = m._ustate[m._sec(pkey).u.tk]
    bid, ask = _book(m, us)
    rng = m.rng
    tick = us.u.tick
    src, net = m._times(now)
    out: dict[str, Any] = {"updateType": "PrcChange", "marketStatus": "Open"}
    for lvl in range(1, 5):
        out[f"bidPrice{lvl}"] = _round_to(bid - (lvl - 1) * tick, tick)
        out[f"askPrice{lvl}"] = _round_to(ask + (lvl - 1) * tick, tick)
        out[f"bidSize{lvl}"] = rng.randint(1, 60) * lvl
        out[f"askSize{lvl}"] = rng.randint(1, 60) * lvl
        out[f"bidOrders{lvl}"] = rng.randint(1, 25)
        out[f"askOrders{lvl}"] = rng.randint(1, 25)
    out.update(srcTimestamp=src, netTimestamp=net)
    return out


def _gen_future_print(
    m: Market, pkey: tuple[Hashable, ...], kv: Mapping[str, Any], now: int
) -> dict[str, Any]:
    sec = m._sec(pkey)
    us = m._ustate[sec.u.tk]
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


_GENERATORS: dict[str, Generator] = {
    "OptionNbboQuote": _gen_option_nbbo,
    "OptionPrint": _gen_option_print,
    "LiveImpliedQuote": _gen_implied,
    "LiveSurfaceCurve": _gen_surface,
    "StockBookQuote": _gen_stock_book,
    "StockPrint": _gen_stock_print,
    "FutureBookQuote": _gen_future_book,
    "FuturePrint": _gen_future_print,
}

GENERATED_TYPES: tuple[str, ...] = tuple(_GENERATORS)
"""Types with a hand-written generator; every other dictionary type uses the generic one."""
