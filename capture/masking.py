r"""Masking the process's secrets in what a server sends, so that none is kept anywhere.

A server may echo the API key (a LogonFailed detail, a data field, a type name).  Every secret
registered with :func:`capture.logs.register_secret` that is at least ``SCRUB_MIN`` UTF-8 bytes
long is masked with ``*`` over the bytes that spell it, so lengths never change and frame
headers stay valid:

* in each received WebSocket message, before the journal or the frame decoder sees it
  (:meth:`SecretMask.message`): written literally, or inside a JSON string with escapes
  (``\u0035...``, ``\/``), which are resolved to find it;
* in each frame that a message boundary cut, when the message could not show the secret
  (:meth:`SecretMask.frames`): a secret split across two or more WebSocket messages, or one
  escaped in a frame that a boundary cut.  The frame, whole, is masked the same way.

So neither Parquet (columns, ``_extra``), the quarantine (bytes, reason), a capture event nor a
log line holds it.  Overlapping occurrences (of one secret or of two) are masked as their union.
Ordinary market data pays two byte searches per message (the secret, a backslash).  A string
with escapes is read by the JSON parser (C) and searched; only one that holds a secret is
walked character by character to find its bytes.  Strings never span a raw line break (JSON
forbids it), so a stray quote cannot hide the strings of the frames after it.

A secret split across two messages reaches the journal as two halves (it keeps what was
received, for replay, and is deleted once committed); every stored frame is masked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Final

from capture.frames import Garbage, TypedFrame
from capture.logs import registered_secrets

__all__ = ["SCRUB_MIN", "SecretMask"]

SCRUB_MIN: Final = 8
"""Secrets at least this long (UTF-8 bytes) are masked in what the server sends (a shorter one
could match ordinary market data)."""

_BACKSLASH: Final = 0x5C
_ESCAPE = re.compile(rb"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_VALID_ESCAPES = re.compile(r'(\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})|\\')
_JSON_SPECIAL = re.compile(r'["\\\x00-\x1f]')
_ESCAPABLE = re.compile(r'["\\/\x00-\x1f]')  # what JSON may write as a short escape
_SIMPLE: Final = {b"b": "\b", b"f": "\f", b"n": "\n", b"r": "\r", b"t": "\t"}


def _utf8(text: str) -> bytes:
    """``text`` as bytes; a lone surrogate (a secret read with ``surrogateescape``, say) is
    the byte it stands for, or else its own encoding: never an error."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


