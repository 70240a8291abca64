"""The MLink simulator: a trio-websocket server that speaks JSONFramed like PROTOCOL.md says.

Session (§7.1): the upgrade is authenticated from ``Authorization: Bearer KEY[.PASSWORD]``
(optionally ``?apikey=``), or from a Cognito JWT (``auth_mode``: RS256 signature checked against
the pool's published keys, issuer, expiry, token use, app client), and MLinkAdmin is sent at
once, unprompted.  Each MLinkStream gets an
MLinkStreamAck, then CheckPt ``Begin``, the snapshot (latest cached record of every pkey of the
type in the stripe, original ``sTim``, fresh ``encT``), CheckPt ``Active`` with
``numMessagesSent``, CheckPt ``Complete``, then live updates.  MLinkHeartbeat every
``heartbeat_interval``.

Flow control (§7.3): the market publishes into a per-stream "dirty pkey -> latest record" map,
flushed at most every ``activeLatency`` ms; while the socket is slow, newer records replace older
ones in the map.  Memory per stream is bounded by the number of pkeys (or by ``max_pending``
with conflation off).  Each connection has exactly one writer task that owns the socket, so a
frame is never cut by a cancellation and the recording order is the wire order.

Time comes from an injectable wall clock (``clock_ns``) and all waiting from trio, so tests can
run on ``trio.testing.MockClock``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import itertools
import json
import random
import re
import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
import trio
import trio_websocket as tw
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from capture import stripes as stripe_rules
from capture.errors import WhereError
from capture.frames import Frame, FrameDecoder, encode_frame
from capture.schemas import FieldDef, MessageDef, by_number, lookup
from capture.sim.config import SimConfig
from capture.sim.faults import Action, FaultState, OutFrame
from capture.sim.market import Market, Record, encode_message, fmt_double, utc_text
from capture.sim.record import ConnectionRecording, Recorder
from capture.sim.tls import server_context

__all__ = ["ClockNs", "Simulator", "WhereError", "compile_where", "serve", "verify_jwt"]

log = structlog.get_logger("capture.sim")

ClockNs = Callable[[], int]
HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
_CONTROL_TOKENS = frozenset({"MLinkWs", "MLinkRest"})


def _msg(name: str) -> MessageDef:
    found = lookup(name)
    if found is None:  # pragma: no cover - the dictionary ships with the package
        raise RuntimeError(f"{name} missing from the data dictionary")
    return found


ADMIN = _msg("MLinkAdmin")
DATA_ACK = _msg("MLinkDataAck")
HEARTBEAT = _msg("MLinkHeartbeat")
STREAM_ACK = _msg("MLinkStreamAck")
CHECKPT = _msg("MLinkStreamCheckPt")


async def serve(
    config: SimConfig,
    *,
    clock_ns: ClockNs | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the simulator until cancelled; ``task_status.started(port)`` once it listens."""
    await Simulator(config, clock_ns=clock_ns).run(task_status=task_status)


class AuthState(enum.Enum):
    LOGGED_ON = "LoggedOn"
    WAITING = "WaitingLogon"
    FAILED = "LogonFailed"


