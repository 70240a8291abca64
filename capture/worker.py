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

import base64
import datetime as dt
import json
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import trio

from capture import events as capture_events
from capture import journal as journal_mod
from capture import protocol
from capture.auth import CredentialError, CredentialProvider
from capture.backoff import Backoff
from capture.batches import BatchDecoder
from capture.clock import WallClock, trio_deadline_for
from capture.config import Config
from capture.faultpoints import crash_point
from capture.frames import FrameDecoder, Garbage, encode_client_frame
from capture.lake.hold import JournalHold
from capture.logs import get_logger, redact
from capture.memory import InFlightBudget, decode_slots
from capture.recovery import CommittedIndex, scan_committed
from capture.schemas import lookup as lookup_message
from capture.sink import CommittedFile, PartitionSink, SinkSettings, partition_date
from capture.stats import StripeStats
from capture.transport import (
    AuthRejected,
    Connection,
    StaleConnection,
    StreamFactory,
    TransportError,
    connect,
)


def new_session_id(now_ns: int) -> str:
    """Sortable and unique: UTC start time + 6 random hex digits."""
    t = dt.datetime.fromtimestamp(now_ns / 1e9, tz=dt.UTC)
    return f"{t:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


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
class _Session:
    """One connection session's protocol state (live, or rebuilt when replaying a journal)."""

    id: str
    streams: dict[str, StreamState]
    by_query: dict[int, StreamState]
    by_name: dict[str, StreamState]
    snapshot_types: set[str] = field(default_factory=set)
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    requested: bool = False
    """The stream requests have been sent (on LoggedOn, or at ``logon_timeout`` without it)."""
    logged_on: bool = False
    """MLinkAdmin said LoggedOn: later logon verdicts are only logged (GoodNight still ends)."""
    ended: Exception | None = None
    """Why the connection must end (GoodNight, a refused logon, a failed send), found while
    handling a message: raised once every message received with it has been kept."""

    @classmethod
    def start(cls, session: str, streams: dict[str, StreamState]) -> _Session:
        return cls(
            session,
            streams,
            {st.request.query_id: st for st in streams.values()},
            {t.lower(): st for t, st in streams.items()},
        )


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
class Quarantined:
    """Bytes that could not be used, kept with why, for a human or a later replay."""

    recv_ns: int
    session: str
    reason: str
    data: bytes


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Rows for the capture-events table."""

    events: list[capture_events.Event]


_WriterItem = PendingBatch | Quarantined | EventBatch
Offload = Callable[..., Awaitable[Any]]


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
        self._pending: dict[str, PendingBatch] = {}
        self._events: list[capture_events.Event] = []
        self._gap_from_ns: int | None = None  # last frame before a disconnect, until the next
        self.journal: journal_mod.JournalWriter | None = None
        self._replaying = False
        self._sink_failed = False
        # Items taken out of the pending map, in the order they were taken, until the writer's
        # channel accepts them; only _drain_ready() sends, so each type stays in receive order.
        self._ready: deque[_WriterItem] = deque()
        self._drain_lock = trio.Lock()
        self._inflight: set[int] = set()  # first seq of each batch taken, until it is written
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
            # Long enough for a pending batch and the decode queue to reach the sink.
            commit_grace_s=min(max(2.0, 4 * cfg.pipeline.flush_interval), out.rotate_interval / 2),
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
        recovered: journal_mod.RecoveryReport | None = None
        if jcfg.enabled:
            jdir = jcfg.stripe_dir(self.cfg.output.root, self.stripe)
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
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, recv, sink)
                async with send:
                    task_status.started()
                    with self._stop_scope:
                        if recovered is not None:
                            await self._recover(send, recovered)
                        async with trio.open_nursery() as inner:
                            inner.start_soon(self._flusher, send)
                            if self.journal is not None:
                                inner.start_soon(self._syncer)
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
        self.stats.state = "stopped"

    async def _connect_loop(self, send: trio.MemorySendChannel[_WriterItem]) -> None:
        attempt = 0
        sup = self.cfg.supervision
        while True:
            started = trio.current_time()
            self.stats.state = "connecting"
            try:
                await self._session(send)
                reason = "server ended the session"
                delay = self._backoff.delay(attempt, self.rng)
                self.stats.state = "backoff"
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
            self.stats.restarts += 1
            self.log.warning("disconnected; reconnecting", reason=reason, delay=round(delay, 3))
            await trio.sleep(delay)

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
        streams = self._stream_states()
        self.stats.connects += 1
        self.log.info("connecting", url=cfg.source.url, session=session)
        async with connect(
            cfg.source.url,
            bearer,
            connect_timeout=cfg.supervision.connect_timeout,
            client=cfg.source.websocket,
            stream_factory=self.stream_factory,
        ) as conn:
            self.stats.session = session
            self.stats.connected_since_ns = self.clock.now_ns()
            self._event("connect", result="ok", detail=cfg.source.url)
            if self.journal is not None:
                self.journal.begin_session(
                    session,
                    self.stripe,
                    self.clock.now_ns(),
                    {
                        "url": cfg.source.url,
                        "streams": {t: st.request.query_id for t, st in streams.items()},
                    },
                )
            self.stats.streams = {t: "requested" for t in streams}
            await self._read(conn, session, streams, send, bearer.value)

    def _stream_states(self) -> dict[str, StreamState]:
        src = self.cfg.source
        out: dict[str, StreamState] = {}
        for msg_type in src.message_types:
            hw = self.highwater.get(msg_type) if src.resume else None
            out[msg_type] = StreamState(
                protocol.StreamRequest(
                    msg_name=msg_type,
                    query_id=self._query_ids[msg_type],
                    stripe=self.stripe,
                    label=f"mlink-capture-{self.stripe}",
                    active_latency=src.active_latency,
                    highwater_ts=hw,
                )
            )
        return out

    async def _send_requests(self, conn: Connection, streams: dict[str, StreamState]) -> None:
        now = self.clock.now_ns()
        for st in streams.values():
            await conn.send(encode_client_frame(st.request.body(now)))

    async def _read(
        self,
        conn: Connection,
        session: str,
        streams: dict[str, StreamState],
        send: trio.MemorySendChannel[_WriterItem],
        api_key: str,
    ) -> None:
        sup = self.cfg.supervision
        stats = self.stats
        now_ns = self.clock.now_ns
        sess = _Session.start(session, streams)
        logon_deadline = trio.current_time() + sup.logon_timeout
        last_frame = trio.current_time()
        journal = self.journal
        try:
            while True:
                deadline = last_frame + sup.stale_after
                if not sess.requested:
                    deadline = min(deadline, logon_deadline)
                with trio.move_on_at(deadline) as scope:
                    messages = await conn.recv_batch()
                if scope.cancelled_caught:
                    if not sess.requested and trio.current_time() >= logon_deadline:
                        # No MLinkAdmin yet: some servers wait for the request first (§7.1, [I]).
                        self.log.warning("no MLinkAdmin within logon_timeout; requesting anyway")
                        await self._send_requests(conn, streams)
                        sess.requested = True
                        continue
                    raise StaleConnection(f"no frame for {sup.stale_after:g} s")
                last_frame = trio.current_time()
                recv_ns = now_ns()  # one socket read: its messages were received together
                if self._gap_from_ns is not None:  # first frame after a disconnect
                    self._event("gap", gap_start_ns=self._gap_from_ns, gap_end_ns=recv_ns)
                    self._gap_from_ns = None
                stats.last_frame_ns = recv_ns
                for message in messages:
                    stats.bytes += len(message)
                    first_seq = self._seq
                    await self._process(sess, message, recv_ns, conn, api_key)
                    if journal is not None:  # buffered; fsynced by its own thread
                        journal.append(recv_ns, first_seq, self._seq - first_seq, message)
                    if self._ready:  # after the journal: waiting for the writers delays no fsync
                        await self._drain_ready(send)
                if sess.ended is not None:
                    raise sess.ended
                if sess.requested and stats.state != "streaming" and stats.session is not None:
                    stats.state = "streaming"
        finally:
            # Bytes still waiting for the rest of a frame can never complete now: keep them.
            with trio.CancelScope(shield=True):
                await self._end_of_stream(sess, send)

    async def _process(
        self,
        sess: _Session,
        message: bytes | str,
        recv_ns: int,
        conn: Connection | None,
        api_key: str | None = None,
        *,
        live: bool = True,
        committed: Callable[[str, int], bool] | None = None,
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
        session = sess.id
        data_frames = snapshot_rows = 0
        try:
            for event in sess.decoder.feed_typed(message):
                if isinstance(event, Garbage):
                    stats.garbage_bytes += len(event.data)
                    self._quarantine(recv_ns, session, event.reason, event.data)
                    continue
                mtyp, type_number, body = event
                if not mtyp:  # not peeked, or peeked empty: parse the body to be sure
                    mtyp = _slow_mtyp(body)
                    if mtyp is None:
                        self._quarantine(recv_ns, session, "no header.mTyp", body)
                        continue
                if mtyp in control_types:
                    stats.control_messages += 1
                    try:
                        ctl = protocol.parse_control(mtyp, body)
                    except protocol.ControlParseError as exc:
                        self._quarantine(recv_ns, session, str(exc), body)
                        continue
                    if not isinstance(ctl, protocol.Admin):
                        self._on_control(ctl, sess)
                    elif conn is None:  # replay: the requests were sent when this was live
                        if not sess.requested:
                            sess.requested = ctl.verdict is protocol.AdminVerdict.LOGGED_ON
                    elif sess.ended is None:
                        try:
                            await self._on_admin(ctl, conn, sess, api_key)
                        except (TransportError, AuthRejected) as exc:
                            sess.ended = exc  # the frames after it are still kept
                    continue
                seq = self._seq
                self._seq += 1
                if committed is not None and committed(mtyp, seq):
                    continue  # replay: already in a committed file
                pb = pending.get(mtyp)
                if pb is None or pb.session != session:
                    if pb is not None:
                        self._enqueue(pending.pop(mtyp))
                    pb = pending[mtyp] = PendingBatch(mtyp, session, first_ns=recv_ns)
                in_snapshot = mtyp in sess.snapshot_types
                pb.bodies.append(body)
                pb.type_numbers.append(type_number)
                pb.recv_ns.append(recv_ns)
                pb.snapshot.append(in_snapshot)
                pb.seq.append(seq)
                pb.nbytes += len(body)
                data_frames += 1
                snapshot_rows += in_snapshot
                if len(pb.bodies) >= batch_rows or pb.nbytes >= batch_max_bytes:
                    self._enqueue(pending.pop(mtyp))
        finally:  # also when a control frame's handling raises part-way
            if live and data_frames:
                stats.messages += data_frames
                stats.last_data_ns = recv_ns
                stats.snapshot_rows += snapshot_rows

    async def _end_of_stream(
        self, sess: _Session, send: trio.MemorySendChannel[_WriterItem]
    ) -> None:
        for leftover in sess.decoder.flush():
            self.stats.garbage_bytes += len(leftover.data)
            self._quarantine(self.clock.now_ns(), sess.id, leftover.reason, leftover.data)
        try:
            await self._drain_ready(send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.log.error("writer gone; could not hand over what was received last")

    async def _on_admin(
        self,
        admin: protocol.Admin,
        conn: Connection,
        sess: _Session,
        api_key: str | None,
    ) -> None:
        """Act on an MLinkAdmin. Raises what ends the connection: GoodNight (at any time:
        reconnect later) or, until LoggedOn, a refused logon (even if the requests already
        went out at ``logon_timeout``)."""
        verdict = admin.verdict
        if not sess.logged_on:
            self._event("logon", result=admin.state, detail=admin.detail)
        if verdict is protocol.AdminVerdict.GOOD_NIGHT:
            raise TransportError(f"server said GoodNight ({admin.detail or 'no detail'})")
        if sess.logged_on:  # later verdicts are only logged
            if verdict is not protocol.AdminVerdict.LOGGED_ON:
                self.log.warning("MLinkAdmin after logon", state=admin.state, detail=admin.detail)
            return
        if verdict is protocol.AdminVerdict.LOGGED_ON:
            self.log.info("logged on", session=self.stats.session)
            sess.logged_on = True
            if not sess.requested:
                await self._send_requests(conn, sess.streams)
                sess.requested = True
            return
        if verdict is protocol.AdminVerdict.SEND_LOGON and api_key is not None:
            body = protocol.logon_body(api_key, self.clock.now_ns(), self.credentials.logon_field)
            await conn.send(encode_client_frame(body))
            return
        raise AuthRejected(f"MLinkAdmin {admin.state}: {admin.detail or 'no detail'}")

    def _on_control(self, ctl: protocol.Control, sess: _Session) -> None:
        stats = self.stats
        if isinstance(ctl, protocol.Heartbeat):
            stats.heartbeats += 1
            return
        if isinstance(ctl, protocol.StreamAck):
            st = _match(ctl.query_id, ctl.msg_name, sess, lambda s: s.acked)
            if st is None:
                self.log.warning("stream ack matches no request", msg_name=ctl.msg_name)
                return
            st.acked = True
            name = st.request.msg_name
            self._event("stream_ack", msg_type=name, result=ctl.result, detail=ctl.detail)
            if ctl.ok:
                stats.streams[name] = "acked"
                sess.snapshot_types.add(name)  # until Active/Complete: this stream's snapshot
                st.in_snapshot = True
            else:
                st.failed = f"{ctl.result}: {ctl.detail or ''}".strip(": ")
                stats.streams[name] = f"refused ({st.failed})"
                stats.last_error = f"{name} refused by server: {st.failed}"
                self.log.error(
                    "stream refused", msg_type=name, result=ctl.result, detail=ctl.detail
                )
            return
        if isinstance(ctl, protocol.CheckPt):
            st = _match(
                ctl.query_id,
                None,
                sess,
                lambda s: not s.acked or s.failed is not None or _checkpoint_done(s, ctl.state),
            )
            if st is None:
                return
            name = st.request.msg_name
            self._event(
                "checkpoint",
                msg_type=name,
                result=ctl.state,
                count=ctl.num_messages_sent,
                highwater_ts=ctl.highwater_ts,
            )
            if ctl.state == "Begin":
                st.begun = True
                st.in_snapshot = True
                sess.snapshot_types.add(name)
                stats.streams[name] = "snapshot"
            elif ctl.state in ("Active", "Complete"):
                st.in_snapshot = False
                st.completed = st.completed or ctl.state == "Complete"
                sess.snapshot_types.discard(name)
                stats.streams[name] = "live"
            elif ctl.state in ("Replaced", "Terminated"):
                sess.snapshot_types.discard(name)
                stats.streams[name] = ctl.state.lower()
                self.log.warning("stream ended by server", msg_type=name, state=ctl.state)
            if ctl.highwater_ts and ctl.highwater_ts > 0:
                self.highwater[name] = max(self.highwater.get(name, 0), ctl.highwater_ts)
            return
        if isinstance(ctl, protocol.DataAck):
            self.log.warning("server reported a problem", result=ctl.result, detail=ctl.detail)

    # -- hand-over to the writer ------------------------------------------------------------------

    async def _writer_caught_up(self) -> None:
        """Wait until the writer has processed every item handed over so far."""
        target = self._handed
        while self._processed < target:
            await self._progress.park()

    def _enqueue(self, item: _WriterItem) -> None:
        """Queue an item for the writer (no waiting: see :meth:`_drain_ready`).  From now on
        its frames count as in flight for the journal's commit watermark."""
        if isinstance(item, PendingBatch):
            self._inflight.add(item.seq[0])
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
        self.stats.quarantined += 1
        self.log.warning("quarantined bytes", reason=reason, size=len(data))
        self._enqueue(Quarantined(recv_ns, session, reason, data))

    def _event(self, kind: str, **fields: Any) -> None:
        if self._replaying:  # these events were recorded when the messages arrived
            return
        self._events.append(
            capture_events.Event(
                time_ns=self.clock.now_ns(),
                session=self.stats.session,
                seq=self._seq,
                event=kind,
                **fields,
            )
        )

    async def _flush_pending(
        self, send: trio.MemorySendChannel[_WriterItem], older_than_ns: int | None
    ) -> None:
        if self._events:
            events, self._events = self._events, []
            self._enqueue(EventBatch(events))
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
        """Every frame below this sequence number is in committed Parquet (or quarantine), as far
        as the event loop knows: pending and in-flight batches hold the rest.  The sink adds its
        open files (read under its lock, in the syncing thread)."""
        lows = [self._seq]
        lows.extend(pb.seq[0] for pb in self._pending.values() if pb.seq)
        if self._inflight:
            lows.append(min(self._inflight))
        return min(lows)

    def _sync_and_retire(self, loop_watermark: int, *, sync: bool = True) -> None:
        """In a thread: fsync the journal (or, when it syncs itself, check that its thread
        has not failed), then retire the segments below the watermark."""
        journal = self.journal
        assert journal is not None
        if sync:
            journal.flush_and_sync()
        else:
            journal.check()
        if self._sink_failed:
            # Rows of an aborted file are in no file the sink tracks: the watermark would
            # overtake them.  Keep every segment; recovery replays them after the restart.
            return
        sink_low = self.sink.uncommitted_seq_min() if self.sink is not None else None
        watermark = loop_watermark if sink_low is None else min(loop_watermark, sink_low)
        # After the sink: a file it committed meanwhile was handed to the hold under its lock.
        held = self.journal_hold.floor(self.stripe) if self.journal_hold is not None else None
        watermark = watermark if held is None else min(watermark, held)
        jcfg = self.cfg.journal
        archive = None
        if jcfg.retain_hours > 0:
            archive = journal.directory / "archive"
            _prune(archive, jcfg.retain_hours)
        journal.retire(watermark, archive=archive)
        if self.journal_hold is not None:
            held_segments = [s.min_seq for s in journal.segments() if s.min_seq is not None]
            low = min(held_segments) if held_segments else journal.next_seq
            self.journal_hold.journal_low(self.stripe, low)

    async def _syncer(self) -> None:
        """Every half ``durability_interval`` (so that a frame is on disk within the interval,
        fsync time included): fsync the journal unless it does so itself, retire what is
        committed, publish the durable sequence number.  A failure stops this stripe."""
        interval = self.cfg.journal.durability_interval / 2
        sync = not self.journal_syncs_itself
        while True:
            await trio.sleep(interval)
            await self.offload(
                partial(self._sync_and_retire, self._commit_watermark(), sync=sync)
            )
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
        self.stats.journal_lag = self._seq - (durable + 1 if durable is not None else 0)

    def _close_journal(self) -> None:
        """In a thread: the final sync and retirement, then close (the caller publishes the
        last fsyncs, on the loop, and drops the writer)."""
        journal = self.journal
        if journal is None:
            return
        try:
            self._sync_and_retire(self._commit_watermark())
        except (OSError, journal_mod.JournalError) as exc:
            self.log.error("journal: final sync failed", error=str(exc))
        finally:
            journal.close()

    async def _recover(
        self, send: trio.MemorySendChannel[_WriterItem], report: journal_mod.RecoveryReport
    ) -> None:
        """Start-up: frames in the journal but not in committed Parquet go to Parquet, once."""
        assert self.journal is not None
        directory = self.journal.directory
        since = await self.offload(_first_recv_ns, directory)
        index = await self.offload(
            partial(scan_committed, self.cfg.output.root, self.stripe, since_ns=since)
        )
        if index.max_seq is not None:
            self._seq = max(self._seq, index.max_seq + 1)
        for msg_type, sent_ns in index.max_sent_ns.items():  # resume after a restart too
            self.highwater[msg_type] = max(self.highwater.get(msg_type, 0), sent_ns)
        replayed, last_ns = await self._replay_journal(send, [directory], index)
        if index.max_seq is not None:
            # Committed files can hold rows whose journal records were not yet fsynced when the
            # process died: never hand out their sequence numbers again.
            self._seq = max(self._seq, index.max_seq + 1)
        self._gap_from_ns = last_ns
        self._event(
            "recovery",
            detail=(
                f"journal: {len(report.segments)} segment(s), {report.bytes_cut} byte(s) cut; "
                f"{replayed} frame(s) not yet in Parquet replayed"
            ),
            bytes=report.bytes_cut,
            count=replayed,
        )
        if report.bytes_cut or replayed:
            self.log.warning(
                "recovered from the journal",
                bytes_cut=report.bytes_cut,
                frames_replayed=replayed,
                cuts=[f"{c.path.name}: {c.reason}" for c in report.cut],
            )
            await self._flush_pending(send, older_than_ns=None)
            self.request_rotate()  # commit the recovered rows now, not at the next boundary

    async def _replay_journal(
        self,
        send: trio.MemorySendChannel[_WriterItem],
        directories: list[Path],
        committed: CommittedIndex | None,
    ) -> tuple[int, int | None]:
        """Feed journaled messages through the live path; returns (frames replayed, last
        receive time)."""
        self._replaying = True
        replayed = 0
        last_ns: int | None = None
        sess: _Session | None = None
        contains = committed.contains if committed is not None else None

        def already(msg_type: str, seq: int) -> bool:
            nonlocal replayed
            if contains is not None and contains(msg_type, seq):
                return True
            replayed += 1
            return False

        try:
            for directory in directories:
                records = journal_mod.read_records(directory)
                while chunk := await self.offload(_take, records, 512):
                    for rec in chunk:
                        if isinstance(rec, journal_mod.SessionRecord):
                            if rec.resumed and sess is not None and sess.id == rec.session:
                                continue  # a segment boundary inside the same session
                            if sess is not None:
                                await self._end_of_stream(sess, send)
                            sess = _Session.start(rec.session, self._replayed_streams(rec))
                            continue
                        if sess is None:  # the journal starts inside a session
                            sess = _Session.start("unknown", {})
                        self._seq = rec.first_seq
                        await self._process(
                            sess, rec.payload, rec.recv_ns, None, live=False, committed=already
                        )
                        if self._ready:
                            await self._drain_ready(send)
                        last_ns = rec.recv_ns
            if sess is not None:
                await self._end_of_stream(sess, send)
        finally:
            self._replaying = False
        if self.journal is not None:
            self._seq = max(self._seq, self.journal.next_seq)
        return replayed, last_ns

    def _replayed_streams(self, rec: journal_mod.SessionRecord) -> dict[str, StreamState]:
        streams = rec.context.get("streams", {})
        items = streams.items() if isinstance(streams, dict) else ()
        return {
            name: StreamState(
                protocol.StreamRequest(
                    msg_name=name, query_id=int(qid), stripe=self.stripe, label="replay"
                )
            )
            for name, qid in items
        }

    async def replay(self, directories: list[Path]) -> int:
        """Offline: rebuild this stripe's Parquet from journal segments (``mlink-capture
        replay``); returns the number of data frames written."""
        send, recv = trio.open_memory_channel[_WriterItem](self.cfg.pipeline.queue_batches)
        self._writer_gone = False
        sink = self.sink = PartitionSink(
            self._sink_settings, stripe=self.stripe, session=self.run_id, now_ns=self.clock.now_ns
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, recv, sink)
            async with send:
                replayed, _ = await self._replay_journal(send, directories, None)
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
                self._sink_failed = True
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
                    self._sink_failed = True
                    self.log.error("closing the sink failed", error=str(exc))

    async def _write_loop(
        self, recv: trio.MemoryReceiveChannel[_WriterItem], sink: PartitionSink
    ) -> None:
        decoders: dict[str, BatchDecoder] = {}
        interval = self.cfg.output.rotate_interval
        tz = self.cfg.output.timezone
        async with recv:
            while True:
                boundary = PartitionSink.next_boundary_ns(self.clock.now_ns(), interval, tz)
                item: _WriterItem | None = None
                with trio.move_on_at(trio_deadline_for(self.clock, boundary)):
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
                        dec = decoders[item.msg_type] = BatchDecoder(item.msg_type)
                    outcome = await self._heavy(self._decode_and_write, dec, sink, item)
                    self._inflight.discard(item.seq[0])
                    self._held -= item.nbytes
                    self.in_flight.release(item.nbytes)
                    self._written(item.msg_type, outcome)
                elif isinstance(item, EventBatch):
                    batch = capture_events.to_batch(item.events, self.stripe)
                    self._committed(await self._heavy(sink.write, capture_events.TABLE, batch))
                else:
                    await self.offload(self._write_quarantine, item)
                if item is not None:
                    self._processed += 1
                    self._progress.unpark_all()

    async def _heavy(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Decoding, encoding Parquet, committing files: off the loop, and at most one such
        job per core for the whole process (capture.memory), so that all stripes committing
        at a rotation boundary do not hold all their row groups' encoders at once."""
        async with self.decode_limiter:
            return await self.offload(fn, *args)

    def _written(self, msg_type: str, outcome: _WriteOutcome) -> None:
        stats = self.stats
        stats.rows_written += outcome.rows
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
            if new:  # once per field per type: drift is news, not noise
                seen |= new
                self.log.warning(
                    "schema drift: fields not in the dictionary kept in _extra",
                    msg_type=msg_type,
                    fields=sorted(new),
                )
        latest = outcome.latest_sent_ns
        if latest is not None and latest > self.highwater.get(msg_type, 0):
            self.highwater[msg_type] = latest
        self._committed(outcome.committed)

    def _committed(self, files: list[CommittedFile]) -> None:
        for f in files:
            self.stats.files_committed += 1
            self.log.info("committed", path=str(f.path), rows=f.rows, reason=f.reason)
            if self.on_commit is not None:
                self.on_commit(f)

    def _decode_and_write(
        self, dec: BatchDecoder, sink: PartitionSink, pb: PendingBatch
    ) -> _WriteOutcome:
        """Runs in a worker thread: bulk decode, split by partition date, write."""
        result = dec.decode(
            pb.bodies,
            type_numbers=pb.type_numbers,
            recv_ns=pb.recv_ns,
            snapshot=pb.snapshot,
            seq=pb.seq,
            stripe=self.stripe,
            session=pb.session,
        )
        for index, body, reason in result.rejected:
            self._write_quarantine(Quarantined(pb.recv_ns[index], pb.session, reason, body))
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
            rejected=len(result.rejected),
            slow_rows=result.drift.slow_path_rows,
            unknown_fields=result.drift.unknown_fields,
            latest_sent_ns=latest,
        )

    def _write_quarantine(self, q: Quarantined) -> None:
        day = partition_date(q.recv_ns, self.cfg.output.timezone)
        directory = Path(self.cfg.output.root) / "_quarantine" / f"stripe={self.stripe}"
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "recv_time_ns": q.recv_ns,
            "stripe": self.stripe,
            "session": q.session,
            "reason": q.reason,
            "size": len(q.data),
            "bytes_b64": base64.b64encode(q.data).decode("ascii"),
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        fd = os.open(
            directory / f"{day.isoformat()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
        )
        try:
            os.write(fd, line.encode("ascii"))
            os.fsync(fd)  # the journal may retire these bytes: they must be on disk first
        finally:
            os.close(fd)