class SecretMask:
    """The secrets known when a connection starts, and what its last messages left open."""

    __slots__ = ("_bytes", "_carry", "_longest", "_runs", "_shortest", "_tail", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._texts: tuple[str, ...] = tuple(
            sorted({s for s in secrets if len(_utf8(s)) >= SCRUB_MIN}, key=len, reverse=True)
        )
        # Searched byte for byte: the secrets JSON writes as they are.  One with a quote, a
        # backslash or a control character is always escaped in a JSON string, and its bytes
        # can be the start of an escape (``key\`` in ``"key\\"``): only the string pass
        # looks for it.
        self._bytes = tuple(_utf8(t) for t in self._texts if not _JSON_SPECIAL.search(t))
        self._longest = max((len(_utf8(t)) for t in self._texts), default=0)
        self._runs = tuple(
            tuple(_utf8(r) for r in _ESCAPABLE.split(t) if r) for t in self._texts
        )
        self._shortest = min((len(t) for t in self._texts), default=0)
        self._tail = b""  # the end of what came before: a secret may continue in this message
        self._carry = False  # an unfinished frame may hide a secret (escaped, or split)

    @classmethod
    def current(cls) -> SecretMask | None:
        """A mask of the secrets registered now; None when there is none to mask."""
        mask = cls(registered_secrets())
        return mask if mask._texts else None

    def message(self, message: bytes | str) -> bytes | str:
        """``message`` with every secret masked, literal or escaped (same byte length)."""
        if isinstance(message, str):
            if "\\" not in message and not any(t in message for t in self._texts):
                return message
            raw = message.encode("utf-8", "surrogatepass")
            done = self.body(raw)
            return message if done is raw else done.decode("utf-8", "surrogatepass")
        return self.body(message)

    def suspect(self, message: bytes | str, *, continues: bool, unfinished: bool) -> bool:
        """Whether the frames decoded from ``message`` (masked by :meth:`message` already)
        must be masked once whole (:meth:`frames`): the message ``continues`` a frame begun
        before it and may hide a secret there (a backslash in that frame, or a secret that
        completes across the boundary).  ``unfinished``: a frame is still open after it."""
        if isinstance(message, str):
            escaped = "\\" in message
            head = _utf8(message[: self._longest])
            tail = _utf8(message[-self._longest :])
        else:
            escaped = b"\\" in message
            head, tail = bytes(message[: self._longest]), bytes(message[-self._longest :])
        seam = self._tail + head
        split = any(b in seam for b in self._bytes)
        self._tail = (self._tail + tail)[-self._longest :]
        risky = escaped or split
        flagged = continues and (risky or self._carry)
        self._carry = unfinished and (risky or (continues and self._carry))
        return flagged

    def frames(self, events: list[TypedFrame | Garbage]) -> list[TypedFrame | Garbage]:
        """Decoded frames with every secret masked, escaped or not.  A frame whose body
        changed loses its peeked type (it is read again from the masked body)."""
        out: list[TypedFrame | Garbage] = []
        for event in events:
            if isinstance(event, Garbage):
                data = self.body(bytes(event.data))
                out.append(event if data == event.data else Garbage(data, event.reason))
                continue
            _, number, body = event
            masked = self.body(body)
            out.append(event if masked is body else (None, number, masked))
        return out

    def body(self, data: bytes) -> bytes:
        """``data`` (a message, a frame, or bytes that are not one) with every secret masked:
        literal ones, and those a JSON string spells with escapes.  The same object when
        nothing was masked."""
        spans: list[tuple[int, int]] = []
        for b in self._bytes:
            at = data.find(b)
            while at >= 0:  # every occurrence, overlapping ones too
                spans.append((at, at + len(b)))
                at = data.find(b, at + 1)
        if b"\\" in data and (b"\\u" in data or self._spelled_plainly(data)):
            for start, stop in _strings(data):
                if stop - start >= self._shortest and data.find(b"\\", start, stop) >= 0:
                    spans += self._escaped(data, start, stop)
        if not spans:
            return data
        out = bytearray(data)
        for lo, hi in spans:
            out[lo:hi] = b"*" * (hi - lo)
        return bytes(out)

    def _spelled_plainly(self, data: bytes) -> bool:
        """Whether a secret could be in ``data`` written without ``\\u`` escapes: then each
        run of its characters that JSON writes as they are is there literally."""
        return any(all(f in data for f in runs) for runs in self._runs)

    def _escaped(self, data: bytes, start: int, stop: int) -> list[tuple[int, int]]:
        """Where the secrets lie in ``data[start:stop]``, a JSON string's content with escapes.
        The C parser reads it first; only a string that holds a secret is walked."""
        text = _quick_text(data, start, stop)
        if not any(t in text for t in self._texts):
            return []
        text, offsets = _unescape(data, start, stop)
        spans = []
        for t in self._texts:
            at = text.find(t)
            while at >= 0:
                spans.append((offsets[at], offsets[at + len(t)]))
                at = text.find(t, at + 1)
        return spans


_STRING = re.compile(rb'"((?:[^"\\\r\n]++|\\[^\r\n])*+)"?')


def _strings(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, stop) of the content of each JSON string in ``data``, quotes excluded.  A string
    ends at its closing quote or, unterminated, at a raw line break, a backslash before one, or
    the end (JSON strings hold no raw CR or LF, and frames are separated by CR LF).  One regular
    expression with possessive repeats: linear, at C speed."""
    for m in _STRING.finditer(data):
        yield m.span(1)


def _quick_text(data: bytes, start: int, stop: int) -> str:
    """The string's text, near enough to search for a secret: the JSON parser's reading (at C
    speed); when it refuses (invalid UTF-8, an invalid escape), backslashes that start no
    valid escape are dropped first."""
    try:
        return str(json.loads(b'"' + data[start:stop] + b'"', strict=False))
    except ValueError:
        pass
    raw = data[start:stop].decode("utf-8", "surrogateescape")
    raw = _VALID_ESCAPES.sub(r"\1", raw)
    try:
        return str(json.loads('"' + raw + '"', strict=False))
    except ValueError:  # pragma: no cover - every escape left is valid
        return raw


def _unescape(data: bytes, start: int, stop: int) -> tuple[str, list[int]]:
    """The text of ``data[start:stop]`` (a JSON string's content) with its escapes resolved,
    and for each character the offset in ``data`` of its first byte, plus where the last one
    ends.  Lenient, as :func:`_quick_text` reads it: invalid UTF-8 stays as it is, an unknown
    escape is its character, a surrogate pair written as two escapes is one character, and a
    backslash that ends the data (the start of an escape the next message holds) is none."""
    chars: list[str] = []
    offsets: list[int] = []
    pos = start
    for m in _ESCAPE.finditer(data, start, stop):
        _plain(data, pos, m.start(), chars, offsets)
        e = m.group(1)
        if len(e) == 5:
            c = chr(int(e[1:], 16))
            if "\udc00" <= c <= "\udfff" and chars and "\ud800" <= chars[-1] <= "\udbff":
                if offsets[-1] == m.start() - 6:  # the escape just before: one character
                    high = ord(chars.pop())
                    c = chr(0x10000 + ((high - 0xD800) << 10) + (ord(c) - 0xDC00))
                    chars.append(c)
                    pos = m.end()
                    continue
            chars.append(c)
        else:
            chars.append(_SIMPLE.get(e, e.decode("latin-1")))
        offsets.append(m.start())
        pos = m.end()
    end = stop - 1 if stop > pos and data[stop - 1] == _BACKSLASH else stop
    _plain(data, pos, end, chars, offsets)
    offsets.append(end)
    return "".join(chars), offsets


def _plain(data: bytes, start: int, stop: int, chars: list[str], offsets: list[int]) -> None:
    """Unescaped bytes: each character with the offset of its first byte."""
    pos = start
    for ch in data[start:stop].decode("utf-8", "surrogateescape"):
        chars.append(ch)
        offsets.append(pos)
        pos += 1 if ch < "\x80" else len(ch.encode("utf-8", "surrogateescape"))
