"""The WebSocket edge: the only module that imports trio_websocket or wsproto.

Two clients behind one :class:`Connection` interface (``source.websocket``):

* ``"wsproto"`` (default): the connection is driven by wsproto, the sans-I/O protocol engine
  trio-websocket itself is built on, directly on the trio stream, in the receiving task. One
  socket read yields every WebSocket message it completed, as one batch: no reader task, no
  channel hand-off per message, one deadline per read. About 45 % of one process's event-loop
  time went to trio-websocket's per-message hand-off and parsing (README, "Where the time goes").
* ``"trio-websocket"``: trio-websocket's client (a reader task hands each message over a memory
  channel). The same behaviour, one message per batch.

Errors of both are translated here into ours, each with the supervisor's reaction in its
docstring.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
import trio_websocket as tw
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from capture.config import WEBSOCKET_CLIENTS
from capture.credentials import Secret
from capture.errors import AuthRejected, ConnectionLost, TransportError
from capture.wsframes import FrameSplitter

CLIENTS = WEBSOCKET_CLIENTS  # "wsproto" (default), "trio-websocket": module docstring
CLOSE_TIMEOUT_S = 2.0
"""How long closing waits for the server's close frame (and trio-websocket's disconnect)."""


class Connection:
    """An open MLink WebSocket: receive messages (text or binary), send binary frames."""

    __slots__ = ()

    async def recv_batch(self) -> list[bytes | str]:
        """Wait for at least one complete WebSocket message; return every message complete
        so far, in order. Raises :class:`ConnectionLost` once the connection is closed (after
        the messages that preceded the close were returned)."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        """Send one binary WebSocket message."""
        raise NotImplementedError


def _closed_text(code: int | None, reason: str | None) -> str:
    """As trio-websocket words it: the peer's reason, else the code's name (RFC 6455 §7.4)."""
    if not reason:
        try:
            reason = CloseReason(code).name if code is not None else "closed"
        except ValueError:
            reason = "closed"
    return f"connection closed ({code} {reason})"


def _describe(exc: BaseException) -> str:
    """The error's type and, for the OS and TLS, its reason; never a message that could
    quote what we sent (the bearer token)."""
    if isinstance(exc, OSError):  # ssl.SSLError too: "certificate verify failed: ..."
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    cause = exc.__cause__  # trio wraps TLS and socket errors in BrokenResourceError
    if isinstance(exc, trio.BrokenResourceError) and isinstance(cause, OSError):
        return f"{type(exc).__name__} ({_describe(cause)})"
    return type(exc).__name__


def _utf8_len(data: bytes | str) -> int:
    """A message's size on the wire (a text message counts its UTF-8 bytes)."""
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def _check_token(token: str) -> None:
    """A bearer token goes into an HTTP header, which cannot carry control characters (a
    stray newline inside a key file): a broken credential, said without quoting it."""
    if not token or any(c < " " or c == "\x7f" for c in token):
        raise AuthRejected("the bearer token is empty or contains control characters")


def _host_header(host: str, port: int, default_port: int) -> str:
    """RFC 7230 §5.4: the port only when it is not the scheme's; IPv6 literals bracketed."""
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"


def _bytes(data: bytes | bytearray) -> bytes:
    """A socket read is bytes already; other streams (memory, TLS) may give a bytearray."""
    return data if isinstance(data, bytes) else bytes(data)


def _join(parts: list[bytes | str]) -> bytes | str:
    """A message that arrived in several frames (or reads), in one piece."""
    if isinstance(parts[0], str):
        return "".join(p for p in parts if isinstance(p, str))
    return b"".join(p for p in parts if isinstance(p, bytes))


_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_MAX_RESPONSE_HEAD = 16 * 2**10  # as h11's bound on an incomplete event