class Simulator:
    """One simulated MLink server: the market, the listener and every live connection.

    :meth:`run` listens on TCP and runs the market; tests that join client and server with
    in-memory streams run :meth:`run_market` and hand each server-side stream to
    :meth:`serve_stream`.  ``errors`` collects unexpected per-connection exceptions.
    """

    def __init__(self, config: SimConfig, *, clock_ns: ClockNs | None = None) -> None:
        self.cfg = config
        self.clock_ns: ClockNs = clock_ns or time.time_ns
        self.market = Market(
            seed=config.seed,
            start_ns=self.clock_ns(),
            types=config.types,
            symbols=config.symbols,
            stripes=config.stripes,
            stripe_table=config.stripe_table,
            expiries=config.expiries,
            strikes=config.strikes,
            warmup_ns=int(config.warmup * 1e9),
        )
        self.port: int | None = None
        self.recorder = Recorder(config.record_dir) if config.record_dir is not None else None
        self.connections: dict[str, Connection] = {}
        self._subs: dict[str, list[Subscription]] = defaultdict(list)
        self.sending = 0  # record batches being written to a socket right now
        # Connection ids continue after any recording already in record_dir (a restarted
        # simulator must not overwrite what the previous one recorded).
        self._ids = itertools.count(self.recorder.next_connection_number() if self.recorder else 1)
        self._accepted = itertools.count(1)
        self._acc: dict[str, float] = {}
        self.errors: list[BaseException] = []
        self.tls_failures = 0  # TLS handshakes that failed (e.g. a client refused our cert)
        """Unexpected exceptions of connection tasks (logged; a test asserts this is empty)."""
        self._jwt_keys: dict[str, rsa.RSAPublicKey] = {}  # fetched from jwt_jwks_url, by kid
        self._jwks_fetched_at: float | None = None
        self._jwks_lock = trio.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    def busy(self) -> bool:
        """Records are waiting to be sent, or being written to a socket: what the market made is
        not all on the wire (and in the recording) yet."""
        return self.sending > 0 or any(
            sub.has_pending() for subs in self._subs.values() for sub in subs
        )

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        tls = None
        if self.cfg.tls_cert is not None and self.cfg.tls_key is not None:
            tls = server_context(self.cfg.tls_cert, self.cfg.tls_key)
        listeners = await trio.open_tcp_listeners(self.cfg.port, host=self.cfg.host)
        if len(listeners) > 1:  # one address family only, so there is one port to report
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        self.port = int(listeners[0].socket.getsockname()[1])
        async def handler(stream: trio.SocketStream) -> None:
            if tls is None:
                await self.serve_stream(stream)
                return
            ssl_stream = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
            failure: str | None = "no TLS handshake in time"
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                try:
                    await ssl_stream.do_handshake()
                    failure = None
                except trio.BrokenResourceError as exc:  # e.g. the client refused our cert
                    failure = repr(exc.__cause__ or exc)
            if failure is None:
                await self.serve_stream(ssl_stream)
                return
            self.tls_failures += 1
            log.warning("sim.tls_failed", error=failure)
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run_market)
            await nursery.start(trio.serve_listeners, handler, listeners)
            log.info(
                "sim.listening",
                url=f"{'wss' if tls else 'ws'}://{self.cfg.host}:{self.port}{self.cfg.path}",
                types=list(self.market.types),
                seed=self.cfg.seed,
            )
            task_status.started(self.port)

    async def run_market(self) -> None:
        """The market alone (no listener): pair it with :meth:`serve_stream` for in-memory tests.

        Knobs are re-read every step, so a test may swap ``self.cfg`` (e.g. to change ``rate``).
        """
        tick = self.cfg.tick_interval
        tick_ns = int(tick * 1e9)
        while True:
            await trio.sleep(tick)
            now = self.clock_ns()
            for msg_type in self.market.types:
                acc = self._acc.get(msg_type, 0.0) + self.cfg.rate_of(msg_type) * tick
                n = int(acc)
                self._acc[msg_type] = acc - n
                for i in range(n):  # spread the step's updates over the step
                    rec = self.market.update(msg_type, now - tick_ns + (i + 1) * tick_ns // n)
                    if rec is not None:
                        for sub in self._subs.get(msg_type, ()):
                            sub.offer(rec)

    # -- subscriptions --------------------------------------------------------------------------

    def register(self, sub: Subscription) -> None:
        self._subs[sub.mdef.name].append(sub)

    def unregister(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.mdef.name)
        if subs and sub in subs:
            subs.remove(sub)

    # -- connections ----------------------------------------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection on any byte stream (TCP, or an in-memory pair)."""
        conn_no = next(self._ids)
        conn_id = f"c{conn_no:04d}"
        try:
            async with trio.open_nursery() as nursery:
                reader_scope = trio.CancelScope()
                reader_nursery: trio.Nursery = await nursery.start(_hosted_nursery, reader_scope)
                request: tw.WebSocketRequest | None = None
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    request = await tw.wrap_server_stream(
                        reader_nursery, stream, max_message_size=self.cfg.max_inbound_bytes
                    )
                if request is not None:
                    await self._serve_request(conn_id, request, stream, reader_scope)
                nursery.cancel_scope.cancel()
        except Exception as exc:
            # One broken connection must not take the server down; tests check ``errors``.
            self.errors.append(exc)
            log.exception("sim.connection_failed", conn=conn_id)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_request(
        self,
        conn_id: str,
        request: tw.WebSocketRequest,
        stream: trio.abc.Stream,
        reader_scope: trio.CancelScope,
    ) -> None:
        cfg = self.cfg
        target = urlsplit(request.path)
        if target.path != cfg.path:
            log.info("sim.rejected", conn=conn_id, status=404, path=target.path)
            await request.reject(404, body=b"not found\n")
            return
        nth = next(self._accepted)  # faulty_connections counts this run's connections
        faulty = cfg.faults.faulty_connections is None or nth <= cfg.faults.faulty_connections
        faults = FaultState(cfg.faults, random.Random(f"{cfg.seed}:{conn_id}"), active=faulty)
        cred, via = _credentials(request.headers, target.query, cfg.accept_query_apikey)
        if cred is not None:
            await self.prepare_credential(cred)
        if cred is None:
            state = AuthState.WAITING
        elif self.key_ok(cred, faults):
            state = AuthState.LOGGED_ON
        elif cfg.bad_key_mode == "http_401":
            log.info("sim.rejected", conn=conn_id, status=401, auth=via)
            await request.reject(
                401, extra_headers=[(b"WWW-Authenticate", b"Bearer")], body=b"invalid api key\n"
            )
            return
        else:
            state = AuthState.FAILED
        ws = await request.accept()
        log.info("sim.connected", conn=conn_id, auth=via or "none", state=state.value)
        recording = self.recorder.connection(conn_id) if self.recorder is not None else None
        conn = Connection(self, conn_id, ws, stream, faults, recording, reader_scope)
        self.connections[conn_id] = conn
        try:
            await conn.run(state)
        finally:
            del self.connections[conn_id]

    def key_ok(self, cred: str, faults: FaultState) -> bool:
        """Whether a bearer token / apiKey / JWT is accepted (never logged).

        A JWT (``auth_mode`` ``jwt`` or ``either``) needs the pool's keys at hand: await
        :meth:`prepare_credential` first.
        """
        if faults.faults.auth_reject:
            return False
        if self.cfg.auth_mode != "api_key" and looks_like_jwt(cred):
            why = self.jwt_problem(cred)
            if why is not None:
                log.info("sim.jwt_rejected", reason=why)
            return why is None
        if self.cfg.auth_mode == "jwt":
            log.info("sim.jwt_rejected", reason="an API key, but only JWTs are accepted")
            return False
        if not self.cfg.api_keys:
            return bool(cred)
        given = cred.encode()
        ok = False
        for key in self.cfg.api_keys:  # no early exit: do not leak which prefix matched
            ok |= hmac.compare_digest(given, key.encode())
        return ok

    def jwt_problem(self, token: str) -> str | None:
        """Why ``token`` is not a valid JWT of the configured pool (None: it is)."""
        cfg = self.cfg
        keys = rsa_public_keys(cfg.jwt_jwks) if cfg.jwt_jwks is not None else self._jwt_keys
        return verify_jwt(
            token,
            keys,
            issuer=cfg.jwt_issuer or "",
            audiences=cfg.jwt_audiences,
            token_uses=cfg.jwt_token_uses,
            now_s=self.clock_ns() / 1e9,
        )

    async def prepare_credential(self, cred: str) -> None:
        """Fetch the pool's signing keys (JWKS) if ``cred`` is a JWT signed by a key not yet
        known; at most once a minute, in a thread (it is blocking HTTP)."""
        cfg = self.cfg
        if cfg.auth_mode == "api_key" or cfg.jwt_jwks is not None or not looks_like_jwt(cred):
            return
        async with self._jwks_lock:  # connections arriving meanwhile wait for this fetch
            if _jwt_kid(cred) in self._jwt_keys:
                return
            now = trio.current_time()
            if self._jwks_fetched_at is not None and now - self._jwks_fetched_at < 60:
                return
            self._jwks_fetched_at = now
            issuer = (cfg.jwt_issuer or "").rstrip("/")
            url = cfg.jwt_jwks_url or f"{issuer}/.well-known/jwks.json"
            try:
                document = await trio.to_thread.run_sync(_fetch_json, url)
                self._jwt_keys = rsa_public_keys(document)
            except (OSError, ValueError) as exc:
                log.warning("sim.jwks_unavailable", url=url, error=f"{type(exc).__name__}: {exc}")
                return
            log.info("sim.jwks_loaded", url=url, keys=len(self._jwt_keys))


# ---------------------------------------------------------------------------------------------
# JWT (PROTOCOL §2.4): RS256 signature, issuer, expiry, token use, app client
# ---------------------------------------------------------------------------------------------


def looks_like_jwt(cred: str) -> bool:
    """Three base64url parts, the first a JSON object (API keys have at most one dot)."""
    return cred.startswith("eyJ") and cred.count(".") == 2


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwt_kid(token: str) -> str:
    try:
        header = json.loads(_b64url(token.split(".", 1)[0]))
    except (ValueError, binascii.Error):
        return ""
    return str(header.get("kid", "")) if isinstance(header, dict) else ""


def rsa_public_keys(jwks: Mapping[str, Any]) -> dict[str, rsa.RSAPublicKey]:
    """The RSA signing keys of a JWKS document, by ``kid`` (other keys are ignored)."""
    out: dict[str, rsa.RSAPublicKey] = {}
    keys = jwks.get("keys")
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256") != "RS256":
            continue
        try:
            n = int.from_bytes(_b64url(str(jwk["n"])), "big")
            e = int.from_bytes(_b64url(str(jwk["e"])), "big")
            out[str(jwk.get("kid", ""))] = rsa.RSAPublicNumbers(e, n).public_key()
        except (KeyError, ValueError, binascii.Error):
            continue
    return out


def verify_jwt(
    token: str,
    keys: Mapping[str, rsa.RSAPublicKey],
    *,
    issuer: str,
    audiences: frozenset[str] = frozenset(),
    token_uses: frozenset[str] = frozenset({"access", "id"}),
    now_s: float,
) -> str | None:
    """None if ``token`` is a valid Cognito JWT of ``issuer``; else why not (no token text).

    Only RS256 is accepted (no ``none``, no HMAC with a public key), with a key of ``keys``.
    """
    try:
        h64, p64, s64 = token.split(".")
        header, claims, signature = json.loads(_b64url(h64)), json.loads(_b64url(p64)), _b64url(s64)
    except (ValueError, binascii.Error):
        return "not a JWT"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "not a JWT"
    if header.get("alg") != "RS256":
        return f"algorithm {str(header.get('alg'))[:10]!r} is not RS256"
    key = keys.get(str(header.get("kid", "")))
    if key is None:
        return "signed by an unknown key (kid not in the pool's JWKS)"
    try:
        key.verify(signature, f"{h64}.{p64}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, UnicodeEncodeError):
        return "bad signature"
    if claims.get("iss") != issuer:
        return "issued by another user pool"
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= now_s:
        return "expired"
    use = claims.get("token_use")
    if use not in token_uses:
        return f"token_use {str(use)[:10]!r} not accepted"
    if audiences:
        client = claims.get("client_id") if use == "access" else claims.get("aud")
        if client not in audiences:
            return "issued to another app client"
    return None


def _fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # http(s) only: checked in config
        return json.loads(response.read())


async def _hosted_nursery(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[trio.Nursery]
) -> None:
    """A nursery whose tasks (the WebSocket reader) can be stopped alone (half-open fault)."""
    with scope:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()


def _credentials(
    headers: Sequence[tuple[bytes, bytes]], query: str, allow_query: bool
) -> tuple[str | None, str | None]:
    """``(credential, where it came from)`` from the upgrade request."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), "bearer"
    if allow_query:
        keys = parse_qs(query).get("apikey")
        if keys and keys[0]:
            return keys[0], "query"
    return None, None


# ---------------------------------------------------------------------------------------------
# One connection
# ---------------------------------------------------------------------------------------------


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
        api_key = _opt_str(message.get("apiKey"))
        password = _opt_str(message.get("password")) or _opt_str(message.get("apiPassword"))
        jwt_token = _opt_str(message.get("jwtToken"))  # "Cognito JWT token" (§2.3)
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
                if isinstance(item, _BadInbound):
                    await self.send([self._data_ack(item.type_number, item.result, item.detail)])
                else:
                    await self._dispatch(item)

    def _data_ack(self, type_number: int, result: str, detail: str) -> OutFrame:
        values = {"msgType": type_number, "result": result, "detail": detail[:250]}
        return self.control(DATA_ACK, values)

    async def _dispatch(self, item: _Inbound) -> None:
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
        mdef = _resolve_msg_name(req.msg_name_raw)
        if mdef is None:
            await self._ack(req, "UnkwnMsgType", f"unknown message type: {req.msg_name_text}")
            return
        if mdef.token in _CONTROL_TOKENS:
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
            view = _parse_view(req.view, mdef) if req.view else None
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
        session = _opt_int(message.get("sessionID"))
        signal_id = _opt_int(message.get("signalID")) or 0
        full = (_opt_str(message.get("readyScan")) or "").casefold() == "fullscan"
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


# ---------------------------------------------------------------------------------------------
# Stream requests and subscriptions
# ---------------------------------------------------------------------------------------------


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) and v != "" else None


def _opt_int(v: Any) -> int | None:
    """Lenient int: ints, integral floats and numeric strings; ``""`` and others are absent."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    return None


def _resolve_msg_name(raw: Any) -> MessageDef | None:
    """msgName is a type name (any case) or its protobuf message number (§6.1)."""
    number = _opt_int(raw)
    if number is not None:
        return by_number(number)
    if isinstance(raw, str):
        return lookup(raw.strip())
    return None


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """The MLinkStream fields the simulator uses; unknown fields are ignored, ``""`` = absent."""

    msg_name_raw: Any
    msg_name_text: str | None
    session_id: int = 0
    query_id: int | None = None
    label: str | None = None
    unsubscribe: bool = False
    stripe: str | None = None
    highwater_ts: int | None = None
    active_latency: int = 0
    where: str | None = None
    view: str | None = None

    @classmethod
    def parse(cls, m: Mapping[str, Any]) -> StreamRequest:
        raw = m.get("msgName")
        if isinstance(raw, str):
            text: str | None = raw if raw.strip() else None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            text = str(raw)
        else:
            text = None
        return cls(
            msg_name_raw=raw,
            msg_name_text=text,
            session_id=_opt_int(m.get("sessionID")) or 0,
            query_id=_opt_int(m.get("queryID")),
            label=_opt_str(m.get("queryLabel")),
            unsubscribe=(_opt_str(m.get("unsubscribe")) or "").casefold() == "yes",
            stripe=_opt_str(m.get("stripeFilter")),
            highwater_ts=_opt_int(m.get("highwaterTs")),
            active_latency=_opt_int(m.get("activeLatency")) or 0,
            where=_opt_str(m.get("where")),
            view=_opt_str(m.get("view")),
        )


@dataclass(eq=False)
class Subscription:
    """One active MLinkStream on one connection: filter, pending updates, counters."""

    conn: Connection
    mdef: MessageDef
    req: StreamRequest
    stripe: str | None
    where: Callable[[Mapping[str, Any]], bool] | None
    view: frozenset[str] | None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    wake: trio.Event = field(default_factory=trio.Event)
    signals: deque[tuple[int, bool]] = field(default_factory=deque)
    live: bool = False
    sent: int = 0
    bytes_sent: int = 0
    high_ns: int = 0
    cp_stim_ns: int | None = None
    _pending: dict[tuple[Hashable, ...], Record] = field(default_factory=dict)
    _fifo: deque[Record] = field(default_factory=deque)

    def accepts(self, rec: Record) -> bool:
        if self.stripe is not None and self.stripe not in rec.stripes:
            return False
        return self.where is None or self.where(rec.values)

    def wants_snapshot(self, rec: Record) -> bool:
        """highwaterTs: absent/0 = everything, -1 = nothing, T = records sent after T (§6.1)."""
        hw = self.req.highwater_ts
        if hw is not None and hw < 0:
            return False
        if hw and rec.sent_ns <= hw:
            return False
        return self.accepts(rec)

    def offer(self, rec: Record) -> None:
        """A new record from the market (called synchronously by the market loop)."""
        if not self.accepts(rec):
            return
        if self.conn.cfg.conflate:
            self._pending.pop(rec.pkey, None)  # keep the map in update order
            self._pending[rec.pkey] = rec
        else:
            self._fifo.append(rec)
            if len(self._fifo) > self.conn.cfg.max_pending:
                self._fifo.clear()
                self.conn.kill_slow_consumer(self)
                return
        self.wake.set()

    def has_pending(self) -> bool:
        return bool(self._pending or self._fifo)

    def take(self) -> list[Record]:
        if self.conn.cfg.conflate:
            out = list(self._pending.values())
            self._pending.clear()
        else:
            out = list(self._fifo)
            self._fifo.clear()
        return out

    def count(self, records: Sequence[Record], frames: Sequence[OutFrame]) -> None:
        self.sent += len(records)
        self.bytes_sent += sum(len(f.body) + 14 for f in frames)
        for r in records:
            self.high_ns = max(self.high_ns, r.sent_ns)


# ---------------------------------------------------------------------------------------------
# Inbound parsing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inbound:
    type_number: int
    obj: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _BadInbound:
    type_number: int
    result: str  # MLinkDataAck result: FrameError or JsonError
    detail: str


def parse_inbound(data: bytes) -> list[_Inbound | _BadInbound]:
    """One inbound WebSocket message -> requests, or errors to answer with MLinkDataAck.

    Framed (``\\r\\nJ``/``\\r\\nP`` + 11 digits, several per message allowed; the type digits
    are ignored) or one raw JSON object (§4.2).  Each message is parsed on its own: a frame cut
    at the end of a message is a FrameError, not carried over.
    """
    if data.startswith(b"\r\n"):
        dec = FrameDecoder()
        events = [*dec.feed(data), *dec.flush()]
        out: list[_Inbound | _BadInbound] = []
        for ev in events:
            if isinstance(ev, Frame):
                out.append(_parse_json(ev.body, ev.type_number))
            else:
                out.append(_BadInbound(0, "FrameError", f"bad frame: {ev.reason}"))
        return out
    if data.strip().startswith(b"{"):
        return [_parse_json(data, 0)]
    return [_BadInbound(0, "FrameError", "expected a JSON object or a \\r\\nJ frame")]


def _parse_json(body: bytes, type_number: int) -> _Inbound | _BadInbound:
    try:
        obj = json.loads(body)
    except ValueError as exc:
        return _BadInbound(type_number, "JsonError", f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return _BadInbound(type_number, "JsonError", "not a JSON object")
    return _Inbound(type_number, obj)


# ---------------------------------------------------------------------------------------------
# where / view (MLinkStream filters, §6.1)
# ---------------------------------------------------------------------------------------------


_NUMERIC = frozenset({"Float", "Double", "Int", "UInt", "Long", "Short", "UShort", "Byte"})
_TOKEN = re.compile(r"\s*(\(|\)|&|\||[^()&|]+)")
_OPS = frozenset({"eq", "ne", "gt", "ge", "lt", "le", "sw", "ew", "cv", "nv", "cb"})

Predicate = Callable[[Mapping[str, Any]], bool]


def _flat_key(v: Mapping[str, Any]) -> str:
    parts = [str(v.get("tk", "")), str(v.get("ts", "")), str(v.get("at", ""))]
    if "dt" in v:
        parts.append(str(v["dt"]))
    if "xx" in v:
        parts.append(fmt_double(float(v["xx"])))
        parts.append("C" if v.get("cp") == "Call" else "P" if v.get("cp") == "Put" else "")
    return "-".join(parts)


def _field_index(mdef: MessageDef) -> dict[str, FieldDef]:
    return {f.name.casefold(): f for f in mdef.fields if f.repeater is None}


def compile_where(text: str, mdef: MessageDef) -> Predicate:
    """Compile an MLinkStream ``where`` clause against a message type's fields.

    Supports ``field:op:value`` with ops eq ne gt ge lt le sw ew cv (contains) nv (does not
    contain) cb (between, ``lo$hi``), key sub-fields (``okey.tk``) and flat keys
    (``ticker:eq:AAPL-NMS-EQT``), ``&`` (also ``%26``), ``|`` and parentheses.  Field names are
    case-insensitive; absent fields compare as their default (0 / ``""``).
    """
    tokens = [t.strip() for t in _TOKEN.findall(text.replace("%26", "&")) if t.strip()]
    if not tokens:
        raise WhereError("empty where clause")
    fields_by_name = _field_index(mdef)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def expr() -> Predicate:
        nonlocal pos
        terms = [term()]
        while peek() == "|":
            pos += 1
            terms.append(term())
        return terms[0] if len(terms) == 1 else (lambda v: any(t(v) for t in terms))

    def term() -> Predicate:
        nonlocal pos
        factors = [factor()]
        while peek() == "&":
            pos += 1
            factors.append(factor())
        return factors[0] if len(factors) == 1 else (lambda v: all(f(v) for f in factors))

    def factor() -> Predicate:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise WhereError("where clause ends early")
        pos += 1
        if tok == "(":
            inner = expr()
            if peek() != ")":
                raise WhereError("unbalanced parentheses in where clause")
            pos += 1
            return inner
        if tok in (")", "&", "|"):
            raise WhereError(f"unexpected {tok!r} in where clause")
        return _condition(tok, fields_by_name)

    pred = expr()
    if pos != len(tokens):
        raise WhereError(f"unexpected {tokens[pos]!r} in where clause")
    return pred


def _condition(text: str, fields_by_name: Mapping[str, FieldDef]) -> Predicate:
    parts = text.split(":", 2)
    if len(parts) != 3:
        raise WhereError(f"bad condition {text!r} (expected field:op:value)")
    path, op, want = parts[0].strip(), parts[1].strip().casefold(), parts[2].strip()
    if op not in _OPS:
        raise WhereError(f"unknown operator {op!r} in {text!r}")
    name, _, sub = path.casefold().partition(".")
    f = fields_by_name.get(name)
    if f is None:
        raise WhereError(f"unknown field {path!r} in where clause")
    if sub and (f.ftype not in ("TickerKey", "ExpiryKey", "OptionKey") or sub not in _SUBS):
        raise WhereError(f"unknown sub-field {path!r} in where clause")
    numeric = f.ftype in _NUMERIC or sub == "xx"

    def get(values: Mapping[str, Any]) -> Any:
        v = values.get(f.name)
        if sub:
            return v.get(sub, "") if isinstance(v, Mapping) else ""
        if isinstance(v, Mapping):
            return _flat_key(v)
        if f.ftype == "DateTime" and isinstance(v, int):
            return utc_text(v)
        if v is None:
            return 0 if numeric else ""
        return v

    def num(s: str) -> float:
        try:
            return float(s)
        except ValueError:
            raise WhereError(f"{path} needs a number, got {s!r}") from None

    if op == "cb":
        lo_s, sep, hi_s = want.partition("$")
        if not sep:
            raise WhereError(f"cb needs lo$hi, got {want!r}")
        if numeric:
            lo, hi = num(lo_s), num(hi_s)
            return lambda v: lo <= float(get(v)) <= hi
        lo_t, hi_t = lo_s.casefold(), hi_s.casefold()
        return lambda v: lo_t <= str(get(v)).casefold() <= hi_t
    if op in ("sw", "ew", "cv", "nv"):
        w = want.casefold()
        text_ops: dict[str, Callable[[str], bool]] = {
            "sw": lambda s: s.startswith(w),
            "ew": lambda s: s.endswith(w),
            "cv": lambda s: w in s,
            "nv": lambda s: w not in s,
        }
        check = text_ops[op]
        return lambda v: check(_text(get(v)).casefold())
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }
    cmp = compare[op]
    if numeric:
        target = num(want)
        return lambda v: cmp(float(get(v)), target)
    target_t = want.casefold()
    return lambda v: cmp(_text(get(v)).casefold(), target_t)


_SUBS = frozenset({"at", "ts", "tk", "dt", "xx", "cp"})


def _text(v: Any) -> str:
    if isinstance(v, float):
        return fmt_double(v)
    return str(v)


def _parse_view(text: str, mdef: MessageDef) -> frozenset[str]:
    """``view``: field names separated by ``|`` (the examples) or ``,`` (the description)."""
    names = [n.strip().casefold() for n in re.split(r"[|,]", text) if n.strip()]
    index = _field_index(mdef)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise WhereError(f"unknown field(s) in view: {', '.join(unknown)}")
    return frozenset(names)
