"""Whole binary messages are taken out of the server's stream before wsproto
(capture.wsframes): what the caller receives, and how the connection ends, must be exactly what
wsproto alone makes of the same bytes, whatever the server sends and however the bytes are cut
into reads.  The oracle is wsproto fed the whole stream at once; the subject is the real
client (capture.transport.connect) on an in-memory stream, on trio's mock clock.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request

from capture.errors import ConnectionLost
from capture.transport import connect
from capture.wsframes import DIRECT_MAX, ForWsproto, FrameSplitter

MAX = 1000  # the client's message size limit in these tests


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = False,
    length: str = "minimal",
) -> bytes:
    """One server frame, built by hand so that it can break the rules."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    mbit = 0x80 if mask else 0
    if length == "16" or (length == "minimal" and 126 <= n < 65536):
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    elif length == "64" or (length == "minimal" and n >= 65536):
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    else:
        head = bytes([b0, mbit | n])
    if mask:
        head += b"\0\0\0\0"  # a zero key: the payload reads the same
    return head + payload


def binary(p: bytes) -> bytes:
    return frame(0x2, p)


payloads = st.one_of(
    st.binary(max_size=130),
    st.integers(0, 1200).map(lambda n: bytes([n % 251]) * n),  # around the 126 form and MAX
)
texts = st.one_of(
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.sampled_from([b"\xff\xfe", b"caf\xc3", b"\xc3\xa9t\xc3\xa9"]),  # invalid / split UTF-8
)


@st.composite
def fragmented(draw: st.DrawFn) -> bytes:
    """A message in 2-3 fragments, perhaps with a ping between them (allowed, §5.4)."""
    opcode = draw(st.sampled_from([0x1, 0x2]))
    body = draw(texts if opcode == 0x1 else payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), min_size=1, max_size=2)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out += frame(opcode if i == 0 else 0x0, piece, fin=last)
        if not last and draw(st.booleans()):
            out += frame(0x9, b"p")
    return out


frames = st.one_of(
    payloads.map(binary),
    payloads.map(binary),
    payloads.map(binary),
    texts.map(partial(frame, 0x1)),
    fragmented(),
    st.binary(max_size=20).map(partial(frame, 0x9)),  # ping
    st.binary(max_size=20).map(partial(frame, 0xA)),  # pong
    st.just(frame(0x8, struct.pack("!H", 1000) + b"bye")),  # close
    st.just(frame(0x8, struct.pack("!H", 1001))),
    payloads.map(partial(frame, 0x2, mask=True)),  # a masked server frame: a violation
    payloads.map(partial(frame, 0x2, rsv=4)),  # RSV1 without an extension
    st.binary(max_size=120).map(partial(frame, 0x2, length="16")),  # non-minimal length
    st.binary(max_size=120).map(partial(frame, 0x2, length="64")),
    st.just(frame(0x3, b"x")),  # reserved opcode
    st.just(frame(0x0, b"orphan")),  # a continuation with no message
    payloads.map(partial(frame, 0x2, fin=False)),  # a fragment whose end may never come
)


def wsproto_alone(wire: bytes) -> tuple[list[bytes | str], int]:
    """The oracle: wsproto's client fed everything at once; messages joined from their
    fragments, the connection's end as the transport reports it (1009 over ``MAX``)."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    client.receive_data(wire)
    events = list(client.events())
    client.receive_data(None)  # the end of the stream: after the events of every byte
    events += client.events()
    got: list[bytes | str] = []
    parts: list[Any] = []
    size = 0
    for ev in events:
        if isinstance(ev, Message):
            data = ev.data
            size += len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
            if size > MAX:
                return got, 1009
            parts.append(bytes(data) if isinstance(data, bytearray) else data)
            if ev.message_finished:
                got.append("".join(parts) if isinstance(parts[0], str) else b"".join(parts))
                parts, size = [], 0
        elif isinstance(ev, CloseConnection):
            return got, ev.code
    raise AssertionError("wsproto ended the stream without a close")


def through_the_client(wire: bytes, cuts: list[int]) -> tuple[list[bytes | str], int | None]:
    """The real client; the server's 101 and then ``wire``, written in the pieces ``cuts``
    makes (a cut may fall inside the 101's head), then EOF."""
    server_ws = WSConnection(ConnectionType.SERVER)

    async def main() -> tuple[list[bytes | str], int | None]:
        got: list[bytes | str] = []
        async with trio.open_nursery() as nursery:

            async def serve(stream: trio.StapledStream[Any, Any]) -> None:
                while True:
                    data = await stream.receive_some(65536)
                    server_ws.receive_data(bytes(data))
                    if any(isinstance(e, Request) for e in server_ws.events()):
                        break
                out = server_ws.send(AcceptConnection()) + wire
                points = sorted({c % (len(out) + 1) for c in cuts})
                pieces = [out[a:b] for a, b in zip([0, *points], [*points, len(out)], strict=True)]
                try:
                    for piece in pieces:
                        if piece:
                            await stream.send_all(piece)
                        await trio.sleep(0.001)
                    await stream.send_eof()  # end of stream: 1006 unless a close came first
                except trio.BrokenResourceError:
                    pass  # the client has ended the connection already
                try:  # read what the client sends (pongs, its close) until it hangs up
                    while await stream.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass
                await stream.aclose()

            async def factory() -> trio.abc.Stream:
                a, b = trio.testing.memory_stream_pair()
                nursery.start_soon(serve, b)
                return a

            async with connect("ws://h/", None, connect_timeout=5, client="wsproto",
                               stream_factory=factory, max_message_size=MAX) as conn:
                while True:
                    try:
                        got.extend(await conn.recv_batch())
                    except ConnectionLost as exc:
                        return got, exc.code
        raise AssertionError("unreachable")

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10**6), max_size=8))
def test_the_client_receives_what_wsproto_alone_makes_of_any_stream(
    stream: list[bytes], cuts: list[int]
) -> None:
    wire = b"".join(stream)
    assert through_the_client(wire, cuts) == wsproto_alone(wire)