class _WsprotoConnection(Connection):
    """wsproto on a trio stream, read by the task that consumes the messages.

    Whole binary messages are taken out of the byte stream before wsproto
    (capture.wsframes: the common case, without wsproto's per-message cost); every other frame
    is wsproto's, in order.  Messages are taken without awaiting anything, so a cancellation
    can never fall between taking a message and returning it; the replies wsproto calls for (a
    pong, the close handshake) are sent before the next read."""

    __slots__ = (
        "_bufsize", "_ended", "_lock", "_lost", "_max_size", "_outgoing", "_parse_failed",
        "_parts", "_ready", "_send_broken", "_size", "_splitter", "_stream", "_ws",
    )

    def __init__(
        self, stream: trio.abc.Stream, ws: WSConnection, receive_buffer_size: int,
        max_message_size: int, initial: bytes = b"",
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._splitter = FrameSplitter(max_message_size)
        self._ready: list[bytes | str] = []  # messages taken, in order, not yet returned
        self._bufsize = receive_buffer_size
        self._max_size = max_message_size
        self._parts: list[bytes | str] = []  # a message that spans frames or reads
        self._size = 0
        self._outgoing: list[bytes] = []  # replies not sent yet
        self._lost: ConnectionLost | None = None  # raised once every message before it was taken
        self._ended = False  # a close (or a violation) was taken: no messages after it
        self._parse_failed = False  # wsproto could not parse the server's bytes: no more frames
        self._send_broken = False  # a send was cut off part-way: no more frames from us
        self._lock = trio.Lock()  # one sender at a time
        if initial:  # what the server sent right after its 101
            self._receive(initial)

    async def recv_batch(self) -> list[bytes | str]:
        while True:
            if self._outgoing:
                await self._flush()
            if self._ready:
                out, self._ready = self._ready, []
                return out
            if self._lost is not None:
                raise self._lost
            if not self._outgoing:  # else: the replies first (a close: then raise)
                try:
                    received = await self._stream.receive_some(self._bufsize)
                except _BROKEN as exc:
                    self._lost = ConnectionLost(f"connection broken ({_describe(exc)})")
                    raise self._lost from None
                self._receive(_bytes(received))

    def _receive(self, data: bytes, *, closing: bool = False) -> None:
        """Bytes from the server, in order: whole binary messages are taken here, the rest
        goes through wsproto.  b"" is the end of the stream (wsproto's 1006).  Nothing is taken
        after a close; ``closing`` (our close handshake): wsproto still sees every byte."""
        ws = self._ws
        if not data:
            rest = self._splitter.rest()
            if rest:
                ws.receive_data(rest)
            ws.receive_data(None)
            self._wsproto_events(closing)
            return
        for item in self._splitter.feed(data):
            if isinstance(item, bytes):
                if not self._ended and not closing:
                    self._ready.append(item)
            elif closing:  # our close is sent: only its reply matters
                ws.receive_data(item.data)
                self._wsproto_events(closing)
            elif not self._ended:
                ws.receive_data(item.data)
                self._take_events()

    def _wsproto_events(self, closing: bool) -> None:
        if closing:
            for _ in self._ws.events():
                pass
        elif not self._ended:
            self._take_events()

    def _take_events(self) -> None:
        """Takes the messages wsproto completed, in order; queues the replies it calls for."""
        out = self._ready
        ws = self._ws
        for event in ws.events():
            if isinstance(event, (BytesMessage, TextMessage)):
                raw = event.data
                data = bytes(raw) if isinstance(raw, bytearray) else raw  # wsproto's slices
                self._size += _utf8_len(data)
                if self._size > self._max_size:
                    reason = f"message larger than {self._max_size} bytes"
                    self._parts, self._size = [], 0
                    self._outgoing.append(ws.send(CloseConnection(code=1009, reason=reason)))
                    self._end(ConnectionLost(_closed_text(1009, reason), 1009))
                    break
                if event.message_finished:
                    if self._parts:
                        self._parts.append(data)
                        data = _join(self._parts)
                        self._parts = []
                    out.append(data)
                    self._size = 0
                else:
                    self._parts.append(data)
            elif isinstance(event, Ping):
                self._outgoing.append(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.OPEN:
                    # Not the server's close: wsproto failed to parse its bytes (a bad opcode,
                    # reserved bits, invalid UTF-8 in text) and says so with the code to send.
                    self._parse_failed = True
                    self._outgoing.append(ws.send(CloseConnection(code=event.code)))
                    text = f"protocol error from the server ({event.code} {event.reason})"
                    self._end(ConnectionLost(text, event.code))
                    break
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self._outgoing.append(ws.send(event.response()))
                self._end(ConnectionLost(_closed_text(event.code, event.reason), event.code))
                break
            # Pong: we send no pings.

    def _end(self, lost: ConnectionLost) -> None:
        """A close (ours or the server's) was taken: no message after it; then ``lost``."""
        self._lost = lost
        self._ended = True

    async def _flush(self) -> None:
        """Send the queued replies. Shielded (bounded), so that a deadline that expires in the
        caller's scope cannot drop a pong or the close handshake half-way through."""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True) as scope:
            try:
                await self._send_raw(data)
            except ConnectionLost:
                pass  # recorded in _lost by _send_raw: the next recv_batch raises it
        if scope.cancelled_caught:  # a frame may be half-written: nothing more can follow it
            self._send_broken = True
            if self._lost is None:
                self._lost = ConnectionLost(f"send blocked for {CLOSE_TIMEOUT_S:g} s")

    async def _send_raw(self, data: bytes) -> None:
        async with self._lock:
            try:
                await self._stream.send_all(data)
            except _BROKEN as exc:
                lost = ConnectionLost(f"send failed: {_describe(exc)}")
                if self._lost is None:  # receiving ends too, after what was already received
                    self._lost = lost
                raise lost from None

    async def send(self, data: bytes) -> None:
        if self._lost is not None or self._ws.state is not ConnectionState.OPEN:
            raise ConnectionLost(f"connection closed while sending ({self._lost or 'closing'})")
        await self._send_raw(self._ws.send(BytesMessage(data=data)))

    async def aclose(self) -> None:
        """Close as a client should (RFC 6455 §7.1.1): our close frame (or the reply to the
        server's), then wait, bounded, for the server's before closing the stream."""
        if not self._send_broken:  # else a frame may be half-written: just close the stream
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                try:
                    await self._close_handshake()
                except (LocalProtocolError, *_BROKEN):
                    pass
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _close_handshake(self) -> None:
        ws = self._ws
        if ws.state is ConnectionState.OPEN:
            self._outgoing.append(ws.send(CloseConnection(code=1000)))
        if self._outgoing:
            await self._flush()
        while ws.state is ConnectionState.LOCAL_CLOSING and not self._parse_failed:
            received = await self._stream.receive_some(self._bufsize)
            self._receive(_bytes(received), closing=True)


async def _handshake(
    stream: trio.abc.Stream,
    host_header: str,
    resource: str,
    headers: list[tuple[bytes, bytes]],
    receive_buffer_size: int,
) -> tuple[WSConnection, bytes]:
    """The client's HTTP upgrade (RFC 6455 §4.1); returns the open connection and what the
    server sent after its 101 (the first WebSocket bytes: wsproto is given only the response's
    head, so that every WebSocket byte goes through the connection's splitter)."""
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        request = ws.send(Request(host=host_header, target=resource, extra_headers=headers))
    except Exception as exc:  # noqa: BLE001 - h11's text would quote the header: type only
        raise TransportError(f"cannot build the upgrade request: {type(exc).__name__}") from None
    try:
        await stream.send_all(request)
        buf = b""
        while True:
            data = await stream.receive_some(receive_buffer_size)
            if not data:
                raise TransportError("connection closed during the WebSocket handshake")
            buf += _bytes(data)
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                head, buf = buf[: end + 4], buf[end + 4 :]
                ws.receive_data(head)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return ws, buf
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if status in (401, 403):
                            raise AuthRejected(f"WebSocket upgrade refused with HTTP {status}")
                        raise TransportError(f"WebSocket upgrade refused with HTTP {status}")
            if len(buf) > _MAX_RESPONSE_HEAD:
                raise TransportError(
                    f"WebSocket handshake failed: a response head over {_MAX_RESPONSE_HEAD} bytes"
                )
    except (RemoteProtocolError, LocalProtocolError) as exc:
        # About the server's response ("Bad accept token", "Missing header, 'Upgrade'"): our
        # request, and so the token, is not in it.
        raise TransportError(f"WebSocket handshake failed: {str(exc)[:200]}") from None


class _TrioWebsocketConnection(Connection):
    """trio-websocket's client: its reader task hands over one message at a time (so a batch
    is one message: when a message ends the session, those its reader task had queued behind
    it are not delivered; the wsproto client returns them in the same batch)."""

    __slots__ = ("_ws",)

    def __init__(self, ws: tw.WebSocketConnection) -> None:
        self._ws = ws

    async def recv_batch(self) -> list[bytes | str]:
        try:
            return [await self._ws.get_message()]
        except tw.ConnectionClosed as exc:
            code = getattr(exc.reason, "code", None)
            text = getattr(exc.reason, "reason", None)
            raise ConnectionLost(_closed_text(code, text), code) from None

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send_message(data)
        except tw.ConnectionClosed as exc:
            raise ConnectionLost(f"connection closed while sending ({exc.reason})") from None
        except _BROKEN as exc:
            raise ConnectionLost(f"send failed: {type(exc).__name__}") from None


@asynccontextmanager
async def _single_errors() -> AsyncIterator[None]:
    """A nursery wraps even a lone error in an ExceptionGroup; callers classify errors by type,
    so a group of one is unwrapped (as trio-websocket does for its own connections)."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]
"""Opens the byte stream under the WebSocket instead of a TCP/TLS connection (tests use
in-memory stream pairs so that they can run on trio's mock clock)."""


@asynccontextmanager
async def connect(
    url: str,
    bearer: Secret | None,
    *,
    connect_timeout: float,
    client: str = "wsproto",
    max_message_size: int = 64 * 2**20,
    message_queue_size: int = 8,
    receive_buffer_size: int = 256 * 2**10,
    stream_factory: StreamFactory | None = None,
) -> AsyncIterator[Connection]:
    """Open the WebSocket with ``Authorization: Bearer <token>`` (PROTOCOL.md §2.1).

    ``client``: one of :data:`CLIENTS` (module docstring). ``message_queue_size`` (only
    trio-websocket): messages its reader task may queue ahead of ours. A few decouple the two
    tasks; more only hold memory while the writers are behind, and the kernel's socket buffer
    queues the rest. wsproto reads ``receive_buffer_size`` bytes at a time, in our task.

    Raises :class:`AuthRejected` when the upgrade is refused with 401/403 and
    :class:`TransportError` for everything else that goes wrong while connecting.
    """
    if client not in CLIENTS:
        raise ValueError(f"unknown WebSocket client {client!r}")
    if bearer is not None:
        _check_token(bearer.value)
    headers = [(b"Authorization", b"Bearer " + bearer.value.encode())] if bearer else []
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    ssl_context = ssl.create_default_context() if tls else None
    host = parts.hostname or "localhost"
    default_port = 443 if tls else 80
    port = parts.port or default_port
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    opened = False  # errors are translated while connecting, not those of the caller's body
    try:
        if client == "wsproto":
            with trio.fail_after(connect_timeout):
                if stream_factory is not None:
                    stream = await stream_factory()
                elif ssl_context is not None:
                    stream = await trio.open_ssl_over_tcp_stream(
                        host, port, ssl_context=ssl_context, https_compatible=True
                    )
                else:
                    stream = await trio.open_tcp_stream(host, port)
                host_header = _host_header(host, port, default_port)
                try:
                    ws, initial = await _handshake(
                        stream, host_header, resource, headers, receive_buffer_size
                    )
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                    raise
            conn = _WsprotoConnection(
                stream, ws, receive_buffer_size, max_message_size, initial
            )
            opened = True
            try:
                yield conn
            finally:
                await conn.aclose()
        elif stream_factory is None:
            async with tw.open_websocket_url(
                url,
                ssl_context,
                extra_headers=headers,
                message_queue_size=message_queue_size,
                max_message_size=max_message_size,
                connect_timeout=connect_timeout,
                disconnect_timeout=CLOSE_TIMEOUT_S,
                receive_buffer_size=receive_buffer_size,
            ) as tws:
                opened = True
                yield _TrioWebsocketConnection(tws)
        else:
            async with _single_errors(), trio.open_nursery() as nursery:
                with trio.fail_after(connect_timeout):
                    stream = await stream_factory()
                    tws = await tw.wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]  # any trio Stream works (tests use memory)
                        host,
                        resource,
                        extra_headers=headers,
                        message_queue_size=message_queue_size,
                        max_message_size=max_message_size,
                    )
                opened = True
                try:
                    yield _TrioWebsocketConnection(tws)
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                        await tws.aclose()
                    with trio.CancelScope(shield=True):  # if the close handshake never ended
                        await stream.aclose()
                    nursery.cancel_scope.cancel()
    except Exception as exc:
        if opened:
            raise
        raise _connect_error(exc, host, port) from None


def _connect_error(exc: Exception, host: str, port: int) -> Exception:
    """What went wrong while connecting, as the supervisor's exception types."""
    if isinstance(exc, (TransportError, AuthRejected)):
        return exc
    if isinstance(exc, (trio.TooSlowError, tw.ConnectionTimeout)):
        return TransportError(f"connect to {host}:{port} timed out")
    if isinstance(exc, tw.ConnectionRejected):
        kind = AuthRejected if exc.status_code in (401, 403) else TransportError
        return kind(f"WebSocket upgrade refused with HTTP {exc.status_code}")
    if isinstance(exc, tw.HandshakeError):
        return TransportError(f"WebSocket handshake failed: {_describe(exc)}")
    if isinstance(exc, tw.ConnectionClosed):
        return ConnectionLost(f"connection closed ({exc.reason})")
    if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
        return TransportError(f"cannot reach {host}:{port}: {_describe(exc)}")
    return exc
