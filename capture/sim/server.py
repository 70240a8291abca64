"""The MLink simulator: a trio-websocket server that speaks JSONFramed like PROTOCOL.md says.

Session (§7.1): the upgrade is authenticated from ``Authorization: Bearer KEY[.PASSWORD]``
(optionally ``?apikey=``), or from a Cognito JWT (``auth_mode``: RS256 signature checked against
the pool's published keys, issuer, expiry, token use, app client; :mod:`capture.sim.cognito_jwt`),
then each accepted WebSocket is served by a :class:`~capture.sim.connection.Connection`.

Flow control (§7.3): the market publishes into a per-stream "dirty pkey -> latest record" map
(:class:`~capture.sim.subscriptions.Subscription`), flushed at most every ``activeLatency`` ms;
while the socket is slow, newer records replace older ones in the map.  Memory per stream is
bounded by the number of pkeys (or by ``max_pending`` with conflation off).

Time comes from an injectable wall clock (``clock_ns``) and all waiting from trio, so tests can
run on ``trio.testing.MockClock``.

The server's parts are re-exported here: control messages, inbound parsing, stream requests,
``where``/``view`` filters and JWT checks.
"""

from __future__ import annotations

import hmac
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import structlog
import trio
import trio_websocket as tw
from cryptography.hazmat.primitives.asymmetric import rsa

from capture.errors import WhereError
from capture.sim.cognito_jwt import (
    fetch_json,
    jwt_kid,
    looks_like_jwt,
    rsa_public_keys,
    verify_jwt,
)
from capture.sim.config import SimConfig
from capture.sim.connection import Connection
from capture.sim.control_messages import (
    ADMIN,
    CHECKPT,
    DATA_ACK,
    HEARTBEAT,
    STREAM_ACK,
    AuthState,
)
from capture.sim.faults import FaultState
from capture.sim.inbound import parse_inbound
from capture.sim.market import Market
from capture.sim.record import Recorder
from capture.sim.stream_filters import compile_where
from capture.sim.subscriptions import StreamRequest, Subscription
from capture.sim.tls import server_context

__all__ = [
    "ADMIN",
    "CHECKPT",
    "DATA_ACK",
    "HEARTBEAT",
    "STREAM_ACK",
    "AuthState",
    "ClockNs",
    "Connection",
    "Simulator",
    "StreamRequest",
    "Subscription",
    "WhereError",
    "compile_where",
    "parse_inbound",
    "rsa_public_keys",
    "serve",
    "verify_jwt",
]

log = structlog.get_logger("capture.sim")

ClockNs = Callable[[], int]
HANDSHAKE_TIMEOUT = 10.0


async def serve(
    config: SimConfig,
    *,
    clock_ns: ClockNs | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the simulator until cancelled; ``task_status.started(port)`` once it listens."""
    await Simulator(config, clock_ns=clock_ns).run(task_status=task_status)


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
            if jwt_kid(cred) in self._jwt_keys:
                return
            now = trio.current_time()
            if self._jwks_fetched_at is not None and now - self._jwks_fetched_at < 60:
                return
            self._jwks_fetched_at = now
            issuer = (cfg.jwt_issuer or "").rstrip("/")
            url = cfg.jwt_jwks_url or f"{issuer}/.well-known/jwks.json"
            try:
                document = await trio.to_thread.run_sync(fetch_json, url)
                self._jwt_keys = rsa_public_keys(document)
            except (OSError, ValueError) as exc:
                log.warning("sim.jwks_unavailable", url=url, error=f"{type(exc).__name__}: {exc}")
                return
            log.info("sim.jwks_loaded", url=url, keys=len(self._jwt_keys))


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
