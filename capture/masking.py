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

import itertools
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
_ESCAPABLE = re.compile(r'["\\/\x00-\x1f]')  # what JSON may write as a short escape
_SIMPLE: Final = {b"b": "\b", b"f": "\f", b"n": "\n", b"r": "\r", b"t": "\t"}


def _utf8(text: str) -> bytes:
    """``text`` as bytes; a lone surrogate (a secret read with ``surrogateescape``, say) is
    the byte it stands for, or else its own encoding: never an error."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _piece(part: bytes | str) -> bytes:
    return _utf8(part) if isinstance(part, str) else bytes(part)


class SecretMask:
    """The secrets known when a connection starts, and what its last messages left open."""

    __slots__ = ("_bytes", "_carry", "_longest", "_runs", "_shortest", "_tail", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._texts: tuple[str, ...] = tuple(
            sorted({s for s in secrets if len(_utf8(s)) >= SCRUB_MIN}, key=len, reverse=True)
        )
        # Searched byte for byte.  One that ends in a backslash is not taken where that
        # backslash begins an escape (``key\`` in ``"key\\"``): the string pass masks the
        # whole escape there.  One that is no valid UTF-8 (a lone surrogate: an undecodable
        # byte of an environment variable) is not taken where it would cut a character.
        encoded = [_utf8(t) for t in self._texts]
        self._bytes = tuple((b, b.endswith(b"\\"), not _valid(b)) for b in encoded)
        self._longest = max(map(len, encoded), default=0)
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

    def message(self, message: bytes | str, *, continues: bool = False) -> bytes | str:
        """``message`` with every secret masked, literal or escaped (same byte length).
        ``continues``: it continues a frame begun before it, so it may begin inside a string
        (its start is read both ways, up to the first line break)."""
        if isinstance(message, str):
            if "\\" not in message and not any(t in message for t in self._texts):
                return message
            raw = message.encode("utf-8", "surrogatepass")
            done = self.body(raw, continues=continues)
            return message if done is raw else done.decode("utf-8", "surrogatepass")
        return self.body(message, continues=continues)

    def suspect(self, message: bytes | str, *, continues: bool, unfinished: bool) -> bool:
        """Whether the frames decoded from ``message`` (masked by :meth:`message` already)
        must be masked once whole (:meth:`frames`): the message ``continues`` a frame begun
        before it and may hide a secret there (a backslash in that frame, or a secret that
        completes across the boundary).  ``unfinished``: a frame is still open after it.
        A message of whole frames (the usual one) costs only keeping its tail."""
        before = self._tail
        self._tail = (before + _piece(message[-self._longest :]))[-self._longest :]
        if not (continues or unfinished):
            self._carry = False
            return False
        escaped = ("\\" in message) if isinstance(message, str) else (b"\\" in message)
        split = False
        if continues:  # a secret across the boundary, inside the frame it continues
            seam = before + _piece(message[: self._longest])
            split = any(b in seam for b, _, _ in self._bytes)
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
                data = self.body(event.data)
                out.append(event if data is event.data else Garbage(data, event.reason))
                continue
            _, number, body = event
            masked = self.body(body)
            out.append(event if masked is body else (None, number, masked))
        return out

    def body(self, data: bytes, *, continues: bool = False) -> bytes:
        """``data`` (a message, a frame, or bytes that are not one) with every secret masked:
        literal ones, and those a JSON string spells with escapes.  The same object when
        nothing was masked.  ``continues``: ``data`` may begin inside a string."""
        spans: list[tuple[int, int]] = []
        n = len(data)
        for b, ends_in_backslash, raw in self._bytes:
            at = data.find(b)
            while at >= 0:  # every occurrence, overlapping ones too
                end = at + len(b)
                if ends_in_backslash and (end == n or data[end] in b'\\"'):
                    pass  # the start of an escape
                elif raw and (_inside_char(data, at) or _inside_char(data, end)):
                    pass  # the middle of a character
                else:
                    spans.append((at, end))
                at = data.find(b, at + 1)
        if b"\\" in data and (b"\\u" in data or self._spelled_plainly(data, 0, n)):
            strings: Iterable[tuple[int, int]] = _strings(data)
            if continues:  # read the other way too: from inside a string, then on from there
                first = _open_string(data)
                strings = itertools.chain(strings, [first], _strings(data, first[1] + 1))
            for start, stop in strings:
                if stop - start < self._shortest or data.find(b"\\", start, stop) < 0:
                    continue
                if data.find(b"\\u", start, stop) < 0 and not self._spelled_plainly(
                    data, start, stop
                ):
                    continue  # short escapes only, and the plain runs are not all there
                spans += self._escaped(data, start, stop)
        if not spans:
            return data
        out = bytearray(data)
        for lo, hi in spans:
            out[lo:hi] = b"*" * (hi - lo)
        return bytes(out)

    def _spelled_plainly(self, data: bytes, start: int, stop: int) -> bool:
        """Whether a secret could be in ``data[start:stop]`` written without ``\\u`` escapes:
        then each run of its characters that JSON writes as they are is there literally."""
        return any(all(data.find(f, start, stop) >= 0 for f in runs) for runs in self._runs)

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


_CONTENT: Final = rb'(?:[^"\\\r\n]++|\\[^\r\n])*+'  # a string's content: possessive, linear
_STRING = re.compile(rb'"(' + _CONTENT + rb')"?')
_REST = re.compile(_CONTENT)


def _open_string(data: bytes) -> tuple[int, int]:
    """The start of ``data`` read as the rest of a string opened before it."""
    rest = _REST.match(data)
    assert rest is not None  # the pattern matches the empty string
    return 0, rest.end()


def _inside_char(data: bytes, at: int) -> bool:
    """Whether offset ``at`` falls inside a multi-byte UTF-8 character of ``data``."""
    return 0 < at < len(data) and 0x80 <= data[at] <= 0xBF and data[at - 1] >= 0x80


def _valid(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _strings(data: bytes, pos: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of the content of each JSON string in ``data``, quotes excluded.  A string
    ends at its closing quote or, unterminated, at a raw line break, a backslash before one, or
    the end (JSON strings hold no raw CR or LF, and frames are separated by CR LF).  One regular
    expression with possessive repeats: linear, at C speed."""
    for m in _STRING.finditer(data, pos):
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
        if e == b"u" and stop == len(data) and stop - m.end() < 4:
            pos = stop = m.start()  # an escape the next message completes: no character yet
            break
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
