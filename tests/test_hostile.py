"""A hostile server: nothing it sends stops capture (README "Guarantee", docs/hostile-input.md).

The real daemon (supervisor, worker, journal, sink) against a server scripted byte by byte on
the in-memory network and the mock clock (a few cases over real loopback).  Each case sends 200
good frames, the hostile item, 200 good frames, and checks what a user sees: the daemon alive
and exiting 0, every good frame in Parquet exactly once, each bad item quarantined once with its
reason, health, ``verify`` clean, nothing written outside the data root, the API key in no file;
then a restart against a clean server captures new frames.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memnet import BASE_NS, KEY, ScriptedNet, config, launch, mock_clock, wait_for
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from capture.app import Daemon
from capture.clock import TrioWallClock
from capture.frames import encode_frame
from capture.verify import verify

TYPE = "OptionNbboQuote"
SAMPLES = (Path(__file__).parent / "data" / "samples.jsonf").read_bytes()
_TEMPLATE = next(
    part[11:] for part in SAMPLES.split(b"\r\nJ")[1:] if b'"mTyp":"OptionNbboQuote"' in part[:60]
)
LOGGED_ON = encode_frame(3345, b'{"header":{"mTyp":"MLinkAdmin"},"message":{"state":"LoggedOn"}}')


def good_body(seq: int) -> bytes:
    """A valid OptionNbboQuote body told apart by its header seqN."""
    start = _TEMPLATE.index(b'"seqN":') + 7
    end = _TEMPLATE.index(b",", start)
    return _TEMPLATE[:start] + str(seq).encode() + _TEMPLATE[end:]


def good(seq: int) -> bytes:
    return encode_frame(2785, good_body(seq))


def heartbeat(seq: str = "1") -> bytes:
    return encode_frame(
        3368, b'{"header":{"mTyp":"MLinkHeartbeat"},"message":{"seqNum":%s}}' % seq.encode()
    )


def typed(mtyp: str, body: bytes = b'"message":{"x":1}') -> bytes:
    return encode_frame(0, b'{"header":{"mTyp":' + json.dumps(mtyp).encode() + b"}," + body + b"}")


Message = bytes | str


@dataclass
class Script:
    """What the server sends on each connection: ``first`` on connection 1, ``later`` on the
    others (each after an MLinkAdmin LoggedOn); heartbeats every ``beat`` s unless None.
    ``hang_up``: close connection 1 once ``first`` is sent.  ``received``: (connection, what
    the client sent) in order."""

    first: Sequence[Message]
    later: Sequence[Message] = ()
    beat: float | None = 5.0
    logon: bytes = LOGGED_ON
    hang_up: bool = False
    sent: list[int] = field(default_factory=list)
    received: list[tuple[int, bytes]] = field(default_factory=list)

    async def serve(self, stream: trio.abc.Stream, n: int) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while not any(isinstance(e, Request) for e in ws.events()):
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(bytes(data))
        out = ws.send(AcceptConnection()) + ws.send(BytesMessage(data=self.logon))
        for m in self.first if n == 1 else self.later:
            out += ws.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m))
        try:
            await stream.send_all(out)
            self.sent.append(n)
            if self.hang_up and n == 1:
                await stream.aclose()
                return
            async with trio.open_nursery() as nursery:
                if self.beat is not None:
                    nursery.start_soon(self._beat, stream, ws)
                while data := await stream.receive_some(65536):
                    ws.receive_data(bytes(data))
                    events = list(ws.events())
                    for e in events:
                        if isinstance(e, BytesMessage | TextMessage):
                            raw = e.data.encode() if isinstance(e.data, str) else bytes(e.data)
                            self.received.append((n, raw))
                    if any(isinstance(e, CloseConnection) for e in events):
                        break
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _beat(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        assert self.beat is not None
        while True:
            await trio.sleep(self.beat)
            await stream.send_all(ws.send(BytesMessage(data=heartbeat())))


def quarantined(root: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((root / "_quarantine").rglob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def seqs_in_parquet(root: Path) -> list[int]:
    if not (root / TYPE).exists():
        return []
    table = ds.dataset(root / TYPE, format="parquet", partitioning="hive").to_table()
    return sorted(table.column("h_seqN").to_pylist())


@dataclass
class Outcome:
    code: int
    health: dict[str, Any]
    states: list[str]
    daemon: Daemon


def run_daemon(
    tmp_path: Path,
    script: Script,
    *,
    until: Callable[[Daemon], bool],
    key: str = KEY,
    watch: Callable[[Daemon], None] | None = None,
    **over: Any,
) -> Outcome:
    root = tmp_path / "a" / "b" / "data"  # "../../x" from a table directory stays in tmp_path
    over.setdefault("supervision", {}).setdefault("stale_after", 30.0)
    cfg = config(root, ["A"], [TYPE], **over)
    states: list[str] = []

    async def main() -> Outcome:
        async with trio.open_nursery() as nursery:
            launched = launch(
                nursery, cfg, TrioWallClock(BASE_NS), ScriptedNet(nursery, script.serve), key=key
            )
            daemon = launched.daemon

            async def sample() -> None:
                while True:
                    worker = daemon.supervisor.workers.get("A")
                    if worker is not None:
                        states.append(worker.stats.state)
                        if watch is not None:
                            watch(daemon)
                    await trio.sleep(0.5)

            nursery.start_soon(sample)
            await wait_for(lambda: daemon.supervisor.workers.get("A") is not None)
            await wait_for(lambda: until(daemon))
            await trio.sleep(2)  # a flush interval and a health write
            health = json.loads((root / "health.json").read_text())
            code = await launched.stop()
            nursery.cancel_scope.cancel()
        return Outcome(code, health, states, daemon)

    return trio.run(main, clock=mock_clock())


def rows_at_least(n: int) -> Callable[[Daemon], bool]:
    return lambda d: d.supervisor.workers["A"].stats.messages >= n


def assert_user_sees(
    tmp_path: Path,
    outcome: Outcome,
    good_seqs: Sequence[int],
    reasons: Sequence[str],
    *,
    key: str = KEY,
) -> None:
    root = tmp_path / "a" / "b" / "data"
    assert outcome.code == 0
    stats = outcome.daemon.supervisor.workers["A"].stats
    assert stats.state == "stopped" and stats.connects >= 1
    # Every good frame exactly once ...
    assert seqs_in_parquet(root) == sorted(good_seqs)
    # ... each bad item quarantined once, with its reason, counted once.
    kept = quarantined(root)
    assert len(kept) == len(reasons) == stats.quarantined, [q["reason"] for q in kept]
    for q, reason in zip(kept, reasons, strict=True):
        assert reason in q["reason"], (reason, q["reason"])
    assert outcome.health["stripes"]["A"]["quarantined_frames"] == len(reasons)
    report = verify(root)
    assert report.ok, report.problems
    # Nothing outside the data root; the key in no file anywhere.
    for path in tmp_path.rglob("*"):
        assert path == root or root in path.parents or path in root.parents, path
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def restart_captures_new_frames(tmp_path: Path) -> None:
    """After a hostile case, a new run against a clean server captures new frames."""
    root = tmp_path / "a" / "b" / "data"
    before = seqs_in_parquet(root)
    fresh = list(range(900_000, 900_050))
    outcome = run_daemon(tmp_path, Script([good(s) for s in fresh]), until=rows_at_least(50))
    assert outcome.code == 0
    assert seqs_in_parquet(root) == sorted(before + fresh)
    assert verify(root).ok
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


def around(hostile: Sequence[Message]) -> tuple[list[Message], list[int]]:
    """200 good frames, the hostile messages, 200 good frames (20 frames per message)."""
    seqs = list(range(1, 401))
    frames = [good(s) for s in seqs]
    msgs: list[Message] = [b"".join(frames[i : i + 20]) for i in range(0, 200, 20)]
    msgs += hostile
    msgs += [b"".join(frames[i : i + 20]) for i in range(200, 400, 20)]
    return msgs, seqs


CASES: dict[str, tuple[list[Message], list[str]]] = {
    "20,000 nested arrays in a data field (segfaulted pyarrow)": (
        [encode_frame(2785, good_body(0)[:-2] + b',"zz":' + b"[" * 20_000 + b"]" * 20_000 + b"}}")],
        ["deeper than limits.max_depth"],
    ),
    "700 nested arrays (RecursionError in the _extra renderer)": (
        [encode_frame(2785, good_body(0)[:-2] + b',"zz":' + b"[" * 700 + b"]" * 700 + b"}}")],
        ["deeper than limits.max_depth"],
    ),
    "a deeply nested control frame": (
        [
            encode_frame(
                3368,
                b'{"header":{"mTyp":"MLinkHeartbeat"},"message":'
                + b"[" * 5000
                + b"]" * 5000
                + b"}",
            )
        ],
        ["deeper than limits.max_depth"],
    ),
    "a deeply nested body without a header": (
        [encode_frame(2785, b'{"message":' + b"[" * 5000 + b"]" * 5000 + b"}")],
        ["deeper than limits.max_depth"],
    ),
    "type names that are paths, dots, NUL, 300 characters": (
        [
            typed("../../etc"),
            typed("Opt/../../x"),
            typed(".."),
            typed("Option\u0000Nbbo"),
            typed("O" * 300),
            typed("_journal"),
        ],
        ["message type"] * 6,
    ),
    "a data type named like the daemon's own table": (
        [typed("capture_events"), typed("CAPTURE_EVENTS")],
        ["the daemon's own tables"] * 2,
    ),
    "10,000 bad frames in one message": (
        [b"".join(encode_frame(2785, b"[" * 100) for _ in range(10_000))],
        ["deeper than limits.max_depth"] * 10_000,
    ),
    "too many members, too many bytes": (
        [
            encode_frame(
                0,
                b'{"header":{"mTyp":"X"},"message":{'
                + b",".join(b'"k%d":1' % i for i in range(12_000))
                + b"}}",
            ),
        ],
        ["over limits.max_fields"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_item_is_quarantined_and_every_other_frame_is_captured(
    name: str, tmp_path: Path
) -> None:
    hostile, reasons = CASES[name]
    msgs, seqs = around(hostile)
    outcome = run_daemon(tmp_path, Script(msgs), until=rows_at_least(400))
    assert_user_sees(tmp_path, outcome, seqs, reasons)
    assert outcome.health["stripes"]["A"]["restarts"] == 0  # the connection was never dropped
    restart_captures_new_frames(tmp_path)


@pytest.mark.parametrize("seq", ['"--5"', '"\u00b2"', str(2**80)])
def test_an_odd_heartbeat_number_does_not_stop_the_stripe_or_lose_its_message(
    seq: str, tmp_path: Path
) -> None:
    """The heartbeat and data frames in one WebSocket message: all data kept, nothing
    quarantined (the number is just absent), never a worker restart."""
    msgs, seqs = around([b"".join([good(1000), heartbeat(seq), good(1001)])])
    outcome = run_daemon(tmp_path, Script(msgs), until=rows_at_least(402))
    assert_user_sees(tmp_path, outcome, [*seqs, 1000, 1001], [])
    assert outcome.daemon.supervisor.workers["A"].stats.heartbeats >= 1
    assert outcome.health["stripes"]["A"]["state"] in ("streaming", "quiet")
    restart_captures_new_frames(tmp_path)


def test_a_bug_in_per_message_handling_is_contained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anything other than RemoteProtocolError escaping the handling of one frame is a bug:
    that frame is quarantined, the traceback logged once, and the frames around it (in the
    same WebSocket message too) are captured."""
    from capture import protocol

    real = protocol.parse_control

    def broken(mtyp: str, body: bytes) -> protocol.Control:
        if b"BOOM" in body:
            raise KeyError("a bug nobody foresaw")
        return real(mtyp, body)

    monkeypatch.setattr(protocol, "parse_control", broken)
    boom = encode_frame(3368, b'{"header":{"mTyp":"MLinkHeartbeat"},"message":{"x":"BOOM"}}')
    msgs, seqs = around([good(1000) + boom + good(1001), boom])
    outcome = run_daemon(tmp_path, Script(msgs), until=rows_at_least(402))
    assert_user_sees(tmp_path, outcome, [*seqs, 1000, 1001], ["internal error: KeyError"] * 2)
    err = capsys.readouterr()
    assert (err.out + err.err).count("Traceback") == 1
    restart_captures_new_frames(tmp_path)


