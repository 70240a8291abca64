"""Parsing what a client sends: WebSocket messages into requests, and lenient field values.

A message is JSONFramed (one or more ``\\r\\nJ`` frames) or one raw JSON object (PROTOCOL.md
§4.2); what cannot be parsed becomes a :class:`BadInbound` the connection answers with an
MLinkDataAck.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from capture.frames import Frame, FrameDecoder

__all__ = ["BadInbound", "Inbound", "opt_int", "opt_str", "parse_inbound"]


def opt_str(v: Any) -> str | None:
    """A non-empty string, else absent (``""`` and non-strings)."""
    return v if isinstance(v, str) and v != "" else None


def opt_int(v: Any) -> int | None:
    """Lenient int: ints, integral floats and numeric strings; ``""`` and others are absent."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    return None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One parsed request: the frame's type number (0 unframed) and its JSON object."""

    type_number: int
    obj: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadInbound:
    """What could not be parsed, as the MLinkDataAck that answers it."""

    type_number: int
    result: str  # MLinkDataAck result: FrameError or JsonError
    detail: str


def parse_inbound(data: bytes) -> list[Inbound | BadInbound]:
    """One inbound WebSocket message -> requests, or errors to answer with MLinkDataAck.

    Framed (``\\r\\nJ``/``\\r\\nP`` + 11 digits, several per message allowed; the type digits
    are ignored) or one raw JSON object (§4.2).  Each message is parsed on its own: a frame cut
    at the end of a message is a FrameError, not carried over.
    """
    if data.startswith(b"\r\n"):
        dec = FrameDecoder()
        events = [*dec.feed(data), *dec.flush()]
        out: list[Inbound | BadInbound] = []
        for ev in events:
            if isinstance(ev, Frame):
                out.append(_parse_json(ev.body, ev.type_number))
            else:
                out.append(BadInbound(0, "FrameError", f"bad frame: {ev.reason}"))
        return out
    if data.strip().startswith(b"{"):
        return [_parse_json(data, 0)]
    return [BadInbound(0, "FrameError", "expected a JSON object or a \\r\\nJ frame")]


def _parse_json(body: bytes, type_number: int) -> Inbound | BadInbound:
    try:
        obj = json.loads(body)
    except ValueError as exc:
        return BadInbound(type_number, "JsonError", f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return BadInbound(type_number, "JsonError", "not a JSON object")
    return Inbound(type_number, obj)
