"""The WebSocket edge, for both clients (``source.websocket``): what the caller receives is
exactly what the server sent, in order, whatever the framing; every way a connection ends is
the error the supervisor expects, after the messages that preceded it.

The server is a real RFC 6455 peer (wsproto's server side) on in-memory streams, on trio's mock
clock, so that it can do what the simulator never does on purpose: fragment, ping, refuse,
fall silent, send too much.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket as tw
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from capture.auth import Secret
from capture.errors import AuthRejected, ConnectionLost, TransportError
from capture.sim.tls import make_test_ca, server_context
from capture.transport import (
    CLIENTS,
    CLOSE_TIMEOUT_S,
    connect,
)

URL = "ws://feed.invalid:8443/mlink/jsonf?x=1"
TOKEN = "s3cret-token"


@dataclass
class Peer:
    """The server's end: the upgrade request it got, everything the client sent after it."""

    stream: trio.abc.Stream
    ws: WSConnection = field(default_factory=lambda: WSConnection(ConnectionType.SERVER))
    request: Request | None = None
    received: list[Event] = field(default_factory=list)
    close_took: float | None = None  # how long the client's leaving the connection took

    async def send(self, *events: Event, chunk: int | None = None) -> None:
        """All events' bytes in one write, or in writes of ``chunk`` bytes."""
        data = b"".join(self.ws.send(e) for e in events)
        if chunk is None:
            await self.stream.send_all(data)
            return
        for i in range(0, len(data), chunk):
            await self.stream.send_all(data[i : i + chunk])
            await trio.sleep(0.001)

    async def expect(self, kind: type[Event]) -> Event:
        """Read until the client sends an event of this kind (or closes the stream)."""
        while True:
            for ev in self.ws.events():
                self.received.append(ev)
                if isinstance(ev, kind):
                    return ev
            data = await self.stream.receive_some(65536)
            if not data:
                raise AssertionError(f"client closed the stream before sending {kind.__name__}")
            self.ws.receive_data(bytes(data))


Script = Callable[[Peer], Awaitable[None]]


async def serve(stream: trio.abc.Stream, peer_box: list[Peer], script: Script,
                done: trio.Event, *, status: int = 101, with_accept: tuple[Event, ...] = ()
                ) -> None:
    peer = Peer(stream)
    peer_box.append(peer)
    peer.request = await peer.expect(Request)  # type: ignore[assignment]
    if status != 101:
        await peer.send(RejectConnection(status_code=status))
        await stream.aclose()
    else:
        await peer.send(AcceptConnection(), *with_accept)  # one write: 101 + these
        await script(peer)
    done.set()


async def session(
    client: str,
    script: Script,
    body: Callable[[Any], Awaitable[Any]],
    *,
    status: int = 101,
    with_accept: tuple[Event, ...] = (),
    url: str = URL,
    **connect_kw: Any,
) -> tuple[Any, Peer]:
    """Connect ``client`` to a scripted server and run ``body(conn)``; returns what ``body``
    returned (or raised, as the exception object) and the server's view."""
    peers: list[Peer] = []
    outcome: Any = None
    done = trio.Event()
    left_at: float | None = None
    async with trio.open_nursery() as nursery:

        async def factory() -> trio.abc.Stream:
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(partial(serve, b, peers, script, done, status=status,
                                       with_accept=with_accept))
            return a

        try:
            async with connect(url, Secret(TOKEN), connect_timeout=5.0, client=client,
                               stream_factory=factory, **connect_kw) as conn:
                with trio.fail_after(60):  # a client that stops answering fails, not hangs
                    outcome = await body(conn)
                left_at = trio.current_time()
        except Exception as exc:  # noqa: BLE001 - the test asserts on whatever it is
            outcome = exc
        if left_at is not None and peers:
            peers[0].close_took = trio.current_time() - left_at
        with trio.fail_after(60):  # the script ran to its end (its assertions held)
            await done.wait()
        nursery.cancel_scope.cancel()
    return outcome, peers[0]


async def receive_all(conn: Any) -> tuple[list[bytes | str], ConnectionLost]:
    """Every message until the connection ends, and how it ended."""
    got: list[bytes | str] = []
    while True:
        try:
            got.extend(await conn.recv_batch())
        except ConnectionLost as exc:
            return got, exc


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


