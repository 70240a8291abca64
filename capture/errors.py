"""The errors a stripe's connection can end with, each saying what the worker does with it.

Raised at the edges (``capture.transport``, ``capture.auth``) and handled by the worker's
connect loop; defined here so that neither edge imports the other.  Errors of bad *input*
have their own single type per layer (``capture.frames.FrameDecoderError``,
``capture.protocol.ControlParseError``, ``capture.config.ConfigError``); storage errors are
``capture.sink.SinkError`` and ``capture.journal.JournalError``.
"""

from __future__ import annotations


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


class CredentialError(Exception):
    """No usable credential (missing, unreadable or refused): the stripe backs off (auth_failed)."""
