r"""Masking the process's secrets in what a server sends, so that none is kept anywhere.

A server may echo the API key (a LogonFailed detail, a data field, a type name).  Every secret
registered with :func:`capture.logs.register_secret` that is at least ``SCRUB_MIN`` UTF-8 bytes
long is masked with ``*`` over the bytes that spell it, so lengths never change and frame
headers stay valid:

* in each received WebSocket message, before the journal or the frame decoder sees it
  (:meth:`SecretMask.message`): written literally, or inside a JSON string with escapes
  (``\u0035...``, ``\/``), which are resolved to find it;
* in each frame decoded from a message that may hide one the message could not show
  (:meth:`SecretMask.frames`): a secret split across two WebSocket messages, or escaped in a
  string that a message boundary cut.  The frame, whole, is masked the same way.

So neither Parquet (columns, ``_extra``), the quarantine (bytes, reason), a capture event nor a
log line holds it.  Ordinary market data pays two byte searches per message (the secret, a
backslash); the scan of strings is linear in the length of what it reads, whatever that holds.

A secret split across two messages reaches the journal as two halves (it keeps what was
received, for replay, and is deleted once committed); every stored frame is masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final

from capture.frames import Garbage, TypedFrame
from capture.logs import registered_secrets

__all__ = ["SCRUB_MIN", "SecretMask"]

SCRUB_MIN: Final = 8
"""Secrets at least this long are masked in what the server sends (a shorter one could match
ordinary market data)."""

_BACKSLASH: Final = 0x5C
_ESCAPE = re.compile(rb"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_SIMPLE: Final = {b"b": "\b", b"f": "\f", b"n": "\n", b"r": "\r", b"t": "\t"}


class SecretMask:
    """The secrets known when a connection starts, and what its last message left open."""

    __slots__ = ("_bytes", "_carry", "_longest", "_tail", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        texts = sorted({s for s in secrets if len(s.encode("utf-8")) >= SCRUB_MIN}, key=len)
        self._texts: tuple[str, ...] = tuple(reversed(texts))  # longest first
        self._bytes = tuple(t.encode("utf-8") for t in self._texts)
        self._longest = max((len(b) for b in self._bytes), default=0)
        self._tail = b""  # the end of the last message: a secret may continue in the next
        self._carry = False  # a suspect message left a frame unfinished

    @classmethod
    def current(cls) -> SecretMask | None:
        """A mask of the secrets registered now; None when there is none to mask."""
        mask = cls(registered_secrets())
        return mask if mask._texts else None

    def message(self, message: bytes | str) -> bytes | str:
        """``message`` with every secret masked, literal or escaped (same byte length)."""
        if isinstance(message, str):
            masked = message
            for t in self._texts:
                if t in masked:
                    masked = masked.replace(t, "*" * len(t.encode("utf-8")))
            if "\\" not in masked:
                return masked
            raw = masked.encode("utf-8", "surrogatepass")
            done = self.body(raw)
            return masked if done is raw else done.decode("utf-8", "surrogatepass")
        return self.body(message)

    def suspect(self, message: bytes | str, unfinished: bool) -> bool:
        """Whether the frames decoded from ``message`` (literally masked already) must be
        checked one by one.  ``unfinished``: the decoder holds a frame's start afterwards."""
        if isinstance(message, str):
            escaped = "\\" in message
            head = message[: self._longest].encode("utf-8", "surrogatepass")
            tail = message[-self._longest :].encode("utf-8", "surrogatepass")
        else:
            escaped = b"\\" in message
            head, tail = bytes(message[: self._longest]), bytes(message[-self._longest :])
        seam = self._tail + head
        split = bool(self._tail) and any(b in seam for b in self._bytes)
        self._tail = tail
        flagged = self._carry or escaped or split
        self._carry = flagged and unfinished
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
        masked = data
        for b in self._bytes:
            if b in masked:
                masked = masked.replace(b, b"*" * len(b))
        if b"\\" not in masked:
            return masked
        out: bytearray | None = None
        for start, stop in _strings(masked):
            if masked.find(b"\\", start, stop) < 0:
                continue
            text, offsets = _unescape(masked, start, stop)
            for t in self._texts:
                at = text.find(t)
                while at >= 0:
                    if out is None:
                        out = bytearray(masked)
                    lo, hi = offsets[at], offsets[at + len(t)]
                    out[lo:hi] = b"*" * (hi - lo)
                    at = text.find(t, at + len(t))
        return masked if out is None else bytes(out)


def _strings(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, stop) of the content of each JSON string in ``data``, quotes excluded; an
    unterminated one runs to the end.  Linear: every quote and backslash is looked at once."""
    n = len(data)
    i = 0
    while (start := data.find(b'"', i)) >= 0:
        j = start + 1
        while True:
            k = data.find(b'"', j)
            if k < 0:
                yield start + 1, n
                return
            b = k - 1
            while b > start and data[b] == _BACKSLASH:
                b -= 1
            if (k - 1 - b) % 2 == 0:  # an even run of backslashes: this quote ends the string
                break
            j = k + 1
        yield start + 1, k
        i = k + 1


def _unescape(data: bytes, start: int, stop: int) -> tuple[str, list[int]]:
    """The text of ``data[start:stop]`` (a JSON string's content) with its escapes resolved,
    leniently (invalid UTF-8 and unknown escapes stay as they are), and for each character the
    offset in ``data`` of its first byte, plus ``stop``."""
    chars: list[str] = []
    offsets: list[int] = []
    pos = start
    for m in _ESCAPE.finditer(data, start, stop):
        _plain(data, pos, m.start(), chars, offsets)
        e = m.group(1)
        chars.append(chr(int(e[1:], 16)) if len(e) == 5 else _SIMPLE.get(e, e.decode("latin-1")))
        offsets.append(m.start())
        pos = m.end()
    _plain(data, pos, stop, chars, offsets)
    offsets.append(stop)
    return "".join(chars), offsets


def _plain(data: bytes, start: int, stop: int, chars: list[str], offsets: list[int]) -> None:
    """Unescaped bytes: each character with the offset of its first byte."""
    pos = start
    for ch in data[start:stop].decode("utf-8", "surrogateescape"):
        chars.append(ch)
        offsets.append(pos)
        pos += 1 if ch < "\x80" else len(ch.encode("utf-8", "surrogateescape"))