# The smallest byte bound of a pending batch (a tiny budget with many stripes): below this the
# per-batch costs (a thread hand-off, a JSON reader call) dominate.
BATCH_MIN_BYTES = 256 * 1024


def in_flight_limit(cfg: Config) -> int:
    """A quarter of ``output.memory_budget_mb``: raw frames handed to the writers and not yet
    decoded, all stripes together (capture.memory: why a quarter)."""
    return cfg.output.memory_budget_mb * 2**20 // 4


def _checkpoint_done(st: StreamState, state: str) -> bool:
    """A stream that already had this phase cannot be the target of this checkpoint."""
    if state == "Begin":
        return st.begun
    if state == "Complete":
        return st.completed
    return False


def _match(
    query_id: int | None,
    msg_name: str | None,
    sess: _Session,
    skip: Callable[[StreamState], bool],
) -> StreamState | None:
    """Match a reply to its request: by queryID, else msgName, else the first still waiting."""
    if query_id is not None and query_id in sess.by_query:
        return sess.by_query[query_id]
    if msg_name is not None and msg_name.lower() in sess.by_name:
        return sess.by_name[msg_name.lower()]
    for st in sess.streams.values():
        if not skip(st):
            return st
    return None


def _slow_mtyp(body: bytes) -> str | None:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
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


def _first_recv_ns(directory: Path) -> int | None:
    """Receive time of the oldest message in a journal (None if it holds none)."""
    for _, rec in journal_mod.read_records(directory):
        if isinstance(rec, journal_mod.MessageRecord):
            return rec.recv_ns
    return None


def _take(records: Iterator[tuple[Path, journal_mod.Record]], n: int) -> list[journal_mod.Record]:
    """The next ``n`` journal records (blocking reads: called in a thread)."""
    return [rec for _, rec in islice(records, n)]


def _prune(archive: Path, retain_hours: float) -> None:
    """Delete archived journal segments older than the retention period."""
    if not archive.is_dir():
        return
    horizon = time.time() - retain_hours * 3600
    for path in archive.glob("seg-*.mlj"):
        if path.stat().st_mtime < horizon:
            path.unlink(missing_ok=True)
