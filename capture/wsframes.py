"""The server's WebSocket byte stream split into the frames wsproto must see and the rest.

Nearly every frame an MLink server sends is a whole binary message: FIN set, no reserved bits,
opcode 2, unmasked, its length in the shortest encoding (RFC 6455 §5.2).  wsproto spends about
9 µs of Python on each such message (a frame object, an event, a bytearray copy); the payload is
all the capture needs.  :class:`FrameSplitter` takes those frames out of the stream itself and
hands every other byte, in order, to wsproto: text, fragments and their continuations, control
frames, anything masked, reserved or oversized, and whatever does not parse.  wsproto is always
given whole frames, from their first byte (a frame may reach it in several pieces, contiguous),
so its parser and its message state are exactly what they would be had it seen every byte: a
frame the fast path takes could not have changed them.

Sans-IO (bytes in, items out), like wsproto itself; the transport owns the socket.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["ForWsproto", "FrameSplitter"]

_BINARY_WHOLE = 0x82  # FIN, RSV 000, opcode 2 (binary)
# A frame the fast path takes waits here until it is whole, and each read re-joins what waits:
# beyond this size a frame is wsproto's, which takes it in pieces (copying a 64 MiB message
# once per 256 KiB read would be quadratic).  MLink frames are far smaller.
DIRECT_MAX: Final = 1 << 20
_MASKED = 0x80
_DATA_OPCODES = (0x0, 0x1, 0x2)  # continuation, text, binary: the frames of a message


class ForWsproto(NamedTuple):
    """Bytes of the stream that wsproto must parse (part or all of one or more frames)."""

    data: bytes


class FrameSplitter:
    """Incremental: ``feed(data)`` returns, in stream order, each whole binary message's
    payload (``bytes``) and the bytes wsproto must see (:class:`ForWsproto`).

    ``max_payload``: a binary frame longer than this goes to wsproto (the caller's message
    size limit then closes the connection with 1009, as for any other message), and so does
    one longer than :data:`DIRECT_MAX`.  Bytes of a frame the fast path will take wait here
    until the frame is whole, so at most ``min(max_payload, DIRECT_MAX)`` + 13 bytes are held.
    """

    __slots__ = ("_carry", "_fragmented", "_max_payload", "_owed")

    def __init__(self, max_payload: int) -> None:
        self._max_payload = min(max_payload, DIRECT_MAX)
        self._carry = b""  # the start of a frame whose header or payload is incomplete
        self._owed = 0  # bytes still due to wsproto: the rest of a frame it has begun
        self._fragmented = False  # wsproto holds a message whose final fragment is to come

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._carry)

    def feed(self, data: bytes) -> list[bytes | ForWsproto]:
        out: list[bytes | ForWsproto] = []
        if self._owed:
            take = min(self._owed, len(data))
            out.append(ForWsproto(data[:take]))
            self._owed -= take
            if take == len(data):
                return out
            data = data[take:]
        buf = self._carry + data if self._carry else data
        pos = 0
        end = len(buf)
        max_payload = self._max_payload
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = pos + 2
            minimal = True
            if n == 126:
                if end - head < 2:
                    break
                n = int.from_bytes(buf[head : head + 2], "big")
                head += 2
                minimal = n >= 126
            elif n == 127:
                if end - head < 8:
                    break
                n = int.from_bytes(buf[head : head + 8], "big")
                head += 8
                minimal = 65536 <= n < 1 << 63
            if b1 & _MASKED:
                head += 4  # wsproto refuses a masked server frame; its length still counts
            stop = head + n
            if b0 == _BINARY_WHOLE and not b1 & _MASKED and minimal and n <= max_payload and (
                not self._fragmented  # else wsproto must refuse it: "expected CONTINUATION"
            ):
                if stop > end:
                    break  # the rest of the message is to come
                out.append(buf[head:stop])
                pos = stop
                continue
            opcode = b0 & 0x0F
            if opcode in _DATA_OPCODES:
                self._fragmented = not b0 & 0x80
            given = min(stop, end)
            out.append(ForWsproto(buf[pos:given]))
            self._owed = stop - given
            pos = given
            if self._owed:
                break
        self._carry = buf[pos:] if pos < end else b""
        return out

    def rest(self) -> bytes:
        """What is held back (the start of an incomplete frame), handed over once: the
        connection ends, and wsproto is to judge it (an abnormal closure)."""
        carry, self._carry = self._carry, b""
        return carry
