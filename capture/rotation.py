"""Rotation policy as pure functions of time: partition dates, rotation boundaries, and which
open files are due for commit (and when the next one will be).

The sink (Parquet files) and the writer loop (when to wake up) both ask this module; neither
owns a copy of the rules.  No I/O, no trio, no pyarrow.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar
from zoneinfo import ZoneInfo

NS_PER_S: Final = 1_000_000_000
SECONDS_PER_DAY: Final = 86_400

K = TypeVar("K", bound=Hashable)


def time_zone(tz: str) -> ZoneInfo:
    """ZoneInfo keeps its own cache, so this is cheap after the first call."""
    return ZoneInfo(tz)


def check_interval(interval_s: int, name: str = "rotate_interval_s") -> None:
    if isinstance(interval_s, bool) or not isinstance(interval_s, int):
        raise TypeError(f"{name} must be an int number of seconds, got {interval_s!r}")
    if interval_s <= 0 or SECONDS_PER_DAY % interval_s != 0:
        raise ValueError(
            f"{name} must be a positive divisor of 86400 (one day) so that rotation "
            f"boundaries align with local midnight; got {interval_s}"
        )


_EPOCH_DATE: Final = dt.date(1970, 1, 1)


def _utc_offset_s(sec: int, zone: ZoneInfo) -> int:
    off = dt.datetime.fromtimestamp(sec, zone).utcoffset()
    assert off is not None
    return int(off.total_seconds())


def _local_midnight_ns(day: dt.date, zone: ZoneInfo) -> int:
    """UTC instant (ns) at which local ``day`` begins.

    fold=0 is right in both DST cases: if local midnight is skipped (spring forward at 00:00)
    the pre-transition offset maps it exactly onto the transition instant, which is when the
    day starts; if midnight is repeated, the first occurrence starts the day.
    """
    off = dt.datetime(day.year, day.month, day.day, tzinfo=zone).utcoffset()
    assert off is not None
    local_s = (day - _EPOCH_DATE).days * SECONDS_PER_DAY
    return (local_s - int(off.total_seconds())) * NS_PER_S


def day_start_ns(day: dt.date, tz: str) -> int:
    """UTC instant (ns) at which local ``day`` begins in ``tz`` (DST-correct)."""
    return _local_midnight_ns(day, time_zone(tz))


def _day_window(ns: int, tz: str) -> tuple[int, int, dt.date]:
    """[start_ns, end_ns) of the local day in ``tz`` containing instant ``ns``, and that date."""
    zone = time_zone(tz)
    day = dt.datetime.fromtimestamp(ns // NS_PER_S, zone).date()
    start = _local_midnight_ns(day, zone)
    end = _local_midnight_ns(day + dt.timedelta(days=1), zone)
    if not start <= ns < end:  # pragma: no cover - would need a pathological tz rule
        return ns, ns + 1, day
    return start, end, day


# tz -> (start_ns, end_ns, date) of the most recently seen day.  A tuple is replaced
# atomically, so concurrent callers at worst recompute.
_DAY_CACHE: dict[str, tuple[int, int, dt.date]] = {}


def day_window(ns: int, tz: str) -> tuple[int, int, dt.date]:
    """[start_ns, end_ns) of the local day in ``tz`` containing instant ``ns``, and that date.

    The common case (same day as the previous call for this tz) is a dict lookup and two
    integer compares.
    """
    window = _DAY_CACHE.get(tz)
    if window is not None and window[0] <= ns < window[1]:
        return window
    window = _day_window(ns, tz)
    _DAY_CACHE[tz] = window
    return window


def partition_date(recv_ns: int, tz: str) -> dt.date:
    """Local date in ``tz`` of the UTC instant ``recv_ns`` (ns since the epoch)."""
    return day_window(recv_ns, tz)[2]


def next_boundary_ns(now_ns: int, interval_s: int, tz: str) -> int:
    check_interval(interval_s, "interval_s")
    zone = time_zone(tz)
    # The answer is a whole second b with b * 1e9 > now_ns, i.e. b >= floor(now_ns / 1e9) + 1.
    start = now_ns // NS_PER_S + 1
    # A boundary is an instant t whose local wall time (t + offset(t)) is a multiple of the
    # interval.  Take the first candidate under the offset in force at `start`; if the offset
    # changed before that candidate, restart from the transition instant with the new offset.
    # Transitions are months apart, so this loops at most once in practice.
    for _ in range(8):
        off = _utc_offset_s(start, zone)
        candidate = start + (-(start + off)) % interval_s
        if _utc_offset_s(candidate, zone) == off:
            return candidate * NS_PER_S
        lo, hi = start, candidate  # offset(lo) == off != offset(hi): find the transition
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _utc_offset_s(mid, zone) == off:
                lo = mid
            else:
                hi = mid
        start = hi
    raise RuntimeError(f"could not find a rotation boundary after {now_ns} in {tz!r}")


@dataclass(frozen=True, slots=True)
class OpenInterval:
    """What the policy needs to know of one open file."""

    boundary_ns: int
    """End of the rotation interval the file's rows belong to."""
    last_write_ns: int
    """When rows were last added to it."""


@dataclass(frozen=True, slots=True)
class Due(Generic[K]):
    """The files to commit now (with why), and when the next one falls due (None: none open)."""

    files: list[tuple[K, str]]
    next_ns: int | None


def due(
    files: Iterable[tuple[K, OpenInterval]], now_ns: int, *, grace_ns: int, idle_ns: int
) -> Due[K]:
    """Which open files to commit at ``now_ns``: those whose interval ended ``grace_ns`` ago
    (``"interval"``: late rows of the interval had time to arrive) or that had no write for
    ``idle_ns`` (``"idle"``).  ``next_ns`` is the earliest instant a file still open falls
    due, so that a caller that sleeps until then never commits a quiet file late."""
    out: list[tuple[K, str]] = []
    next_ns: int | None = None
    for key, f in files:
        idle_at = f.last_write_ns + idle_ns
        interval_at = f.boundary_ns + grace_ns
        if now_ns >= idle_at:
            out.append((key, "idle"))
        elif now_ns >= interval_at:
            out.append((key, "interval"))
        else:
            at = min(idle_at, interval_at)
            next_ns = at if next_ns is None else min(next_ns, at)
    return Due(out, next_ns)
