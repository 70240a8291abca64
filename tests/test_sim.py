"""The MLink simulator over real loopback WebSockets (trio-websocket client), on trio's MockClock.

Every session test checks the protocol sequence of PROTOCOL.md §7.1 from the client's side.  Time
is virtual (``MockClock(autojump_threshold=0)``): heartbeats, latencies and stalls are waited for
deterministically, nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

import pytest
import structlog
import structlog.testing
import trio
import trio_websocket as tw
from trio.testing import MockClock

from capture import stripes
from capture.config import ConfigError
from capture.frames import Frame, FrameDecoder, Garbage, encode_client_frame
from capture.schemas import lookup, registry
from capture.sim import build_parser, config_from_args, main
from capture.sim.config import SimConfig
from capture.sim.faults import UNKNOWN_TYPE_NUMBER, Faults
from capture.sim.market import (
    CORE_TYPES,
    Market,
    central_ms,
    fmt_double,
    fmt_float32,
    utc_text,
)
from capture.sim.record import load_sent_data, recorded_bytes
from capture.sim.server import Simulator, WhereError, compile_where, parse_inbound
from capture.sim.tls import make_test_ca

BASE_NS = 1_748_875_510_000_000_000  # 2025-06-02 14:45:10 UTC, a Monday
KEY = "1234-5678-9012-3141"
SMALL: dict[str, Any] = {
    "symbols": ("AAPL", "MSFT", "SPY", "SPX", "ES"),
    "expiries": 1,
    "strikes": 1,
    "api_keys": frozenset({KEY}),
}
SAMPLES = (Path(__file__).parent / "data" / "samples.jsonf").read_bytes()

P = ParamSpec("P")


def mock_trio(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an async test under trio with a virtual clock that jumps whenever all tasks block."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def main() -> None:
            await fn(*args, **kwargs)

        trio.run(main, clock=MockClock(autojump_threshold=0))

    return wrapper


def clock_ns() -> int:
    return BASE_NS + round(trio.current_time() * 1e9)


@asynccontextmanager
async def running(**knobs: Any) -> AsyncIterator[Simulator]:
    cfg = SimConfig(**{**SMALL, **knobs})
    sim = Simulator(cfg, clock_ns=clock_ns)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        yield sim
        nursery.cancel_scope.cancel()
    assert sim.errors == []


@dataclass(frozen=True)
class Msg:
    mtyp: str
    header: dict[str, Any]
    message: dict[str, Any]
    frame: Frame

    @property
    def stim_ns(self) -> int:
        return parse_utc_ns(self.header["sTim"])


def parse_utc_ns(text: str) -> int:
    date, clock = text.split(" ")
    y, mo, d = (int(x) for x in date.split("-"))
    hh, mm, rest = clock.split(":")
    ss, us = rest.split(".")
    t = dt.datetime(y, mo, d, int(hh), int(mm), int(ss), int(us), tzinfo=dt.UTC)
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


class Client:
    """A JSONFramed client: frames decoded by length across WebSocket messages."""

    def __init__(self, ws: tw.WebSocketConnection) -> None:
        self.ws = ws
        self.dec = FrameDecoder()
        self.pending: deque[Frame] = deque()
        self.raw = bytearray()
        self.ws_messages: list[bytes | str] = []
        self.garbage: list[Garbage] = []

    async def frame(self) -> Frame:
        while not self.pending:
            m = await self.ws.get_message()
            self.ws_messages.append(m)
            data = m.encode("utf-8") if isinstance(m, str) else m
            self.raw += data
            for ev in self.dec.feed(data):
                if isinstance(ev, Frame):
                    self.pending.append(ev)
                else:
                    self.garbage.append(ev)
        return self.pending.popleft()

    async def msg(self) -> Msg:
        fr = await self.frame()
        obj = json.loads(fr.body)
        return Msg(obj["header"]["mTyp"], obj["header"], obj["message"], fr)

    async def until(self, mtyp: str, **match: Any) -> list[Msg]:
        """Messages up to and including the first ``mtyp`` whose message has ``match``."""
        out = []
        while True:
            m = await self.msg()
            out.append(m)
            if m.mtyp == mtyp and all(m.message.get(k) == v for k, v in match.items()):
                return out

    async def skip_heartbeats(self) -> Msg:
        while True:
            m = await self.msg()
            if m.mtyp != "MLinkHeartbeat":
                return m

    async def send(
        self, message: Mapping[str, Any], mtyp: str = "MLinkStream", *, framed: bool = True
    ) -> None:
        body = json.dumps({"header": {"mTyp": mtyp}, "message": message}).encode()
        await self.ws.send_message(encode_client_frame(body) if framed else body)

    async def stream(self, msg_name: Any, **fields: Any) -> None:
        await self.send({"msgName": msg_name, "activeLatency": 1, **fields})

    async def closed(self) -> tw.CloseReason:
        """Read until the server closes; returns the close reason."""
        while True:
            try:
                await self.frame()
            except tw.ConnectionClosed as exc:
                assert exc.reason is not None
                return exc.reason


@asynccontextmanager
async def connect(
    port: int, *, key: str | None = KEY, path: str = "/mlink/jsonf"
) -> AsyncIterator[Client]:
    headers = [(b"Authorization", f"Bearer {key}".encode())] if key is not None else []
    async with tw.open_websocket(
        "127.0.0.1", port, path, use_ssl=False, extra_headers=headers
    ) as ws:
        yield Client(ws)


async def logged_on(client: Client) -> None:
    m = await client.msg()
    assert (m.mtyp, m.message) == ("MLinkAdmin", {"state": "LoggedOn"})


def data_msgs(msgs: list[Msg]) -> list[Msg]:
    return [m for m in msgs if not m.mtyp.startswith("MLink")]


def stripe_of_msg(m: Msg) -> frozenset[str]:
    key = next(iter(m.message["pkey"].values()))
    return stripes.stripes_of(key["tk"], key["ts"], key["at"])


def pkey_text(m: Msg) -> str:
    return json.dumps(m.message["pkey"], sort_keys=True)


def record_pkey(message_json: str) -> str:
    return json.dumps(json.loads(message_json)["pkey"], sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Session sequence
# ---------------------------------------------------------------------------------------------


@mock_trio
async def test_stream_sequence_snapshot_then_live() -> None:
    async with running(rate=40) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream("optionNBBOquote", stripeFilter="A", queryID=101, queryLabel="capture-A")
        ack = await c.msg()
        assert ack.mtyp == "MLinkStreamAck"
        # msgName echoed as written; queryID echoed (knob); queryLabel not (the real example).
        assert ack.message == {"queryID": 101, "msgName": "optionNBBOquote", "result": "OK"}
        begin = await c.msg()
        assert begin.mtyp == "MLinkStreamCheckPt" and begin.message["state"] == "Begin"
        msgs = await c.until("MLinkStreamCheckPt", state="Active")
        snapshot, active = data_msgs(msgs), msgs[-1]
        expected = [
            r for r in sim.market.snapshot("OptionNbboQuote") if "A" in r.stripes
        ]  # rate > 0: pkeys are stable, values may have moved on since
        assert len(snapshot) == len(expected) > 0
        assert {pkey_text(m) for m in snapshot} == {record_pkey(r.message_json()) for r in expected}
        assert all("A" in stripe_of_msg(m) for m in snapshot)
        assert active.message["numMessagesSent"] == len(snapshot)
        assert active.message["queryID"] == 101
        complete = await c.msg()
        assert complete.mtyp == "MLinkStreamCheckPt" and complete.message["state"] == "Complete"
        # Snapshot records keep their original sTim (older than Begin), encT is fresh.
        assert all(m.stim_ns < begin.stim_ns for m in snapshot)
        assert all(m.header["encT"] >= begin.header["sTim"] for m in snapshot)
        # Checkpoints of one stream keep the sTim of the first one.
        assert begin.header["sTim"] == active.header["sTim"] == complete.header["sTim"]
        live: list[Msg] = []
        while len(live) < 5:
            m = await c.skip_heartbeats()
            assert m.mtyp == "OptionNbboQuote"
            live.append(m)
        assert all("A" in stripe_of_msg(m) for m in live)
        assert all(m.stim_ns > begin.stim_ns for m in live)


@mock_trio
async def test_request_sent_before_logon_reply_is_served() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        await c.stream("StockBookQuote", stripeFilter="M")  # not waiting for MLinkAdmin first
        await logged_on(c)
        assert (await c.msg()).message["result"] == "OK"


@mock_trio
async def test_header_layout_and_default_fields_omitted() -> None:
    async with running(rate=30) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        for t in ("OptionNbboQuote", "StockBookQuote", "StockPrint", "OptionPrint"):
            await c.stream(t)
        seen: set[str] = set()
        checked = 0
        while checked < 300:
            m = await c.msg()
            assert list(m.header) == [
                "mTyp", "sEnv0", "sRlm0", "sID", "kLen", "mLen",
                "seqN", "appN", "mn", "sTim", "encT", "git",
            ]  # fmt: skip
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", m.header["encT"])
            assert m.frame.type_number == _number(m.mtyp)
            # Whole-valued numbers never carry a fraction; no default value is ever sent.
            assert re.search(rb"[:,\[]-?\d+\.0+[,}\]]", m.frame.body) is None
            for name, value in m.message.items():
                if name == "pkey":
                    continue
                assert value not in (0, "", "None"), f"{m.mtyp}.{name} sent at default"
            if not m.mtyp.startswith("MLink"):
                seen.add(m.mtyp)
                assert m.header["sID"] != 0 and m.header["seqN"] != 0
                checked += 1
        assert seen == {"OptionNbboQuote", "StockBookQuote", "StockPrint", "OptionPrint"}


def _number(mtyp: str) -> int:
    found = lookup(mtyp)
    assert found is not None
    return found.number


@mock_trio
async def test_heartbeats_every_interval_with_rising_seq() -> None:
    async with running(rate=0, heartbeat_interval=10.0) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        t0 = trio.current_time()
        beats = [await c.msg() for _ in range(3)]
        assert [b.mtyp for b in beats] == ["MLinkHeartbeat"] * 3
        assert [b.message["seqNum"] for b in beats] == [1, 2, 3]
        assert trio.current_time() - t0 == pytest.approx(30.0)  # virtual time: exact
        assert beats[0].message["timestamp"] == utc_text(BASE_NS + 10 * 10**9)


# ---------------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------------


@mock_trio
async def test_wrong_key_logon_failed_then_close() -> None:
    async with running() as sim, connect(sim.port or 0, key="wrong") as c:
        m = await c.msg()
        assert m.mtyp == "MLinkAdmin" and m.message["state"] == "LogonFailed"
        assert m.message["detail"]
        reason = await c.closed()
        assert reason.code == 1008


@mock_trio
async def test_wrong_key_wait_mode_accepts_inband_logon() -> None:
    async with (
        running(bad_key_mode="logon_failed_wait") as sim,
        connect(sim.port or 0, key="wrong") as c,
    ):
        assert (await c.msg()).message["state"] == "LogonFailed"
        await c.stream("StockBookQuote")
        refused = await c.msg()
        assert refused.mtyp == "MLinkStreamAck" and refused.message["result"] == "Error"
        await c.send({"apiKey": KEY}, "MLinkLogon")
        assert (await c.msg()).message == {"state": "LoggedOn"}
        await c.stream("StockBookQuote")
        assert (await c.msg()).message["result"] == "OK"


@mock_trio
async def test_wrong_key_http_401() -> None:
    async with running(bad_key_mode="http_401") as sim:
        with pytest.raises(tw.ConnectionRejected) as info:
            async with connect(sim.port or 0, key="wrong"):
                pass
        assert info.value.status_code == 401


@mock_trio
async def test_no_credentials_waiting_logon_then_unframed_logon() -> None:
    async with running() as sim, connect(sim.port or 0, key=None) as c:
        assert (await c.msg()).message == {"state": "WaitingLogon"}
        await c.send({"apiKey": "nope"}, "MLinkLogon", framed=False)
        assert (await c.msg()).message["state"] == "LogonFailed"
        assert (await c.closed()).code == 1008


@mock_trio
async def test_inband_logon_with_key_and_password() -> None:
    async with running(api_keys=frozenset({"K.P"})) as sim, connect(sim.port or 0, key=None) as c:
        assert (await c.msg()).message == {"state": "WaitingLogon"}
        await c.send({"apiKey": "K", "password": "P"}, "MLinkLogon", framed=False)
        assert (await c.msg()).message == {"state": "LoggedOn"}


@mock_trio
async def test_query_apikey_knob() -> None:
    async with running() as sim:
        async with connect(sim.port or 0, key=None, path=f"/mlink/jsonf?apikey={KEY}") as c:
            await logged_on(c)
    async with running(accept_query_apikey=False) as sim:
        async with connect(sim.port or 0, key=None, path=f"/mlink/jsonf?apikey={KEY}") as c:
            assert (await c.msg()).message == {"state": "WaitingLogon"}


@mock_trio
async def test_other_paths_get_404() -> None:
    async with running() as sim:
        for path in ("/mlink/json", "/", "/mlink/jsonf/x"):
            with pytest.raises(tw.ConnectionRejected) as info:
                async with connect(sim.port or 0, path=path):
                    pass
            assert info.value.status_code == 404


@mock_trio
async def test_auth_reject_fault_refuses_a_good_key() -> None:
    async with running(faults=Faults(auth_reject=True)) as sim, connect(sim.port or 0) as c:
        assert (await c.msg()).message["state"] == "LogonFailed"


# ---------------------------------------------------------------------------------------------
# MLinkStream requests
# ---------------------------------------------------------------------------------------------


@mock_trio
async def test_unknown_msg_name_gets_unkwnmsgtype_and_nothing_else() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream("OptionNbboQuotes", queryID=1)
        await c.stream("StockBookQuote", queryID=2, stripeFilter="D")
        ack = await c.msg()
        assert ack.message["result"] == "UnkwnMsgType"
        assert ack.message["msgName"] == "OptionNbboQuotes"
        assert "OptionNbboQuotes" in ack.message["detail"]
        nxt = await c.msg()  # the very next message belongs to request 2
        assert nxt.mtyp == "MLinkStreamAck" and nxt.message["queryID"] == 2


@mock_trio
async def test_msg_name_as_protobuf_number() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream(3000, stripeFilter="D")
        ack = await c.msg()
        assert ack.message["msgName"] == "3000" and ack.message["result"] == "OK"
        msgs = await c.until("MLinkStreamCheckPt", state="Active")
        assert {m.mtyp for m in data_msgs(msgs)} == {"StockBookQuote"}


@mock_trio
async def test_request_errors() -> None:
    async with (
        running(rate=0, unauthorized_tokens=frozenset({"OptSurface"})) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        cases = [
            ({"msgName": "StockBookQuote", "stripeFilter": "Q"}, "Error", "unknown stripe"),
            ({"msgName": "MLinkAdmin"}, "InvldMsgType", "not a streamable"),
            ({"msgName": "LiveSurfaceCurve"}, "UnauthMsgType", "OptSurface"),
            ({"msgName": ""}, "Error", "msgName is required"),
            ({"msgName": "StockPrint", "where": "nosuch:eq:1"}, "Error", "unknown field"),
            ({"msgName": "StockPrint", "view": "prtprice|nosuch"}, "Error", "nosuch"),
            ({"msgName": "StockPrint", "unsubscribe": "Yes"}, "Warn", "no active stream"),
        ]
        for request, result, detail in cases:
            await c.send(request)
            ack = await c.msg()
            assert ack.mtyp == "MLinkStreamAck", request
            assert ack.message["result"] == result, request
            assert detail in ack.message["detail"], request
        # Nothing followed any of the refused requests.
        with trio.move_on_after(5):
            m = await c.msg()
            pytest.fail(f"unexpected {m.mtyp} after refused requests")


@mock_trio
async def test_ignores_unknown_fields_and_treats_empty_strings_as_absent() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.send(
            {
                "msgName": "StockBookQuote",
                "sesionID": "",  # misspelt, as in the vendor's example
                "signalID": "",
                "stripeFilter": "",
                "highwaterTs": "",
                "queryID": "",
                "activeLatency": 1,
                "whatever": {"nested": [1, 2]},
            }
        )
        ack = await c.msg()
        assert ack.message == {"msgName": "StockBookQuote", "result": "OK"}
        msgs = await c.until("MLinkStreamCheckPt", state="Active")
        assert len(data_msgs(msgs)) == sim.market.pkey_count("StockBookQuote")


@mock_trio
async def test_highwater_minus_one_sends_no_snapshot() -> None:
    async with running(rate=20) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream("OptionNbboQuote", highwaterTs=-1)
        assert (await c.msg()).message["result"] == "OK"
        begin, active, complete = await c.msg(), await c.msg(), await c.msg()
        assert [begin.message["state"], active.message["state"], complete.message["state"]] == [
            "Begin",
            "Active",
            "Complete",
        ]
        assert "numMessagesSent" not in active.message  # 0 is a default: omitted
        live = await c.skip_heartbeats()
        assert live.mtyp == "OptionNbboQuote" and live.stim_ns > begin.stim_ns


@mock_trio
async def test_highwater_ts_resumes_with_newer_records_only() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        cached = sim.market.snapshot("OptionNbboQuote")
        times = sorted(r.sent_ns for r in cached)
        hw = times[len(times) // 2]
        want = {record_pkey(r.message_json()) for r in cached if r.sent_ns > hw}
        assert 0 < len(want) < len(cached)
        await logged_on(c)
        await c.stream("OptionNbboQuote", highwaterTs=hw)
        msgs = await c.until("MLinkStreamCheckPt", state="Active")
        snap = data_msgs(msgs)
        assert {pkey_text(m) for m in snap} == want
        assert all(m.stim_ns > hw for m in snap)
        assert msgs[-1].message["numMessagesSent"] == len(want)


@mock_trio
async def test_replace_and_unsubscribe() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream("StockBookQuote", queryID=1)
        await c.until("MLinkStreamCheckPt", state="Complete")
        await c.stream("StockBookQuote", queryID=2)
        replaced = await c.msg()
        assert replaced.message["state"] == "Replaced" and replaced.message["queryID"] == 1
        assert (await c.msg()).message["queryID"] == 2  # the new Ack
        await c.until("MLinkStreamCheckPt", state="Complete", queryID=2)
        await c.stream("StockBookQuote", queryID=3, unsubscribe="Yes")
        ack = await c.msg()
        assert ack.message["unsubscribe"] == "Yes" and ack.message["result"] == "OK"
        term = await c.msg()
        assert term.message["state"] == "Terminated" and term.message["queryID"] == 2


@mock_trio
async def test_where_and_view() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream(
            "OptionNbboQuote",
            where="okey.tk:eq:aapl & (okey.cp:eq:Call | okey.xx:gt:1000000)",
            view="bidprice|askprice",
        )
        assert (await c.msg()).message["result"] == "OK"
        snap = data_msgs(await c.until("MLinkStreamCheckPt", state="Active"))
        assert snap
        for m in snap:
            okey = m.message["pkey"]["okey"]
            assert okey["tk"] == "AAPL" and okey["cp"] == "Call"
            assert set(m.message) <= {"pkey", "bidPrice", "askPrice"}


@mock_trio
async def test_signal_ready_mode() -> None:
    async with running(rate=50) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.send({"msgName": "StockBookQuote", "activeLatency": 0, "queryID": 9})
        await c.until("MLinkStreamCheckPt", state="Complete")
        with trio.move_on_after(15):  # activeLatency 0: nothing live until a signal
            m = await c.skip_heartbeats()
            pytest.fail(f"unexpected {m.mtyp}")
        await c.send({"signalID": 42, "readyScan": "FullScan"}, "MLinkSignalReady")
        msgs = await c.until("MLinkStreamCheckPt", signalID=42)
        data = data_msgs(msgs)
        assert len(data) == sim.market.pkey_count("StockBookQuote")
        assert msgs[-1].message["numMessagesSent"] == len(data)


# ---------------------------------------------------------------------------------------------
# Inbound framing
# ---------------------------------------------------------------------------------------------


@mock_trio
async def test_malformed_inbound_gets_data_ack_and_connection_survives() -> None:
    async with running(rate=0) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.ws.send_message("hello")
        ack = await c.msg()
        assert ack.mtyp == "MLinkDataAck" and ack.message["result"] == "FrameError"
        await c.ws.send_message(encode_client_frame(b'{"header":{"mTyp":"MLinkStream"},'))
        assert (await c.msg()).message["result"] == "JsonError"
        await c.ws.send_message(encode_client_frame(b'{"message":{}}'))
        assert (await c.msg()).message["result"] == "InvldMsgType"
        await c.ws.send_message(encode_client_frame(b"{}")[:-1])  # truncated frame
        assert (await c.msg()).message["result"] == "FrameError"
        # Two framed requests in one binary message, typed 03380 like the C++ client does.
        two = b"".join(
            encode_client_frame(
                json.dumps({"header": {"mTyp": "mlinkstream"}, "message": {"msgName": n}}).encode()
            )
            for n in ("StockPrint", "NoSuchType")
        )
        await c.ws.send_message(two)
        first, second = await c.msg(), await c.msg()
        assert first.message["msgName"] == "StockPrint" and first.message["result"] == "OK"
        nxt = second
        while nxt.mtyp != "MLinkStreamAck":  # StockPrint's checkpoints may come first
            nxt = await c.msg()
        assert nxt.message["result"] == "UnkwnMsgType"


def test_parse_inbound_forms() -> None:
    body = b'{"header":{"mTyp":"MLinkStream"},"message":{"msgName":"X"}}'
    assert [type(x).__name__ for x in parse_inbound(encode_client_frame(body))] == ["Inbound"]
    assert [type(x).__name__ for x in parse_inbound(body)] == ["Inbound"]
    assert [type(x).__name__ for x in parse_inbound(b"\r\nP03380" + b"%06d" % len(body) + body)]
    assert [getattr(x, "result", None) for x in parse_inbound(b"[1]")] == ["FrameError"]
    assert [getattr(x, "result", None) for x in parse_inbound(b"  [1]")] == ["FrameError"]
    assert [getattr(x, "result", None) for x in parse_inbound(b"{nope")] == ["JsonError"]


# ---------------------------------------------------------------------------------------------
# Outbound batching, conflation, recording
# ---------------------------------------------------------------------------------------------


@mock_trio
async def test_conflation_sends_at_most_one_record_per_pkey_per_flush() -> None:
    async with (
        running(rate=500, symbols=("AAPL",), strikes=0, types=("OptionNbboQuote",)) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("OptionNbboQuote", activeLatency=1000)
        await c.until("MLinkStreamCheckPt", state="Complete")
        flushes: dict[str, list[Msg]] = {}
        while len(flushes) < 6:
            m = await c.skip_heartbeats()
            flushes.setdefault(m.header["encT"], []).append(m)
        n_keys = sim.market.pkey_count("OptionNbboQuote")
        seqs = []
        for batch in flushes.values():
            keys = [pkey_text(m) for m in batch]
            assert len(keys) == len(set(keys)) <= n_keys
            seqs += [m.header["seqN"] for m in batch]
        # 500 updates/s over 2 pkeys, flushed once a second: intermediate updates were skipped.
        assert max(seqs) - min(seqs) + 1 > len(seqs)


@mock_trio
async def test_no_conflation_sends_every_update() -> None:
    async with (
        running(rate=200, conflate=False, types=("OptionNbboQuote",), symbols=("AAPL",)) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("OptionNbboQuote", activeLatency=50)
        await c.until("MLinkStreamCheckPt", state="Complete")
        seqs: list[int] = []
        while len(seqs) < 400:
            m = await c.skip_heartbeats()
            seqs.append(m.header["seqN"])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no sequence gap


@mock_trio
async def test_frames_are_batched_whole_into_websocket_messages() -> None:
    async with (
        running(rate=0, frames_per_message=5, max_message_bytes=4000) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("OptionNbboQuote")
        await c.until("MLinkStreamCheckPt", state="Complete")
        counts = []
        for m in c.ws_messages:
            assert isinstance(m, bytes)
            frames = FrameDecoder().feed(m)
            assert all(isinstance(f, Frame) for f in frames)  # whole frames only
            assert len(m) <= 4000 or len(frames) == 1
            counts.append(len(frames))
        assert max(counts) == 5 and c.garbage == []


@mock_trio
async def test_text_frame_mode() -> None:
    async with running(rate=0, text_frames=True) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        assert all(isinstance(m, str) for m in c.ws_messages)


@mock_trio
async def test_recording_is_byte_exact_and_load_sent_data(tmp_path: Path) -> None:
    faults = Faults(close_after_messages=60)
    async with (
        running(rate=50, record_dir=tmp_path, faults=faults) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("OptionNbboQuote", stripeFilter="A")
        await c.stream("StockBookQuote", stripeFilter="A")
        assert (await c.closed()).code == 1001
    recorded = recorded_bytes(tmp_path)
    assert list(recorded) == [("A", "c0001")]
    assert recorded[("A", "c0001")] == bytes(c.raw)
    got: dict[tuple[str, str], list[bytes]] = {}
    for fr in FrameDecoder().feed(bytes(c.raw)):
        assert isinstance(fr, Frame)
        mtyp = json.loads(fr.body)["header"]["mTyp"]
        if not mtyp.startswith("MLink"):
            got.setdefault((mtyp, "A"), []).append(fr.body)
    assert load_sent_data(tmp_path) == got
    assert sum(len(v) for v in got.values()) > 0


@mock_trio
async def test_two_stripes_two_connections(tmp_path: Path) -> None:
    async with running(rate=100, record_dir=tmp_path) as sim:
        async with connect(sim.port or 0) as a, connect(sim.port or 0) as x:
            for client, stripe in ((a, "A"), (x, "X")):
                await logged_on(client)
                await client.stream("OptionNbboQuote", stripeFilter=stripe)
            for client, stripe in ((a, "A"), (x, "X")):
                msgs = await client.until("MLinkStreamCheckPt", state="Complete")
                while len(data_msgs(msgs)) < 20:
                    msgs.append(await client.msg())
                assert all(stripe in stripe_of_msg(m) for m in data_msgs(msgs))
    sent = load_sent_data(tmp_path)
    assert {k[1] for k in sent} == {"A", "X"}
    for (_, stripe), bodies in sent.items():
        for body in bodies:
            okey = json.loads(body)["message"]["pkey"]["okey"]
            assert stripe in stripes.stripes_of(okey["tk"], okey["ts"], okey["at"])


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


@mock_trio
async def test_disconnect_after_messages_is_abrupt() -> None:
    async with (
        running(rate=50, faults=Faults(disconnect_after_messages=25)) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("OptionNbboQuote")
        reason = await c.closed()
        assert reason.code == 1006  # no close frame: abnormal closure
        assert c.dec.frames == 25


@mock_trio
async def test_faulty_connections_limits_faults_to_the_first() -> None:
    faults = Faults(disconnect_after_messages=3, faulty_connections=1)
    async with running(rate=0, faults=faults) as sim:
        async with connect(sim.port or 0) as c:
            await logged_on(c)
            await c.stream("StockBookQuote")
            assert (await c.closed()).code == 1006
        async with connect(sim.port or 0) as c:
            await logged_on(c)
            await c.stream("StockBookQuote")
            await c.until("MLinkStreamCheckPt", state="Complete")


@mock_trio
async def test_stall_sends_nothing_but_keeps_answering_pings() -> None:
    async with (
        running(rate=50, faults=Faults(stall_after_messages=10)) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("OptionNbboQuote")
        got = [await c.frame() for _ in range(9)]
        assert len(got) == 9
        with trio.move_on_after(120) as scope:  # twelve heartbeat intervals of silence
            await c.frame()
        assert scope.cancelled_caught and c.ws.closed is None
        with trio.fail_after(5):
            await c.ws.ping(b"still there?")


@mock_trio
async def test_half_open_stops_reading_too() -> None:
    async with (
        running(rate=0, faults=Faults(half_open_after_messages=1)) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        with trio.move_on_after(30) as scope:
            await c.ws.ping(b"anyone?")
        assert scope.cancelled_caught


@mock_trio
async def test_goodnight_then_close() -> None:
    async with (
        running(rate=0, faults=Faults(goodnight_after_messages=1)) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        m = await c.msg()
        assert (m.mtyp, m.message) == ("MLinkAdmin", {"state": "GoodNight"})
        assert (await c.closed()).code == 1000


@mock_trio
async def test_byte_level_faults_decode_as_garbage_and_bad_bodies() -> None:
    faults = Faults(garbage_every=3, bad_json_every=4, corrupt_length_every=5)
    async with running(rate=0, faults=faults) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream("OptionNbboQuote")
        bad_json = 0
        good = 0
        while True:
            fr = await c.frame()
            try:
                obj = json.loads(fr.body)
            except ValueError:
                bad_json += 1
                continue
            if obj["header"]["mTyp"] == "MLinkStreamCheckPt":
                if obj["message"]["state"] == "Complete":
                    break
            else:
                good += 1
        reasons = {g.reason for g in c.garbage}
        assert "frame shorter than its length" in reasons  # corrupt length, resynced
        assert "no frame header" in reasons  # injected garbage
        assert bad_json > 0 and good > 0


@mock_trio
async def test_split_frames_cross_message_boundaries(tmp_path: Path) -> None:
    async with (
        running(rate=0, faults=Faults(split_frames=True), record_dir=tmp_path) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("OptionNbboQuote", stripeFilter="A")
        await c.until("MLinkStreamCheckPt", state="Complete")
        cut = [m for m in c.ws_messages if isinstance(m, bytes) and not m.endswith(b"}")]
        assert cut and c.garbage == []
    assert recorded_bytes(tmp_path)[("A", "c0001")].startswith(bytes(c.raw))


@mock_trio
async def test_schema_drift_faults() -> None:
    faults = Faults(
        new_field_after_messages=0,
        int_to_float_after_messages=0,
        unknown_type_every=2,
        invalid_utf8_every=1_000_000,
    )
    async with running(rate=0, faults=faults) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream("StockBookQuote")
        msgs = await c.until("MLinkStreamCheckPt", state="Complete")
        books = [m for m in msgs if m.mtyp == "StockBookQuote"]
        unknown = [m for m in msgs if m.mtyp == "SimUnknownMessage"]
        assert books and unknown
        assert all(m.frame.type_number == UNKNOWN_TYPE_NUMBER for m in unknown)
        for m in books:
            assert m.message["prcFramework"] == "Equity"
            floats = [v for v in m.message.values() if isinstance(v, float) and v % 1 == 0.5]
            assert floats  # an Int field arrived with a fraction


@mock_trio
async def test_invalid_utf8_and_oversized_frames() -> None:
    faults = Faults(invalid_utf8_every=2, oversized_frame_every=3, oversized_frame_bytes=500_000)
    async with running(rate=0, faults=faults) as sim, connect(sim.port or 0) as c:
        await logged_on(c)
        await c.stream("StockBookQuote")
        big = utf8_bad = 0
        for _ in range(3 + sim.market.pkey_count("StockBookQuote")):
            fr = await c.frame()
            big += len(fr.body) > 400_000
            try:
                fr.body.decode("utf-8")
            except UnicodeDecodeError:
                utf8_bad += 1
        assert big > 0 and utf8_bad > 0


# ---------------------------------------------------------------------------------------------
# Market data and wire encoding (no sockets)
# ---------------------------------------------------------------------------------------------


def test_float32_and_double_formatting() -> None:
    assert fmt_float32(5.6) == "5.6"
    assert fmt_float32(4.0) == "4"
    assert fmt_float32(201.53) == "201.53"
    assert fmt_float32(1.9e-05) == "1.9e-05"
    assert fmt_float32(1 / 3) == "0.33333334"  # float32 precision, shortest round-trip
    assert fmt_float32(-0.0012) == "-0.0012"
    assert fmt_double(4550.0) == "4550" and fmt_double(-22.0229465) == "-22.0229465"
    with pytest.raises(ValueError):
        fmt_float32(math.nan)


def test_time_helpers_match_the_samples() -> None:
    # Sample OptionNbboQuote: srcTimestamp 1748875509876543211 -> bidTime 35109876 (US/Central).
    assert central_ms(1_748_875_509_876_543_211) == 35_109_876
    assert utc_text(1_748_875_509_876_543_211) == "2025-06-02 14:45:09.876543"


def _eset_ok(mdef_name: str, message: Mapping[str, Any]) -> None:
    mdef = lookup(mdef_name)
    assert mdef is not None
    by_name = {f.name: f for f in mdef.fields}
    for name, value in message.items():
        if name == "pkey":
            continue
        f = by_name[name]  # every field is a dictionary field
        if f.ftype in ("Enum", "Flag"):
            assert value in f.enum_values, f"{mdef_name}.{name}={value!r}"


def test_core_generators_are_consistent() -> None:
    m = Market(seed=7, start_ns=BASE_NS, types=(*CORE_TYPES, "FutureBookQuote", "FuturePrint"))
    now = BASE_NS
    for _ in range(40):
        for t in m.types:
            now += 1_000_000
            rec = m.update(t, now)
            assert rec is not None
            msg = json.loads(rec.message_json())
            _eset_ok(t, msg)
            for k in ("srcTimestamp", "prtTimestamp"):
                if k in msg and "netTimestamp" in msg:
                    assert msg[k] < msg["netTimestamp"] <= rec.sent_ns
            if t == "OptionNbboQuote" and "bidPrice" in msg:
                assert msg["bidPrice"] < msg["askPrice"]
                assert msg["bidSize"] <= msg["cumBidSize"]
                assert msg["bidTime"] <= central_ms(rec.sent_ns)
            if t == "StockBookQuote":
                assert msg["bidPrice1"] < msg["askPrice1"]
                assert msg["bidPrice2"] < msg["bidPrice1"] and msg["askPrice2"] > msg["askPrice1"]
            if t == "LiveSurfaceCurve":
                assert msg.get("time") is None  # TimeSpan: JSON form unknown, never sent
                assert rec.pkey[1] == "Live"


def test_market_is_reproducible_from_its_seed() -> None:
    def run() -> list[str]:
        m = Market(seed=3, start_ns=BASE_NS, symbols=("AAPL", "ES"))
        out = [r.message_json() for t in m.types for r in m.snapshot(t)]
        out += [m.update("OptionPrint", BASE_NS + i).message_json() for i in range(50)]  # type: ignore[union-attr]
        return out

    assert run() == run()


def test_generic_generator_covers_every_dictionary_type() -> None:
    m = Market(
        seed=1, start_ns=BASE_NS, types=(), symbols=("AAPL", "SPY", "ES"), generic_max_keys=3
    )
    for name, mdef in registry().items():
        assert m.ensure_type(name)
        rec = m.update(name, BASE_NS + 1_000)
        if rec is None:  # a key domain the small universe cannot fill
            continue
        msg = json.loads(rec.message_json())
        _eset_ok(name, msg)
        for f in mdef.key_fields:
            assert f.name in msg.get("pkey", {}), f"{name}: key {f.name} missing"


def test_stripe_filter_on_the_universe() -> None:
    m = Market(seed=0, start_ns=BASE_NS, stripes=("X",))
    for t in m.types:
        for r in m.snapshot(t):
            assert "X" in r.stripes


# ---------------------------------------------------------------------------------------------
# where clauses and configuration
# ---------------------------------------------------------------------------------------------


def test_compile_where() -> None:
    mdef = lookup("OptionNbboQuote")
    assert mdef is not None
    rec = {
        "okey": {"at": "EQT", "ts": "NMS", "tk": "SPX", "dt": "2024-03-15", "xx": 4550.0,
                 "cp": "Call"},
        "bidPrice": 5.6,
        "bidExch": "CBOE",
    }  # fmt: skip
    yes = [
        "okey:eq:SPX-NMS-EQT-2024-03-15-4550-C",
        "okey.tk:eq:SPX & okey.xx:gt:3500 & okey.xx:lt:4600",
        "(bidexch:eq:AMEX | bidexch:eq:CBOE) & bidPrice:ge:5",
        "okey.tk:sw:sp%26okey.cp:ew:ll",
        "bidprice:cb:5$6",
        "askPrice:eq:0",
        "bidExch:cv:bo & bidExch:nv:xx",
    ]
    for text in yes:
        assert compile_where(text, mdef)(rec), text
    for text in ("okey.tk:ne:SPX", "bidprice:lt:5", "bidexch:eq:AMEX"):
        assert not compile_where(text, mdef)(rec), text
    for bad in ("", "okey.tk", "nosuch:eq:1", "okey.zz:eq:1", "bidPrice:eq:abc", "(okey.tk:eq:A",
                "bidPrice:xx:1", "a:eq:1 &"):  # fmt: skip
        with pytest.raises(WhereError):
            compile_where(bad, mdef)


def test_config_from_mapping_names_the_bad_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sim\.rats: unknown key"):
        SimConfig.from_mapping({"rats": 1})
    with pytest.raises(ConfigError, match=r"sim\.rate: must be a number"):
        SimConfig.from_mapping({"rate": "fast"})
    with pytest.raises(ConfigError, match=r"sim\.rate: must be >= 0"):
        SimConfig.from_mapping({"rate": -1})
    with pytest.raises(ConfigError, match=r"sim\.faults\.garbage: unknown key"):
        SimConfig.from_mapping({"faults": {"garbage": 1}})
    with pytest.raises(ConfigError, match=r"sim\.faults\.garbage_every"):
        SimConfig.from_mapping({"faults": {"garbage_every": 0}})
    with pytest.raises(ConfigError, match=r"sim\.api_keys: secrets are not read"):
        SimConfig.from_mapping({"api_keys": ["x"]})
    with pytest.raises(ConfigError, match=r"sim\.stripes: unknown stripe"):
        SimConfig.from_mapping({"stripes": ["A", "Q"]})
    with pytest.raises(ConfigError, match=r"sim\.types: unknown message type"):
        SimConfig.from_mapping({"types": ["NoSuchThing"]})
    with pytest.raises(ConfigError, match=r"sim\.tls_key: tls_cert and tls_key go together"):
        SimConfig.from_mapping({"tls_cert": "server.pem"})
    assert SimConfig.from_mapping(
        {"tls_cert": "s.pem", "tls_key": "s.key"}, base_dir=tmp_path
    ).tls_key == tmp_path / "s.key"
    toml = tmp_path / "sim.toml"
    toml.write_text(
        'port = 7001\nrate = 5\ntypes = ["optionnbboquote"]\nrecord_dir = "rec"\n'
        'bad_key_mode = "http_401"\n[faults]\ngarbage_every = 10\nsplit_frames = true\n'
    )
    cfg = SimConfig.from_toml(toml)
    assert cfg.port == 7001 and cfg.rate == 5.0 and cfg.types == ("OptionNbboQuote",)
    assert cfg.record_dir == tmp_path / "rec" and cfg.bad_key_mode == "http_401"
    assert cfg.faults == Faults(garbage_every=10, split_frames=True)


def test_cli_arguments_and_key_from_environment() -> None:
    args = build_parser().parse_args(
        ["--port", "9000", "--stripes", "A,X", "--types", "StockPrint", "--rate", "3"]
    )
    cfg = config_from_args(args, {"MLINK_API_KEY": "secret-key"})
    assert cfg.port == 9000 and cfg.stripes == ("A", "X") and cfg.types == ("StockPrint",)
    assert cfg.api_keys == frozenset({"secret-key"}) and cfg.rate == 3.0
    assert config_from_args(build_parser().parse_args([]), {}).api_keys == frozenset()
    with pytest.raises(ConfigError, match=r"sim\.stripes"):
        config_from_args(build_parser().parse_args(["--stripes", "A,Q"]), {})


@mock_trio
async def test_periodic_checkpoints_and_highwater_knob() -> None:
    async with (
        running(rate=20, checkpoint_interval=30.0, checkpoint_highwater=True) as sim,
        connect(sim.port or 0) as c,
    ):
        await logged_on(c)
        await c.stream("StockBookQuote", queryID=5)
        msgs = await c.until("MLinkStreamCheckPt", state="Complete")
        active = next(m for m in msgs if m.message.get("state") == "Active")
        snap = data_msgs(msgs)
        assert active.message["highwaterTs"] == max(m.stim_ns for m in snap)
        assert active.message["numBytesSent"] == sum(len(m.frame.body) + 14 for m in snap)
        later = await c.until("MLinkStreamCheckPt", state="Active")
        periodic = later[-1]
        assert periodic.header["sTim"] == active.header["sTim"]
        assert periodic.message["numMessagesSent"] == len(snap) + len(data_msgs(later))


@mock_trio
async def test_restarted_simulator_continues_connection_ids(tmp_path: Path) -> None:
    received = 0
    for _ in range(2):
        async with running(rate=0, record_dir=tmp_path) as sim, connect(sim.port or 0) as c:
            await logged_on(c)
            await c.stream("StockBookQuote", stripeFilter="D")
            received += len(data_msgs(await c.until("MLinkStreamCheckPt", state="Complete")))
    assert list(recorded_bytes(tmp_path)) == [("D", "c0001"), ("D", "c0002")]
    assert received > 0
    assert len(load_sent_data(tmp_path)[("StockBookQuote", "D")]) == received


def test_main_reports_configuration_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stripes", "A,Q", "--port", "0"]) == 2
    assert "sim.stripes" in capsys.readouterr().err


def test_over_tls_a_failed_handshake_is_logged_and_others_are_served(tmp_path: Path) -> None:
    tls = make_test_ca(tmp_path / "tls")
    cfg = SimConfig(rate=0, tls_cert=tls.cert, tls_key=tls.key)

    async def main() -> bytes:
        sim = Simulator(cfg)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.run)
            with trio.fail_after(5):  # well within the 10 s upgrade timeout
                untrusting = await trio.open_ssl_over_tcp_stream(
                    "127.0.0.1", port, ssl_context=ssl.create_default_context())
                with pytest.raises(trio.BrokenResourceError):
                    await untrusting.send_all(b"GET / HTTP/1.1\r\n\r\n")
                await trio.aclose_forcefully(untrusting)
                while sim.tls_failures == 0:  # noqa: ASYNC110 - the server's own counter
                    await trio.sleep(0.01)
                trusting = ssl.create_default_context(cafile=str(tls.ca))
                async with tw.open_websocket_url(
                    f"wss://127.0.0.1:{port}/mlink/jsonf", trusting
                ) as ws:
                    first = await ws.get_message()
            nursery.cancel_scope.cancel()
        return first if isinstance(first, bytes) else first.encode()

    with structlog.testing.capture_logs() as logs:
        first = trio.run(main)
    assert b'"mTyp":"MLinkAdmin"' in first
    failed = [e for e in logs if e["event"] == "sim.tls_failed"]
    assert len(failed) == 1 and failed[0]["error"], failed  # the client hung up mid-handshake
