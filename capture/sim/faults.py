"""Fault injection for the MLink simulator.

:class:`Faults` is the frozen set of knobs (all off by default); :class:`FaultState` is one
connection's running state that applies them to the outbound stream.  Counting conventions:

* ``*_after_messages``: MLink messages (frames) of any kind already sent on the connection,
  admin frames included.  The fault fires once the count is reached; ``N = 0`` fires at the
  first send, before anything (even the MLinkAdmin logon reply) reaches the client.
* ``*_every``: data frames only (market-data records, not admin/heartbeat/checkpoint), so logon
  and stream setup are never disturbed.  Every ``N``-th data frame is affected.

Adding a fault: add a documented field to :class:`Faults` (the config loader picks it up from
the dataclass), then apply it in :meth:`FaultState.encode_data` (record-level: schema drift),
:meth:`FaultState.plan` (byte-level: frames and WebSocket messages) or the server's connection
setup (handshake-level).  Faults are deterministic: all their randomness comes from the
connection's seeded ``random.Random``.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from capture.frames import HEADER_LEN, MAX_BODY_LEN, encode_frame
from capture.schemas import MessageDef
from capture.sim.cached_record import Record
from capture.sim.encoding import encode_message

__all__ = ["Action", "FaultState", "Faults", "OutFrame", "Plan"]

_INTISH = frozenset({"Int", "UInt", "Short", "UShort", "Byte", "Long"})
UNKNOWN_TYPE_NAME = "SimUnknownMessage"
UNKNOWN_TYPE_NUMBER = 9_990  # not a number of any dictionary type (Appendix A)
_EMPTY_MTYP = re.compile(rb'"mTyp":"[^"]*"')  # the header's: it comes first in a body


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault knobs; every one is off by default.  See the module docstring for counting rules."""

    # -- connection level ------------------------------------------------------------------------
    disconnect_after_messages: int | None = None
    """Abrupt close: drop TCP (FIN, no WebSocket close frame) after this many frames."""
    close_after_messages: int | None = None
    """Clean close: WebSocket close 1001 "going away" after this many frames."""
    goodnight_after_messages: int | None = None
    """Send MLinkAdmin ``GoodNight`` after this many frames, then close the WebSocket."""
    goodnight_then_close: bool = True
    """After ``GoodNight``, close the WebSocket (true) or leave it open and send nothing more
    (false): what the real server does next is not documented (PROTOCOL.md §2.5, [I])."""
    stall_after_messages: int | None = None
    """Stay open but send nothing more (no data, no heartbeats) after this many frames."""
    half_open_after_messages: int | None = None
    """Like stall, and also stop reading (pings go unanswered): a half-open TCP peer."""
    auth_reject: bool = False
    """Treat every credential as wrong (handled per ``bad_key_mode``)."""
    faulty_connections: int | None = None
    """Apply these faults only to the first N connections (None: every connection)."""

    # -- byte level -----------------------------------------------------------------------------
    garbage_every: int | None = None
    """Insert a run of non-frame bytes after every N-th data frame."""
    bad_json_every: int | None = None
    """Every N-th data frame keeps a valid header but its body is not valid JSON."""
    empty_mtyp_every: int | None = None
    """Every N-th data frame is valid JSON whose ``header.mTyp`` is the empty string."""
    invalid_utf8_every: int | None = None
    """Every N-th data frame has a 0xFF byte inside a JSON string (length unchanged)."""
    corrupt_length_every: int | None = None
    """Every N-th data frame declares a body length 7 bytes longer than it is."""
    oversized_frame_every: int | None = None
    """Every N-th data record is padded with an unknown field to ``oversized_frame_bytes``."""
    oversized_frame_bytes: int = MAX_BODY_LEN
    """Body size of an oversized frame (at most 999,999: the 6-digit length limit)."""
    split_frames: bool = False
    """Cut WebSocket messages at random points inside frames (a frame spans two messages)."""
    send_delay: float = 0.0
    """Seconds to sleep before every WebSocket message (a slow server)."""

    # -- schema drift ---------------------------------------------------------------------------
    new_field_after_messages: int | None = None
    """From then on, data records carry a field the dictionary does not know."""
    new_field_name: str = "prcFramework"
    """Name of the drifted-in field (default: a real 2026 protobuf rename, PROTOCOL §5.7)."""
    new_field_value: str = "Equity"
    """Value of the drifted-in field."""
    int_to_float_after_messages: int | None = None
    """From then on, the first integer field of each data record is sent with a fraction."""
    unknown_type_every: int | None = None
    """Before every N-th data frame, send a frame of a message type no dictionary knows."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith(("_every", "_after_messages", "_connections")) and v is not None:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"faults.{f.name}: must be an integer or None")
                if v < (1 if f.name.endswith(("_every", "_connections")) else 0):
                    raise ValueError(f"faults.{f.name}: out of range ({v})")
        if not 0.0 <= self.send_delay <= 60.0:
            raise ValueError("faults.send_delay: must be between 0 and 60 seconds")
        if not 1_000 <= self.oversized_frame_bytes <= MAX_BODY_LEN:
            raise ValueError(f"faults.oversized_frame_bytes: must be 1000..{MAX_BODY_LEN}")

    @property
    def enabled(self) -> bool:
        """Whether any fault is switched on."""
        return self != Faults()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], prefix: str = "faults") -> Faults:
        """Build from a TOML table; raises ``ValueError`` naming the first bad key."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            f = known.get(key)
            if f is None:
                raise ValueError(f"{prefix}.{key}: unknown key (known: {', '.join(sorted(known))})")
            default = f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                value = float(value) if ok else value
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:  # int or None
                ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                raise ValueError(f"{prefix}.{key}: wrong type {type(value).__name__}")
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(str(exc).replace("faults.", f"{prefix}.", 1)) from None


