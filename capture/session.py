"""The MLink session as a sans-IO state machine (PROTOCOL.md §2.5, §6), in h11's shape.

One :class:`MLinkSession` per WebSocket connection.  It is fed the server's parsed control
messages (:mod:`capture.protocol`) and the time, and returns *events*: what to send, what to
record, whether the session must end.  It never does I/O, never holds a secret (a
:class:`SendLogon` asks the caller to send the credential it has), and imports neither trio nor
pyarrow, so every admin message, logon verdict, ack/checkpoint match, snapshot phase and
GoodNight is unit-tested synchronously (``tests/test_session.py``).

States (:class:`SessionState`), in the order a session normally goes through them::

    AWAITING_LOGON --LoggedOn--------------------> LOGGED_ON
          |   \\--WaitingLogon: SendLogon once, stays/  ^
          |                                              | LoggedOn (later verdicts only logged)
          \\--logon_timeout: SendRequests--> REQUESTED --/
    any state --GoodNight, or a refused logon before LoggedOn--> ENDED
    any state --a requested stream Replaced/Terminated by the server--> ENDED (reconnect)

The stream requests go out exactly once: on LoggedOn, or at ``logon_timeout`` when the server
sends no MLinkAdmin at all (some servers wait for the request first, §7.1 [I]).  A refusal
after the requests went out without LoggedOn still ends the session (an auth failure).

Data frames never pass through here; the reader asks :meth:`MLinkSession.in_snapshot` for each
one.  Bad control *bytes* are rejected earlier, by ``protocol.parse_control`` (its one exception
type, ``ControlParseError``); every value of a parsed control message is acceptable here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from capture import protocol


class SessionState(Enum):
    AWAITING_LOGON = "awaiting_logon"
    """Connected; no LoggedOn yet and no request sent."""
    REQUESTED = "requested"
    """Requests sent at ``logon_timeout`` without a LoggedOn (a refusal still ends it)."""
    LOGGED_ON = "logged_on"
    """MLinkAdmin said LoggedOn and the requests went out: later verdicts are only logged."""
    ENDED = "ended"
    """GoodNight, a refused logon or a stream the server ended: the caller closes the
    connection."""


# -- events out -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRequests:
    """Send one MLinkStream per request (once per session)."""

    requests: tuple[protocol.StreamRequest, ...]
    reason: str  # "logged_on" or "logon_timeout"


@dataclass(frozen=True, slots=True)
class SendLogon:
    """The server waits for an in-band MLinkLogon (§2.3): send the credential."""


@dataclass(frozen=True, slots=True)
class LogonVerdict:
    """An MLinkAdmin before LoggedOn: recorded as a ``logon`` capture event."""

    state: str
    detail: str | None
    verdict: protocol.AdminVerdict


@dataclass(frozen=True, slots=True)
class AdminAfterLogon:
    """An MLinkAdmin other than LoggedOn after LoggedOn: only logged."""

    state: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class EndSession:
    """Close the connection once every message received with this one is kept."""

    reason: str
    auth_failed: bool  # True: the server refused the credential (long backoff, auth_failed)


@dataclass(frozen=True, slots=True)
class StreamAcked:
    """An MLinkStreamAck matched to its request."""

    msg_type: str
    result: str
    detail: str | None
    ok: bool


@dataclass(frozen=True, slots=True)
class UnmatchedAck:
    """An MLinkStreamAck that matches no request of this session."""

    msg_name: str | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An MLinkStreamCheckPt matched to its stream; ``status`` is the stream's new phase."""

    msg_type: str
    state: str
    count: int | None
    highwater_ts: int | None
    status: str | None  # "snapshot", "live", "replaced", "terminated"; None: unchanged


@dataclass(frozen=True, slots=True)
class HeartbeatSeen:
    """An MLinkHeartbeat."""


@dataclass(frozen=True, slots=True)
class ServerProblem:
    """An MLinkDataAck: the server reports a problem with something we sent."""

    result: str
    detail: str | None


Event = (
    SendRequests
    | SendLogon
    | LogonVerdict
    | AdminAfterLogon
    | EndSession
    | StreamAcked
    | UnmatchedAck
    | Checkpoint
    | HeartbeatSeen
    | ServerProblem
)


# -- per-stream state -------------------------------------------------------------------------


