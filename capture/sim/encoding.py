"""The MLink JSON wire encoding of one record (PROTOCOL.md §5.4-§5.6).

Body fields at their default (0, 0.0, enum ``None``, ``""``) are omitted, whole-valued numbers
print without a fraction, ``Float`` fields print the shortest decimal of their float32 value,
keys nest under ``pkey``, DateTime values and header times are UTC text with microseconds, and
``bidTime``/``askTime`` style fields are US/Central ms since midnight.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import zoneinfo
from collections.abc import Collection, Mapping
from typing import Any

from capture.schemas import FieldDef, MessageDef

__all__ = [
    "EPOCH",
    "KEY_PARTS",
    "central_ms",
    "encode_message",
    "fmt_double",
    "fmt_float32",
    "is_default",
    "to_float32",
    "utc_text",
]

_F32 = struct.Struct("<f")
_STR_TYPES = frozenset({"Enum", "Flag", "String", "Text1", "Text2"})
KEY_PARTS = ("at", "ts", "tk", "dt", "xx", "cp")
"""The parts of a security key object, in the order the server writes them."""
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CENTRAL = zoneinfo.ZoneInfo("America/Chicago")


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
    t = EPOCH + dt.timedelta(microseconds=ns // 1000)
    return f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond:06d}"


def central_ms(ns: int) -> int:
    """Milliseconds since midnight, US/Central, of a ns-since-epoch time (``bidTime``, §5.6)."""
    t = (EPOCH + dt.timedelta(microseconds=ns // 1000)).astimezone(_CENTRAL)
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
    for part in KEY_PARTS:
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
