"""MLink stripe tables and stripe membership (PROTOCOL.md §8).

A stripe is a server-defined slice of the market requested with ``MLinkStream.stripeFilter``;
"1 Stripe = 1 WebSocket connection" and stripes are exclusive (§8.1).  Three kinds exist:

* ticker-range stripes A1..H2 for NMS equities and their options, ``start <= tk < end`` by
  ordinal string comparison ("ending ticker is not included");
* explicit-ticker stripes (M1..M4 market indexes/ETFs, S for SPX/VIX);
* ticker-source stripes (I1..I4 index sources, J1..J5 other identifiers, V = CFE, X1..X4 futures
  exchanges).

Compound codes (A..H, I, J, M, X) are unions of their sub-stripes; both kinds are valid
``stripeFilter`` values.

Two tables exist.  The default is the SDK-README table of 2024-02 (§8.3) with its documented
typos fixed (``CDIX`` -> ``CIDX``, C1 start ``GOOGLE`` -> ``GOOGL``).  ``"2023"`` is the
MLink-Samples CSV table (§8.2) with its compound-row typos fixed (``F = F1..F2``,
``H = H1..H2``).  The 2024 README keeps ``J = J1:J4`` although it adds ``J5 = SR``; that literal
reading is ``"2024"``, while ``"2024-j5"`` is the same table with ``J = J1:J5`` (the §8.4 reading,
where SR belongs to J).

Membership follows §8.4: explicit lists first (so SPY/QQQ/IWM are in M, not in the range that
would otherwise hold them), then ticker sources, then the A..H ranges for ``ts == "NMS"``
equities (``at == "EQT"``).  Anything else (e.g. an equity with ts ARCA) is in no stripe: the
sources do not say where it goes.

Pure module: no I/O, no trio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Literal, TypeVar

__all__ = [
    "DEFAULT_TABLE",
    "KNOWN_STRIPES",
    "TABLES",
    "StripeTable",
    "TableName",
    "get_table",
    "in_stripe",
    "is_known",
    "stripes_of",
]

TableName = Literal["2024", "2024-j5", "2023"]
DEFAULT_TABLE: TableName = "2024"


@dataclass(frozen=True, slots=True)
class StripeTable:
    """One complete set of stripe definitions.

    ``ranges``: sub-stripe -> ``(start, end)``, half-open, ordinal comparison, NMS equities only.
    ``tickers``: sub-stripe -> explicit ticker list (matched on ``tk`` whatever the source).
    ``sources``: sub-stripe -> ticker source (``ts``) values.
    ``compounds``: compound code -> its member sub-stripes.
    """

    name: str
    ranges: Mapping[str, tuple[str, str]]
    tickers: Mapping[str, frozenset[str]]
    sources: Mapping[str, frozenset[str]]
    compounds: Mapping[str, tuple[str, ...]]

    codes: frozenset[str] = frozenset()
    """Every valid stripe code of this table, compound and sub-stripe (derived)."""

    def __post_init__(self) -> None:
        derived = frozenset([*self.ranges, *self.tickers, *self.sources, *self.compounds])
        object.__setattr__(self, "codes", derived)
        for compound, members in self.compounds.items():
            unknown = [m for m in members if m not in derived or m in self.compounds]
            if unknown:
                raise ValueError(f"stripe {compound}: unknown member(s) {unknown}")

    def parents(self, sub: str) -> frozenset[str]:
        """Compound codes that contain the sub-stripe ``sub``."""
        return frozenset(c for c, members in self.compounds.items() if sub in members)


_V = TypeVar("_V")


def _ro(d: dict[str, _V]) -> Mapping[str, _V]:
    return MappingProxyType(d)


_LETTERS = "ABCDEFGH"

_RANGES_2024 = {
    "A1": ("A", "AMZN"),
    "A2": ("AMZN", "COIN"),
    "B1": ("COIN", "ENQZZ"),
    "B2": ("ENQZZ", "GOOGL"),
    "C1": ("GOOGL", "IWM"),  # README prints "GOOGLE" (typo: B2 ends at GOOGL)
    "C2": ("IWM", "LRCX"),
    "D1": ("LRCX", "METAA"),
    "D2": ("METAA", "NFLX"),
    "E1": ("NFLX", "NVDA"),
    "E2": ("NVDA", "NVDAA"),
    "F1": ("NVDAA", "QQQ"),
    "F2": ("QQQ", "QQQA"),
    "G1": ("QQQA", "SPY"),
    "G2": ("SPY", "SPYA"),
    "H1": ("SPYA", "TSLAA"),
    "H2": ("TSLAA", "ZZZZZZ"),
}

_RANGES_2023 = {
    "A1": ("A", "ANEW"),
    "A2": ("ANEW", "BKR"),
    "B1": ("BKR", "COKE"),
    "B2": ("COKE", "DLTR"),
    "C1": ("DLTR", "FE"),
    "C2": ("FE", "GSL"),
    "D1": ("GSL", "JDST"),
    "D2": ("JDST", "MACK"),
    "E1": ("MACK", "MSVB"),
    "E2": ("MSVB", "ONB"),
    "F1": ("ONB", "RH"),
    "F2": ("RH", "SOFO"),
    "G1": ("SOFO", "TLT"),
    "G2": ("TLT", "UAMY"),
    "H1": ("UAMY", "WMT"),
    "H2": ("WMT", "ZZZZZZ"),
}

_S = frozenset({"SPX", "SPXW", "XSP", "VIX", "VIXW"})
_M1 = frozenset({"NDX", "NDXP", "RUT", "RUTW", "MRUT"})

_SOURCES_COMMON = {
    "I1": frozenset({"CIDX"}),  # 2024 README prints "CDIX" (typo)
    "I2": frozenset({"DJI"}),
    "I3": frozenset({"RUT"}),
    "I4": frozenset({"MIAX"}),
    "J1": frozenset({"OTC"}),
    "J2": frozenset({"MFQS"}),
    "J3": frozenset({"CUSIP"}),
    "J4": frozenset({"ISIN"}),
    "V": frozenset({"CFE"}),
    "X1": frozenset({"CME"}),
    "X2": frozenset({"CBOT"}),
    "X3": frozenset({"NYMEX"}),
    "X4": frozenset({"COMEX"}),
}

_LETTER_COMPOUNDS = {c: (f"{c}1", f"{c}2") for c in _LETTERS}
_SOURCE_COMPOUNDS = {
    "I": ("I1", "I2", "I3", "I4"),
    "J": ("J1", "J2", "J3", "J4"),
    "X": ("X1", "X2", "X3", "X4"),
}


def _build_2024(j_includes_j5: bool) -> StripeTable:
    return StripeTable(
        name="2024-j5" if j_includes_j5 else "2024",
        ranges=_ro(_RANGES_2024),
        tickers=_ro(
            {
                "M1": _M1,
                "M2": frozenset({"SPY", "VXX"}),
                "M3": frozenset({"QQQ"}),
                "M4": frozenset({"IWM"}),
                "S": _S,
            }
        ),
        sources=_ro({**_SOURCES_COMMON, "J5": frozenset({"SR"})}),
        compounds=_ro(
            {
                **_LETTER_COMPOUNDS,
                **_SOURCE_COMPOUNDS,
                "J": ("J1", "J2", "J3", "J4", "J5") if j_includes_j5 else ("J1", "J2", "J3", "J4"),
                "M": ("M1", "M2", "M3", "M4"),
            }
        ),
    )


def _build_2023() -> StripeTable:
    return StripeTable(
        name="2023",
        ranges=_ro(_RANGES_2023),
        tickers=_ro({"M1": _M1, "M2": frozenset({"SPY", "QQQ", "IWM"}), "S": _S}),
        sources=_ro(_SOURCES_COMMON),
        compounds=_ro({**_LETTER_COMPOUNDS, **_SOURCE_COMPOUNDS, "M": ("M1", "M2")}),
    )


TABLES: Mapping[str, StripeTable] = MappingProxyType(
    {"2024": _build_2024(False), "2024-j5": _build_2024(True), "2023": _build_2023()}
)

KNOWN_STRIPES: frozenset[str] = TABLES[DEFAULT_TABLE].codes
"""Every stripe code of the default (2024) table: A..H, A1..H2, I, I1..I4, J, J1..J5, M,
M1..M4, S, V, X, X1..X4."""


def get_table(which: str | StripeTable = DEFAULT_TABLE) -> StripeTable:
    """Resolve a table name (``"2024"``, ``"2024-j5"``, ``"2023"``) or pass a table through."""
    if isinstance(which, StripeTable):
        return which
    try:
        return TABLES[which]
    except KeyError:
        raise ValueError(f"unknown stripe table {which!r} (known: {', '.join(TABLES)})") from None


def is_known(code: str, table: str | StripeTable = DEFAULT_TABLE) -> bool:
    """Whether ``code`` is a valid ``stripeFilter`` value (exact, case-sensitive)."""
    return code in _resolve(table).codes


def stripes_of(
    tk: str, ts: str, at: str, table: str | StripeTable = DEFAULT_TABLE
) -> frozenset[str]:
    """Every stripe code (sub-stripe and compound) that the key ``tk``/``ts``/``at`` belongs to.

    ``tk`` is the ticker or option root of the record's key (``okey.tk``, ``ticker.tk``,
    ``ekey.tk``, ``fkey.tk``), ``ts`` its ticker source and ``at`` its asset type, exactly as
    they appear in JSON (``"AAPL"``, ``"NMS"``, ``"EQT"``).  An empty set means "in no stripe":
    such a record is only visible to a stream without ``stripeFilter``.
    """
    t = _resolve(table)
    if isinstance(table, StripeTable):
        return _membership(t, tk, ts, at)
    return _membership_cached(t.name, tk, ts, at)


def in_stripe(
    code: str, tk: str, ts: str, at: str, table: str | StripeTable = DEFAULT_TABLE
) -> bool:
    """Whether the key belongs to stripe ``code`` (compound or sub-stripe)."""
    return code in stripes_of(tk, ts, at, table)


def _resolve(which: str | StripeTable) -> StripeTable:
    return get_table(which)


@cache
def _membership_cached(name: str, tk: str, ts: str, at: str) -> frozenset[str]:
    return _membership(TABLES[name], tk, ts, at)


def _membership(t: StripeTable, tk: str, ts: str, at: str) -> frozenset[str]:
    sub = _sub_stripe(t, tk, ts, at)
    if sub is None:
        return frozenset()
    return frozenset({sub}) | t.parents(sub)


def _sub_stripe(t: StripeTable, tk: str, ts: str, at: str) -> str | None:
    # Rule 2: explicit lists first; they take the name out of the A..H ranges (exclusivity).
    for code, names in t.tickers.items():
        if tk in names:
            return code
    # Rule 3: ticker-source stripes.
    for code, sources in t.sources.items():
        if ts in sources:
            return code
    # Rule 4: NMS equities by ticker range, start <= tk < end.
    if ts == "NMS" and at == "EQT":
        for code, (start, end) in t.ranges.items():
            if start <= tk < end:
                return code
    return None