def test_a_silent_server_is_never_reported_healthy(tmp_path: Path) -> None:
    """LoggedOn, then nothing (no data, no heartbeat) for 70 s: never streaming, unhealthy;
    each reconnect is connecting until a frame arrives."""
    outcome = run_daemon(
        tmp_path,
        Script([], beat=None),
        until=lambda d: d.supervisor.workers["A"].stats.connects >= 3,
    )
    assert outcome.code == 0
    assert "streaming" not in outcome.states and "quiet" not in outcome.states
    assert outcome.health["healthy"] is False
    assert outcome.health["stripes"]["A"]["state"] in ("connecting", "backoff")
    restart_captures_new_frames(tmp_path)


def test_heartbeats_alone_keep_a_connection_healthy_and_data_makes_it_streaming(
    tmp_path: Path,
) -> None:
    outcome = run_daemon(tmp_path, Script([], beat=5.0), until=lambda d: trio.current_time() > 120)
    assert outcome.daemon.supervisor.workers["A"].stats.connects == 1
    assert outcome.health["stripes"]["A"]["state"] == "quiet"  # connected, heartbeats only
    assert outcome.health["healthy"] is True


def test_a_flood_of_distinct_types_holds_a_bounded_number_of_files_open(tmp_path: Path) -> None:
    """Every type is captured (its own table, one row each), never more than
    limits.max_open_types files open at once."""
    names = [f"Flood{i:04d}" for i in range(300)]
    msgs: list[Message] = [b"".join(typed(n) for n in names[i : i + 50]) for i in range(0, 300, 50)]
    seen: list[int] = []
    outcome = run_daemon(
        tmp_path,
        Script(msgs),
        until=lambda d: d.supervisor.workers["A"].stats.rows_written >= 300,
        watch=lambda d: seen.append(getattr(d.supervisor.workers["A"].sink, "open_file_count", 0)),
        limits={"max_open_types": 16},
    )
    assert outcome.code == 0
    assert seen and max(seen) <= 16
    root = tmp_path / "a" / "b" / "data"
    for name in names:
        table = ds.dataset(root / name, format="parquet", partitioning="hive").to_table()
        assert table.num_rows == 1
    assert verify(root).ok


