"""Stripe tables and membership (PROTOCOL.md §8): pure tests."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture import stripes
from capture.stripes import KNOWN_STRIPES, TABLES, in_stripe, is_known, stripes_of


def eq(tk: str, table: str = "2024") -> frozenset[str]:
    return stripes_of(tk, "NMS", "EQT", table)


def test_known_codes_are_exactly_the_2024_table() -> None:
    expected = {c for c in "ABCDEFGH"} | {f"{c}{i}" for c in "ABCDEFGH" for i in (1, 2)}
    expected |= {"I", "I1", "I2", "I3", "I4", "J", "J1", "J2", "J3", "J4", "J5"}
    expected |= {"M", "M1", "M2", "M3", "M4", "S", "V", "X", "X1", "X2", "X3", "X4"}
    assert expected == KNOWN_STRIPES
    assert all(is_known(c) for c in expected)
    for bad in ("a", "A3", "M5", "AB", "", " A", "A,B", "ALL"):
        assert not is_known(bad)


def test_2023_table_has_no_m3_m4_j5() -> None:
    assert not is_known("M3", "2023") and not is_known("J5", "2023")
    assert is_known("M2", "2023") and is_known("H2", "2023")


def test_explicit_lists_win_over_ranges() -> None:
    # SPY falls in G2 = [SPY, SPYA) by range, but the explicit M2 list takes it (exclusivity).
    assert eq("SPY") == {"M", "M2"}
    assert not in_stripe("G", "SPY", "NMS", "EQT") and not in_stripe("G2", "SPY", "NMS", "EQT")
    assert eq("QQQ") == {"M", "M3"} and eq("IWM") == {"M", "M4"} and eq("VXX") == {"M", "M2"}
    for tk in ("NDX", "NDXP", "RUT", "RUTW", "MRUT"):
        assert eq(tk) == {"M", "M1"}
    for tk in ("SPX", "SPXW", "XSP", "VIX", "VIXW"):
        assert eq(tk) == {"S"}
    assert eq("SPY", "2023") == {"M", "M2"} and eq("QQQ", "2023") == {"M", "M2"}


def test_ticker_ranges_2024() -> None:
    assert eq("AAPL") == {"A", "A1"}
    assert in_stripe("A", "AAPL", "NMS", "EQT")
    assert eq("A") == {"A", "A1"}  # start is included
    assert eq("AMZN") == {"A", "A2"}  # "ending ticker is not included"
    assert eq("COIN") == {"B", "B1"}
    assert eq("GOOG") == {"B", "B2"}
    assert eq("GOOGL") == {"C", "C1"}  # README typo "GOOGLE" fixed: no gap between B2 and C1
    assert eq("META") == {"D", "D1"}
    assert eq("MSFT") == {"D", "D2"}
    assert eq("NFLX") == {"E", "E1"}
    assert eq("NVDA") == {"E", "E2"}
    assert eq("TSLA") == {"H", "H1"}
    assert eq("ZZZZZY") == {"H", "H2"}
    assert eq("ZZZZZZ") == frozenset()


def test_ticker_ranges_2023_with_compound_typos_fixed() -> None:
    assert eq("AAPL", "2023") == {"A", "A1"}
    assert eq("ONB", "2023") == {"F", "F1"}
    assert eq("RH", "2023") == {"F", "F2"}  # CSV says F = F1..F1
    assert eq("UAMY", "2023") == {"H", "H1"}  # CSV says H = F1..F2
    assert eq("WMT", "2023") == {"H", "H2"}


def test_ticker_source_stripes() -> None:
    assert stripes_of("ES", "CME", "FUT") == {"X", "X1"}
    assert stripes_of("ZN", "CBOT", "FUT") == {"X", "X2"}
    assert stripes_of("CL", "NYMEX", "FUT") == {"X", "X3"}
    assert stripes_of("GC", "COMEX", "FUT") == {"X", "X4"}
    assert stripes_of("VX", "CFE", "FUT") == {"V"}
    assert stripes_of("DJX", "CIDX", "IDX") == {"I", "I1"}  # README typo CDIX fixed
    assert stripes_of("DJI", "DJI", "IDX") == {"I", "I2"}
    assert stripes_of("FOO", "OTC", "EQT") == {"J", "J1"}


def test_j5_reading_is_selectable() -> None:
    # The 2024 README adds J5 = SR but keeps J = J1:J4; "2024-j5" is the §8.4 reading.
    assert stripes_of("X", "SR", "EQT") == {"J5"}
    assert stripes_of("X", "SR", "EQT", "2024-j5") == {"J", "J5"}
    assert stripes_of("X", "SR", "EQT", "2023") == frozenset()


def test_non_nms_equities_are_in_no_stripe() -> None:
    assert stripes_of("AAPL", "ARCA", "EQT") == frozenset()
    assert stripes_of("AAPL", "NMS", "IDX") == frozenset()


def test_unknown_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown stripe table"):
        stripes_of("AAPL", "NMS", "EQT", "2025")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_ranges_tile_the_ticker_space(name: str) -> None:
    table = TABLES[name]
    bounds = sorted(table.ranges.values())
    assert bounds[0][0] == "A" and bounds[-1][1] == "ZZZZZZ"
    for (_, end), (start, _) in itertools.pairwise(bounds):
        assert end == start  # no gap, no overlap


@pytest.mark.parametrize("name", sorted(TABLES))
def test_compounds_reference_sub_stripes(name: str) -> None:
    table = TABLES[name]
    for code, members in table.compounds.items():
        assert code not in members
        assert all(m in table.codes and m not in table.compounds for m in members)


@given(
    tk=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8),
    ts=st.sampled_from(["NMS", "CME", "CBOT", "CFE", "CIDX", "OTC", "SR", "ARCA"]),
    table=st.sampled_from(sorted(TABLES)),
)
def test_membership_is_exclusive(tk: str, ts: str, table: str) -> None:
    """At most one sub-stripe per key, and every compound returned contains it."""
    t = stripes.get_table(table)
    got = stripes_of(tk, ts, "EQT", table)
    subs = got - set(t.compounds)
    assert len(subs) <= 1
    for compound in got & set(t.compounds):
        assert subs and next(iter(subs)) in t.compounds[compound]
    for code in got:
        assert in_stripe(code, tk, ts, "EQT", table)
