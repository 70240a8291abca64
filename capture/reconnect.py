"""One stripe's connect loop: run a session, tell how it ended, back off, connect again.

A session (one WebSocket connection and the MLink session on it) ends in one of three ways,
and each has its own wait before the next attempt (README, Supervision policy):

* the server ended it, or the transport failed (:class:`capture.errors.TransportError`):
  exponential backoff with jitter (capture.backoff), reset by a connection that stayed up
  ``supervision.healthy_after`` seconds;
* the credentials were refused or could not be read (``AuthRejected``, ``CredentialError``):
  ``supervision.auth_backoff``, cut short by :meth:`Reconnector.retry_auth` (SIGHUP: the
  operator fixed them); a refused credential is invalidated, so the next attempt reads it
  again;
* the lake's local disk budget is reached (``CapturePaused``, or before connecting): the stripe
  stays disconnected, state ``paused``, until the lake has room again (no backoff after it).

The loop never ends by itself: the worker cancels it to stop.  What a disconnect means for the
data (the gap, the capture event) is the worker's: it passes ``disconnected``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

from capture.auth import CredentialProvider
from capture.backoff import Backoff
from capture.config import SupervisionConfig
from capture.errors import AuthRejected, CapturePaused, CredentialError, TransportError
from capture.logs import redact
from capture.states import StripeState
from capture.stats import StripeStats

__all__ = ["PAUSE_POLL_S", "Reconnector"]

PAUSE_POLL_S = 1.0
"""A stripe paused by the lake (its local disk budget) looks again this often."""


class Reconnector:
    """Runs one stripe's sessions one after the other, with the waits in between."""

    def __init__(
        self,
        sup: SupervisionConfig,
        *,
        rng: random.Random,
        stats: StripeStats,
        log: Any,
        credentials: CredentialProvider,
        paused: Callable[[], str | None] | None = None,
    ) -> None:
        self.sup = sup
        self.rng = rng
        self.stats = stats
        self.log = log
        self.credentials = credentials
        self.paused = paused  # why capture must pause now (the lake), or None
        self._backoff = Backoff(
            sup.backoff_initial, sup.backoff_max, sup.backoff_multiplier, sup.backoff_jitter
        )
        self._retry_auth = trio.Event()  # SIGHUP: credentials changed, end the auth backoff

    def retry_auth(self) -> None:
        """The operator fixed the credentials (SIGHUP): a stripe waiting out its auth backoff
        connects now, and so does one whose attempt under way is refused; a connected stripe
        is not disturbed (its next attempt starts with this forgotten)."""
        self._retry_auth.set()

    async def run(
        self,
        session: Callable[[], Awaitable[None]],
        disconnected: Callable[[str], None],
        *,
        on_pause: Callable[[], Awaitable[None]] | None = None,
    ) -> NoReturn:
        """Run ``session()`` again and again; ``disconnected(reason)`` after each end (while
        ``stats.session`` still names the session that ended); ``on_pause()`` when a pause
        begins, before waiting it out."""
        attempt = 0
        sup = self.sup
        stats = self.stats
        while True:
            started = trio.current_time()
            stats.state = StripeState.CONNECTING
            # A SIGHUP from now on (even while this attempt still uses the old credentials)
            # ends the auth backoff that may follow it.
            self._retry_auth = trio.Event()
            await self._wait_unpaused(on_pause)
            try:
                await session()
                reason = "server ended the session"
                delay = self._backoff.delay(attempt, self.rng)
                stats.state = StripeState.BACKOFF
            except CapturePaused as exc:
                reason, delay = str(exc), 0.0  # the next round waits until the lake has room
                stats.state = StripeState.PAUSED
            except (AuthRejected, CredentialError) as exc:
                reason = redact(str(exc))
                if isinstance(exc, AuthRejected):  # the server refused what the source gave
                    reason = f"{reason} (credential: {self.credentials.source})"
                    self.credentials.invalidate()
                delay = sup.auth_backoff * (1 + self.rng.uniform(0, sup.backoff_jitter))
                stats.state = StripeState.AUTH_FAILED
                self.log.error("authentication failed; backing off", error=reason, delay=delay)
            except TransportError as exc:
                reason = redact(str(exc))
                delay = self._backoff.delay(attempt, self.rng)
                stats.state = StripeState.BACKOFF
            stats.last_error = reason
            disconnected(reason)
            stats.session = None
            stats.connected_since_ns = None
            if trio.current_time() - started >= sup.healthy_after:
                attempt = 0  # a connection that was healthy resets the backoff
                delay = self._backoff.delay(0, self.rng)
            else:
                attempt += 1
            if stats.state == StripeState.PAUSED:
                delay = 0.0
            stats.restarts += 1
            self.log.warning("disconnected; reconnecting", reason=reason, delay=round(delay, 3))
            if stats.state == StripeState.AUTH_FAILED:
                with trio.move_on_after(delay):
                    await self._retry_auth.wait()
                    self.log.info("credentials reloaded (SIGHUP); connecting now")
            else:
                await trio.sleep(delay)

    async def _wait_unpaused(self, on_pause: Callable[[], Awaitable[None]] | None) -> None:
        """While the lake says so (its local disk budget is reached), stay disconnected;
        ``on_pause()`` first, whether a session just ended for the pause or the stripe was
        between sessions (backoff, auth backoff) when it began."""
        if self.paused is None or (why := self.paused()) is None:
            return
        self.stats.state = StripeState.PAUSED
        self.stats.last_error = why
        self.log.error("capture paused", reason=why)
        if on_pause is not None:
            await on_pause()
        while self.paused() is not None:  # noqa: ASYNC110 - polls the lake's state
            await trio.sleep(PAUSE_POLL_S)
        self.log.info("capture resumes: the lake has room again")