def test_the_key_is_in_no_file_when_the_url_and_the_server_carry_it(tmp_path: Path) -> None:
    """The key in the URL (?apikey=, user:key@) and echoed back by LogonFailed: capture_events,
    journal, health and logs never hold it."""
    failed = encode_frame(
        3345,
        b'{"header":{"mTyp":"MLinkAdmin"},"message":{"state":"LogonFailed",'
        b'"detail":"invalid api key ' + KEY.encode() + b'"}}',
    )
    url = f"ws://user:{KEY}@sim.invalid:1/mlink/jsonf?apikey={KEY}&x=1"
    msgs, seqs = around([])
    script = Script(msgs, logon=LOGGED_ON)
    outcome = run_daemon(tmp_path, script, until=rows_at_least(400), source={"url": url})
    assert_user_sees(tmp_path, outcome, seqs, [])
    refused = Script([], logon=failed)
    outcome = run_daemon(
        tmp_path,
        refused,
        until=lambda d: d.supervisor.workers["A"].stats.state == "auth_failed",
        source={"url": url},
    )
    assert_user_sees(tmp_path, outcome, seqs, [])
    root = tmp_path / "a" / "b" / "data"
    events = ds.dataset(root / "capture_events", format="parquet", partitioning="hive").to_table()
    details = [d for d in events.column("detail").to_pylist() if d]
    assert any("invalid api key ****" in d for d in details), details  # masked as received
    assert any("apikey=[redacted]" in d for d in details), details
    restart_captures_new_frames(tmp_path)


