"""A seeded, self-consistent fake market for the MLink simulator: the server-side cache.

The market holds the latest record of every primary key of every generated message type,
exactly what an MLinkStream snapshot replays (PROTOCOL.md §7.1).  ``update()`` produces the next
record for one pkey and replaces the cached one (create/replace semantics, §5.2).  Underliers
random-walk on their tick grid; the values of a record come from a hand-written generator
(:mod:`capture.sim.generators`) or, for every other dictionary type, from its FieldDefs
(:mod:`capture.sim.generic`).  All randomness comes from one seeded ``random.Random``; all
times come from the caller, so a run is reproducible.

The simulator's other market modules are re-exported here: the wire encoding
(:mod:`capture.sim.encoding`), the universe (:mod:`capture.sim.universe`) and the cached
record (:mod:`capture.sim.cached_record`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Any

from capture import stripes as stripe_rules
from capture.schemas import MessageDef, lookup
from capture.sim.cached_record import Record
from capture.sim.encoding import (
    EPOCH,
    KEY_PARTS,
    central_ms,
    encode_message,
    fmt_double,
    fmt_float32,
    is_default,
    utc_text,
)
from capture.sim.generators import CORE_TYPES, GENERATED_TYPES, GENERATORS
from capture.sim.generic import generic_values, small_domain
from capture.sim.pricing import round_to, strike_step
from capture.sim.securities import (
    KEY_TYPES,
    OptionState,
    Security,
    UnderlierState,
    ticker_obj,
)
from capture.sim.universe import DEFAULT_UNIVERSE, EASTERN, Underlier

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
            (EPOCH + dt.timedelta(microseconds=start_ns // 1000)).astimezone(EASTERN).date()
        )
        wanted = set(symbols) if symbols is not None else None
        self.universe = tuple(u for u in universe if wanted is None or u.tk in wanted)
        self._stripe_filter = frozenset(stripes) if stripes is not None else None
        self.underlier_state = {u.tk: UnderlierState(u, u.spot) for u in self.universe}
        self.option_state: dict[tuple[Hashable, ...], OptionState] = {}
        self._n_expiries = expiries
        self._n_strikes = strikes
        self._cache: dict[str, dict[tuple[Hashable, ...], Record]] = {}
        self._keys: dict[str, list[tuple[Hashable, ...]]] = {}
        self._key_values: dict[str, dict[tuple[Hashable, ...], dict[str, Any]]] = {}
        self._sec_of: dict[tuple[Hashable, ...], Security] = {}
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

    def _keep(self, sec: Security) -> bool:
        if self._stripe_filter is None:
            return True
        return bool(self._sec_stripes(sec) & self._stripe_filter)

    def _sec_stripes(self, sec: Security) -> frozenset[str]:
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

    def _securities(self, kind: str) -> list[Security]:
        out: list[Security] = []
        for u in self.universe:
            if kind == "ticker":
                if u.kind != "future":
                    out.append(Security("ticker", ticker_obj(u), u))
            elif kind == "expiry":
                roots = u.roots or ((u.tk,) if u.kind == "future" else ())
                for root in roots:
                    for d in self._expiries(u):
                        obj = {**ticker_obj(u, root), "dt": d.isoformat()}
                        out.append(Security("expiry", obj, u, expiry=d))
            else:
                step = strike_step(u.spot)
                atm = round_to(u.spot, step)
                for root in u.roots:
                    for d in self._expiries(u):
                        for k in range(-self._n_strikes, self._n_strikes + 1):
                            strike = round(atm + k * step, 6)
                            if strike <= 0:
                                continue
                            for cp in ("Call", "Put"):
                                obj = {
                                    **ticker_obj(u, root),
                                    "dt": d.isoformat(),
                                    "xx": strike,
                                    "cp": cp,
                                }
                                out.append(Security("option", obj, u, d, strike, cp == "Call"))
        return out

    def _futures(self) -> list[Security]:
        return [s for s in self.expiry_keys if s.u.kind == "future" and s.obj["tk"] == s.u.tk]

    def _security_domain(self, ftype: str, name: str, mdef: MessageDef) -> list[Security]:
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
        if mdef.name in GENERATORS:
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
        self, mdef: MessageDef, sec: Security | None, values: dict[str, Any]
    ) -> tuple[tuple[Hashable, ...], dict[str, Any]]:
        ident: list[Hashable] = []
        for f in mdef.key_fields:
            v = values[f.name]
            ident.append(tuple(v[p] for p in KEY_PARTS if p in v) if isinstance(v, dict) else v)
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
            if f.ftype in KEY_TYPES:
                secs = list(self._security_domain(f.ftype, f.name, mdef))
                self.rng.shuffle(secs)
                if sec_index < 0:
                    sec_index = i
                    domains.append(secs)
                else:
                    domains.append(secs[:1])
            else:
                domains.append(small_domain(f, self.today, self.rng))
        if sec_index > 0:  # iterate securities slowest, so a capped domain still spans stripes
            domains.insert(0, domains.pop(sec_index))
            kfields = (kfields[sec_index], *kfields[:sec_index], *kfields[sec_index + 1 :])
        out = []
        for combo in itertools.islice(itertools.product(*domains), self.generic_max_keys):
            values: dict[str, Any] = {}
            first_sec: Security | None = None
            for f, v in zip(kfields, combo, strict=True):
                if isinstance(v, Security):
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

    def _make(self, mdef: MessageDef, pkey: tuple[Hashable, ...], now_ns: int) -> Record:
        sent_ns = (now_ns // 1000) * 1000
        keyvals = self._key_values[mdef.name][pkey]
        gen = GENERATORS.get(mdef.name)
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

    def _generic(self, mdef: MessageDef, pkey: tuple[Hashable, ...], now_ns: int) -> dict[str, Any]:
        sec = self._sec_of.get(pkey)
        spot = self.step(self.underlier_state[sec.u.tk]) if sec is not None else None
        return generic_values(mdef, self.rng, now_ns, spot=spot, today=self.today)

    # -- for the generators ---------------------------------------------------------------------

    def security(self, pkey: tuple[Hashable, ...]) -> Security:
        """The security a pkey of a hand-generated type is about."""
        return self._sec_of[pkey]

    def step(self, us: UnderlierState) -> float:
        """One random-walk step of an underlier (about one second of diffusion)."""
        u = us.u
        sigma = u.vol * math.sqrt(1.0 / (252 * 6.5 * 3600))
        us.spot = max(u.tick, round_to(us.spot * math.exp(self.rng.gauss(0.0, sigma)), u.tick))
        return us.spot

    def bump(self, counter: Hashable) -> int:
        """A named counter that starts at a plausible mid-day value and rises by one."""
        n = self._counters.get(counter, 1_000 + self.rng.randrange(50_000)) + 1
        self._counters[counter] = n
        return n


def _third_weekday(year: int, month: int, weekday: int) -> dt.date:
    d = dt.date(year, month, 1)
    d += dt.timedelta(days=(weekday - d.weekday()) % 7)
    return d + dt.timedelta(days=14)


_SENDER_IDS = {"OptMktData": 20417, "EqtMktData": 18409, "OptAnalytics": 21133}
_SENDER_IDS["OptSurface"] = 21133


def _sender_id(token: str) -> int:
    """A stable non-zero ``sID`` per data product (data headers carry one; admin ones 0)."""
    if token in _SENDER_IDS:
        return _SENDER_IDS[token]
    return 10_000 + sum(ord(c) * (i + 1) for i, c in enumerate(token)) % 20_000


def _seq_base(sid: int) -> int:
    return (sid * 7919) % 90_000 + 1_000