@dataclass(slots=True)
class StreamState:
    """One MLinkStream subscription inside a session."""

    request: protocol.StreamRequest
    acked: bool = False
    failed: str | None = None
    in_snapshot: bool = False
    begun: bool = False
    completed: bool = False


@dataclass(slots=True)
class MLinkSession:
    """One connection's protocol state.  Feed it with :meth:`receive` and :meth:`tick`."""

    requests: tuple[protocol.StreamRequest, ...]
    logon_deadline: float | None = None
    """When to send the requests without a LoggedOn (None: never, e.g. replaying a journal)."""
    state: SessionState = SessionState.AWAITING_LOGON
    streams: dict[str, StreamState] = field(init=False)
    _by_query: dict[int, StreamState] = field(init=False)
    _by_name: dict[str, StreamState] = field(init=False)
    _snapshot: set[str] = field(init=False, default_factory=set)
    _requests_sent: bool = field(init=False, default=False)
    _logon_sent: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.streams = {r.msg_name: StreamState(r) for r in self.requests}
        self._by_query = {st.request.query_id: st for st in self.streams.values()}
        self._by_name = {name.lower(): st for name, st in self.streams.items()}

    # -- queries ----------------------------------------------------------------------------

    @property
    def requested(self) -> bool:
        """The stream requests have been sent."""
        return self._requests_sent

    def in_snapshot(self, msg_type: str) -> bool:
        """Rows of this type are part of their stream's initial snapshot (between the ack or
        ``Begin`` and ``Active``/``Complete``)."""
        return msg_type in self._snapshot

    @property
    def deadline(self) -> float | None:
        """When :meth:`tick` has something to do (None: nothing is timed)."""
        if self.state is SessionState.AWAITING_LOGON:
            return self.logon_deadline
        return None

    # -- inputs -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """Time passed: at ``logon_deadline`` without any verdict, send the requests anyway."""
        if (
            self.state is SessionState.AWAITING_LOGON
            and self.logon_deadline is not None
            and now >= self.logon_deadline
        ):
            return [self._send_requests(SessionState.REQUESTED, "logon_timeout")]
        return []

    def receive(self, ctl: protocol.Control) -> list[Event]:
        """One parsed control message from the server."""
        if isinstance(ctl, protocol.Admin):
            return self._admin(ctl)
        if isinstance(ctl, protocol.StreamAck):
            return self._ack(ctl)
        if isinstance(ctl, protocol.CheckPt):
            return self._checkpoint(ctl)
        if isinstance(ctl, protocol.Heartbeat):
            return [HeartbeatSeen()]
        if isinstance(ctl, protocol.DataAck):
            return [ServerProblem(ctl.result, ctl.detail)]
        return []  # other MLinkWs/MLinkRest traffic: counted by the caller, nothing to do

    # -- transitions ------------------------------------------------------------------------

    def _send_requests(self, to: SessionState, reason: str) -> SendRequests:
        self.state = to
        self._requests_sent = True
        return SendRequests(self.requests, reason)

    def _admin(self, admin: protocol.Admin) -> list[Event]:
        verdict = admin.verdict
        if self.state is SessionState.ENDED:
            return []  # the connection is closing: nothing more to decide
        if self.state is SessionState.LOGGED_ON:
            if verdict is protocol.AdminVerdict.GOOD_NIGHT:
                self.state = SessionState.ENDED
                return [EndSession(_good_night(admin), auth_failed=False)]
            if verdict is protocol.AdminVerdict.LOGGED_ON:
                return []
            return [AdminAfterLogon(admin.state, admin.detail)]
        out: list[Event] = [LogonVerdict(admin.state, admin.detail, verdict)]
        if verdict is protocol.AdminVerdict.GOOD_NIGHT:
            self.state = SessionState.ENDED
            out.append(EndSession(_good_night(admin), auth_failed=False))
        elif verdict is protocol.AdminVerdict.LOGGED_ON:
            if self.state is SessionState.REQUESTED:
                self.state = SessionState.LOGGED_ON  # the requests already went out
            else:
                out.append(self._send_requests(SessionState.LOGGED_ON, "logged_on"))
        elif verdict is protocol.AdminVerdict.SEND_LOGON:
            if self._logon_sent:
                return []  # asked again: the one credential sent is the answer (no flood)
            self._logon_sent = True
            out.append(SendLogon())
        else:
            self.state = SessionState.ENDED
            reason = f"MLinkAdmin {admin.state}: {admin.detail or 'no detail'}"
            out.append(EndSession(reason, auth_failed=True))
        return out

    @property
    def _replies_expected(self) -> bool:
        """Acks and checkpoints can be ours: the requests went out and the session goes on."""
        return self._requests_sent and self.state is not SessionState.ENDED

    def _ack(self, ack: protocol.StreamAck) -> list[Event]:
        if not self._replies_expected:
            return [UnmatchedAck(ack.msg_name)]  # nothing asked (yet), or closing: not ours
        st = self._match(ack.query_id, ack.msg_name, lambda s: s.acked)
        if st is None:
            return [UnmatchedAck(ack.msg_name)]
        st.acked = True
        name = st.request.msg_name
        if ack.ok:
            self._snapshot.add(name)  # until Active/Complete: this stream's snapshot
            st.in_snapshot = True
        else:
            st.failed = f"{ack.result}: {ack.detail or ''}".strip(": ")
        return [StreamAcked(name, ack.result, ack.detail, ack.ok)]

    def _checkpoint(self, cp: protocol.CheckPt) -> list[Event]:
        if not self._replies_expected:
            return []  # nothing asked (yet), or closing: no stream of ours to change or end
        phase = _PHASES.get(cp.state.lower(), cp.state)  # states are names: any case
        st = self._match(
            cp.query_id,
            None,
            lambda s: not s.acked or s.failed is not None or _checkpoint_done(s, phase),
        )
        if st is None:
            return []
        name = st.request.msg_name
        status: str | None = None
        if phase == "Begin":
            st.begun = True
            st.in_snapshot = True
            self._snapshot.add(name)
            status = "snapshot"
        elif phase in ("Active", "Complete"):
            st.in_snapshot = False
            st.completed = st.completed or phase == "Complete"
            self._snapshot.discard(name)
            status = "live"
        elif phase in ("Replaced", "Terminated"):
            self._snapshot.discard(name)
            status = phase.lower()
        out: list[Event] = [
            Checkpoint(name, cp.state, cp.num_messages_sent, cp.highwater_ts, status)
        ]
        if status in ("replaced", "terminated") and st.failed is None:
            # The server ended a stream this session asked for (it never sends a second request
            # for a type): nothing more of it comes on this connection.  Reconnecting requests
            # every stream again from its resume point; a refused stream's end is expected.
            # (Once ENDED, no checkpoint gets here: the end comes once.)
            self.state = SessionState.ENDED
            detail = f": {cp.detail}" if cp.detail else ""
            reason = f"server ended the {name} stream ({cp.state}{detail})"
            out.append(EndSession(reason, auth_failed=False))
        return out

    def _match(
        self,
        query_id: int | None,
        msg_name: str | None,
        skip: Callable[[StreamState], bool],
    ) -> StreamState | None:
        """A reply's request: by queryID, else msgName, else the first still waiting.

        A reply that names a query or a type this session did not request matches nothing
        (a reply to another client's stream, or a lie, must not settle or end one of ours);
        a queryID not ours with one of our type names matches by the name (a server that
        renumbers).  A number in ``msgName`` (the protocol allows requesting by type number)
        is no name.  Only a reply with neither falls back to order (PROTOCOL.md §6.2)."""
        name = None if msg_name is None or msg_name.strip().isdigit() else msg_name.lower()
        if query_id is not None:
            if query_id in self._by_query:
                return self._by_query[query_id]
            if name is None:
                return None
        if name is not None:
            return self._by_name.get(name)
        return next((st for st in self.streams.values() if not skip(st)), None)


def replayed(requests: Iterable[protocol.StreamRequest]) -> MLinkSession:
    """A session rebuilt from the journal: the same state changes, no timer."""
    return MLinkSession(tuple(requests))


def _good_night(admin: protocol.Admin) -> str:
    return f"server said GoodNight ({admin.detail or 'no detail'})"


_PHASES: Final = {p.lower(): p for p in ("Begin", "Active", "Complete", "Replaced", "Terminated")}


def _checkpoint_done(st: StreamState, phase: str) -> bool:
    """A stream that already had this phase cannot be the target of this checkpoint."""
    if phase == "Begin":
        return st.begun
    if phase == "Active":
        return not st.in_snapshot  # live already
    if phase == "Complete":
        return st.completed
    return False
