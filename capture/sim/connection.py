"""One client connection of the simulator: a reader, a single writer, heartbeats, the streams.

MLinkAdmin is sent at once, unprompted.  Each MLinkStream gets an MLinkStreamAck, then CheckPt
``Begin``, the snapshot (latest cached record of every pkey of the type in the stripe, original
``sTim``, fresh ``encT``), CheckPt ``Active`` with ``numMessagesSent``, CheckPt ``Complete``,
then live updates, flushed at most every ``activeLatency`` ms (PROTOCOL.md §7.1, §7.3).
MLinkHeartbeat every ``heartbeat_interval``.  The connection has exactly one writer task that
owns the socket, so a frame is never cut by a cancellation and the recording order is the wire
order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio
import trio_websocket as tw

from capture import stripes as stripe_rules
from capture.errors import WhereError
from capture.frames import encode_frame
from capture.schemas import MessageDef, lookup
from capture.sim.cached_record import Record
from capture.sim.control_messages import (
    ADMIN,
    CHECKPT,
    CONTROL_TOKENS,
    DATA_ACK,
    HEARTBEAT,
    STREAM_ACK,
    AuthState,
)
from capture.sim.encoding import encode_message, utc_text
from capture.sim.faults import Action, FaultState, OutFrame
from capture.sim.inbound import BadInbound, Inbound, opt_int, opt_str, parse_inbound
from capture.sim.record import ConnectionRecording
from capture.sim.stream_filters import compile_where, parse_view
from capture.sim.subscriptions import StreamRequest, Subscription, resolve_msg_name

if TYPE_CHECKING:
    from capture.sim.server import Simulator

__all__ = ["CLOSE_TIMEOUT", "Connection"]

log = structlog.get_logger("capture.sim")

CLOSE_TIMEOUT = 2.0


@dataclass(slots=True)
class _Out:
    """One item for the connection's writer: frames, then optionally an action."""

    frames: list[OutFrame]
    then: Action = Action.NONE
    close_code: int = 1000
    close_reason: str = ""


