"""One stripe: WebSocket -> frames -> per-type batches -> decoder -> Parquet sink.

Two tasks per stripe, joined by a bounded channel:

* the **reader** (on the event loop) receives WebSocket messages, splits frames, handles control
  messages and appends data frame bodies *unparsed* to per-type pending batches.  Its per-frame
  work is a slice and a ``find``; it never waits on Parquet.
* the **writer** takes whole batches off the channel and, in a worker thread (pyarrow releases the
  GIL), decodes them in bulk into Arrow and writes them to the sink; it also commits files on
  rotation boundaries.

The channel bounds memory: when the writer falls behind by ``queue_batches`` batches the reader
waits, which the server sees as a slow consumer (PROTOCOL.md §7.3).  The time the reader spent
waiting is counted and reported.

The connection is the restartable part: transport and authentication errors end a *session*
and the reader reconnects with backoff.  The writer, the sink and the pending batches outlive
sessions, so a reconnect never loses or re-orders what was already received.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import trio

from capture import bounds, protocol, quarantine
from capture import events as capture_events
from capture import journal as journal_mod
from capture import session as mlink
from capture.auth import CredentialProvider
from capture.backoff import Backoff
from capture.clock import WallClock, trio_deadline_for
from capture.config import Config
from capture.crashguard import CrashGuard, Note, Suspects
from capture.decode import BatchDecoder, DecodeResult, DriftReport
from capture.durability import DurabilityKeeper
from capture.errors import (
    AuthRejected,
    CredentialError,
    StaleConnection,
    TransportError,
)
from capture.faultpoints import crash_point, poison_point
from capture.frames import FrameDecoder, Garbage, encode_client_frame
from capture.lake.hold import CapturePaused, JournalHold
from capture.logs import get_logger, redact, redact_url, secret_scrubber
from capture.memory import InFlightBudget, decode_slots
from capture.quarantine import Quarantined
from capture.recovery import CommittedIndex, committed_events, scan_committed
from capture.rotation import next_boundary_ns
from capture.schemas import lookup as lookup_message
from capture.session import MLinkSession
from capture.sink import CommittedFile, PartitionSink, SinkSettings
from capture.stats import StripeStats
from capture.transport import Connection, StreamFactory, connect


def new_session_id(now_ns: int) -> str:
    """Sortable and unique: UTC start time + 6 random hex digits."""
    t = dt.datetime.fromtimestamp(now_ns / 1e9, tz=dt.UTC)
    return f"{t:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class _Link:
    """One connection as the reader sees it: its id, its frame decoder (bytes may straddle
    WebSocket messages) and its MLink session (capture.session), live or rebuilt from the
    journal."""

    id: str
    protocol: MLinkSession
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    ended: Exception | None = None
    """Why the connection must end (GoodNight, a refused logon, a failed send), found while
    handling a message: raised once every message received with it has been kept."""


@dataclass(slots=True)
class PendingBatch:
    """Undecoded data frames of one message type, in arrival order."""

    msg_type: str
    session: str
    bodies: list[bytes] = field(default_factory=list)
    type_numbers: list[int] = field(default_factory=list)
    recv_ns: list[int] = field(default_factory=list)
    snapshot: list[bool] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    first_ns: int = 0
    nbytes: int = 0  # body bytes: the in-flight budget's charge once handed to the writer


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Rows for the capture-events table."""

    events: list[capture_events.Event]


@dataclass(frozen=True, slots=True)
class QuarantineBatch:
    """The frames one WebSocket message (or one decoded batch) had to quarantine: written with
    one fsync, so that a message of thousands of bad frames costs one, not thousands."""

    items: list[Quarantined]

    @property
    def seq(self) -> int:
        """The lowest seq the batch holds the journal at (capture.durability)."""
        return min(q.seq for q in self.items)


_WriterItem = PendingBatch | QuarantineBatch | EventBatch


@dataclass(frozen=True, slots=True)
class _RecoveryPlan:
    """What start-up found before going live, for the replay that runs beside it."""

    report: journal_mod.RecoveryReport
    segments: list[Path]  # the segments the last run left (the live writer adds others)
    index: CommittedIndex
    guard: CrashGuard
    suspects: Suspects
    quarantined_before: frozenset[str]
    events_before: frozenset[tuple[int, str, str | None]]


@dataclass(slots=True)
class _JournalSpan:
    first_ns: int | None = None  # oldest message or event
    last_ns: int | None = None  # newest message
    sent_ns: dict[str, int] = field(default_factory=dict)  # per type: latest header sTim


Offload = Callable[..., Awaitable[Any]]


# Distinct unknown message types a stripe logs (capture.worker._note_unknown_type).
UNKNOWN_TYPES_LOGGED = 20
# A stripe paused by the lake (its local disk budget) looks again this often.
PAUSE_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class _WriteOutcome:
    committed: list[CommittedFile]
    rows: int
    rejected: int
    slow_rows: int
    latest_sent_ns: int | None
    unknown_fields: frozenset[str] = frozenset()
    number_mismatches: int = 0