PAYLOADS: list[bytes | str] = [
    b"\r\nJ00042000020{}",
    bytes(range(256)) * 40,  # 10 KB: longer than one read of a small buffer
    "texte \u00e9t\u00e9 \u2713",  # a text message with multi-byte UTF-8
    b"",
    b"x" * 70_000,  # 64-bit length
]


def _message(p: bytes | str, finished: bool = True) -> Message[Any]:
    if isinstance(p, str):
        return TextMessage(data=p, message_finished=finished)
    return BytesMessage(data=p, message_finished=finished)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("chunk", [None, 7, 1000], ids=["one write", "7-byte writes", "1000"])
def test_every_message_arrives_whole_and_in_order(client: str, chunk: int | None) -> None:
    async def script(peer: Peer) -> None:
        events: list[Event] = [_message(p) for p in PAYLOADS]
        # one binary and one text message in three frames each (continuation frames)
        events += [BytesMessage(data=b"ab", message_finished=False),
                   BytesMessage(data=b"cd", message_finished=False), BytesMessage(data=b"ef")]
        events += [TextMessage(data="\u00e9", message_finished=False),
                   TextMessage(data="-", message_finished=False), TextMessage(data="\u2713")]
        await peer.send(*events, CloseConnection(code=1000), chunk=chunk)
        await peer.expect(CloseConnection)

    async def main() -> None:
        (got, end), peer = await session(client, script, receive_all, receive_buffer_size=4096)
        assert got == [*PAYLOADS, b"abcdef", "\u00e9-\u2713"]
        assert [type(m) for m in got] == [type(p) for p in [*PAYLOADS, b"", ""]]
        assert end.code == 1000
        # the client answered the server's close
        assert any(isinstance(e, CloseConnection) and e.code == 1000 for e in peer.received)

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_the_upgrade_carries_the_bearer_token_and_the_resource(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"hello"))
        await peer.expect(CloseConnection)

    async def main() -> None:
        got, peer = await session(client, script, lambda c: c.recv_batch())
        assert got == [b"hello"]
        assert peer.request is not None
        assert peer.request.target == "/mlink/jsonf?x=1"
        headers = dict(peer.request.extra_headers)
        assert headers[b"authorization"] == b"Bearer " + TOKEN.encode()
        if client == "wsproto":  # a non-default port belongs in Host (RFC 7230 §5.4)
            assert peer.request.host == "feed.invalid:8443"

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_pings_are_answered_with_their_payload(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"1"), Ping(payload=b"are you there"))
        pong = await peer.expect(Pong)
        assert isinstance(pong, Pong)
        await peer.send(BytesMessage(data=pong.payload))  # only once answered
        await peer.send(CloseConnection(code=1001, reason="going away"))
        await peer.expect(CloseConnection)

    async def main() -> None:
        (got, end), _ = await session(client, script, receive_all)
        assert got == [b"1", b"are you there"]
        assert end.code == 1001 and "going away" in str(end)

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_server_close_comes_after_the_messages_before_it(client: str) -> None:
    async def script(peer: Peer) -> None:
        # the messages and the close in one write: one read gets all of them
        await peer.send(BytesMessage(data=b"a"), BytesMessage(data=b"b"),
                        CloseConnection(code=4001, reason="rate limit"))
        await peer.expect(CloseConnection)

    async def main() -> None:
        (got, end), peer = await session(client, script, receive_all)
        assert got == [b"a", b"b"]
        assert end.code == 4001
        assert str(end) == "connection closed (4001 rate limit)"
        assert any(isinstance(e, CloseConnection) for e in peer.received)

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_dropped_connection_is_abnormal_closure(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"last"))
        await peer.stream.aclose()  # no close frame: the TCP connection just ends

    async def main() -> None:
        (got, end), _ = await session(client, script, receive_all)
        assert got == [b"last"]
        assert end.code == 1006
        assert str(end) == "connection closed (1006 ABNORMAL_CLOSURE)"

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_message_over_the_limit_closes_with_1009(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"ok"), BytesMessage(data=b"y" * 5000))
        close = await peer.expect(CloseConnection)
        assert isinstance(close, CloseConnection) and close.code == 1009

    async def main() -> None:
        (got, end), peer = await session(client, script, receive_all, max_message_size=4096)
        assert got == [b"ok"]
        assert end.code == 1009
        assert any(isinstance(e, CloseConnection) and e.code == 1009 for e in peer.received)

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("status", "error"), [(401, AuthRejected), (403, AuthRejected),
                                               (500, TransportError), (404, TransportError)])
