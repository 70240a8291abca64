"""The WebSocket edge: the only module that imports trio_websocket.

Its errors are translated here into ours, each with the supervisor's reaction in its docstring.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
import trio_websocket as tw

from capture.auth import Secret


class TransportError(Exception):
    """The network or the WebSocket failed: reconnect with backoff."""


class ConnectionLost(TransportError):
    """The peer closed the connection or it broke: reconnect with backoff."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(reason)


class StaleConnection(TransportError):
    """No frame at all (data or heartbeat) for the stale timeout: reconnect with backoff."""


class AuthRejected(Exception):
    """The server refused our credentials: long backoff, health state auth_failed."""


class Connection:
    """An open MLink WebSocket: receive messages (text or binary), send binary frames."""

    __slots__ = ("_ws",)

    def __init__(self, ws: tw.WebSocketConnection) -> None:
        self._ws = ws

    async def recv(self) -> bytes | str:
        try:
            return await self._ws.get_message()
        except tw.ConnectionClosed as exc:
            reason = exc.reason
            code = getattr(reason, "code", None)
            text = getattr(reason, "reason", None) or getattr(reason, "name", "closed")
            raise ConnectionLost(f"connection closed ({code} {text})", code) from None

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send_message(data)
        except tw.ConnectionClosed as exc:
            raise ConnectionLost(f"connection closed while sending ({exc.reason})") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"send failed: {type(exc).__name__}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return type(exc).__name__


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
    max_message_size: int = 64 * 2**20,
    message_queue_size: int = 8,
    receive_buffer_size: int = 256 * 2**10,
    stream_factory: StreamFactory | None = None,
) -> AsyncIterator[Connection]:
    """Open the WebSocket with ``Authorization: Bearer <token>`` (PROTOCOL.md §2.1).

    ``message_queue_size``: WebSocket messages trio-websocket's reader task may queue ahead of
    ours.  A few decouple the two tasks; more only hold memory while the writers are behind
    (11 stripes x 64 x ~11 KB = 8 MB), and the kernel's socket buffer queues the rest.

    Raises :class:`AuthRejected` when the upgrade is refused with 401/403 and
    :class:`TransportError` for everything else that goes wrong while connecting.
    """
    headers = [(b"Authorization", b"Bearer " + bearer.value.encode())] if bearer else []
    parts = urlsplit(url)
    ssl_context = ssl.create_default_context() if parts.scheme == "wss" else None
    try:
        if stream_factory is None:
            async with tw.open_websocket_url(
                url,
                ssl_context,
                extra_headers=headers,
                message_queue_size=message_queue_size,
                max_message_size=max_message_size,
                connect_timeout=connect_timeout,
                disconnect_timeout=2,
                receive_buffer_size=receive_buffer_size,
            ) as ws:
                yield Connection(ws)
        else:
            async with _single_errors(), trio.open_nursery() as nursery:
                with trio.fail_after(connect_timeout):
                    stream = await stream_factory()
                    resource = parts.path + (f"?{parts.query}" if parts.query else "")
                    ws = await tw.wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]  # any trio Stream works (tests use memory)
                        parts.hostname or "localhost",
                        resource,
                        extra_headers=headers,
                        message_queue_size=message_queue_size,
                        max_message_size=max_message_size,
                    )
                try:
                    yield Connection(ws)
                finally:
                    with trio.move_on_after(2, shield=True):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        raise TransportError(f"connect to {parts.hostname}:{parts.port} timed out") from None
    except tw.ConnectionRejected as exc:
        if exc.status_code in (401, 403):
            raise AuthRejected(f"WebSocket upgrade refused with HTTP {exc.status_code}") from None
        raise TransportError(f"WebSocket upgrade refused with HTTP {exc.status_code}") from None
    except tw.ConnectionTimeout:
        raise TransportError(f"connect to {parts.hostname}:{parts.port} timed out") from None
    except tw.HandshakeError as exc:
        raise TransportError(f"WebSocket handshake failed: {_describe(exc)}") from None
    except tw.ConnectionClosed as exc:
        raise ConnectionLost(f"connection closed ({exc.reason})") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise TransportError(
            f"cannot reach {parts.hostname}:{parts.port}: {_describe(exc)}"
        ) from None
