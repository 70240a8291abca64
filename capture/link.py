"""One connection as the reader sees it, and the carrying out of what its MLink session decides.

The MLink protocol itself is sans-IO (capture.session: fed parsed control frames and time, it
returns actions).  This module is where those actions meet the world:

* :class:`Link`: a connection's id, its frame decoder (bytes may straddle WebSocket messages),
  its :class:`capture.session.MLinkSession` (live, or rebuilt from the journal for a replay),
  and why it must end, once found;
* :class:`LinkActions`: carries out a list of session actions: stream and health counters,
  capture events (acks, checkpoints, logon), resume points from checkpoints, log lines, the
  requests and the logon sent on the connection, and the decision to end it.

The same actions run when the journal is replayed (no connection): the state changes happen
again, nothing is sent, recorded or ended again (it was when the messages arrived).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capture import protocol
from capture import session as mlink
from capture.clock import WallClock
from capture.errors import AuthRejected, TransportError
from capture.frames import FrameDecoder, encode_client_frame
from capture.masking import SecretMask
from capture.resume import ResumePoints
from capture.session import MLinkSession
from capture.stats import StripeStats
from capture.transport import Connection

__all__ = ["Link", "LinkActions"]


@dataclass(slots=True)
class Link:
    """One connection as the reader sees it: its id, its frame decoder (bytes may straddle
    WebSocket messages) and its MLink session (capture.session), live or rebuilt from the
    journal."""

    id: str
    protocol: MLinkSession
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    mask: SecretMask | None = field(default_factory=SecretMask.current)
    """The secrets to mask in what this connection receives (capture.masking)."""
    ended: Exception | None = None
    """Why the connection must end (GoodNight, a refused logon, a failed send), found while
    handling a message: raised once every message received with it has been kept."""


class LinkActions:
    """Carries out the actions of one stripe's MLink sessions."""

    def __init__(
        self,
        *,
        stats: StripeStats,
        log: Any,
        event: Callable[..., None],
        highwater: ResumePoints,
        clock: WallClock,
        logon_field: Callable[[], str],
    ) -> None:
        self.stats = stats
        self.log = log
        self._event = event  # records a capture event (kind, **fields)
        self._highwater = highwater  # the stripe's resume points, offered checkpoints' times
        self._clock = clock
        self._logon_field = logon_field  # the credential source's name for the key

    async def apply(
        self,
        events: list[mlink.Event],
        link: Link,
        conn: Connection | None,
        api_key: str | None,
        recv_ns: int,
    ) -> None:
        """Carry out what the MLink session decided on a message received at ``recv_ns``.
        Live, ``conn`` is the connection; when the journal is replayed it is None: the same
        state changes, nothing is sent, recorded or ended again (it was when the messages
        arrived)."""
        stats = self.stats
        for ev in events:
            if isinstance(ev, mlink.HeartbeatSeen):
                stats.heartbeats += 1
            elif isinstance(ev, mlink.StreamAcked):
                self._event("stream_ack", msg_type=ev.msg_type, result=ev.result, detail=ev.detail)
                if ev.ok:
                    stats.streams[ev.msg_type] = "acked"
                else:
                    failed = f"{ev.result}: {ev.detail or ''}".strip(": ")
                    stats.streams[ev.msg_type] = f"refused ({failed})"
                    stats.last_error = f"{ev.msg_type} refused by server: {failed}"
                    self.log.error(
                        "stream refused", msg_type=ev.msg_type, result=ev.result, detail=ev.detail
                    )
            elif isinstance(ev, mlink.Checkpoint):
                self._event(
                    "checkpoint",
                    msg_type=ev.msg_type,
                    result=ev.state,
                    count=ev.count,
                    highwater_ts=ev.highwater_ts,
                )
                if ev.status is not None:
                    stats.streams[ev.msg_type] = ev.status
                if ev.status in ("replaced", "terminated"):
                    self.log.warning("stream ended by server", msg_type=ev.msg_type, state=ev.state)
                if ev.highwater_ts and ev.highwater_ts > 0:
                    if not self._highwater.offer(ev.msg_type, ev.highwater_ts, recv_ns):
                        self.log.warning(
                            "checkpoint highwaterTs is not a plausible time; not resuming from it",
                            msg_type=ev.msg_type,
                            highwater_ts=ev.highwater_ts,
                        )
            elif isinstance(ev, mlink.UnmatchedAck):
                self.log.warning("stream ack matches no request", msg_name=ev.msg_name)
            elif isinstance(ev, mlink.ServerProblem):
                self.log.warning("server reported a problem", result=ev.result, detail=ev.detail)
            elif conn is None:
                continue  # replay: logon, requests and endings happened when this was live
            elif isinstance(ev, mlink.LogonVerdict):
                self._event("logon", result=ev.state, detail=ev.detail)
                if ev.verdict is protocol.AdminVerdict.LOGGED_ON:
                    self.log.info("logged on", session=stats.session)
            elif isinstance(ev, mlink.AdminAfterLogon):
                self.log.warning("MLinkAdmin after logon", state=ev.state, detail=ev.detail)
            elif isinstance(ev, mlink.EndSession):
                if link.ended is None:  # the frames after it are still kept
                    ending = AuthRejected if ev.auth_failed else TransportError
                    link.ended = ending(ev.reason)
            elif link.ended is None:  # a send: SendRequests or SendLogon
                try:
                    await self._send(ev, conn, api_key)
                except TransportError as exc:
                    link.ended = exc

    async def _send(
        self, ev: mlink.SendRequests | mlink.SendLogon, conn: Connection, api_key: str | None
    ) -> None:
        now = self._clock.now_ns()
        if isinstance(ev, mlink.SendRequests):
            for request in ev.requests:
                await conn.send(encode_client_frame(request.body(now)))
        elif api_key is not None:
            body = protocol.logon_body(api_key, now, self._logon_field())
            await conn.send(encode_client_frame(body))
