"""One stripe: WebSocket -> frames -> per-type batches -> decoder -> Parquet sink.

This module holds the reader, the writer and their hand-off.  Two tasks per stripe, joined by a
bounded channel:

* the **reader** (on the event loop) receives WebSocket messages, splits frames, handles control
  messages and appends data frame bodies *unparsed* to per-type pending batches.  Its per-frame
  work is a slice and a ``find``; it never waits on Parquet.
* the **writer** takes whole batches off the channel and, in a worker thread (pyarrow releases the
  GIL), decodes them in bulk into Arrow and writes them to the sink; it also commits files on
  rotation boundaries.

The hand-off bounds memory: when the writer falls behind by ``queue_batches`` batches, or the
process's in-flight budget is spent, the reader waits, which the server sees as a slow consumer
(PROTOCOL.md §7.3).  The time the reader spent waiting is counted and reported.  The words for
where an item is on its way (pending, queued, in flight, done) are capture.batching's.

The connection is the restartable part: transport and authentication errors end a *session*
and the reader reconnects with backoff (capture.reconnect).  The writer, the sink and the
pending batches outlive sessions, so a reconnect never loses or re-orders what was already
received.

What the two tasks use lives in modules of its own: capture.link (a connection as the reader
sees it, and the MLink session's decisions carried out), capture.quarantine (what the reader
sets aside), capture.eventlog (capture events), capture.batchwrite (one batch decoded and
written), capture.driftlog (data the dictionary does not describe), capture.durability (when
journal segments may go: the watermark, fsync rounds, the last round), capture.stripe_recovery
(start-up recovery, the one entry point, and the replay beside live capture) and
capture.journal_replay (the journal fed back through the reader: :meth:`replaying`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from capture import bounds, protocol, quarantine
from capture import events as capture_events
from capture import journal as journal_mod
from capture.auth import CredentialProvider
from capture.batching import (
    EventBatch,
    PendingBatch,
    QuarantineBatch,
    WriterItem,
    batch_max_bytes,
    low_seq,
)
from capture.batching import in_flight_limit as in_flight_limit  # (app.py imports it from here)
from capture.batchwrite import BatchWriter, WriteOutcome
from capture.clock import WallClock, trio_deadline_for
from capture.config import Config
from capture.crashguard import Note, Suspects
from capture.decode import BatchDecoder
from capture.driftlog import DriftLog
from capture.durability import DurabilityKeeper
from capture.errors import CapturePaused, StaleConnection
from capture.eventlog import EventLog
from capture.frames import FrameDecoder, Garbage
from capture.journal_replay import EndOfStream, Feed
from capture.lake.hold import JournalHold
from capture.link import Link, LinkActions
from capture.logs import get_logger, redact_url
from capture.memory import InFlightBudget, decode_slots
from capture.reconnect import Reconnector
from capture.resume import ResumePoints
from capture.rotation import next_boundary_ns
from capture.session import MLinkSession
from capture.sink import CommittedFile, PartitionSink, SinkSettings
from capture.states import StripeState
from capture.stats import StripeStats
from capture.stripe_recovery import RecoveryPlan, recover
from capture.transport import Connection, StreamFactory, connect


def new_session_id(now_ns: int) -> str:
    """Sortable and unique: UTC start time + 6 random hex digits."""
    t = dt.datetime.fromtimestamp(now_ns / 1e9, tz=dt.UTC)
    return f"{t:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


Offload = Callable[..., Awaitable[Any]]
Send = trio.MemorySendChannel[WriterItem]  # the reader's end of the hand-off


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
        self._in_flight_bytes = 0  # this stripe's share of `in_flight` (capture.batching)
        self._writer_gone = False
        self.stripe = stripe
        self.clock = clock
        self.credentials = credentials
        self.run_id = run_id
        self.rng = rng or random.Random()
        self.on_commit = on_commit
        self.stats = StripeStats(stripe)
        self.log = get_logger(stripe=stripe)
        self._batch_writer = BatchWriter(stripe, cfg.output.root, cfg.output.timezone, self.log)
        self.driftlog = DriftLog(self.log, self.stats)  # data the dictionary does not describe
        self._quarantiner = quarantine.Collector(self.log, self.stats)  # what the reader sets aside
        self._stop_scope = trio.CancelScope()
        self._stopping = False
        self._rotate_now = trio.Event()
        self._writer_waiting: trio.CancelScope | None = None  # the writer waits for an item
        self._pending: dict[str, PendingBatch] = {}
        # A replay (``_process`` with ``committed``): the types it has handed the writer
        # frames of since its last commit, and those of them it then skipped a committed
        # frame of (the next frame of such a type starts a new file: :meth:`_cut`).
        self._replayed: set[str] = set()
        self._skipped: set[str] = set()
        self.eventlog = EventLog(self.log)  # capture events, journaled and for the table
        self._guard: Note | None = None  # what the writer is decoding (crashguard)
        self._suspects: Suspects | None = None  # what earlier runs died decoding
        self._gap_from_ns: int | None = None  # last frame before a disconnect, until the next
        self.journal: journal_mod.JournalWriter | None = None
        # Owns "a journal segment goes only once its frames are committed" (capture.durability).
        self.durability: DurabilityKeeper | None = None
        # Queued items (capture.batching): taken out of the pending batches, in the order they
        # were taken, until the writer's channel accepts them; only _drain_outbox() sends, so
        # each type stays in receive order.
        self._outbox: deque[WriterItem] = deque()
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
        # The URL as logged and stored: a key in it (?apikey=, user:key@) is a secret.
        self._url = redact_url(cfg.source.url)
        self._valid_types: set[str] = set()  # data type names checked by bounds.check_type_name
        self.highwater = ResumePoints()  # msg type -> the send time to resume after (ns)
        self._actions = LinkActions(  # carries out what the MLink session decides
            stats=self.stats,
            log=self.log,
            event=self.event,
            highwater=self.highwater,
            clock=clock,
            logon_field=lambda: self.credentials.logon_field,
        )
        out = cfg.output
        n_stripes = max(1, len(cfg.source.stripes))
        self._batch_max_bytes = batch_max_bytes(cfg)
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
        self._reconnector = Reconnector(  # the connect loop and its waits
            cfg.supervision,
            rng=self.rng,
            stats=self.stats,
            log=self.log,
            credentials=credentials,
            paused=self._paused,
        )

    def _paused(self) -> str | None:
        """Why the lake wants capture paused now (its local disk budget), or None."""
        return None if self.journal_hold is None else self.journal_hold.paused()

    # -- control from the app ---------------------------------------------------------------

    @property
    def batching_bytes(self) -> int:
        """Frame bytes received and waiting for their batch to fill (or its flush interval)."""
        return sum(pb.nbytes for pb in self._pending.values())

    @property
    def pending(self) -> Mapping[str, PendingBatch]:
        """The pending batches, per type (for the journal's watermark: capture.durability)."""
        return self._pending

    @property
    def next_seq(self) -> int:
        """The sequence number the reader gives the next data frame."""
        return self._seq

    @property
    def journal_pending_bytes(self) -> int:
        """Received messages the journal holds in memory until its thread writes them out."""
        return self.journal.pending_bytes if self.journal is not None else 0

    def request_stop(self) -> None:
        self._stopping = True
        self._stop_scope.cancel()

    def request_rotate(self) -> None:
        """Commit every open file now (SIGHUP), also when nothing arrives to wake the writer."""
        self._rotate_now.set()
        if self._writer_waiting is not None:
            self._writer_waiting.cancel()

    def retry_auth(self) -> None:
        """The operator fixed the credentials (SIGHUP): see capture.reconnect."""
        self._reconnector.retry_auth()

    def _set_log(self, log: Any) -> None:
        self.log = self.eventlog.log = self._batch_writer.log = log
        self.driftlog.log = self._actions.log = self._quarantiner.log = log
        self._reconnector.log = log

    # -- lifecycle ----------------------------------------------------------------------------

    def _hand_off(self) -> tuple[Send, trio.MemoryReceiveChannel[WriterItem], PartitionSink]:
        """The channel from the reader to the writer, and the writer's sink."""
        send, recv = trio.open_memory_channel[WriterItem](self.cfg.pipeline.queue_batches)
        self._writer_gone = False
        hold = self.journal_hold
        sink = self.sink = PartitionSink(
            self._sink_settings,
            stripe=self.stripe,
            session=self.run_id,
            now_ns=self.clock.now_ns,
            on_commit=hold.file_committed if hold is not None else None,
        )
        return send, recv, sink

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, recv, sink = self._hand_off()
        recovery = await recover(self, sink)  # journal, durability, resume point (or None)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, recv, sink)
                async with send:
                    task_status.started()
                    with self._stop_scope:
                        async with trio.open_nursery() as inner:
                            inner.start_soon(self._flusher, send)
                            if self.durability is not None:  # fsync and retirement rounds
                                inner.start_soon(self.durability.run, self.offload, trio.sleep)
                            if recovery is not None:  # beside live capture, not before it
                                inner.start_soon(recovery.beside)
                            await self._connect_loop(send)
                    # Stopping: hand over what is pending; closing `send` lets the writer drain.
                    self.stats.state = StripeState.STOPPING
                    self.event(
                        "disconnect",
                        detail="daemon stopping",
                        gap_start_ns=self.stats.last_frame_ns,
                    )
                    with trio.CancelScope(shield=True):
                        await self._flush_pending(send, older_than_ns=None)
        finally:
            # (The writer gave back the in-flight bytes of batches it never took when it ended.)
            if self.durability is not None:
                # The writer has closed the sink; retire only what it committed, then close.
                with trio.CancelScope(shield=True):
                    await self.durability.finish(self.offload)
                    self.journal = self.eventlog.journal = None
                    self.durability = None
            if self._guard is not None:
                self._guard.close()
                self._guard = None
        self.stats.state = StripeState.STOPPED

    async def _connect_loop(self, send: Send) -> None:
        def disconnected(reason: str) -> None:
            if self.stats.last_frame_ns is not None:
                self._gap_from_ns = self._gap_from_ns or self.stats.last_frame_ns
            self.event("disconnect", detail=reason, gap_start_ns=self._gap_from_ns)

        await self._reconnector.run(
            partial(self._session, send),
            disconnected,
            on_pause=partial(self._commit_for_pause, send),
        )

    # -- one connection -------------------------------------------------------------------------

    async def _session(self, send: Send) -> None:
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
        # next_seq: the first data frame of this connection gets it (the crash tests read it).
        self.log.info("connecting", url=self._url, session=session, next_seq=self._seq)
        async with connect(
            cfg.source.url,
            bearer,
            connect_timeout=cfg.supervision.connect_timeout,
            client=cfg.source.websocket,
            stream_factory=self.stream_factory,
        ) as conn:
            self.stats.session = session
            self.stats.connected_since_ns = self.clock.now_ns()
            self.event("connect", result="ok", detail=self._url)
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

    async def _commit_for_pause(self, send: Send) -> None:
        """Capture pauses for the lake's disk budget: commit what was received (and the
        disconnect event) now rather than at the interval's end, so that the lake can take
        those files and the journal segments they hold, and make room, instead of holding
        them while nothing arrives."""
        if self._writer_gone:
            return  # the stripe is failing: recovery replays what the writer did not commit
        try:
            await self._flush_pending(send, older_than_ns=None)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # (the writer ended meanwhile: as above)
        await self._writer_caught_up()
        self.request_rotate()

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
        send: Send,
        api_key: str,
    ) -> None:
        sup = self.cfg.supervision
        stats = self.stats
        now_ns = self.clock.now_ns
        sess = Link(
            session, MLinkSession(requests, logon_deadline=trio.current_time() + sup.logon_timeout)
        )
        # Only data and heartbeats show that the stream is alive: a server that sends nothing
        # else (or garbage, or admin messages) for stale_after is stale, and the stripe is
        # "connecting" until the first of them arrives (README, Health).
        last_alive = trio.current_time()
        journal = self.journal
        eventlog = self.eventlog
        mask = sess.mask
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
                        await self._actions.apply(events, sess, conn, api_key, self.clock.now_ns())
                        continue
                    raise StaleConnection(f"no data or heartbeat for {sup.stale_after:g} s")
                recv_ns = now_ns()  # one socket read: its messages were received together
                if self._gap_from_ns is not None:  # first frame after a disconnect
                    self.event("gap", gap_start_ns=self._gap_from_ns, gap_end_ns=recv_ns)
                    self._gap_from_ns = None
                stats.last_frame_ns = recv_ns
                alive_before = stats.last_alive_ns
                for message in messages:
                    stats.bytes += len(message)
                    if mask is not None:  # a secret the server echoes is kept nowhere
                        message = mask.message(message, continues=sess.decoder.buffered > 0)
                    first_seq = self._seq
                    eventlog.begin_message()
                    await self._process(sess, message, recv_ns, conn, api_key, send=send)
                    if journal is not None:  # buffered; fsynced by its own thread
                        journal.append(recv_ns, first_seq, self._seq - first_seq, message)
                    eventlog.end_message()
                    if self._outbox:  # after the journal: waiting for the writers delays no fsync
                        await self._drain_outbox(send)
                if sess.ended is not None:
                    raise sess.ended
                if (why := self._paused()) is not None:
                    raise CapturePaused(why)
                if stats.last_alive_ns != alive_before:
                    last_alive = trio.current_time()
                    if (
                        sess.protocol.requested
                        and stats.state != StripeState.STREAMING
                        and stats.session is not None
                    ):
                        stats.state = StripeState.STREAMING
        finally:
            eventlog.end_message()
            # Bytes still waiting for the rest of a frame can never complete now: keep them.
            with trio.CancelScope(shield=True):
                await self._end_of_stream(sess, send)

    async def _process(
        self,
        sess: Link,
        message: bytes | str,
        recv_ns: int,
        conn: Connection | None,
        api_key: str | None = None,
        *,
        live: bool = True,
        committed: Callable[[str, int], bool] | None = None,
        send: Send | None = None,
    ) -> None:
        """One received WebSocket message: frames -> control handling / pending batches.

        Full batches and quarantined bytes are queued (:meth:`_enqueue`); the caller hands them
        to the writer with :meth:`_drain_outbox`.  The same code runs live (``conn`` given) and
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
        in_snapshot_of = sess.protocol.in_snapshot
        data_frames = snapshot_rows = alive = 0
        try:
            mask = sess.mask
            try:
                continues = sess.decoder.buffered > 0
                events = sess.decoder.feed_typed(message)
                if mask is not None and mask.suspect(
                    message, continues=continues, unfinished=sess.decoder.buffered > 0
                ):
                    events = mask.frames(events)  # a secret a message boundary cut
            except Exception as exc:  # noqa: BLE001 - a decoder bug: keep the message, start afresh
                sess.decoder = FrameDecoder()
                data = _as_bytes(message)
                self._contain(exc, recv_ns, session, data if mask is None else mask.body(data))
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
                            await self._actions.apply(decided, sess, conn, api_key, recv_ns)
                        continue
                    if mtyp not in valid_types:  # where a type name enters: never the writer's
                        bounds.check_type_name(mtyp, limits)
                        if len(valid_types) >= _VALID_TYPES_MAX:
                            valid_types.clear()
                        valid_types.add(mtyp)
                except protocol.RemoteProtocolError as exc:
                    self._quarantine(recv_ns, session, str(exc), body)
                    if send is not None and len(self._outbox) >= _HAND_OVER_ITEMS:
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
                        if mtyp in self._replayed:
                            self._skipped.add(mtyp)
                        continue  # already in a committed file
                    if mtyp in self._skipped:  # frames on both sides of a committed file
                        await self._cut(send)
                    self._replayed.add(mtyp)
                    if self._suspects:  # an earlier run died decoding this (crashguard)
                        verdict = self._suspects.verdict(mtyp, seq)
                        if verdict == "poison":
                            item = self._quarantiner.crashed_decoder(recv_ns, session, seq, body)
                            if item is not None:
                                self._enqueue(QuarantineBatch([item]))
                            continue
                        if verdict == "suspect" and mtyp in pending:
                            self._enqueue(pending.pop(mtyp))
                        alone = verdict == "suspect"
                pb = pending.get(mtyp)
                if pb is None or pb.session != session:
                    if pb is not None:
                        self._enqueue(pending.pop(mtyp))
                    pb = pending[mtyp] = PendingBatch(mtyp, session, first_ns=recv_ns)
                in_snapshot = in_snapshot_of(mtyp)
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
            self._enqueue_quarantined()

    async def _cut(self, send: Send | None) -> None:
        """A replay met a frame a committed file holds between frames of the same type it
        replays: commit what it wrote so far before it goes on, so that each file holds one
        contiguous run of its type, as recovery's range lookup (capture.recovery), ``verify``
        and the lake assume.  (A run killed after its live sink committed files, before its
        own replay did, leaves the next replay frames on both sides of those files.)"""
        assert send is not None and self.sink is not None, "a replay has its own writer"
        for msg_type in list(self._pending):
            self._enqueue(self._pending.pop(msg_type))
        await self._drain_outbox(send)
        await self._writer_caught_up()  # those frames are in the sink's open files now
        self._committed(await self._heavy(self.sink.rotate_all, "replay"))
        self._replayed.clear()
        self._skipped.clear()

    async def _hand_over(self, send: Send) -> None:
        """Hand what is queued to the writer in the middle of a message: a message of
        millions of bad frames must not hold them all in memory.  Shielded, so that a stop
        cannot leave the rest of the message unhandled (and unjournaled); a writer that is
        gone leaves the items queued, as at the end of a stream."""
        with trio.CancelScope(shield=True):
            try:
                await self._drain_outbox(send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _contain(self, exc: Exception, recv_ns: int, session: str, data: bytes) -> None:
        """A bug met while handling one frame (or message): its bytes are quarantined, the
        traceback logged once per place (quarantine.Collector.bug); go on with the next."""
        if self._quarantiner.bug(exc, recv_ns, session, self._seq, data):
            self._enqueue_quarantined()

    async def _end_of_stream(self, sess: Link, send: Send) -> None:
        for leftover in sess.decoder.flush():
            self.stats.garbage_bytes += len(leftover.data)
            data = leftover.data if sess.mask is None else sess.mask.body(leftover.data)
            self._quarantine(self.clock.now_ns(), sess.id, leftover.reason, data)
        self._enqueue_quarantined()
        try:
            await self._drain_outbox(send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.log.error("writer gone; could not hand over what was received last")

    # -- hand-over to the writer ------------------------------------------------------------------

    async def _writer_caught_up(self) -> None:
        """Wait until the writer has processed every item handed over so far."""
        target = self._handed
        while self._processed < target:
            await self._progress.park()

    def _enqueue(self, item: WriterItem) -> None:
        """Queue an item for the writer (no waiting: see :meth:`_drain_outbox`).  From now on
        it is with the writer for the journal's commit watermark (capture.batching)."""
        if self.durability is not None:
            self.durability.taken(low_seq(item))
        self._outbox.append(item)

    async def _drain_outbox(self, send: Send) -> None:
        """Hand the queued items to the writer, oldest first.

        The writers are behind when this stripe's channel is full or the process's in-flight
        budget is spent: these are the backpressure points, and the time waited is counted.
        Cancellation leaves the item queued (the stop path drains it, shielded).  One task
        sends at a time, so items reach the channel in the order they were queued."""
        async with self._drain_lock:
            outbox = self._outbox
            budget = self.in_flight
            while outbox:
                item = outbox[0]
                n = item.nbytes if isinstance(item, PendingBatch) else 0
                t0 = trio.current_time()
                waited = bool(n) and await budget.admit(n, self._is_writer_gone)
                budget.take(n)
                self._in_flight_bytes += n
                try:
                    try:
                        send.send_nowait(item)
                    except trio.WouldBlock:
                        waited = True
                        await send.send(item)
                except BaseException:
                    budget.release(n)
                    self._in_flight_bytes -= n
                    raise
                outbox.popleft()
                self._handed += 1
                if waited:
                    self.stats.reader_wait_s += trio.current_time() - t0

    def _is_writer_gone(self) -> bool:
        return self._writer_gone

    def _quarantine(self, recv_ns: int, session: str, reason: str, data: bytes) -> None:
        """Set bytes aside (handed to the writer with the rest of the message's, at its end)."""
        if self._quarantiner.add(recv_ns, session, self._seq, reason, data):
            self._enqueue_quarantined()  # a message of many bad frames: batches of 1,000

    def _enqueue_quarantined(self) -> None:
        if self._quarantiner:  # (once per message: no list made when there is nothing)
            self._enqueue(QuarantineBatch(self._quarantiner.take()))

    def event(self, kind: str, **fields: Any) -> None:
        """Record a capture event now (capture.eventlog)."""
        self.eventlog.add(
            kind, time_ns=self.clock.now_ns(), session=self.stats.session, seq=self._seq, **fields
        )

    async def _flush_pending(
        self, send: Send, older_than_ns: int | None
    ) -> None:
        if events := self.eventlog.take():
            self._enqueue(EventBatch(events))  # (journaled already: capture.eventlog)
        for msg_type, pb in list(self._pending.items()):
            if older_than_ns is None or pb.first_ns <= older_than_ns:
                del self._pending[msg_type]
                self._enqueue(pb)
        await self._drain_outbox(send)

    async def _flusher(self, send: Send) -> None:
        """Partial batches wait at most ``flush_interval`` before they are decoded."""
        interval = self.cfg.pipeline.flush_interval
        while True:
            await trio.sleep(interval)
            await self._flush_pending(send, self.clock.now_ns() - int(interval * 1e9))

    # -- recovery and replay (capture.stripe_recovery, capture.journal_replay) ------------------

    def take_over(self, plan: RecoveryPlan, keeper: DurabilityKeeper) -> None:
        """Go live from where the last run stopped (capture.stripe_recovery.recover): its
        journal, kept by ``keeper``; the first sequence number the replay does not own; the
        resume point and the gap's start."""
        self.journal = self.eventlog.journal = plan.journal
        self._guard = plan.guard.note("live")
        self.durability = keeper
        self._seq = max(self._seq, plan.next_seq)
        self.highwater.merge(plan.highwater)
        self._gap_from_ns = plan.gap_from_ns

    def replayer(self, plan: RecoveryPlan, guard: Note) -> StripeWorker:
        """A worker of this stripe, with a sink and writer of its own, to replay the last run's
        journal beside live capture: it skips what ``plan`` says is stored, knows what earlier
        runs died decoding and decodes under ``guard``."""
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
        replayer._quarantiner.before = plan.quarantined_before
        replayer.eventlog.before = plan.events_before
        replayer._suspects = plan.suspects
        replayer._guard = guard
        replayer._set_log(self.log.bind(recovery=True))
        return replayer

    @asynccontextmanager
    async def replaying(self) -> AsyncIterator[tuple[Feed, EndOfStream]]:
        """The reader without a connection and the writer, for a journal replay
        (capture.journal_replay): yields the reader's ``feed`` for one journaled message and
        its ``end_of_stream``; on exit everything pending is written and every file committed."""
        send, recv, sink = self._hand_off()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, recv, sink)
            async with send:
                yield partial(self._feed, send=send), partial(self._end_of_stream, send=send)
                await self._flush_pending(send, older_than_ns=None)

    async def _feed(
        self,
        link: Link,
        rec: journal_mod.MessageRecord,
        already: Callable[[str, int], bool],
        *,
        send: Send,
    ) -> None:
        """One journaled message through the reader's path: the rows come out as live."""
        self._seq = rec.first_seq
        await self._process(
            link, rec.payload, rec.recv_ns, None, live=False, committed=already, send=send
        )
        if self._outbox:
            await self._drain_outbox(send)

    # -- writer ---------------------------------------------------------------------------------

    async def _writer(
        self, recv: trio.MemoryReceiveChannel[WriterItem], sink: PartitionSink
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
            self.in_flight.release(self._in_flight_bytes)
            self._in_flight_bytes = 0
            self.in_flight.wake()  # a reader waiting for this writer's progress gives up
            with trio.CancelScope(shield=True):
                try:
                    self._committed(await self._heavy(sink.close))
                except OSError as exc:
                    self._writer_failed(f"closing the sink failed: {exc}")
                    self.log.error("closing the sink failed", error=str(exc))

    async def _write_loop(
        self, recv: trio.MemoryReceiveChannel[WriterItem], sink: PartitionSink
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
                item: WriterItem | None = None
                with trio.move_on_at(trio_deadline_for(self.clock, wake)):
                    while self._rotate_now.is_set():  # (again if asked while it rotated)
                        self._rotate_now = trio.Event()
                        try:
                            self._committed(await self._heavy(sink.rotate_all))
                        except trio.Cancelled:  # the wake-up came first (waiting for a slot)
                            self._rotate_now.set()  # still asked for: the next round does it
                            raise
                    # No checkpoint between the test above and here: a request from now on
                    # cancels this wait.
                    with trio.CancelScope() as waiting:
                        self._writer_waiting = waiting
                        try:
                            item = await recv.receive()
                        except trio.EndOfChannel:
                            return
                        finally:
                            self._writer_waiting = None
                    if waiting.cancelled_caught:
                        continue  # a rotation was asked for: the top of the loop does it
                if item is None:
                    self._committed(await self._heavy(sink.rotate_due))
                elif isinstance(item, PendingBatch):
                    dec = decoders.get(item.msg_type)
                    if dec is None:
                        if len(decoders) >= max_decoders:  # a type flood: forget the oldest
                            del decoders[next(iter(decoders))]
                        dec = decoders[item.msg_type] = BatchDecoder(item.msg_type)
                    outcome = await self._heavy(
                        self._batch_writer.write,
                        dec,
                        sink,
                        item,
                        self._guard,
                        self._quarantiner.before,
                    )
                    if self.durability is not None:
                        self.durability.done(item.seq[0])
                    self._in_flight_bytes -= item.nbytes
                    self.in_flight.release(item.nbytes)
                    self._written(item.msg_type, outcome)
                elif isinstance(item, EventBatch):
                    batch = capture_events.to_batch(item.events, self.stripe)
                    self._committed(await self._heavy(sink.write, capture_events.TABLE, batch))
                    if self.durability is not None:
                        self.durability.done(low_seq(item))
                else:
                    await self.offload(self._batch_writer.write_quarantine, item.items)
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

    def _written(self, msg_type: str, outcome: WriteOutcome) -> None:
        stats = self.stats
        stats.rows_written += outcome.rows
        stats.rows_by_type[msg_type] = stats.rows_by_type.get(msg_type, 0) + outcome.rows
        self.driftlog.written(msg_type, outcome)
        if outcome.latest_sent is not None:
            self.highwater.offer(msg_type, *outcome.latest_sent)
        self._committed(outcome.committed)

    def _committed(self, files: list[CommittedFile]) -> None:
        for f in files:
            self.stats.files_committed += 1
            self.log.info("committed", path=str(f.path), rows=f.rows, reason=f.reason)
            if self.on_commit is not None:
                self.on_commit(f)

_HAND_OVER_ITEMS = 4
"""Quarantine batches (of 1,000 frames) queued inside one message before the reader hands them
to the writer without waiting for the message's end."""

_VALID_TYPES_MAX = 4096
"""Type names a reader remembers as checked (then it starts over: a cache, not a bound)."""


def _as_bytes(message: bytes | str) -> bytes:
    return message.encode("utf-8", "surrogateescape") if isinstance(message, str) else message


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