class Connection:
    """One client WebSocket: a reader, a single writer, heartbeats and the streams."""

    def __init__(
        self,
        sim: Simulator,
        conn_id: str,
        ws: tw.WebSocketConnection,
        stream: trio.abc.Stream,
        faults: FaultState,
        recording: ConnectionRecording | None,
        reader_scope: trio.CancelScope,
    ) -> None:
        self.sim = sim
        self.cfg = sim.cfg
        self.conn_id = conn_id
        self.ws = ws
        self.stream = stream
        self.faults = faults
        self.recording = recording
        self.reader_scope = reader_scope
        self.state = AuthState.WAITING
        self.subs: dict[tuple[int, str], Subscription] = {}
        self.frames_sent = 0
        self.bytes_sent = 0
        self._out_send, self._out_recv = trio.open_memory_channel[_Out](4)
        self._heartbeat_seq = 0
        self._nursery: trio.Nursery | None = None
        self._end_reason = "peer closed"

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, initial: AuthState) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                await self._logon_reply(initial)
                nursery.start_soon(self._heartbeats)
                if self.cfg.checkpoint_interval is not None:
                    nursery.start_soon(self._periodic_checkpoints, self.cfg.checkpoint_interval)
                nursery.start_soon(self._reader)
        finally:
            for sub in list(self.subs.values()):
                self.sim.unregister(sub)
            self.subs.clear()
            if self.recording is not None:
                self.recording.close()
            log.info(
                "sim.disconnected",
                conn=self.conn_id,
                reason=self._end_reason,
                frames=self.frames_sent,
                bytes=self.bytes_sent,
            )
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                scope.shield = True
                await self.ws.aclose()

    def end(self, reason: str) -> None:
        """Stop the connection (from any task)."""
        self._end_reason = reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def kill_slow_consumer(self, sub: Subscription) -> None:
        log.warning("sim.slow_consumer", conn=self.conn_id, msg_type=sub.mdef.name)
        self._end_reason = "slow consumer"
        self.sim.unregister(sub)
        if self._nursery is not None:
            self._nursery.start_soon(self._abort)

    async def _abort(self) -> None:
        await self.stream.aclose()
        self.end(self._end_reason)

    # -- output ---------------------------------------------------------------------------------

    async def send(self, frames: list[OutFrame], then: Action = Action.NONE, **kw: Any) -> None:
        """Queue frames for the writer (blocks while the writer is behind: backpressure)."""
        await self._out_send.send(_Out(frames, then, **kw))

    async def _writer(self) -> None:
        delay = self.faults.faults.send_delay
        async for item in self._out_recv:
            plan = self.faults.plan(item.frames, self._pack, self.make_frame)
            for payload in plan.payloads:
                if delay:
                    await trio.sleep(delay)
                if not await self._ws_send(payload):
                    return
            self.frames_sent += plan.frames
            action = plan.action if plan.action is not Action.NONE else item.then
            if action is Action.NONE:
                continue
            await self._act(action, item)

    async def _act(self, action: Action, item: _Out) -> None:
        event = "sim.close" if action is item.then else "sim.fault"
        log.info(event, conn=self.conn_id, action=action.value)
        if action is Action.DISCONNECT:
            await self.stream.aclose()
            self.end("fault: disconnect")
        elif action is Action.CLOSE:
            code = item.close_code if action is item.then else 1001
            reason = item.close_reason if action is item.then else "going away"
            await self._close(code, reason)
            self.end(f"closed ({code} {reason})")
        elif action is Action.GOODNIGHT:
            frame = self.make_frame("MLinkAdmin", ADMIN.number, _admin_json("GoodNight"))
            if not await self._ws_send(frame):
                return
            self.frames_sent += 1
            if not self.faults.faults.goodnight_then_close:
                self._end_reason = "fault: good night, left open"
                await trio.sleep_forever()
            await self._close(1000, "good night")
            self.end("fault: good night")
        elif action is Action.STALL:
            self._end_reason = "fault: stalled"
            await trio.sleep_forever()
        elif action is Action.HALF_OPEN:
            self._end_reason = "fault: half-open"
            self.reader_scope.cancel()
            await trio.sleep_forever()

    async def _close(self, code: int, reason: str) -> None:
        """WebSocket close handshake, bounded: a peer that never answers is dropped."""
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.ws.aclose(code, reason)
        await self.stream.aclose()

    async def _ws_send(self, payload: bytes) -> bool:
        """Send one WebSocket message and record it; False (and the connection ends) if gone."""
        try:
            if self.cfg.text_frames:
                text = payload.decode("utf-8", "replace")
                await self.ws.send_message(text)
                payload = text.encode("utf-8")
            else:
                await self.ws.send_message(payload)
        except tw.ConnectionClosed:
            self.end("peer closed")
            return False
        self.bytes_sent += len(payload)
        if self.recording is not None:
            self.recording.write(payload)
        return True

    def _pack(self, chunks: list[bytes]) -> list[bytes]:
        """Group encoded frames into WebSocket messages (whole frames, count and byte budget)."""
        out: list[bytes] = []
        cur: list[bytes] = []
        size = 0
        frames = 0
        limit_frames = self.cfg.frames_per_message
        limit_bytes = self.cfg.max_message_bytes
        for chunk in chunks:
            is_frame = chunk.startswith(b"\r\n")
            if cur and (size + len(chunk) > limit_bytes or (is_frame and frames >= limit_frames)):
                out.append(b"".join(cur))
                cur, size, frames = [], 0, 0
            cur.append(chunk)
            size += len(chunk)
            frames += is_frame
        if cur:
            out.append(b"".join(cur))
        return out

    def make_frame(
        self,
        mtyp: str,
        number: int,
        message: str,
        *,
        sid: int = 0,
        seqn: int = 0,
        stim_ns: int | None = None,
    ) -> bytes:
        return encode_frame(number, self.body(mtyp, message, sid=sid, seqn=seqn, stim_ns=stim_ns))

    def body(
        self, mtyp: str, message: str, *, sid: int = 0, seqn: int = 0, stim_ns: int | None = None
    ) -> bytes:
        """``{"header":{...},"message":...}`` with the §5.1 header (ints present even when 0)."""
        cfg = self.cfg
        now = self.sim.clock_ns()
        header = (
            f'{{"mTyp":{json.dumps(mtyp)},"sEnv0":"{cfg.env}","sRlm0":"{cfg.realm}",'
            f'"sID":{sid},"kLen":0,"mLen":0,"seqN":{seqn},"appN":"{cfg.app_name}",'
            f'"mn":"{cfg.machine}","sTim":"{utc_text(now if stim_ns is None else stim_ns)}",'
            f'"encT":"{utc_text(now)}","git":"{cfg.git}"}}'
        )
        return f'{{"header":{header},"message":{message}}}'.encode("ascii")

    def control(self, mdef: MessageDef, values: Mapping[str, Any], **kw: Any) -> OutFrame:
        return OutFrame(mdef.number, self.body(mdef.name, encode_message(mdef, values), **kw))

    def data_frame(self, rec: Record, view: frozenset[str] | None) -> OutFrame:
        message = self.faults.encode_data(rec, view)
        body = self.body(rec.msg_type, message, sid=rec.sid, seqn=rec.seqn, stim_ns=rec.sent_ns)
        return OutFrame(rec.mdef.number, body, data=True)

    # -- logon ----------------------------------------------------------------------------------

    async def _logon_reply(self, state: AuthState, detail: str = "") -> None:
        self.state = state
        frame = self.control(ADMIN, {"state": state.value, "detail": detail})
        if state is AuthState.FAILED:
            if not detail:
                frame = self.control(ADMIN, {"state": state.value, "detail": "invalid api key"})
            # After the upgrade, "http_401" can only close too; only "wait" keeps the socket.
            if self.cfg.bad_key_mode != "logon_failed_wait":
                await self.send([frame], Action.CLOSE, close_code=1008, close_reason="logon failed")
                return
        await self.send([frame])

    async def _on_logon(self, message: Mapping[str, Any]) -> None:
        api_key = opt_str(message.get("apiKey"))
        password = opt_str(message.get("password")) or opt_str(message.get("apiPassword"))
        jwt_token = opt_str(message.get("jwtToken"))  # "Cognito JWT token" (§2.3)
        if jwt_token is not None:
            cred = jwt_token
        elif api_key is not None:
            cred = f"{api_key}.{password}" if password else api_key
        else:
            await self._logon_reply(AuthState.FAILED, "MLinkLogon needs an apiKey or jwtToken")
            return
        await self.sim.prepare_credential(cred)
        ok = self.sim.key_ok(cred, self.faults)
        log.info("sim.logon", conn=self.conn_id, ok=ok)
        await self._logon_reply(AuthState.LOGGED_ON if ok else AuthState.FAILED)

    # -- input ----------------------------------------------------------------------------------

    async def _reader(self) -> None:
        while True:
            try:
                msg = await self.ws.get_message()
            except tw.ConnectionClosed:
                self.end("peer closed")
                return
            data = msg.encode("utf-8") if isinstance(msg, str) else msg
            for item in parse_inbound(data):
                if isinstance(item, BadInbound):
                    await self.send([self._data_ack(item.type_number, item.result, item.detail)])
                else:
                    await self._dispatch(item)

    def _data_ack(self, type_number: int, result: str, detail: str) -> OutFrame:
        values = {"msgType": type_number, "result": result, "detail": detail[:250]}
        return self.control(DATA_ACK, values)

    async def _dispatch(self, item: Inbound) -> None:
        header = item.obj.get("header")
        message = item.obj.get("message")
        mtyp = header.get("mTyp") if isinstance(header, dict) else None
        msg: Mapping[str, Any] = message if isinstance(message, dict) else {}
        if not isinstance(mtyp, str) or not mtyp:
            await self.send([self._data_ack(item.type_number, "InvldMsgType", "no header.mTyp")])
            return
        kind = mtyp.casefold()
        if kind == "mlinklogon":
            await self._on_logon(msg)
        elif kind == "mlinkstream":
            await self._on_stream(msg)
        elif kind == "mlinksignalready":
            self._on_signal(msg)
        else:
            known = lookup(mtyp)
            detail = (
                f"{known.name} is not supported by this server"
                if known is not None
                else f"unknown message type: {mtyp}"
            )
            await self.send([self._data_ack(item.type_number, "InvldMsgType", detail)])

    # -- MLinkStream ----------------------------------------------------------------------------

    async def _ack(self, req: StreamRequest, result: str, detail: str = "") -> None:
        await self.send([self.control(STREAM_ACK, self._ack_values(req, result, detail))])

    def _ack_values(self, req: StreamRequest, result: str, detail: str) -> dict[str, Any]:
        return {
            "sessionID": req.session_id,
            "queryID": req.query_id if self.cfg.echo_query_id else None,
            "queryLabel": req.label if self.cfg.echo_query_label else None,
            "unsubscribe": "Yes" if req.unsubscribe else None,
            "msgName": req.msg_name_text,
            "result": result,
            "detail": detail,
        }

    async def _on_stream(self, message: Mapping[str, Any]) -> None:
        req = StreamRequest.parse(message)
        if self.state is not AuthState.LOGGED_ON:
            await self._ack(req, "Error", "not logged on")
            return
        if req.msg_name_text is None:
            await self._ack(req, "Error", "msgName is required")
            return
        mdef = resolve_msg_name(req.msg_name_raw)
        if mdef is None:
            await self._ack(req, "UnkwnMsgType", f"unknown message type: {req.msg_name_text}")
            return
        if mdef.token in CONTROL_TOKENS:
            await self._ack(req, "InvldMsgType", f"{mdef.name} is not a streamable message type")
            return
        if mdef.token in self.cfg.unauthorized_tokens:
            await self._ack(
                req, "UnauthMsgType", f"not entitled to {mdef.name} (token {mdef.token})"
            )
            return
        key = (req.session_id, mdef.name)
        if req.unsubscribe:
            old = self.subs.pop(key, None)
            if old is None:
                await self._ack(req, "Warn", f"no active stream for {mdef.name}")
                return
            self._stop(old)
            await self._ack(req, "OK")
            await self.send([self.checkpoint(old, "Terminated")])
            return
        stripe = req.stripe
        table = self.cfg.stripe_table
        if stripe is not None and not stripe_rules.is_known(stripe, table):
            await self._ack(req, "Error", f"unknown stripe: {stripe}")
            return
        try:
            where = compile_where(req.where, mdef) if req.where else None
            view = parse_view(req.view, mdef) if req.view else None
        except WhereError as exc:
            await self._ack(req, "Error", str(exc))
            return
        if self.recording is not None:
            self.recording.set_stripe(stripe)
        if not self.sim.market.has_type(mdef.name) and self.cfg.generate_all_types:
            self.sim.market.ensure_type(mdef.name)
        old = self.subs.pop(key, None)
        if old is not None:
            self._stop(old)
            await self.send([self.checkpoint(old, "Replaced")])
        await self._ack(req, "OK")
        sub = Subscription(self, mdef, req, stripe, where, view)
        # Register and take the snapshot with no await in between: every later update
        # lands in the stream's pending map, none is lost between snapshot and live.
        self.sim.register(sub)
        snapshot = [r for r in self.sim.market.snapshot(mdef.name) if sub.wants_snapshot(r)]
        self.subs[key] = sub
        assert self._nursery is not None
        self._nursery.start_soon(self._run_stream, sub, snapshot)

    def _stop(self, sub: Subscription) -> None:
        self.sim.unregister(sub)
        sub.scope.cancel()

    def checkpoint(self, sub: Subscription, state: str, **fields: Any) -> OutFrame:
        now = self.sim.clock_ns()
        if sub.cp_stim_ns is None:  # checkpoints of one stream keep their first sTim (§5.1)
            sub.cp_stim_ns = now
        values: dict[str, Any] = {
            "sessionID": sub.req.session_id,
            "queryID": sub.req.query_id if self.cfg.echo_query_id else None,
            "state": state,
            "timestamp": now,
            **fields,
        }
        if self.cfg.checkpoint_highwater and state in ("Active", "Complete"):
            values["highwaterTs"] = sub.high_ns
            values["numBytesSent"] = sub.bytes_sent
        return self.control(CHECKPT, values, stim_ns=sub.cp_stim_ns)

    async def _run_stream(self, sub: Subscription, snapshot: list[Record]) -> None:
        with sub.scope:
            t0 = trio.current_time()
            await self.send([self.checkpoint(sub, "Begin")])
            t_scan = trio.current_time()
            sent, flush = await self._send_records(sub, snapshot)
            t_end = trio.current_time()
            await self.send([self.checkpoint(sub, "Active", numMessagesSent=sent)])
            query = t_end - t0
            try_fwd = t_scan - t0
            send = max(0.0, (t_end - t_scan) - flush)
            await self.send(
                [
                    self.checkpoint(
                        sub,
                        "Complete",
                        waitElapsed=try_fwd + send - query,
                        queryElapsed=query,
                        tryFwdElapsed=try_fwd,
                        sendElapsed=send,
                        flushElapsed=flush,
                    )
                ]
            )
            sub.live = True
            await self._live(sub)

    async def _send_records(
        self, sub: Subscription, records: Sequence[Record]
    ) -> tuple[int, float]:
        """Send records in WebSocket-message sized batches; returns (count, seconds blocked)."""
        step = self.cfg.frames_per_message
        blocked = 0.0
        self.sim.sending += 1
        try:
            for i in range(0, len(records), step):
                batch = records[i : i + step]
                frames = [self.data_frame(r, sub.view) for r in batch]
                t = trio.current_time()
                await self.send(frames)
                blocked += trio.current_time() - t
                sub.count(batch, frames)
        finally:
            self.sim.sending -= 1
        return len(records), blocked

    async def _live(self, sub: Subscription) -> None:
        latency = sub.req.active_latency
        last = trio.current_time()
        while True:
            await sub.wake.wait()
            sub.wake = trio.Event()
            if latency <= 0:  # 0 = wait for MLinkSignalReady (§6.1)
                while sub.signals:
                    signal_id, full = sub.signals.popleft()
                    if full:
                        sub.take()
                        records = [
                            r for r in self.sim.market.snapshot(sub.mdef.name) if sub.accepts(r)
                        ]
                    else:
                        records = sub.take()
                    n, _ = await self._send_records(sub, records)
                    done = self.checkpoint(sub, "Complete", signalID=signal_id, numMessagesSent=n)
                    await self.send([done])
                continue
            due = last + latency / 1000.0
            if trio.current_time() < due:
                await trio.sleep_until(due)
            await self._send_records(sub, sub.take())
            last = trio.current_time()

    def _on_signal(self, message: Mapping[str, Any]) -> None:
        session = opt_int(message.get("sessionID"))
        signal_id = opt_int(message.get("signalID")) or 0
        full = (opt_str(message.get("readyScan")) or "").casefold() == "fullscan"
        for (sess, _), sub in self.subs.items():
            if sub.req.active_latency <= 0 and session in (None, -1, sess):
                sub.signals.append((signal_id, full))
                sub.wake.set()

    # -- heartbeats and periodic checkpoints ----------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.cfg.heartbeat_interval)
            self._heartbeat_seq += 1
            values = {"seqNum": self._heartbeat_seq, "timestamp": self.sim.clock_ns()}
            await self.send([self.control(HEARTBEAT, values)])

    async def _periodic_checkpoints(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            frames = [
                self.checkpoint(sub, "Active", numMessagesSent=sub.sent)
                for sub in self.subs.values()
                if sub.live
            ]
            if frames:
                await self.send(frames)


def _admin_json(state: str, detail: str = "") -> str:
    return encode_message(ADMIN, {"state": state, "detail": detail})