class StripeWorker:
    """Captures one stripe until :meth:`request_stop`; then drains and commits everything."""

    def __init__(
        self,
        cfg: Config,
        stripe: str,
        *,
        clock: WallClock,
        credentials: CredentialProvider,
        run_id: str,
        rng: random.Random | None = None,
        on_commit: Callable[[CommittedFile], None] | None = None,
        stream_factory: StreamFactory | None = None,
        offload: Offload | None = None,
        in_flight: InFlightBudget | None = None,
        decode_limiter: trio.CapacityLimiter | None = None,
        journal_syncs_itself: bool | None = None,
        journal_hold: JournalHold | None = None,
    ) -> None:
        self.cfg = cfg
        # With [lake]: journal segments stay until their frames are in a committed Iceberg
        # snapshot (capture.lake.hold); None: until they are in committed local files.
        self.journal_hold = journal_hold
        self.stream_factory = stream_factory
        # Blocking work (decode, Parquet, credential reads) runs here: worker threads by
        # default; tests on the mock clock run it inline so that time stays exact.
        self.offload: Offload = offload or trio.to_thread.run_sync
        # The journal fsyncs on its own thread's clock, so that durability does not wait for a
        # busy event loop; by default not with an explicit offload (tests on the mock clock: no
        # threads, exact time), where the syncer task does it on the loop's clock instead.
        if journal_syncs_itself is None:
            journal_syncs_itself = offload is None
        self.journal_syncs_itself = journal_syncs_itself
        # Process-wide bounds (capture.memory), shared by the daemon's stripes; a worker on its
        # own (replay, tests) gets its own.
        self.in_flight = in_flight or InFlightBudget(in_flight_limit(cfg))
        self.decode_limiter = decode_limiter or trio.CapacityLimiter(decode_slots())
        self._held = 0  # bytes this stripe holds of `in_flight`
        self._writer_gone = False
        self.stripe = stripe
        self.clock = clock
        self.credentials = credentials
        self.run_id = run_id
        self.rng = rng or random.Random()
        self.on_commit = on_commit
        self.stats = StripeStats(stripe)
        self.log = get_logger(stripe=stripe)
        self._stop_scope = trio.CancelScope()
        self._stopping = False
        self._rotate_now = trio.Event()
        self._retry_auth = trio.Event()  # SIGHUP: credentials changed, end the auth backoff
        self._pending: dict[str, PendingBatch] = {}
        self._events: list[capture_events.Event] = []
        # Events not yet in the journal: those raised while a message is being handled wait for
        # it to be journaled (an event's journal position is never below its own seq).
        self._unjournaled: list[capture_events.Event] = []
        self._in_message = False
        self._events_before: frozenset[tuple[int, str, str | None]] = frozenset()
        self._guard: Note | None = None  # what the writer is decoding (crashguard)
        self._suspects: Suspects | None = None  # what earlier runs died decoding
        self._gap_from_ns: int | None = None  # last frame before a disconnect, until the next
        self.journal: journal_mod.JournalWriter | None = None
        # Keys of what earlier runs quarantined (capture.quarantine): a replay skips them.
        self._quarantined_before: frozenset[str] = frozenset()
        self._quarantine_slot: tuple[str, int] = ("", -1)  # (session, seq) of the last item
        self._quarantine_n = 0  # items quarantined at that slot so far
        # Owns "a journal segment goes only once its frames are committed" (capture.durability).
        self.durability: DurabilityKeeper | None = None
        self._replaying = False
        # Items taken out of the pending map, in the order they were taken, until the writer's
        # channel accepts them; only _drain_ready() sends, so each type stays in receive order.
        self._ready: deque[_WriterItem] = deque()
        self._drain_lock = trio.Lock()
        self._handed = 0  # items given to the writer ...
        self._processed = 0  # ... and done by it
        self._progress = trio.lowlevel.ParkingLot()
        self.sink: PartitionSink | None = None
        self._seq = 0
        self._query_ids = {
            t: 1000 * (i + 1) + _stripe_number(stripe)
            for i, t in enumerate(cfg.source.message_types)
        }
        self._unknown_fields: dict[str, set[str]] = {}
        # The URL as logged and stored: a key in it (?apikey=, user:key@) is a secret.
        self._url = redact_url(cfg.source.url)
        self._quarantined: list[Quarantined] = []  # of the message being handled
        self._valid_types: set[str] = set()  # data type names checked by bounds.check_type_name
        self._tracebacks: set[str] = set()  # where contained bugs were raised (logged once each)
        self._unknown_types: set[str] = set()  # logged once each, at most UNKNOWN_TYPES_LOGGED
        self.highwater: dict[str, int] = {}  # msg type -> last header sTim (ns) written
        out = cfg.output
        n_stripes = max(1, len(cfg.source.stripes))
        # A pending batch is handed over at pipeline.batch_rows frames, or at this many bytes
        # of frames: with one busy type per stripe, the process's batches then hold about a
        # third of its budget, whatever the number of stripes (capture.memory).
        self._batch_max_bytes = max(
            BATCH_MIN_BYTES, out.memory_budget_mb * 2**20 // (3 * n_stripes)
        )
        self._sink_settings = SinkSettings(
            root=out.root,
            rotate_interval_s=out.rotate_interval,
            max_file_bytes=out.max_file_mb * 2**20,
            row_group_rows=out.row_group_rows,
            # What the process's budget leaves after frames in flight, split between the sinks.
            memory_budget_bytes=max(
                2**20, (out.memory_budget_mb * 2**20 - in_flight_limit(cfg)) // n_stripes
            ),
            compression=out.compression,
            tz=out.timezone,
            host=cfg.capture.host_id,
            # Long enough for a pending batch and the decode queue to reach the sink.
            commit_grace_s=min(max(2.0, 4 * cfg.pipeline.flush_interval), out.rotate_interval / 2),
            max_open_files=cfg.limits.max_open_types,
        )
        self._backoff = Backoff(
            cfg.supervision.backoff_initial,
            cfg.supervision.backoff_max,
            cfg.supervision.backoff_multiplier,
            cfg.supervision.backoff_jitter,
        )

    # -- control from the app ---------------------------------------------------------------

    @property
    def batching_bytes(self) -> int:
        """Frame bytes received and waiting for their batch to fill (or its flush interval)."""
        return sum(pb.nbytes for pb in self._pending.values())

    @property
    def journal_pending_bytes(self) -> int:
        """Received messages the journal holds in memory until its thread writes them out."""
        return self.journal.pending_bytes if self.journal is not None else 0

    def request_stop(self) -> None:
        self._stopping = True
        self._stop_scope.cancel()

    def request_rotate(self) -> None:
        self._rotate_now.set()

    def retry_auth(self) -> None:
        """The operator fixed the credentials (SIGHUP): a stripe waiting out its auth backoff
        connects now, and so does one whose attempt under way is refused; a connected stripe
        is not disturbed (its next attempt starts with this forgotten)."""
        self._retry_auth.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, recv = trio.open_memory_channel[_WriterItem](self.cfg.pipeline.queue_batches)
        self._writer_gone = False
        hold = self.journal_hold
        sink = self.sink = PartitionSink(
            self._sink_settings,
            stripe=self.stripe,
            session=self.run_id,
            now_ns=self.clock.now_ns,
            on_commit=hold.file_committed if hold is not None else None,
        )
        jcfg = self.cfg.journal
        plan: _RecoveryPlan | None = None
        if jcfg.enabled:
            jdir = jcfg.stripe_dir(self.cfg.output.root, self.stripe)
            # Before going live only what is cheap: seals are trusted and only the segments a
            # crash left open are read.  The sealed ones are checked record by record beside
            # live capture (_recover_beside), before they are replayed.
            recovered = await self.offload(journal_mod.recover, jdir)
            self.journal = await self.offload(
                partial(
                    journal_mod.JournalWriter,
                    jdir,
                    segment_bytes=jcfg.segment_mb * 2**20,
                    sync_interval=(
                        jcfg.durability_interval / 4 if self.journal_syncs_itself else None
                    ),
                )
            )
            self._seq = max(self._seq, self.journal.next_seq)
            oldest = [s.min_seq for s in recovered.segments if s.min_seq is not None]
            guard = CrashGuard(jdir)
            suspects = await self.offload(partial(guard.open, oldest_seq=min(oldest, default=None)))
            self._guard = guard.note("live")
            self.durability = DurabilityKeeper(
                self.journal,
                sink,
                retain_hours=jcfg.retain_hours,
                hold=self.journal_hold,
                stripe=self.stripe,
            )
            plan = await self._plan_recovery(recovered, guard, suspects)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, recv, sink)
                async with send:
                    task_status.started()
                    with self._stop_scope:
                        async with trio.open_nursery() as inner:
                            inner.start_soon(self._flusher, send)
                            if self.journal is not None:
                                inner.start_soon(self._syncer)
                            if plan is not None:  # beside live capture, not before it
                                inner.start_soon(self._recover_beside, plan)
                            await self._connect_loop(send)
                    # Stopping: hand over what is pending; closing `send` lets the writer drain.
                    self.stats.state = "stopping"
                    self._event(
                        "disconnect",
                        detail="daemon stopping",
                        gap_start_ns=self.stats.last_frame_ns,
                    )
                    with trio.CancelScope(shield=True):
                        await self._flush_pending(send, older_than_ns=None)
        finally:
            # (The writer gave back the in-flight bytes of batches it never took when it ended.)
            if self.journal is not None:
                # The writer has closed the sink; retire only what it committed, then close.
                with trio.CancelScope(shield=True):
                    await self.offload(self._close_journal)
                    self._publish_durable()
                    self.journal = None
                    self.durability = None
            if self._guard is not None:
                self._guard.close()
                self._guard = None
        self.stats.state = "stopped"

    async def _connect_loop(self, send: trio.MemorySendChannel[_WriterItem]) -> None:
        attempt = 0
        sup = self.cfg.supervision
        while True:
            started = trio.current_time()
            self.stats.state = "connecting"
            # A SIGHUP from now on (even while this attempt still uses the old credentials)
            # ends the auth backoff that may follow it.
            self._retry_auth = trio.Event()
            await self._wait_unpaused()
            try:
                await self._session(send)
                reason = "server ended the session"
                delay = self._backoff.delay(attempt, self.rng)
                self.stats.state = "backoff"
            except CapturePaused as exc:
                reason, delay = str(exc), 0.0  # the next round waits until the lake has room
                self.stats.state = "paused"
            except (AuthRejected, CredentialError) as exc:
                reason = redact(str(exc))
                if isinstance(exc, AuthRejected):  # the server refused what the source gave
                    reason = f"{reason} (credential: {self.credentials.source})"
                    self.credentials.invalidate()
                delay = sup.auth_backoff * (1 + self.rng.uniform(0, sup.backoff_jitter))
                self.stats.state = "auth_failed"
                self.log.error("authentication failed; backing off", error=reason, delay=delay)
            except TransportError as exc:
                reason = redact(str(exc))
                delay = self._backoff.delay(attempt, self.rng)
                self.stats.state = "backoff"
            self.stats.last_error = reason
            if self.stats.last_frame_ns is not None:
                self._gap_from_ns = self._gap_from_ns or self.stats.last_frame_ns
            self._event("disconnect", detail=reason, gap_start_ns=self._gap_from_ns)
            self.stats.session = None
            self.stats.connected_since_ns = None
            if trio.current_time() - started >= sup.healthy_after:
                attempt = 0  # a connection that was healthy resets the backoff
                delay = self._backoff.delay(0, self.rng)
            else:
                attempt += 1
            if self.stats.state == "paused":
                delay = 0.0
            self.stats.restarts += 1
            self.log.warning("disconnected; reconnecting", reason=reason, delay=round(delay, 3))
            if self.stats.state == "auth_failed":
                with trio.move_on_after(delay):
                    await self._retry_auth.wait()
                    self.log.info("credentials reloaded (SIGHUP); connecting now")
            else:
                await trio.sleep(delay)

    async def _wait_unpaused(self) -> None:
        """While the lake says so (its local disk budget is reached), stay disconnected."""
        hold = self.journal_hold
        if hold is None or (why := hold.paused()) is None:
            return
        self.stats.state = "paused"
        self.stats.last_error = why
        self.log.error("capture paused", reason=why)
        while hold.paused() is not None:  # noqa: ASYNC110 - polls the lake's state
            await trio.sleep(PAUSE_POLL_S)
        self.log.info("capture resumes: the lake has room again")

    # -- one connection -------------------------------------------------------------------------

    async def _session(self, send: trio.MemorySendChannel[_WriterItem]) -> None:
        cfg = self.cfg
        # Providers may block (file reads; Cognito's SRP login over HTTPS): never on the loop.
        bearer = await self.offload(self.credentials.bearer)
        session = new_session_id(self.clock.now_ns())
        if self.cfg.source.resume and self.stats.connects:
            # Resume from the last record *received*: everything received must be decoded
            # first, because the high-water mark is taken from decoded batches.
            await self._flush_pending(send, older_than_ns=None)
            await self._writer_caught_up()
        requests = self._requests()
        self.stats.connects += 1
        self.log.info("connecting", url=self._url, session=session)
        async with connect(
            cfg.source.url,
            bearer,
            connect_timeout=cfg.supervision.connect_timeout,
            client=cfg.source.websocket,
            stream_factory=self.stream_factory,
        ) as conn:
            self.stats.session = session
            self.stats.connected_since_ns = self.clock.now_ns()
            self._event("connect", result="ok", detail=self._url)
            if self.journal is not None:
                self.journal.begin_session(
                    session,
                    self.stripe,
                    self.clock.now_ns(),
                    {
                        "url": self._url,
                        "streams": {r.msg_name: r.query_id for r in requests},
                    },
                )
            self.stats.streams = {r.msg_name: "requested" for r in requests}
            await self._read(conn, session, requests, send, bearer.value)

    def _requests(self) -> tuple[protocol.StreamRequest, ...]:
        src = self.cfg.source
        return tuple(
            protocol.StreamRequest(
                msg_name=msg_type,
                query_id=self._query_ids[msg_type],
                stripe=self.stripe,
                label=f"mlink-capture-{self.stripe}",
                active_latency=src.active_latency,
                highwater_ts=self.highwater.get(msg_type) if src.resume else None,
            )
            for msg_type in src.message_types
        )

    async def _read(
        self,
        conn: Connection,
        session: str,
        requests: tuple[protocol.StreamRequest, ...],
        send: trio.MemorySendChannel[_WriterItem],
        api_key: str,
    ) -> None:
        sup = self.cfg.supervision
        stats = self.stats
        now_ns = self.clock.now_ns
        sess = _Link(
            session, MLinkSession(requests, logon_deadline=trio.current_time() + sup.logon_timeout)
        )
        # Only data and heartbeats show that the stream is alive: a server that sends nothing
        # else (or garbage, or admin messages) for stale_after is stale, and the stripe is
        # "connecting" until the first of them arrives (README, Health).
        last_alive = trio.current_time()
        journal = self.journal
        scrub = secret_scrubber()
        try:
            while True:
                deadline = last_alive + sup.stale_after
                if (timed := sess.protocol.deadline) is not None:
                    deadline = min(deadline, timed)
                with trio.move_on_at(deadline) as scope:
                    messages = await conn.recv_batch()
                if scope.cancelled_caught:
                    events = sess.protocol.tick(trio.current_time())
                    if events:
                        # No MLinkAdmin yet: some servers wait for the request first (§7.1, [I]).
                        self.log.warning("no MLinkAdmin within logon_timeout; requesting anyway")
                        await self._apply(events, sess, conn, api_key)
                        continue
                    raise StaleConnection(f"no data or heartbeat for {sup.stale_after:g} s")
                recv_ns = now_ns()  # one socket read: its messages were received together
                if self._gap_from_ns is not None:  # first frame after a disconnect
                    self._event("gap", gap_start_ns=self._gap_from_ns, gap_end_ns=recv_ns)
                    self._gap_from_ns = None
                stats.last_frame_ns = recv_ns
                alive_before = stats.last_alive_ns
                for message in messages:
                    stats.bytes += len(message)
                    if scrub is not None:  # a secret the server echoes is kept nowhere
                        message = scrub(message)
                    first_seq = self._seq
                    self._in_message = True
                    await self._process(sess, message, recv_ns, conn, api_key, send=send)
                    if journal is not None:  # buffered; fsynced by its own thread
                        journal.append(recv_ns, first_seq, self._seq - first_seq, message)
                    self._in_message = False
                    if self._unjournaled:
                        self._journal_events()
                    if self._ready:  # after the journal: waiting for the writers delays no fsync
                        await self._drain_ready(send)
                if sess.ended is not None:
                    raise sess.ended
                if self.journal_hold is not None and (why := self.journal_hold.paused()):
                    raise CapturePaused(why)
                if stats.last_alive_ns != alive_before:
                    last_alive = trio.current_time()
                    if (
                        sess.protocol.requested
                        and stats.state != "streaming"
                        and stats.session is not None
                    ):
                        stats.state = "streaming"
        finally:
            self._in_message = False
            if self._unjournaled:
                self._journal_events()
            # Bytes still waiting for the rest of a frame can never complete now: keep them.
            with trio.CancelScope(shield=True):
                await self._end_of_stream(sess, send)

    async def _process(
        self,
        sess: _Link,
        message: bytes | str,
        recv_ns: int,
        conn: Connection | None,
        api_key: str | None = None,
        *,
        live: bool = True,
        committed: Callable[[str, int], bool] | None = None,
        send: trio.MemorySendChannel[_WriterItem] | None = None,
    ) -> None:
        """One received WebSocket message: frames -> control handling / pending batches.

        Full batches and quarantined bytes are queued (:meth:`_enqueue`); the caller hands them
        to the writer with :meth:`_drain_ready`.  The same code runs live (``conn`` given) and
        when the journal is replayed (``conn`` None, ``live`` False): the rows come out
        identical.  ``committed(msg_type, seq)`` tells a replay which frames already are in
        committed Parquet.
        """
        stats = self.stats
        pending = self._pending
        batch_rows = self.cfg.pipeline.batch_rows
        batch_max_bytes = self._batch_max_bytes
        control_types = protocol.CONTROL_TYPES
        limits = self.cfg.limits
        valid_types = self._valid_types
        session = sess.id
        data_frames = snapshot_rows = alive = 0
        try:
            try:
                events = sess.decoder.feed_typed(message)
            except Exception as exc:  # noqa: BLE001 - a decoder bug: keep the message, start afresh
                sess.decoder = FrameDecoder()
                self._contain(exc, recv_ns, session, _as_bytes(message))
                events = []
            for event in events:
                if isinstance(event, Garbage):
                    stats.garbage_bytes += len(event.data)
                    self._quarantine(recv_ns, session, event.reason, event.data)
                    continue
                mtyp, type_number, body = event
                # Each frame on its own: bad input (RemoteProtocolError, the protocol layer's
                # one exception) is quarantined; anything else is a bug, contained the same
                # way.  Either way the next frame is handled (README "Guarantee").
                try:
                    bounds.check_body(body, limits)  # before any JSON parser sees it
                    if not mtyp:  # not peeked, or peeked empty: parse the body to be sure
                        mtyp = _slow_mtyp(body)
                        if mtyp is None:
                            self._quarantine(recv_ns, session, "no header.mTyp", body)
                            continue
                    if mtyp in control_types:
                        stats.control_messages += 1
                        ctl = protocol.parse_control(mtyp, body)
                        alive += isinstance(ctl, protocol.Heartbeat)
                        decided = sess.protocol.receive(ctl)
                        if decided:
                            await self._apply(decided, sess, conn, api_key)
                        continue
                    if mtyp not in valid_types:  # where a type name enters: never the writer's
                        bounds.check_type_name(mtyp, limits)
                        if len(valid_types) >= _VALID_TYPES_MAX:
                            valid_types.clear()
                        valid_types.add(mtyp)
                except protocol.RemoteProtocolError as exc:
                    self._quarantine(recv_ns, session, str(exc), body)
                    if send is not None and len(self._ready) >= _HAND_OVER_ITEMS:
                        await self._hand_over(send)
                    continue
                except Exception as exc:  # noqa: BLE001 - a bug, contained (README "Guarantee")
                    self._contain(exc, recv_ns, session, body)
                    continue
                seq = self._seq
                self._seq += 1
                alone = False
                if committed is not None:  # replay
                    if committed(mtyp, seq):
                        continue  # already in a committed file
                    if self._suspects:  # an earlier run died decoding this (crashguard)
                        verdict = self._suspects.verdict(mtyp, seq)
                        if verdict == "poison":
                            self._set_aside(recv_ns, session, seq, body)
                            continue
                        if verdict == "suspect" and mtyp in pending:
                            self._enqueue(pending.pop(mtyp))
                        alone = verdict == "suspect"
                pb = pending.get(mtyp)
                if pb is None or pb.session != session:
                    if pb is not None:
                        self._enqueue(pending.pop(mtyp))
                    pb = pending[mtyp] = PendingBatch(mtyp, session, first_ns=recv_ns)
                in_snapshot = sess.protocol.in_snapshot(mtyp)
                pb.bodies.append(body)
                pb.type_numbers.append(type_number)
                pb.recv_ns.append(recv_ns)
                pb.snapshot.append(in_snapshot)
                pb.seq.append(seq)
                pb.nbytes += len(body)
                data_frames += 1
                snapshot_rows += in_snapshot
                if len(pb.bodies) >= batch_rows or pb.nbytes >= batch_max_bytes or alone:
                    self._enqueue(pending.pop(mtyp))
        finally:  # also when a control frame's handling raises part-way
            if live and data_frames:
                stats.messages += data_frames
                stats.last_data_ns = recv_ns
                stats.snapshot_rows += snapshot_rows
            if live and (data_frames or alive):
                stats.last_alive_ns = recv_ns
            if self._quarantined:
                self._enqueue_quarantined()

    async def _hand_over(self, send: trio.MemorySendChannel[_WriterItem]) -> None:
        """Hand what is queued to the writer in the middle of a message: a message of
        millions of bad frames must not hold them all in memory.  Shielded, so that a stop
        cannot leave the rest of the message unhandled (and unjournaled); a writer that is
        gone leaves the items queued, as at the end of a stream."""
        with trio.CancelScope(shield=True):
            try:
                await self._drain_ready(send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _contain(self, exc: Exception, recv_ns: int, session: str, data: bytes) -> None:
        """A bug met while handling one frame (or message): quarantine its bytes, log the
        traceback once per kind of failure, go on with the next."""
        reason = f"internal error: {type(exc).__name__}: {exc}"[:500]
        where = f"{type(exc).__name__}@{_origin(exc)}"
        if where not in self._tracebacks and len(self._tracebacks) < 100:
            self._tracebacks.add(where)
            self.log.error(
                "bug while handling a frame; frame quarantined, capture goes on",
                reason=reason,
                exc_info=exc,
            )
        else:
            self.log.error("bug while handling a frame (traceback logged before)", reason=reason)
        self._quarantine(recv_ns, session, reason, data)

    async def _end_of_stream(self, sess: _Link, send: trio.MemorySendChannel[_WriterItem]) -> None:
        for leftover in sess.decoder.flush():
            self.stats.garbage_bytes += len(leftover.data)
            self._quarantine(self.clock.now_ns(), sess.id, leftover.reason, leftover.data)
        if self._quarantined:
            self._enqueue_quarantined()
        try:
            await self._drain_ready(send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.log.error("writer gone; could not hand over what was received last")

    async def _apply(
        self,
        events: list[mlink.Event],
        sess: _Link,
        conn: Connection | None,
        api_key: str | None,
    ) -> None:
        """Carry out what the MLink session decided.  Live, ``conn`` is the connection; when
        the journal is replayed it is None: the same state changes, nothing is sent, recorded
        or ended again (it was when the messages arrived)."""
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
                    hw = self.highwater
                    hw[ev.msg_type] = max(hw.get(ev.msg_type, 0), ev.highwater_ts)
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
                if sess.ended is None:  # the frames after it are still kept
                    ending = AuthRejected if ev.auth_failed else TransportError
                    sess.ended = ending(ev.reason)
            elif sess.ended is None:  # a send: SendRequests or SendLogon
                try:
                    await self._send(ev, conn, api_key)
                except TransportError as exc:
                    sess.ended = exc

    async def _send(
        self, ev: mlink.SendRequests | mlink.SendLogon, conn: Connection, api_key: str | None
    ) -> None:
        now = self.clock.now_ns()
        if isinstance(ev, mlink.SendRequests):
            for request in ev.requests:
                await conn.send(encode_client_frame(request.body(now)))
        elif api_key is not None:
            body = protocol.logon_body(api_key, now, self.credentials.logon_field)
            await conn.send(encode_client_frame(body))

    # -- hand-over to the writer ------------------------------------------------------------------

    async def _writer_caught_up(self) -> None:
        """Wait until the writer has processed every item handed over so far."""
        target = self._handed
        while self._processed < target:
            await self._progress.park()

    def _enqueue(self, item: _WriterItem) -> None:
        """Queue an item for the writer (no waiting: see :meth:`_drain_ready`).  From now on
        its frames count as in flight for the journal's commit watermark."""
        if self.durability is not None:
            self.durability.taken(_low_seq(item))
        self._ready.append(item)

    async def _drain_ready(self, send: trio.MemorySendChannel[_WriterItem]) -> None:
        """Hand the queued items to the writer, oldest first.

        The writers are behind when this stripe's channel is full or the process's in-flight
        budget is spent: these are the backpressure points, and the time waited is counted.
        Cancellation leaves the item queued (the stop path drains it, shielded).  One task
        sends at a time, so items reach the channel in the order they were queued."""
        async with self._drain_lock:
            ready = self._ready
            budget = self.in_flight
            while ready:
                item = ready[0]
                n = item.nbytes if isinstance(item, PendingBatch) else 0
                t0 = trio.current_time()
                waited = bool(n) and await budget.admit(n, self._is_writer_gone)
                budget.take(n)
                self._held += n
                try:
                    try:
                        send.send_nowait(item)
                    except trio.WouldBlock:
                        waited = True
                        await send.send(item)
                except BaseException:
                    budget.release(n)
                    self._held -= n
                    raise
                ready.popleft()
                self._handed += 1
                if waited:
                    self.stats.reader_wait_s += trio.current_time() - t0

    def _is_writer_gone(self) -> bool:
        return self._writer_gone

    def _quarantine(self, recv_ns: int, session: str, reason: str, data: bytes) -> None:
        """Set bytes aside (handed to the writer with the rest of the message's, at its end)."""
        seq = self._seq
        slot = (session, seq)
        if slot == self._quarantine_slot:
            self._quarantine_n += 1
        else:
            self._quarantine_slot, self._quarantine_n = slot, 0
        key = f"{session}/{seq}/{self._quarantine_n}"
        if key in self._quarantined_before:
            return  # a replay: an earlier run kept (and counted) these bytes
        self.stats.quarantined += 1
        self._quarantined.append(Quarantined(recv_ns, session, reason, data, seq=seq, key=key))
        if len(self._quarantined) >= 1000:  # a message of many bad frames: batches of 1,000
            self._enqueue_quarantined()

    def _enqueue_quarantined(self) -> None:
        items, self._quarantined = self._quarantined, []
        reasons = sorted({q.reason for q in items})
        self.log.warning(  # one line per message, however many frames it had to set aside
            "quarantined bytes",
            frames=len(items),
            size=sum(len(q.data) for q in items),
            reason=reasons[0] if len(reasons) == 1 else reasons[:3],
        )
        self._enqueue(QuarantineBatch(items))

    def _set_aside(self, recv_ns: int, session: str, seq: int, body: bytes) -> None:
        """Quarantine a frame the process died decoding twice, the second time alone."""
        key = f"seq/{seq}"
        if key in self._quarantined_before:
            return
        self.stats.quarantined += 1
        reason = "the process died decoding this frame (twice; the second time alone)"
        self.log.error("quarantined a frame that crashed the decoder", seq=seq, size=len(body))
        item = Quarantined(recv_ns, session, reason, body, seq=seq, key=key)
        self._enqueue(QuarantineBatch([item]))

    def _event(self, kind: str, **fields: Any) -> None:
        if self._replaying:  # these events are in the journal, as EVENT records
            return
        for name in ("detail", "result"):  # text from the server may echo a secret
            if isinstance(fields.get(name), str):
                fields[name] = redact(fields[name])
        self._record_event(
            capture_events.Event(
                time_ns=self.clock.now_ns(),
                session=self.stats.session,
                seq=self._seq,
                event=kind,
                **fields,
            )
        )

    def _record_event(self, event: capture_events.Event) -> None:
        """Queue an event for the events table and journal it (capture.durability: the gap
        ledger is as durable as the data)."""
        self._events.append(event)
        if self.journal is not None:
            self._unjournaled.append(event)
            if not self._in_message:
                self._journal_events()

    def _journal_events(self) -> None:
        journal = self.journal
        events, self._unjournaled = self._unjournaled, []
        if journal is None:
            return
        try:
            for ev in events:
                journal.append_event(
                    ev.time_ns, max(journal.next_seq, ev.seq), dataclasses.asdict(ev)
                )
        except journal_mod.JournalError as exc:  # the syncer stops the stripe for it
            self.log.error("journal: could not record an event", error=str(exc))

    async def _flush_pending(
        self, send: trio.MemorySendChannel[_WriterItem], older_than_ns: int | None
    ) -> None:
        if self._events:
            events, self._events = self._events, []
            self._enqueue(EventBatch(events))  # (journaled already: see _record_event)
        for msg_type, pb in list(self._pending.items()):
            if older_than_ns is None or pb.first_ns <= older_than_ns:
                del self._pending[msg_type]
                self._enqueue(pb)
        await self._drain_ready(send)

    async def _flusher(self, send: trio.MemorySendChannel[_WriterItem]) -> None:
        """Partial batches wait at most ``flush_interval`` before they are decoded."""
        interval = self.cfg.pipeline.flush_interval
        while True:
            await trio.sleep(interval)
            await self._flush_pending(send, self.clock.now_ns() - int(interval * 1e9))

    # -- journal --------------------------------------------------------------------------------

    def _commit_watermark(self) -> int:
        """The event loop's part of the watermark (capture.durability): the next seq and the
        pending batches; the keeper adds what the writer holds and the sink's open and aborted
        files."""
        assert self.durability is not None
        lows = [pb.seq[0] for pb in self._pending.values() if pb.seq]
        if self._events:
            lows.append(min(e.seq for e in self._events))
        return self.durability.loop_watermark(self._seq, lows)

    async def _syncer(self) -> None:
        """Every half ``durability_interval`` (so that a frame is on disk within the interval,
        fsync time included): fsync the journal unless it does so itself, retire what is
        committed, publish the durable sequence number.  A failure stops this stripe."""
        interval = self.cfg.journal.durability_interval / 2
        sync = not self.journal_syncs_itself
        keeper = self.durability
        assert keeper is not None
        while True:
            await trio.sleep(interval)
            await self.offload(partial(keeper.sync_round, self._commit_watermark(), sync=sync))
            self._publish_durable()

    def _publish_durable(self) -> None:
        journal = self.journal
        if journal is None:
            return
        for seq, synced_ns in journal.take_syncs():  # only the fsyncs that advanced it
            # For the benchmark's receive-to-durable latency (debug: a few times a second).
            self.log.debug("journal synced", durable_seq=seq, synced_ns=synced_ns)
        durable = journal.durable_seq
        self.stats.durable_seq = durable
        # Never negative: during a disk outage the journal's count can run ahead of this
        # stripe's (a restarted writer numbers from the journal's next_seq).
        self.stats.journal_lag = max(0, self._seq - (durable + 1 if durable is not None else 0))

    def _close_journal(self) -> None:
        """In a thread: the final sync and retirement, then close (the caller publishes the
        last fsyncs, on the loop, and drops the writer)."""
        keeper = self.durability
        if keeper is None:
            return
        try:
            keeper.close(self._commit_watermark())
        except (OSError, journal_mod.JournalError) as exc:
            self.log.error("journal: final sync failed", error=str(exc))

    async def _plan_recovery(
        self, report: journal_mod.RecoveryReport, guard: CrashGuard, suspects: Suspects
    ) -> _RecoveryPlan:
        """Start-up, before going live: what the replay needs, the sequence numbers it owns,
        where the last run stopped (the gap's start, the resume point) and what it already
        stored.  Reads the journal's first and last segments and the footers of the committed
        files the journal can refer to; the replay itself runs beside live capture."""
        assert self.journal is not None and self.durability is not None
        directory = self.journal.directory
        segments = [s.path for s in report.segments if not s.removed]
        span = await self.offload(_journal_span, directory, segments)
        root = self.cfg.output.root
        index = await self.offload(
            partial(scan_committed, root, self.stripe, since_ns=span.first_ns)
        )
        # The live reader numbers frames from here: the replay owns every number below.
        self._seq = max(self._seq, self.journal.next_seq)
        if index.max_seq is not None:
            # Committed files can hold rows whose journal records were not yet fsynced when
            # the process died: never hand out their sequence numbers again.
            self._seq = max(self._seq, index.max_seq + 1)
        # Resume from the last record received, durable in the journal, not only from the
        # last one committed (which lags: the difference would be stored twice).
        for source in (index.max_sent_ns, span.sent_ns):
            for msg_type, sent_ns in source.items():
                self.highwater[msg_type] = max(self.highwater.get(msg_type, 0), sent_ns)
        self._gap_from_ns = span.last_ns
        if segments:
            self.durability.hold_below(0)  # retire nothing until the replay has committed
        return _RecoveryPlan(
            report=report,
            segments=segments,
            index=index,
            guard=guard,
            suspects=suspects,
            quarantined_before=frozenset(
                await self.offload(
                    partial(quarantine.known_keys, root, self.stripe, since_ns=span.first_ns)
                )
            ),
            events_before=frozenset(
                await self.offload(
                    partial(committed_events, root, self.stripe, since_ns=span.first_ns)
                )
            ),
        )

    async def _recover_beside(self, plan: _RecoveryPlan) -> None:
        """Beside live capture: check the sealed segments the last run left, replay the frames
        in them that are not in committed Parquet (with their own sink and writer, so that
        each file still holds one contiguous run of one type), commit them, then let the
        journal retire again."""
        assert self.journal is not None and self.durability is not None
        report = plan.report
        checked = (
            await self.offload(journal_mod.check_segments, plan.segments) if plan.segments else None
        )
        replayer = StripeWorker(
            self.cfg,
            self.stripe,
            clock=self.clock,
            credentials=self.credentials,
            run_id=f"{self.run_id}r",
            on_commit=self.on_commit,
            offload=self.offload,
            in_flight=self.in_flight,
            decode_limiter=self.decode_limiter,
            journal_hold=self.journal_hold,  # its files reach the lake too
        )
        replayer._quarantined_before = plan.quarantined_before
        replayer._events_before = plan.events_before
        replayer._suspects = plan.suspects
        replayer._guard = plan.guard.note("replay")
        replayer.log = self.log.bind(recovery=True)
        try:
            replayed = await replayer.replay(
                [self.journal.directory], committed=plan.index, only=plan.segments
            )
        finally:
            replayer._guard.close()
            done = replayer.stats
            self.stats.quarantined += done.quarantined
            self.stats.garbage_bytes += done.garbage_bytes
            self.stats.rows_written += done.rows_written
            self.stats.files_committed += done.files_committed
        for msg_type, sent_ns in replayer.highwater.items():
            self.highwater[msg_type] = max(self.highwater.get(msg_type, 0), sent_ns)
        self.durability.hold_below(None)
        cut = report.cut + (checked.cut if checked is not None else [])
        bytes_cut = report.bytes_cut + (checked.bytes_cut if checked is not None else 0)
        cuts = "".join(
            f"; {c.path.name}: {c.bytes_cut} byte(s) cut, {c.reason} ({c.detail})" for c in cut
        )
        self._event(
            "recovery",
            detail=(
                f"journal: {len(report.segments)} segment(s), {bytes_cut} byte(s) cut; "
                f"{replayed} frame(s) not yet in Parquet replayed{cuts}"
            ),
            bytes=bytes_cut,
            count=replayed,
        )
        if bytes_cut or replayed:
            self.log.warning(
                "recovered from the journal",
                bytes_cut=bytes_cut,
                frames_replayed=replayed,
                cuts=[f"{c.path.name}: {c.reason}" for c in cut],
            )

    async def _replay_journal(
        self,
        send: trio.MemorySendChannel[_WriterItem],
        directories: list[Path],
        committed: CommittedIndex | None,
        only: list[Path] | None = None,
    ) -> tuple[int, int | None]:
        """Feed journaled messages through the live path; returns (frames replayed, last
        receive time)."""
        self._replaying = True
        replayed = 0
        last_ns: int | None = None
        sess: _Link | None = None
        contains = committed.contains if committed is not None else None
        last_of: dict[str, int] = {}  # session -> its last message's receive time
        closed: set[str | None] = set()  # sessions whose disconnect is in the journal

        def already(msg_type: str, seq: int) -> bool:
            nonlocal replayed
            if contains is not None and contains(msg_type, seq):
                return True
            replayed += 1
            return False

        try:
            for directory in directories:
                records = journal_mod.read_records(directory, only=only)
                while chunk := await self.offload(_take, records, 512):
                    for rec in chunk:
                        if isinstance(rec, journal_mod.SessionRecord):
                            if rec.resumed and sess is not None and sess.id == rec.session:
                                continue  # a segment boundary inside the same session
                            if sess is not None:
                                await self._end_of_stream(sess, send)
                            sess = _Link(rec.session, mlink.replayed(self._replayed_requests(rec)))
                            continue
                        if isinstance(rec, journal_mod.EventRecord):
                            event = _event_from(rec.fields)
                            if event is None:
                                continue
                            if event.event == "disconnect":
                                closed.add(event.session)
                            key = (event.time_ns, event.event, event.session)
                            if key not in self._events_before:
                                self._events.append(event)  # journaled already
                            continue
                        if sess is None:  # the journal starts inside a session
                            sess = _Link("unknown", mlink.replayed(()))
                        self._seq = rec.first_seq
                        await self._process(
                            sess,
                            rec.payload,
                            rec.recv_ns,
                            None,
                            live=False,
                            committed=already,
                            send=send,
                        )
                        if self._ready:
                            await self._drain_ready(send)
                        last_ns = last_of[sess.id] = rec.recv_ns
            if sess is not None:
                await self._end_of_stream(sess, send)
        finally:
            self._replaying = False
        for session, ended_ns in last_of.items():
            if session in closed or session == "unknown":
                continue
            # The process died with this session open (SIGKILL, a crash): no disconnect was
            # recorded.  Record it now, once: the key is the same at every start.
            event = capture_events.Event(
                time_ns=ended_ns,
                session=session,
                seq=self._seq,
                event="disconnect",
                detail="capture process ended without closing the session (killed or crashed)",
                gap_start_ns=ended_ns,
            )
            if (event.time_ns, event.event, event.session) not in self._events_before:
                self._record_event(event)
        if self.journal is not None:
            self._seq = max(self._seq, self.journal.next_seq)
        return replayed, last_ns

    def _replayed_requests(
        self, rec: journal_mod.SessionRecord
    ) -> list[protocol.StreamRequest]:
        streams = rec.context.get("streams", {})
        items = streams.items() if isinstance(streams, dict) else ()
        return [
            protocol.StreamRequest(
                msg_name=name, query_id=int(qid), stripe=self.stripe, label="replay"
            )
            for name, qid in items
        ]

    async def replay(
        self,
        directories: list[Path],
        *,
        committed: CommittedIndex | None = None,
        only: list[Path] | None = None,
    ) -> int:
        """Rebuild this stripe's Parquet from journal segments, with a sink and writer of its
        own (offline: ``mlink-capture replay``; at start-up: beside live capture, skipping
        what ``committed`` holds, reading ``only`` these segments); returns the number of
        data frames written.  Every file is committed when it returns."""
        send, recv = trio.open_memory_channel[_WriterItem](self.cfg.pipeline.queue_batches)
        self._writer_gone = False
        hold = self.journal_hold
        sink = self.sink = PartitionSink(
            self._sink_settings,
            stripe=self.stripe,
            session=self.run_id,
            now_ns=self.clock.now_ns,
            on_commit=hold.file_committed if hold is not None else None,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, recv, sink)
            async with send:
                replayed, _ = await self._replay_journal(send, directories, committed, only)
                await self._flush_pending(send, older_than_ns=None)
        return replayed

    # -- writer ---------------------------------------------------------------------------------

    async def _writer(
        self, recv: trio.MemoryReceiveChannel[_WriterItem], sink: PartitionSink
    ) -> None:
        try:
            await self._write_loop(recv, sink)
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                # A broken disk (ENOSPC, EIO, EACCES) or a bug: the supervisor restarts this
                # stripe with backoff; recovery then replays the journal.
                self._writer_failed(f"writer failed: {exc}")
                self.log.error("writer failed; no more commits this run", error=str(exc))
            raise
        finally:
            self._writer_gone = True
            # What was handed to this writer and is not written now never will be (the journal
            # has it): give its bytes back at once, not after the sink closes, so that the
            # other stripes' readers queued for the budget do not wait for this one.  A reader
            # of this stripe that sends after this meets the closed channel and releases its own.
            self.in_flight.release(self._held)
            self._held = 0
            self.in_flight.wake()  # a reader waiting for this writer's progress gives up
            with trio.CancelScope(shield=True):
                try:
                    self._committed(await self._heavy(sink.close))
                except OSError as exc:
                    self._writer_failed(f"closing the sink failed: {exc}")
                    self.log.error("closing the sink failed", error=str(exc))

    async def _write_loop(
        self, recv: trio.MemoryReceiveChannel[_WriterItem], sink: PartitionSink
    ) -> None:
        decoders: dict[str, BatchDecoder] = {}
        max_decoders = max(64, self.cfg.limits.max_open_types)
        interval = self.cfg.output.rotate_interval
        tz = self.cfg.output.timezone
        async with recv:
            while True:
                # Wake at the next clock boundary, or sooner when an open file falls due (the
                # last file of a type that went quiet: its interval's grace deadline).
                wake = next_boundary_ns(self.clock.now_ns(), interval, tz)
                due = sink.next_due_ns()
                if due is not None:
                    wake = min(wake, due)
                item: _WriterItem | None = None
                with trio.move_on_at(trio_deadline_for(self.clock, wake)):
                    if self._rotate_now.is_set():
                        self._rotate_now = trio.Event()
                        self._committed(await self._heavy(sink.rotate_all))
                    try:
                        item = await recv.receive()
                    except trio.EndOfChannel:
                        return
                if item is None:
                    self._committed(await self._heavy(sink.rotate_due))
                elif isinstance(item, PendingBatch):
                    dec = decoders.get(item.msg_type)
                    if dec is None:
                        if len(decoders) >= max_decoders:  # a type flood: forget the oldest
                            del decoders[next(iter(decoders))]
                        dec = decoders[item.msg_type] = BatchDecoder(item.msg_type)
                    outcome = await self._heavy(self._decode_and_write, dec, sink, item)
                    if self.durability is not None:
                        self.durability.done(item.seq[0])
                    self._held -= item.nbytes
                    self.in_flight.release(item.nbytes)
                    self._written(item.msg_type, outcome)
                elif isinstance(item, EventBatch):
                    batch = capture_events.to_batch(item.events, self.stripe)
                    self._committed(await self._heavy(sink.write, capture_events.TABLE, batch))
                    if self.durability is not None:
                        self.durability.done(_low_seq(item))
                else:
                    await self.offload(self._write_quarantine, item.items)
                    if self.durability is not None:
                        self.durability.done(item.seq)
                if item is not None:
                    self._processed += 1
                    self._progress.unpark_all()

    def _writer_failed(self, reason: str) -> None:
        """Rows the writer held are in no file the sink tracks: retire nothing more this run
        (the sink already counts the rows of a file it aborted; this covers the rest)."""
        if self.durability is not None:
            self.durability.hold(reason)

    async def _heavy(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Decoding, encoding Parquet, committing files: off the loop, and at most one such
        job per core for the whole process (capture.memory), so that all stripes committing
        at a rotation boundary do not hold all their row groups' encoders at once."""
        async with self.decode_limiter:
            return await self.offload(fn, *args)

    def _written(self, msg_type: str, outcome: _WriteOutcome) -> None:
        stats = self.stats
        if msg_type not in self._unknown_types and lookup_message(msg_type) is None:
            self._note_unknown_type(msg_type)
        stats.rows_written += outcome.rows
        stats.rows_by_type[msg_type] = stats.rows_by_type.get(msg_type, 0) + outcome.rows
        stats.quarantined += outcome.rejected
        if outcome.rejected:
            self.log.warning(
                "quarantined bytes",
                msg_type=msg_type,
                frames=outcome.rejected,
                reason="data frame body is not a JSON object",
            )
        stats.drift_rows += outcome.slow_rows
        if outcome.number_mismatches:
            if not stats.type_number_mismatches:  # numbers are hints (PROTOCOL.md §4.1): note once
                expected = lookup_message(msg_type)
                self.log.warning(
                    "frame type numbers differ from the dictionary's; dispatching on mTyp",
                    msg_type=msg_type,
                    expected=expected.number if expected else None,
                )
            stats.type_number_mismatches += outcome.number_mismatches
        if outcome.unknown_fields:
            seen = self._unknown_fields.setdefault(msg_type, set())
            new = outcome.unknown_fields - seen
            if new and len(seen) < _DRIFT_FIELDS_MAX:  # once per field per type: drift is news
                seen |= new
                self.log.warning(
                    "schema drift: fields not in the dictionary kept in _extra",
                    msg_type=msg_type,
                    fields=sorted(new)[:_DRIFT_FIELDS_MAX],
                    complete=len(seen) < _DRIFT_FIELDS_MAX,  # false: later new fields unlisted
                )
        latest = outcome.latest_sent_ns
        if latest is not None and latest > self.highwater.get(msg_type, 0):
            self.highwater[msg_type] = latest
        self._committed(outcome.committed)

    def _note_unknown_type(self, msg_type: str) -> None:
        """Log a message type the data dictionary does not know, once per stripe, with what to
        do about it; a server naming ever new types fills neither the log nor memory."""
        if len(self._unknown_types) > UNKNOWN_TYPES_LOGGED:
            return
        self._unknown_types.add(msg_type)
        if len(self._unknown_types) > UNKNOWN_TYPES_LOGGED:
            self.log.warning(
                "more message types not in the data dictionary; not logging them any more",
                logged=UNKNOWN_TYPES_LOGGED,
            )
            return
        self.log.warning(
            "message type not in the data dictionary: its rows go to a generic table",
            msg_type=msg_type,
            hint=(
                "nothing is lost: the table holds the header columns and the message as JSON "
                "(column `message`); a newer data dictionary (tools/gen_schemas.py) gives it "
                "typed columns. A misspelled or retired type name on the server's side also "
                "shows up here"
            ),
        )

    def _committed(self, files: list[CommittedFile]) -> None:
        for f in files:
            self.stats.files_committed += 1
            self.log.info("committed", path=str(f.path), rows=f.rows, reason=f.reason)
            if self.on_commit is not None:
                self.on_commit(f)

    def _decode_and_write(
        self, dec: BatchDecoder, sink: PartitionSink, pb: PendingBatch
    ) -> _WriteOutcome:
        """Runs in a worker thread: bulk decode, split by partition date, write; noted in the
        crash guard meanwhile (capture.crashguard), so that a crash here is not repeated."""
        guard = self._guard
        if guard is None:
            return self._decode_and_write_now(dec, sink, pb)
        guard.begin(pb.msg_type, pb.seq[0], pb.seq[-1])
        try:
            return self._decode_and_write_now(dec, sink, pb)
        finally:
            guard.end()

    def _decode_and_write_now(
        self, dec: BatchDecoder, sink: PartitionSink, pb: PendingBatch
    ) -> _WriteOutcome:
        poison_point(pb.bodies)
        try:
            result = self._decode(dec, pb)
        except Exception as exc:  # a bug in the decoder: contained, body by body
            self.log.error(
                "bug while decoding a batch; decoding its frames one by one",
                msg_type=pb.msg_type,
                frames=len(pb.bodies),
                exc_info=exc,
            )
            result = self._decode_each(dec, pb)
        kept: list[Quarantined] = []
        for index, body, reason in result.rejected:
            key = f"seq/{pb.seq[index]}"
            if key in self._quarantined_before:
                continue  # a replay: an earlier run kept (and counted) it
            seq = pb.seq[index]
            kept.append(Quarantined(pb.recv_ns[index], pb.session, reason, body, seq=seq, key=key))
        self._write_quarantine(kept)
        rejected = len(kept)
        batch = result.batch
        crash_point("worker.decoded")
        committed: list[CommittedFile] = []
        latest: int | None = None
        if batch.num_rows:
            committed.extend(sink.write(pb.msg_type, batch))  # splits at local midnight
            latest = _max_ns(batch.column("h_sTim"))
        return _WriteOutcome(
            committed=committed,
            number_mismatches=_number_mismatches(pb.msg_type, pb.type_numbers),
            rows=batch.num_rows,
            rejected=rejected,
            slow_rows=result.drift.slow_path_rows,
            unknown_fields=result.drift.unknown_fields,
            latest_sent_ns=latest,
        )

    def _decode(self, dec: BatchDecoder, pb: PendingBatch, rows: list[int] | None = None) -> Any:
        pick = (lambda xs: xs) if rows is None else (lambda xs: [xs[i] for i in rows])
        return dec.decode(
            pick(pb.bodies),
            type_numbers=pick(pb.type_numbers),
            recv_ns=pick(pb.recv_ns),
            snapshot=pick(pb.snapshot),
            seq=pick(pb.seq),
            stripe=self.stripe,
            session=pb.session,
        )

    def _decode_each(self, dec: BatchDecoder, pb: PendingBatch) -> DecodeResult:
        """The batch decoded one body at a time: a body the decoder fails on is quarantined
        with the error, the others are kept (in order)."""
        batches: list[pa.RecordBatch] = []
        rejected: list[tuple[int, bytes, str]] = []
        drift = DriftReport()
        for i, body in enumerate(pb.bodies):
            try:
                one = self._decode(dec, pb, [i])
            except Exception as exc:  # noqa: BLE001 - the body the bug is about
                rejected.append((i, body, f"internal error: {type(exc).__name__}: {exc}"[:500]))
                continue
            batches.append(one.batch)
            drift = drift.merged(one.drift)
            rejected += [(i, b, reason) for _, b, reason in one.rejected]
        table = pa.Table.from_batches(batches, schema=dec.schema).combine_chunks()
        batch = (
            table.to_batches()[0]
            if table.num_rows
            else pa.RecordBatch.from_pylist([], schema=dec.schema)
        )
        return DecodeResult(batch=batch, drift=drift, rejected=rejected)

    def _write_quarantine(self, items: list[Quarantined]) -> None:
        quarantine.append_many(self.cfg.output.root, self.stripe, self.cfg.output.timezone, items)


# The smallest byte bound of a pending batch (a tiny budget with many stripes): below this the
# per-batch costs (a thread hand-off, a JSON reader call) dominate.
BATCH_MIN_BYTES = 256 * 1024


def in_flight_limit(cfg: Config) -> int:
    """A quarter of ``output.memory_budget_mb``: raw frames handed to the writers and not yet
    decoded, all stripes together (capture.memory: why a quarter)."""
    return cfg.output.memory_budget_mb * 2**20 // 4


_HAND_OVER_ITEMS = 4
"""Quarantine batches (of 1,000 frames) queued inside one message before the reader hands them
to the writer without waiting for the message's end."""

_DRIFT_FIELDS_MAX = 256
"""Unknown field names remembered (and logged) per type: a server inventing a new name in every
message must not grow memory or the log without bound (the values are in _extra anyway)."""

_VALID_TYPES_MAX = 4096
"""Type names a reader remembers as checked (then it starts over: a cache, not a bound)."""


def _as_bytes(message: bytes | str) -> bytes:
    return message.encode("utf-8", "surrogateescape") if isinstance(message, str) else message


def _origin(exc: BaseException) -> str:
    """Where an exception was raised (file:line of the innermost frame), to log a traceback
    once per place rather than once per frame."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


def _slow_mtyp(body: bytes) -> str | None:
    """``header.mTyp`` by parsing the body (its size and nesting are bounded already)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    header = obj.get("header") if isinstance(obj, dict) else None
    mtyp = header.get("mTyp") if isinstance(header, dict) else None
    return mtyp if isinstance(mtyp, str) and mtyp else None


def _stripe_number(stripe: str) -> int:
    return sum(ord(c) for c in stripe) % 1000


def _number_mismatches(msg_type: str, numbers: list[int]) -> int:
    """Frames whose 5-digit header number is not the dictionary's number for their ``mTyp``
    (numbers changed over time, §9.3; 0 is what clients send and is not checked)."""
    mdef = lookup_message(msg_type)
    if mdef is None:
        return 0
    expected = mdef.number
    unchecked = numbers.count(0) if expected else 0  # list.count: C speed, per batch
    return len(numbers) - numbers.count(expected) - unchecked


def _max_ns(column: pa.ChunkedArray | pa.Array) -> int | None:
    """Latest header send time in the batch, as ns since the epoch (PROTOCOL.md highwaterTs).

    Exact: the column holds microseconds, multiplied here in Python (an Arrow cast to ns would
    fail on a time beyond 2262, which a server could send); such times are not a highwater."""
    micros = pc.cast(column, pa.int64())
    value = pc.max(pc.filter(micros, pc.less_equal(micros, _MAX_NS_MICROS))).as_py()
    return None if value is None else int(value) * 1000


_MAX_NS_MICROS: Final = (2**63 - 1) // 1000


def _journal_span(directory: Path, segments: list[Path]) -> _JournalSpan:
    """Where a journal starts and ends, reading only its first segment holding a message or
    event and its last segment holding a message: the oldest time, the newest message's
    receive time and, per type, the latest header send time in that last segment (the
    resume point: what the server need not send again)."""
    span = _JournalSpan()
    for path in segments:
        for _, rec in journal_mod.read_records(directory, only=[path]):
            if isinstance(rec, journal_mod.MessageRecord):
                span.first_ns = rec.recv_ns
            elif isinstance(rec, journal_mod.EventRecord):
                span.first_ns = rec.time_ns
            else:
                continue
            break
        if span.first_ns is not None:
            break
    for path in reversed(segments):
        decoder = FrameDecoder()
        for _, rec in journal_mod.read_records(directory, only=[path]):
            if isinstance(rec, journal_mod.SessionRecord):
                if not rec.resumed:
                    decoder = FrameDecoder()
                continue
            if not isinstance(rec, journal_mod.MessageRecord):
                continue
            span.last_ns = rec.recv_ns
            for event in decoder.feed_typed(rec.payload):
                if isinstance(event, Garbage):
                    continue
                mtyp, _, body = event
                if not mtyp or mtyp in protocol.CONTROL_TYPES:
                    continue
                sent = _header_sent_ns(body)
                if sent is not None and sent > span.sent_ns.get(mtyp, 0):
                    span.sent_ns[mtyp] = sent
        if span.last_ns is not None:
            break
    return span


def _header_sent_ns(body: bytes) -> int | None:
    """The header's ``sTim`` without parsing the JSON (bodies are compact, header first)."""
    at = body.find(b'"sTim":"', 0, 512)
    if at < 0:
        return None
    start = at + 8
    end = body.find(b'"', start, start + 40)
    if end < 0:
        return None
    try:
        return protocol.header_time_ns(body[start:end].decode("ascii"))
    except UnicodeDecodeError:
        return None


def _event_from(fields: Mapping[str, Any]) -> capture_events.Event | None:
    """The event a journal EVENT record holds (None: not one this version understands)."""
    if not (isinstance(fields.get("time_ns"), int) and isinstance(fields.get("seq"), int)):
        return None
    try:
        return capture_events.Event(**fields)
    except TypeError:
        return None


def _low_seq(item: _WriterItem) -> int:
    """The lowest seq an item for the writer holds the journal at (capture.durability)."""
    if isinstance(item, PendingBatch):
        return item.seq[0]
    if isinstance(item, EventBatch):
        return min(e.seq for e in item.events)
    return item.seq


def _take(records: Iterator[tuple[Path, journal_mod.Record]], n: int) -> list[journal_mod.Record]:
    """The next ``n`` journal records (blocking reads: called in a thread)."""
    return [rec for _, rec in islice(records, n)]