def test_a_refused_upgrade_says_why(client: str, status: int, error: type[Exception]) -> None:
    async def script(peer: Peer) -> None:
        raise AssertionError("not reached")

    async def main() -> None:
        got, _ = await session(client, script, lambda c: c.recv_batch(), status=status)
        assert type(got) is error
        assert str(got) == f"WebSocket upgrade refused with HTTP {status}"

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_server_that_never_answers_the_upgrade_times_out(client: str) -> None:
    async def main() -> None:
        async def silent() -> trio.abc.Stream:
            a, b = trio.testing.memory_stream_pair()
            silent.keep = b  # type: ignore[attr-defined]  # held open, never answers
            return a

        t0 = trio.current_time()
        with pytest.raises(TransportError, match="timed out"):
            async with connect(URL, Secret(TOKEN), connect_timeout=7.0, client=client,
                               stream_factory=silent):
                raise AssertionError("connected")
        assert trio.current_time() - t0 == pytest.approx(7.0)

    run(main)


def test_an_upgrade_response_whose_head_never_ends_is_refused() -> None:
    """A server answering with header lines and never the blank line that ends them: the
    client stops at 16 KiB (as h11 would) with a handshake error, not a growing buffer or a
    wait for connect_timeout."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def endless(stream: trio.abc.Stream) -> None:
                await stream.receive_some(65536)  # the upgrade request
                await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\n")
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    for i in range(10_000):
                        await stream.send_all(b"X-Filler-%05d: %s\r\n" % (i, b"y" * 64))

            async def factory() -> trio.abc.Stream:
                a, b = trio.testing.memory_stream_pair()
                nursery.start_soon(endless, b)
                return a

            with pytest.raises(TransportError, match="response head over 16384 bytes"):
                async with connect(URL, Secret(TOKEN), connect_timeout=60.0, client="wsproto",
                                   stream_factory=factory):
                    raise AssertionError("connected")
            nursery.cancel_scope.cancel()

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_leaving_the_connection_closes_it_with_1000(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"x"))
        close = await peer.expect(CloseConnection)
        await peer.send(CloseConnection(code=1000))  # the server's half of the handshake
        assert isinstance(close, CloseConnection) and close.code == 1000

    async def main() -> None:
        got, peer = await session(client, script, lambda c: c.recv_batch())
        assert got == [b"x"]
        assert [e.code for e in peer.received if isinstance(e, CloseConnection)] == [1000]
        # done when the server's close came back, not at the close timeout
        assert peer.close_took is not None and peer.close_took < CLOSE_TIMEOUT_S

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_sending_after_the_server_closed_is_connection_lost(client: str) -> None:
    async def script(peer: Peer) -> None:
        msg = await peer.expect(BytesMessage)
        assert isinstance(msg, BytesMessage) and msg.data == b"request"
        await peer.send(CloseConnection(code=1000))
        await peer.expect(CloseConnection)

    async def body(conn: Any) -> Exception | None:
        await conn.send(b"request")
        _, end = await receive_all(conn)
        assert end.code == 1000
        try:
            await conn.send(b"too late")
        except ConnectionLost as exc:
            return exc
        return None

    async def main() -> None:
        got, _ = await session(client, script, body)
        assert isinstance(got, ConnectionLost)

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_errors_of_the_callers_own_code_are_not_made_network_errors(client: str) -> None:
    """A disk error while connected must not read 'cannot reach host'."""

    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"x"))
        await peer.expect(CloseConnection)

    async def body(conn: Any) -> None:
        await conn.recv_batch()
        raise OSError(28, "No space left on device")

    async def main() -> None:
        got, _ = await session(client, script, body)
        assert type(got) is OSError and got.errno == 28

    run(main)


def test_an_unknown_client_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="unknown WebSocket client 'aiohttp'"):
            async with connect(URL, None, connect_timeout=1.0, client="aiohttp"):
                pass

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_messages_in_the_same_write_as_the_upgrade_response_arrive(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.expect(CloseConnection)

    async def main() -> None:
        got, _ = await session(
            client, script, lambda c: c.recv_batch(),
            with_accept=(BytesMessage(data=b"first"),),
        )
        assert got == [b"first"]

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_message_over_the_limit_across_fragments_closes_with_1009(client: str) -> None:
    async def script(peer: Peer) -> None:
        parts = [BytesMessage(data=b"z" * 1000, message_finished=False) for _ in range(5)]
        await peer.send(BytesMessage(data=b"ok"), *parts, BytesMessage(data=b"end"))
        close = await peer.expect(CloseConnection)
        assert isinstance(close, CloseConnection) and close.code == 1009

    async def main() -> None:
        (got, end), _ = await session(client, script, receive_all, max_message_size=4096)
        assert got == [b"ok"]
        assert end.code == 1009

    run(main)


# Server frames wsproto must refuse: reserved bit 1 set (compression, never negotiated), and a
# text frame that is not UTF-8.
RSV1_FRAME = bytes([0xC2, 3]) + b"abc"
BAD_TEXT_FRAME = bytes([0x81, 2]) + b"\xff\xfe"


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("frame", "code"), [(RSV1_FRAME, 1002), (BAD_TEXT_FRAME, 1007)],
                         ids=["reserved bit", "invalid utf-8 text"])
def test_a_protocol_violation_is_closed_with_its_code(client: str, frame: bytes,
                                                       code: int) -> None:
    sent: list[int | None] = []

    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"good"))
        await peer.stream.send_all(frame)
        try:
            close = await peer.expect(CloseConnection)
            sent.append(close.code)  # type: ignore[attr-defined]
        except AssertionError:  # the client closed the stream without a close frame
            sent.append(None)
        # No close frame back (the server cannot answer in kind): the client must not wait for
        # one. Read until it closes the stream.
        while await peer.stream.receive_some(65536):
            pass

    async def main() -> None:
        (got, end), peer = await session(client, script, receive_all)
        assert got == [b"good"]
        assert end.code == code
        if client == "wsproto":  # trio-websocket drops the connection without a close frame
            assert sent == [code]
        assert peer.close_took is not None and peer.close_took < CLOSE_TIMEOUT_S

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_pong_due_when_the_callers_deadline_expires_is_still_sent(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"1"), Ping(payload=b"p"))
        await peer.expect(Pong)
        await peer.send(BytesMessage(data=b"2"), CloseConnection(code=1000))
        await peer.expect(CloseConnection)

    async def body(conn: Any) -> tuple[list[bytes | str], ConnectionLost]:
        first = await conn.recv_batch()
        with trio.move_on_at(trio.current_time()):  # already expired: cancelled at once
            await conn.recv_batch()
        rest, end = await receive_all(conn)
        return first + rest, end

    async def main() -> None:
        (got, end), _ = await session(client, script, body)
        assert got == [b"1", b"2"]
        assert end.code == 1000

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_ping_and_a_close_in_one_read_are_both_answered(client: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"m"), Ping(payload=b"q"),
                        CloseConnection(code=1001, reason="bye"))
        await peer.expect(CloseConnection)

    async def main() -> None:
        (got, end), peer = await session(client, script, receive_all)
        assert got == [b"m"]
        assert end.code == 1001
        assert [type(e) for e in peer.received[1:]] == [Pong, CloseConnection]

    run(main)


@pytest.mark.parametrize(("url", "host"), [
    ("ws://[::1]:8443/x", "[::1]:8443"),
    ("ws://feed.invalid/x", "feed.invalid"),
    ("ws://feed.invalid:443/x", "feed.invalid:443"),  # 443 is not ws's default port
    ("wss://feed.invalid:443/x", "feed.invalid"),
])
def test_the_host_header_follows_rfc_7230(url: str, host: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(BytesMessage(data=b"x"))
        await peer.expect(CloseConnection)

    async def main() -> None:
        _, peer = await session("wsproto", script, lambda c: c.recv_batch(), url=url)
        assert peer.request is not None and peer.request.host == host

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_token_a_header_cannot_carry_is_refused_without_quoting_it(client: str) -> None:
    opened = []

    async def factory() -> trio.abc.Stream:
        opened.append(True)
        return trio.testing.memory_stream_pair()[0]

    async def main() -> None:
        bad = "k3y-part\r\nX-Injected: 1"
        with pytest.raises(AuthRejected) as info:
            async with connect(URL, Secret(bad), connect_timeout=5.0, client=client,
                               stream_factory=factory):
                raise AssertionError("connected")
        assert "control characters" in str(info.value)
        assert "k3y-part" not in str(info.value)
        assert not opened  # refused before anything was sent anywhere

    run(main)


# -- the real thing: TCP and TLS on loopback --------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ssl.SSLContext, Path]:
    """A server context; the client trusts its CA through OpenSSL's default paths."""
    files = make_test_ca(tmp_path / "trusted")
    monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    return server_context(files.cert, files.key), tmp_path