@dataclass(frozen=True, slots=True)
class OutFrame:
    """One outbound MLink message, already encoded: header type number plus body bytes."""

    type_number: int
    body: bytes
    data: bool = False
    """True for market-data records (what ``*_every`` faults count and touch)."""


class Action(enum.Enum):
    """What the writer does after sending a plan's payloads."""

    NONE = "none"
    DISCONNECT = "disconnect"
    CLOSE = "close"
    GOODNIGHT = "goodnight"
    STALL = "stall"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Plan:
    """The WebSocket messages to send for one batch of frames, then what to do."""

    payloads: list[bytes]
    frames: int
    """Frames (MLink messages) contained in ``payloads``, garbage not counted."""
    action: Action = Action.NONE


MakeFrame = Callable[[str, int, str], bytes]
"""``(mTyp, type number, message JSON) -> encoded frame`` supplied by the server."""


class FaultState:
    """One connection's fault counters and random stream."""

    def __init__(self, faults: Faults, rng: random.Random, *, active: bool = True) -> None:
        self.faults = faults if active else Faults()
        self.rng = rng
        self.frames_sent = 0
        self.data_frames = 0
        self.data_encoded = 0
        self.fired: Action | None = None

    # -- record level (called when a data record is encoded for this connection) ----------------

    def encode_data(self, rec: Record, view: frozenset[str] | None) -> str:
        """The record's ``message`` JSON for this connection, with schema-drift faults applied."""
        f = self.faults
        self.data_encoded += 1
        extra: dict[str, Any] = {}
        values: Mapping[str, Any] = rec.values
        if (
            f.new_field_after_messages is not None
            and self.frames_sent >= f.new_field_after_messages
        ):
            extra[f.new_field_name] = f.new_field_value
        if (
            f.int_to_float_after_messages is not None
            and self.frames_sent >= f.int_to_float_after_messages
        ):
            values = _int_to_float(rec.mdef, values)
        oversized = f.oversized_frame_every and self.data_encoded % f.oversized_frame_every == 0
        if not extra and values is rec.values and view is None and not oversized:
            return rec.message_json()
        text = encode_message(rec.mdef, values, view=view, extra=extra)
        if oversized:
            # header ~350 bytes + envelope; pad the message so the whole body lands near the target
            pad = max(0, f.oversized_frame_bytes - len(text) - 400)
            text = encode_message(
                rec.mdef, values, view=view, extra={**extra, "simPadding": "x" * pad}
            )
        return text

    # -- byte level (called by the connection's single writer) ----------------------------------

    def plan(
        self,
        frames: Sequence[OutFrame],
        pack: Callable[[list[bytes]], list[bytes]],
        make_frame: MakeFrame,
    ) -> Plan:
        """Turn a batch of frames into WebSocket payloads, applying every byte-level fault.

        ``pack`` groups encoded frames into WebSocket messages (the server's batching rule).
        """
        f = self.faults
        frames = list(frames)
        action = Action.NONE
        limit, limit_action = self._next_limit()
        if limit is not None:
            allowed = max(0, limit - self.frames_sent)
            if allowed <= len(frames):
                frames = frames[:allowed]
                action = limit_action
        chunks: list[bytes] = []  # encoded frames and garbage runs, in wire order
        counted = 0
        for fr in frames:
            body = fr.body
            number = fr.type_number
            extra_after: bytes = b""
            if fr.data:
                self.data_frames += 1
                n = self.data_frames
                if f.unknown_type_every and n % f.unknown_type_every == 0:
                    chunks.append(
                        make_frame(UNKNOWN_TYPE_NAME, UNKNOWN_TYPE_NUMBER, '{"simValue":1}')
                    )
                    counted += 1
                if f.bad_json_every and n % f.bad_json_every == 0:
                    body = body[:-1] + b","  # same length, no longer a JSON object
                if f.empty_mtyp_every and n % f.empty_mtyp_every == 0:
                    body = _EMPTY_MTYP.sub(b'"mTyp":""', body, count=1)
                if f.invalid_utf8_every and n % f.invalid_utf8_every == 0:
                    body = _poison_utf8(body)
                if f.garbage_every and n % f.garbage_every == 0:
                    extra_after = self._garbage()
            encoded = encode_frame(number, body)
            if (
                fr.data
                and f.corrupt_length_every
                and self.data_frames % f.corrupt_length_every == 0
            ):
                declared = min(len(body) + 7, MAX_BODY_LEN)
                encoded = encoded[:8] + b"%06d" % declared + encoded[HEADER_LEN:]
            chunks.append(encoded)
            counted += 1
            if extra_after:
                chunks.append(extra_after)
        self.frames_sent += counted
        payloads = pack(chunks) if chunks else []
        if f.split_frames and payloads:
            payloads = self._split(payloads)
        if action is not Action.NONE:
            self.fired = action
        return Plan(payloads, counted, action)

    def _next_limit(self) -> tuple[int | None, Action]:
        f = self.faults
        if self.fired is not None:
            return None, Action.NONE
        candidates = [
            (f.disconnect_after_messages, Action.DISCONNECT),
            (f.close_after_messages, Action.CLOSE),
            (f.goodnight_after_messages, Action.GOODNIGHT),
            (f.stall_after_messages, Action.STALL),
            (f.half_open_after_messages, Action.HALF_OPEN),
        ]
        live = [(n, a) for n, a in candidates if n is not None]
        if not live:
            return None, Action.NONE
        return min(live, key=lambda c: c[0])

    def _garbage(self) -> bytes:
        """A run of bytes that cannot start a frame (no CR, so no ``\\r\\nJ`` inside)."""
        n = self.rng.randint(3, 40)
        return bytes(self.rng.choice(_GARBAGE_ALPHABET) for _ in range(n))

    def _split(self, payloads: list[bytes]) -> list[bytes]:
        """Cut the stream at 1..3 random points per payload (message boundaries move)."""
        out: list[bytes] = []
        for p in payloads:
            if len(p) < 2:
                out.append(p)
                continue
            cuts = sorted({self.rng.randrange(1, len(p)) for _ in range(self.rng.randint(1, 3))})
            prev = 0
            for c in cuts:
                out.append(p[prev:c])
                prev = c
            out.append(p[prev:])
        return out


_GARBAGE_ALPHABET = bytes(b for b in range(256) if b not in (0x0D, 0x0A))


def _poison_utf8(body: bytes) -> bytes:
    """Replace one character inside the first string value of ``message`` with 0xFF."""
    start = body.find(b'"message"')
    i = body.find(b':"', max(start, 0))
    if i < 0 or i + 2 >= len(body) or body[i + 2 : i + 3] == b'"':
        return body[:-2] + b"\xff" + body[-1:]
    return body[: i + 2] + b"\xff" + body[i + 3 :]


def _int_to_float(mdef: MessageDef, values: Mapping[str, Any]) -> Mapping[str, Any]:
    for f in mdef.body_fields:
        v = values.get(f.name)
        if f.ftype in _INTISH and isinstance(v, int) and not isinstance(v, bool) and v != 0:
            return {**values, f.name: v + 0.5}
    return values