# A stream mixing valid frames with random malformed ones.
_BAD = st.sampled_from(
    [
        b"\r\nJ00012999999{}",  # length past the data
        b"\r\nJ0001x000002{}",  # bad digits
        b"\xff\xfe\r\n",  # garbage
        encode_frame(2785, b'{"header":{"mTyp":"OptionNbboQuote"},"message":' + b"[" * 3000),
        encode_frame(2785, b"\xff\xfe not json"),
        encode_frame(3368, b'{"header":{"mTyp":"MLinkHeartbeat"},"message":{"seqNum":"--5"}}'),
        encode_frame(3368, b"{" * 900),
        encode_frame(2785, good_body(0)[:-2] + b',"n":NaN,"i":1e400,"b":%d}}' % 2**80),
        typed("../x"),
        typed("a" * 250),
        typed("capture_events"),
        encode_frame(
            3345, b'{"header":{"mTyp":"MLinkAdmin"},"message":{"state":"' + b"[" * 200 + b'"}}'
        ),
        encode_frame(2785, b'{"header":{"mTyp":"OptionNbboQuote"},"message":{"pkey":' + b"{" * 80),
    ]
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_mix_of_good_and_malformed_frames_keeps_every_good_frame(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("mix")
    seqs = list(range(1, 121))
    pieces: list[bytes] = []
    for s in seqs:
        pieces.append(good(s))
        pieces += data.draw(st.lists(_BAD, max_size=2))
    stream = b"".join(pieces) + good(121)  # the last good frame resynchronises the tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    msgs: list[Message] = [
        stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]
    outcome = run_daemon(tmp_path, Script(msgs), until=rows_at_least(1))
    assert outcome.code == 0
    root = tmp_path / "a" / "b" / "data"
    got = seqs_in_parquet(root)
    # Every good frame exactly once (seqN 0 is the valid frame with NaN/1e400/2**80 values,
    # which may be drawn several times): no malformed item can swallow or repeat one.
    assert [s for s in got if s != 0] == [*seqs, 121]
    assert all(q["reason"] for q in quarantined(root))
    stats = outcome.daemon.supervisor.workers["A"].stats
    assert stats.restarts == 0 and outcome.daemon.supervisor.workers["A"].stats.connects == 1
    assert verify(root).ok
    for path in tmp_path.rglob("*"):
        assert path == root or root in path.parents or path in root.parents, path


def test_over_real_loopback_with_threads(tmp_path: Path) -> None:
    """The same guarantee with a real socket, real worker threads and the real clock: deep
    nesting, a path as type name, an odd heartbeat and a bug-free stream around them."""
    root = tmp_path / "a" / "b" / "data"
    hostile: list[Message] = [
        CASES["20,000 nested arrays in a data field (segfaulted pyarrow)"][0][0],
        typed("../../etc"),
        good(1000) + heartbeat('"--5"') + good(1001),
    ]
    msgs, seqs = around(hostile)
    script = Script(msgs, beat=0.5)

    async def main() -> tuple[int, dict[str, Any]]:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        cfg = config(
            root,
            ["A"],
            [TYPE],
            source={"url": f"ws://127.0.0.1:{port}/mlink/jsonf"},
            pipeline={"flush_interval": 0.1},
        )
        served = 0

        async def handler(stream: trio.SocketStream) -> None:
            nonlocal served
            served += 1
            await script.serve(stream, served)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            daemon = Daemon(cfg, environ={"MLINK_TEST_KEY": KEY}, install_signals=False)
            code: list[int] = []

            async def run() -> None:
                code.append(await daemon.run())

            nursery.start_soon(run)
            with trio.fail_after(60):
                await wait_for(
                    lambda: (
                        daemon.supervisor.workers.get("A") is not None
                        and daemon.supervisor.workers["A"].stats.rows_written >= 402
                    )
                )
                await trio.sleep(1.5)  # a health write
            health = json.loads((root / "health.json").read_text())
            daemon.stop()
            with trio.fail_after(60):
                await wait_for(lambda: bool(code))
            nursery.cancel_scope.cancel()
        return code[0], health

    code, health = trio.run(main)
    assert code == 0
    assert seqs_in_parquet(root) == sorted([*seqs, 1000, 1001])
    reasons = [q["reason"] for q in quarantined(root)]
    assert len(reasons) == 2 and "deeper than limits.max_depth" in reasons[0]
    assert "message type '../../etc'" in reasons[1]
    assert health["stripes"]["A"]["state"] == "streaming" and health["healthy"]
    assert verify(root).ok
    for path in tmp_path.rglob("*"):
        assert path == root or root in path.parents or path in root.parents, path


def test_a_new_field_name_in_every_message_is_kept_and_not_logged_forever(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Schema drift as an attack: 2,000 frames, each with a field name never seen before. Every
    row is kept with its field in ``_extra``; the log names at most 256 of them per type
    (plus one batch's worth), not 2,000."""
    frames = [
        encode_frame(2785, good_body(s)[:-2] + b',"zz%d":%d}}' % (s, s)) for s in range(1, 2001)
    ]
    msgs: list[Message] = [b"".join(frames[i : i + 100]) for i in range(0, 2000, 100)]
    outcome = run_daemon(tmp_path, Script(msgs), until=rows_at_least(2000))
    assert_user_sees(tmp_path, outcome, range(1, 2001), [])
    root = tmp_path / "a" / "b" / "data"
    table = ds.dataset(root / TYPE, format="parquet", partitioning="hive").to_table()
    extra = dict(
        zip(table.column("h_seqN").to_pylist(), table.column("_extra").to_pylist(), strict=True)
    )
    assert all(json.loads(extra[s])["message"] == {f"zz{s}": s} for s in (1, 777, 2000))
    restart_captures_new_frames(tmp_path)
    logged = capsys.readouterr().out
    named = sum(logged.count(f"message.zz{s}'") for s in range(1, 2001))
    assert 0 < named <= 256 + 256, named  # pipeline.batch_rows is 256 in these tests


def test_thousands_of_new_field_names_per_message_are_kept_without_stalling(
    tmp_path: Path,
) -> None:
    """200 frames with 300 field names each, never seen before (60,000 distinct names): Arrow's
    reader would infer a struct child per name (superlinear: 400,000 names took minutes); the
    batch goes to the linear slow path instead.  Every row is kept with its fields in _extra."""
    frames = [
        encode_frame(
            2785,
            good_body(s)[:-2] + b"".join(b',"n%d_%d":%d' % (s, k, k) for k in range(300)) + b"}}",
        )
        for s in range(1, 201)
    ]
    msgs: list[Message] = [b"".join(frames[i : i + 20]) for i in range(0, 200, 20)]
    outcome = run_daemon(tmp_path, Script(msgs), until=rows_at_least(200))
    assert_user_sees(tmp_path, outcome, range(1, 201), [])
    root = tmp_path / "a" / "b" / "data"
    table = ds.dataset(root / TYPE, format="parquet", partitioning="hive").to_table()
    extra = dict(
        zip(table.column("h_seqN").to_pylist(), table.column("_extra").to_pylist(), strict=True)
    )
    assert json.loads(extra[150])["message"] == {f"n150_{k}": k for k in range(300)}


@pytest.mark.parametrize("state", ["Terminated", "Replaced"])
def test_a_stream_the_server_ends_is_requested_again_on_a_new_connection(
    state: str, tmp_path: Path
) -> None:
    """The server ends a stream the daemon asked for: nothing more of it would come on that
    connection, so the daemon reconnects and requests it again (PROTOCOL.md §6.3).  Was: the
    stream stayed ended while health said healthy."""
    ended = encode_frame(
        3382,
        b'{"header":{"mTyp":"MLinkStreamCheckPt"},"message":{"queryID":%d,"state":"%s",'
        b'"detail":"by operator"}}' % (1000 + ord("A"), state.encode()),
    )
    first = [b"".join(good(s) for s in range(1, 51)), ended + good(51)]
    script = Script(first, later=[b"".join(good(s) for s in range(52, 62))])

    def requests_on(n: int) -> int:
        return sum(1 for c, raw in script.received if c == n and b'"MLinkStream"' in raw)

    outcome = run_daemon(
        tmp_path,
        script,
        until=lambda d: requests_on(2) == 1 and rows_at_least(61)(d),
        supervision={"backoff_initial": 1.0},
    )
    assert_user_sees(tmp_path, outcome, range(1, 62), [])
    assert requests_on(1) == requests_on(2) == 1
    root = tmp_path / "a" / "b" / "data"
    events = ds.dataset(root / "capture_events", format="parquet", partitioning="hive").to_table()
    rows = events.to_pylist()
    assert [r["result"] for r in rows if r["event"] == "checkpoint"] == [state]
    reasons = [r["detail"] for r in rows if r["event"] == "disconnect"]
    assert reasons[0] == f"server ended the {TYPE} stream ({state}: by operator)", reasons


def _escaped(text: str) -> bytes:
    return "".join(f"\\u{ord(c):04x}" for c in text).encode()


def _spells_key(data: bytes) -> bool:
    """Whether ``data`` holds the key literally or with JSON escapes resolved."""
    if KEY.encode() in data:
        return True
    resolved = data.decode("latin-1").encode("latin-1").decode("unicode_escape", "replace")
    return KEY in resolved


def test_the_key_is_in_no_file_however_the_server_writes_it(tmp_path: Path) -> None:
    """The key echoed with JSON escapes (in a data field, a type name, a LogonFailed detail)
    or split across two WebSocket messages: no Parquet value (`_extra` included), quarantine
    record (reason, bytes), capture event or journal record spells it.  Was: `_extra` and the
    quarantine held it (the mask saw only the literal key within one message)."""
    esc = _escaped(KEY)
    data = good_body(9001)[:-2] + b',"echo":"' + esc + b'"}}'  # unknown field: goes to _extra
    split = encode_frame(2785, good_body(9002)[:-2] + b',"echo":"' + KEY.encode() + b'"}}')
    cut = split.index(KEY.encode()) + 10
    named = typed(esc.decode())  # a type name: refused, the reason quotes it
    failed = encode_frame(
        3345,
        b'{"header":{"mTyp":"MLinkAdmin"},"message":{"state":"LogonFailed",'
        b'"detail":"invalid api key ' + esc + b'"}}',
    )
    msgs, seqs = around([encode_frame(2785, data), split[:cut], split[cut:], named])
    outcome = run_daemon(tmp_path, Script(msgs), until=rows_at_least(402))
    assert_user_sees(tmp_path, outcome, [*seqs, 9001, 9002], ["message type"])
    run_daemon(
        tmp_path,
        Script([], logon=failed),
        until=lambda d: d.supervisor.workers["A"].stats.state == "auth_failed",
    )
    root = tmp_path / "a" / "b" / "data"
    checked = 0
    for path in root.rglob("*.parquet"):
        table = ds.dataset(path, format="parquet").to_table()
        assert not _spells_key(repr(table.to_pylist()).encode()), path
        checked += table.num_rows
    assert checked >= 402 + 3  # the rows and the capture events were read
    for q in quarantined(root):
        assert not _spells_key(json.dumps(q).encode())
        assert not _spells_key(base64.b64decode(q["bytes_b64"]))
    events = ds.dataset(root / "capture_events", format="parquet", partitioning="hive").to_table()
    details = [d for d in events.column("detail").to_pylist() if d]
    assert any(d.startswith("MLinkAdmin LogonFailed: invalid api key ***") for d in details)
    table = ds.dataset(root / TYPE, format="parquet", partitioning="hive").to_table()
    extra = [e for s, e in zip(table["h_seqN"].to_pylist(), table["_extra"].to_pylist(),
                               strict=True) if s in (9001, 9002)]  # fmt: skip
    assert len(extra) == 2 and all('"echo":"****' in e for e in extra), extra
    for path in tmp_path.rglob("*"):  # the journal, the health file, everything else
        if path.is_file() and path.suffix != ".parquet":
            raw = path.read_bytes()
            assert KEY.encode() not in raw and esc not in raw, path