async def _serve_tls(server_ctx: ssl.SSLContext, task_status: Any = trio.TASK_STATUS_IGNORED,
                     ) -> None:
    """A real WebSocket server over TLS on loopback: greets, echoes one message, closes."""

    async def handler(request: tw.WebSocketRequest) -> None:
        auth = dict(request.headers).get(b"authorization")
        ws = await request.accept()
        await ws.send_message(b"over tls " + (auth or b"-"))
        echo = await ws.get_message()
        await ws.send_message(echo)
        await ws.aclose(1000, "done")

    await tw.serve_websocket(handler, "127.0.0.1", 0, ssl_context=server_ctx,
                             task_status=task_status)


@pytest.mark.parametrize("client", CLIENTS)
def test_wss_over_real_tls_on_loopback(client: str, tls_server: tuple[ssl.SSLContext, Path],
                                        ) -> None:
    server_ctx, _ = tls_server

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(_serve_tls, server_ctx)
            url = f"wss://127.0.0.1:{server.port}/mlink/jsonf"
            with trio.fail_after(20):
                async with connect(url, Secret(TOKEN), connect_timeout=10.0,
                                   client=client) as conn:
                    first = await conn.recv_batch()
                    await conn.send(b"ping-data")
                    got, end = await receive_all(conn)
            nursery.cancel_scope.cancel()
        assert first == [b"over tls Bearer " + TOKEN.encode()]
        assert got == [b"ping-data"]
        assert end.code == 1000

    trio.run(main)


