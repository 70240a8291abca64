"""JSONFramed codec, sans-IO: bytes in, frames out (PROTOCOL.md §4).

A server frame is ``\\r\\n`` + ``J`` (or ``P``) + 5-digit message-type number + 6-digit body
length + body.  WebSocket message boundaries mean nothing here: the decoder keeps a carry-over
buffer, so a frame split across messages, several frames in one message, text or binary messages
all decode to the same frames.  Bytes that are not a frame are skipped up to the next ``\\r\\nJ``
(or ``\\r\\nP``) and handed back as :class:`Garbage` so the caller can quarantine them.

This module imports neither trio nor pyarrow; it is tested on plain bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from capture.errors import FrameDecoderError as FrameDecoderError
from capture.errors import RemoteProtocolError as RemoteProtocolError

HEADER_LEN = 14
MAX_BODY_LEN = 999_999  # six decimal digits
_SYNC = b"\r\n"
_PROTOS = (b"J", b"P")


class Frame(NamedTuple):
    """One complete frame: protocol letter, type number from the header, and the body bytes.

    (A named tuple: one is made per message on the hot path, and it is cheaper than a class.)
    """

    proto: bytes
    type_number: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes skipped while resynchronising, with the reason they were not a frame."""

    data: bytes
    reason: str


Event = Frame | Garbage
TypedFrame = tuple[str | None, int, bytes]
"""``(mtyp, type_number, body)``: what :meth:`FrameDecoder.feed_typed` gives per frame."""


class FrameDecoder:
    """Incremental JSONFramed decoder with a bounded carry-over buffer.

    ``feed(data)`` returns the events completed by ``data``: :class:`Frame` for each whole
    frame and :class:`Garbage` for skipped bytes, in stream order.  At most ``max_buffer``
    bytes are ever held: an incomplete frame can never be longer than ``HEADER_LEN +
    MAX_BODY_LEN``, so the bound is checked once, at construction.
    """

    __slots__ = (
        "_buf",
        "_checked",
        "_garbage_bytes",
        "_max_buffer",
        "_need",
        "frames",
        "garbage_events",
    )

    def __init__(self, max_buffer: int = HEADER_LEN + MAX_BODY_LEN) -> None:
        if max_buffer < HEADER_LEN + MAX_BODY_LEN:
            raise FrameDecoderError(
                f"max_buffer must be at least {HEADER_LEN + MAX_BODY_LEN} bytes "
                f"(one maximal frame), got {max_buffer}"
            )
        self._max_buffer = max_buffer
        # Carry-over bytes (a frame split across messages).  Linear in the bytes received, like
        # h11's receive buffer: new bytes are appended (amortised O(1)), and while a frame whose
        # header has been read is incomplete, ``_need`` is the buffer length it completes at and
        # ``_checked`` how far its body is known to hold no CR LF, so a feed looks at its own
        # bytes only; the frame is scanned once, when it is complete.
        self._buf = bytearray()
        self._need = 0
        self._checked = 0
        self._garbage_bytes = 0
        self.frames = 0
        self.garbage_events = 0

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    @property
    def garbage_bytes(self) -> int:
        return self._garbage_bytes

    def feed(self, data: bytes | bytearray | memoryview | str) -> list[Event]:
        return cast("list[Event]", self._feed(data, typed=False))

    def feed_typed(self, data: bytes | bytearray | memoryview | str) -> list[TypedFrame | Garbage]:
        """:meth:`feed` for the capture hot path: each frame comes as a plain tuple
        ``(mtyp, type_number, body)`` with the header's ``mTyp`` already peeked (None when
        :func:`peek_mtyp` cannot tell): no object built per frame beyond the tuple."""
        return cast("list[TypedFrame | Garbage]", self._feed(data, typed=True))

    def _feed(
        self, data: bytes | bytearray | memoryview | str, *, typed: bool
    ) -> list[Frame | TypedFrame | Garbage]:
        if isinstance(data, str):  # a text WebSocket message: the length counts UTF-8 bytes
            data = data.encode("utf-8")
        if self._buf:
            carry = self._buf
            carry += data
            need = self._need
            if need and len(carry) < need:  # still incomplete: look at the new bytes only
                if self._checked < 0:  # a P frame: its body is not JSON, CR LF may be in it
                    return []
                bad = carry.find(_SYNC, max(self._checked - 1, HEADER_LEN), len(carry))
                if bad < 0:
                    self._checked = len(carry)
                    return []
            buf = bytes(carry)
        else:
            buf = bytes(data)
        self._need = 0
        events: list[Frame | TypedFrame | Garbage] = []
        names = _NAMES
        pos = 0
        end = len(buf)
        frames = 0
        while end - pos >= HEADER_LEN:
            proto = buf[pos + 2]
            if buf[pos] == 13 and buf[pos + 1] == 10 and (proto == 74 or proto == 80):  # J / P
                digits = buf[pos + 3 : pos + HEADER_LEN]
                if digits.isdigit():
                    type_number, length = divmod(int(digits), 1_000_000)  # 5 + 6 digits
                    start = pos + HEADER_LEN
                    stop = start + length
                    # A sound JSON frame ends with "}" right where the next frame (or the data)
                    # starts.  Otherwise look for a CR LF inside the declared body: JSON never
                    # holds one, so there the length is wrong (a truncated frame) and we resync
                    # instead of swallowing the frames that follow.
                    if proto == 74 and not (
                        stop <= end
                        and buf[stop - 1] == 125
                        and (stop == end or buf.startswith(_SYNC, stop))
                    ):
                        bad = buf.find(_SYNC, start, min(stop, end))
                        if bad >= 0:
                            events.append(Garbage(buf[pos:bad], "frame shorter than its length"))
                            self.garbage_events += 1
                            self._garbage_bytes += bad - pos
                            pos = bad
                            continue
                    if stop > end:  # wait for the rest of the frame
                        self._need = stop - pos
                        self._checked = end - pos if proto == 74 else -1
                        break
                    body = buf[start:stop]
                    if typed:
                        # peek_mtyp's common case inline (a call per frame is measurable)
                        mtyp = None
                        if body.startswith(_PREFIX):
                            j = body.find(b'"', 19, 147)
                            if j > 19:
                                mtyp = names.get(body[19:j])
                        events.append((mtyp or peek_mtyp(body), type_number, body))
                    else:
                        events.append(Frame(buf[pos + 2 : pos + 3], type_number, body))
                    frames += 1
                    pos = stop
                    continue
                reason = "non-digit in frame header"
            else:
                reason = "no frame header"
            pos = self._skip(buf, pos, end, reason, events)
        # A lone stray CR LF (or part of one) at the very end is the examples' tolerated trailer;
        # it stays buffered as the possible start of the next frame.
        if pos < end:
            self._buf = bytearray(memoryview(buf)[pos:])
        elif self._buf:
            self._buf = bytearray()
        if len(self._buf) > self._max_buffer:  # pragma: no cover - impossible by construction
            raise FrameDecoderError("frame decoder buffer exceeded its bound")
        self.frames += frames
        return events

    def _skip(self, buf: bytes, pos: int, end: int, reason: str, events: list[Any]) -> int:
        """Skip from ``pos`` to the next plausible frame start; record what was skipped."""
        nxt = _find_sync(buf, pos + 1)
        if nxt < 0:
            # Keep a possible partial sync marker at the end ("\r" or "\r\n") for the next feed.
            keep = 2 if buf.endswith(_SYNC) else 1 if buf.endswith(b"\r") else 0
            nxt = max(pos + 1, end - keep)
        skipped = buf[pos:nxt]
        if skipped.strip(b"\r\n"):  # bare CR/LF between frames is tolerated, not garbage
            events.append(Garbage(skipped, reason))
            self.garbage_events += 1
            self._garbage_bytes += len(skipped)
        return nxt

    def flush(self) -> list[Garbage]:
        """End of stream: whatever is still buffered can never complete a frame."""
        rest, self._buf, self._need = bytes(self._buf), bytearray(), 0
        # A CR or CR LF at the very end is the tolerated trailer, as when the stream is fed whole.
        rest = rest.rstrip(b"\r\n")
        if rest.strip(b"\r\n"):
            self.garbage_events += 1
            self._garbage_bytes += len(rest)
            return [Garbage(rest, "truncated frame at end of stream")]
        return []