def test_a_large_stream_cut_anywhere_is_the_same_messages() -> None:
    """Every length form, whole binary messages only: all taken by the fast path, every
    cut position of one read size."""
    msgs = [bytes([i]) * n for i, n in enumerate([0, 1, 125, 126, 127, 65535, 65536, 70_000])]
    wire = b"".join(binary(m) for m in msgs)
    for size in (1, 2, 3, 7, 10, 4096):
        splitter = FrameSplitter(1 << 20)
        got: list[bytes] = []
        for i in range(0, len(wire), size):
            for item in splitter.feed(wire[i : i + size]):
                assert isinstance(item, bytes), item  # nothing needed wsproto
                got.append(item)
        assert got == msgs and splitter.buffered == 0


def test_what_the_fast_path_leaves_reaches_wsproto_whole_and_in_order() -> None:
    """A text message between binary ones, a fragmented binary message, a frame over the
    limit: each goes to wsproto from its first byte to its last, in stream order."""
    text = frame(0x1, b"hello")
    first = frame(0x2, b"ab", fin=False)
    cont = frame(0x0, b"cd")
    big = binary(b"z" * 300)
    wire = binary(b"1") + text + binary(b"2") + first + cont + binary(b"3") + big
    items = FrameSplitter(200).feed(wire)
    assert items == [
        b"1", ForWsproto(text), b"2", ForWsproto(first), ForWsproto(cont), b"3", ForWsproto(big),
    ]


def test_a_binary_frame_inside_a_fragmented_message_is_wsprotos_to_refuse() -> None:
    """RFC 6455 §5.4: a new data frame before the last fragment is a protocol error;
    wsproto must see it to close with 1002."""
    first = frame(0x2, b"ab", fin=False)
    intruder = binary(b"x")
    assert FrameSplitter(MAX).feed(first + intruder) == [ForWsproto(first), ForWsproto(intruder)]
    assert through_the_client(first + intruder, []) == ([], 1002)


def test_a_declared_length_of_two_to_the_63_holds_nothing_back() -> None:
    """A length no message can have: wsproto gets the bytes (and refuses them); the splitter
    keeps nothing waiting for 8 EiB."""
    wire = bytes([0x82, 127]) + struct.pack("!Q", 1 << 63) + b"x" * 100
    splitter = FrameSplitter(MAX)
    items = splitter.feed(wire)
    assert items == [ForWsproto(wire)] and splitter.buffered == 0
    assert through_the_client(wire, [5]) == ([], 1002)


def test_a_101_written_a_byte_at_a_time_then_messages_in_the_same_reads() -> None:
    """The upgrade's head split anywhere, and messages in the reads that end it: wsproto
    gets the head alone, every message arrives."""
    wire = binary(b"first") + frame(0x1, b"text") + binary(b"last")
    assert through_the_client(wire, list(range(1, 200))) == ([b"first", "text", b"last"], 1006)


def test_a_frame_over_the_limit_closes_with_1009_after_the_messages_before_it() -> None:
    wire = binary(b"a") + binary(b"b" * (MAX + 1)) + binary(b"c")
    assert through_the_client(wire, [3, 900]) == ([b"a"], 1009)


def test_a_message_over_a_mebibyte_goes_to_wsproto_in_pieces() -> None:
    """The fast path holds a frame until it is whole and re-joins it at every read: a big one
    would be copied once per read (quadratic), so it is wsproto's, which takes it in pieces;
    the splitter holds nothing back meanwhile."""
    big = bytes(range(256)) * ((DIRECT_MAX + 1000) // 256)
    wire = binary(b"a") + binary(big) + binary(b"b")
    splitter = FrameSplitter(64 << 20)
    reads = [wire[i : i + 65536] for i in range(0, len(wire), 65536)]
    items = [item for data in reads for item in splitter.feed(data)]
    assert items[0] == b"a" and items[-1] == b"b"
    middle = items[1:-1]
    assert all(isinstance(item, ForWsproto) for item in middle) and len(middle) > 1
    assert b"".join(item.data for item in middle if isinstance(item, ForWsproto)) == binary(big)
    assert splitter.buffered == 0