async def _tls_refusal(server_ctx: ssl.SSLContext, client: str) -> tuple[int, str]:
    """Connect to a TLS server the client must refuse: (the server's port, the error text)."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(_serve_tls, server_ctx)
        port = server.port
        with trio.fail_after(20), pytest.raises(TransportError) as info:
            async with connect(f"wss://127.0.0.1:{port}/mlink/jsonf", Secret(TOKEN),
                               connect_timeout=3.0, client=client):
                raise AssertionError("connected")
        nursery.cancel_scope.cancel()
    return port, str(info.value)


@pytest.mark.parametrize("client", CLIENTS)
def test_an_untrusted_certificate_is_refused_and_says_so(
    client: str, tls_server: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, tmp = tls_server
    stranger = make_test_ca(tmp / "stranger", name="another")
    monkeypatch.setenv("SSL_CERT_FILE", str(stranger.ca))  # trusts another CA only
    server_ctx = tls_server[0]

    async def main() -> None:
        port, text = await _tls_refusal(server_ctx, client)
        if client == "wsproto":
            assert text.startswith(f"cannot reach 127.0.0.1:{port}: BrokenResourceError")
            assert "certificate verify failed" in text, text
        else:  # trio-websocket's handshake never hears of the TLS failure: it waits it out
            assert text == f"connect to 127.0.0.1:{port} timed out"

    trio.run(main)


def test_a_certificate_for_another_host_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted CA is not enough: the certificate must name the host we connect to."""
    files = make_test_ca(tmp_path / "ca", hosts=("feed.example",))
    monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))

    async def main() -> None:
        _, text = await _tls_refusal(server_context(files.cert, files.key), "wsproto")
        assert "IP address mismatch" in text, text

    trio.run(main)
