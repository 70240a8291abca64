"""The generic generator: plausible values for any dictionary type, from its FieldDefs alone.

Every type without a hand-written generator (:mod:`capture.sim.generators`) is produced this
way, for all-type and schema-drift tests.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from typing import Any

from capture.schemas import FieldDef, MessageDef
from capture.sim.encoding import EPOCH, central_ms, to_float32
from capture.sim.securities import KEY_TYPES

__all__ = ["generic_values", "small_domain"]

_INT_TYPES = frozenset({"Int", "UInt", "Long", "Short", "UShort", "Byte"})


def small_domain(f: FieldDef, today: dt.date, rng: random.Random) -> list[Any]:
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
        return [(midnight - EPOCH) // dt.timedelta(microseconds=1) * 1000]
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
    day = today or (EPOCH + dt.timedelta(microseconds=now_ns // 1000)).date()
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
    if t in KEY_TYPES:
        return None  # non-key security references are left out (default)
    return None