_SYNC_AT = re.compile(rb"\r\n[JP]")


def _find_sync(buf: bytes, start: int) -> int:
    """Position of the next ``\\r\\nJ`` or ``\\r\\nP`` at or after ``start``, or -1.

    One scan up to the match: searching for each marker on its own scanned to the end of the
    buffer for the one that is absent, at every skip, so a message of 300,000 ``\\r\\nJ``
    took minutes (quadratic)."""
    m = _SYNC_AT.search(buf, start)
    return m.start() if m is not None else -1


def encode_frame(type_number: int, body: bytes, proto: bytes = b"J") -> bytes:
    """A server-style frame: ``\\r\\n`` + proto + 5-digit type + 6-digit length + body."""
    if proto not in _PROTOS:
        raise ValueError(f"proto must be b'J' or b'P', got {proto!r}")
    if not 0 <= type_number <= 99_999:
        raise ValueError(f"type number {type_number} does not fit five digits")
    if len(body) > MAX_BODY_LEN:
        raise ValueError(f"body of {len(body)} bytes does not fit six digits")
    return b"%b%b%05d%06d%b" % (_SYNC, proto, type_number, len(body), body)


def encode_client_frame(body: bytes) -> bytes:
    """A client frame the way the vendor's Python and C# clients build it (§4.2).

    ``\\r\\nJ`` + the body length in 11 zero-padded digits + body.  For bodies under 1 MB that is
    byte-identical to a 14-byte header with type number 00000.
    """
    if len(body) > 99_999_999_999:
        raise ValueError("body too large for an 11-digit length")
    return b"%bJ%011d%b" % (_SYNC, len(body), body)


_MTYP = b'"mTyp":"'
_PREFIX = b'{"header":{"mTyp":"'  # how every server body starts (compact JSON, header first)
_NAMES: dict[bytes, str] = {}  # message type names seen: a handful, decoded once


def peek_mtyp(body: bytes) -> str | None:
    """The header's ``mTyp`` without parsing the JSON (hot path: a prefix check and a ``find``).

    Bodies are compact JSON whose header comes first, so the first ``"mTyp":"`` is the
    header's.  Returns None when it is not there; the caller then parses the body fully.
    """
    if body.startswith(_PREFIX):
        j = body.find(b'"', 19, 147)
        if j > 19:
            name = _NAMES.get(body[19:j])
            if name is not None:
                return name
        i = 19
    else:
        i = body.find(_MTYP, 0, 256)
        if i < 0:
            return None
        i += len(_MTYP)
        j = body.find(b'"', i, i + 128)
    if j < 0:
        return None
    raw = body[i:j]
    if b"\\" in raw:
        return None
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(_NAMES) < 1024:  # bounded: a stream cannot grow it without limit
        _NAMES[raw] = name
    return name
