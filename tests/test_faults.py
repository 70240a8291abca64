"""Every simulator fault: the daemon survives, says so in health and logs, and loses nothing
the server sent while the connection was up (valid data in Parquet, the rest quarantined with
its bytes).  Mock clock, in-memory WebSocket, real Parquet."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_util import assert_rows_equal, data_bodies, read_table
from memnet import (
    BASE_NS,
    KEY,
    MemoryNet,
    ScriptedNet,
    config,
    launch,
    mock_clock,
    run,
    wait_for,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from capture.app import Daemon
from capture.clock import TrioWallClock
from capture.frames import Frame, FrameDecoder, Garbage
from capture.sim.config import SimConfig
from capture.sim.faults import Faults
from capture.sim.record import recorded_bytes
from capture.sim.server import Simulator
from capture.transport import CLIENTS

TYPES = ["OptionNbboQuote", "StockBookQuote", "StockPrint"]

# fault -> (knobs, whether the connection is replaced, whether bytes are quarantined)
CASES: dict[str, tuple[Faults, bool, bool]] = {
    "disconnect": (Faults(disconnect_after_messages=80, faulty_connections=1), True, False),
    "clean close": (Faults(close_after_messages=80, faulty_connections=1), True, False),
    "goodnight": (Faults(goodnight_after_messages=80, faulty_connections=1), True, False),
    "goodnight, left open": (
        Faults(goodnight_after_messages=80, goodnight_then_close=False, faulty_connections=1),
        True, False,
    ),
    "stall": (Faults(stall_after_messages=80, faulty_connections=1), True, False),
    "half-open": (Faults(half_open_after_messages=80, faulty_connections=1), True, False),
    "garbage bytes": (Faults(garbage_every=7), False, True),
    "invalid json": (Faults(bad_json_every=9), False, True),
    "empty mTyp": (Faults(empty_mtyp_every=9), False, True),
    "invalid utf-8": (Faults(invalid_utf8_every=9), False, False),  # rows kept, value in _extra
    "truncated frame": (Faults(corrupt_length_every=11), False, True),
    "oversized frame": (
        Faults(oversized_frame_every=40, oversized_frame_bytes=200_000), False, False
    ),
    "split frames": (Faults(split_frames=True), False, False),
    "slow sending": (Faults(send_delay=0.05), False, False),
}


def expected_quarantine(record: Path, received: int) -> tuple[int, int]:
    """(events, bytes) a faithful client must quarantine: non-frame bytes, and data frames
    whose body is not a JSON object, among the ``received`` bytes (the simulator may record a
    little more after the daemon stopped reading)."""
    events = size = 0
    for data in recorded_bytes(record).values():
        data, received = data[:received], received - min(received, len(data))
        dec = FrameDecoder()
        for ev in [*dec.feed(data), *dec.flush()]:
            if isinstance(ev, Garbage):
                events, size = events + 1, size + len(ev.data)
            elif isinstance(ev, Frame) and not _json_object(ev.body):
                events, size = events + 1, size + len(ev.body)
    return events, size


def _json_object(body: bytes) -> bool:
    try:  # invalid UTF-8 inside a string does not make a frame unusable (see e2e_util)
        obj = json.loads(body.decode("utf-8", "surrogateescape"))
    except ValueError:
        return False
    header = obj.get("header") if isinstance(obj, dict) else None
    mtyp = header.get("mTyp") if isinstance(header, dict) else None
    return isinstance(mtyp, str) and mtyp != ""  # an empty mTyp names no type: quarantined


def quarantined(root: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((root / "_quarantine").rglob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("name", list(CASES))
def test_the_daemon_survives_reports_and_loses_nothing(
    name: str, client: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faults, reconnects, quarantines = CASES[name]
    root, record = tmp_path / "data", tmp_path / "sent"
    # The market holds stripe A's keys only (the daemon's one stripe), stepped every 0.1 s:
    # the same ~60 updates a second reach the daemon as from the whole universe at 30 per type,
    # for a third of the simulator's work.
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=3, seed=21, record_dir=record, faults=faults,
        heartbeat_interval=4.0, stripes=("A",), tick_interval=0.1,
    )
    cfg = config(
        root, ["A"], TYPES, supervision={"stale_after": 12.0}, source={"websocket": client}
    )
    during: dict[str, Any] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(30)
        during["health"] = json.loads((root / "health.json").read_text())
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        worker = daemon.supervisor.workers["A"]
        # Everything the simulator wrote has been read by the daemon (the sizes of the files
        # ``recorded_bytes`` reads: polled every 0.01 s, the record is not read each time).
        await wait_for(
            lambda: worker.stats.bytes == sum(p.stat().st_size for p in record.glob("*/*.jsonf"))
        )

    daemon, code = trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert code == 0
    stats = daemon.supervisor.workers["A"].stats
    # Survived: still (or again) streaming when we looked, on one or two connections.
    stripe_health = during["health"]["stripes"]["A"]
    assert stripe_health["state"] == "streaming", stripe_health
    assert stats.connects == (2 if reconnects else 1)
    if reconnects:
        assert stats.last_error and stripe_health["restarts"] == 1
    if name.startswith("goodnight"):  # ended by the GoodNight itself, not by a close or a stall
        assert stats.last_error == "server said GoodNight (no detail)", stats.last_error
    # Nothing lost: every valid data message is a row with equal values ...
    sent = data_bodies(record)
    assert sent, "the simulator sent data"
    for (msg_type, stripe), bodies in sent.items():
        rows = read_table(root, msg_type).to_pylist()
        assert_rows_equal(msg_type, stripe, bodies, rows, allow_extra=name == "oversized frame")
    # ... and every unusable byte is in quarantine, with its reason, counted in health.
    events, size = expected_quarantine(record, stats.bytes)
    kept = quarantined(root)
    assert len(kept) == events == stats.quarantined
    assert sum(len(base64.b64decode(q["bytes_b64"])) for q in kept) == size
    assert (events > 0) == quarantines
    if quarantines:
        assert stripe_health["quarantined_frames"] > 0
        captured = capsys.readouterr()
        assert "quarantined bytes" in captured.out + captured.err


SAMPLES = (Path(__file__).parent / "data" / "samples.jsonf").read_bytes()


def _sample_frames(mtyp: str, contains: bytes = b"") -> list[bytes]:
    """Whole frames of the vendor's samples, by type."""
    frames = [b"\r\nJ" + part for part in SAMPLES.split(b"\r\nJ")[1:]]
    return [f for f in frames if f'"mTyp":"{mtyp}"'.encode() in f[:80] and contains in f]


def test_data_in_the_read_that_also_ends_the_connection_is_kept(tmp_path: Path) -> None:
    """LoggedOn, data and the server's close in one read: the stream requests the LoggedOn
    calls for can no longer be sent, and the data that came with it must still be kept (it
    used to be dropped with the failed send)."""
    root = tmp_path / "data"
    (logged_on,) = _sample_frames("MLinkAdmin", b"LoggedOn")
    quotes = _sample_frames("OptionNbboQuote")
    cfg = config(root, ["A"], ["OptionNbboQuote"])

    async def serve(stream: trio.abc.Stream, n: int) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while not any(isinstance(e, Request) for e in ws.events()):
            ws.receive_data(bytes(await stream.receive_some(65536)))
        out = ws.send(AcceptConnection())
        if n == 1:  # one write: the client reads it all at once
            out += ws.send(BytesMessage(data=logged_on)) + ws.send(BytesMessage(data=b"".join(
                quotes))) + ws.send(CloseConnection(code=1001, reason="going away"))
        await stream.send_all(out)
        while await stream.receive_some(65536):  # then whatever the client says, until it goes
            pass

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            net = ScriptedNet(nursery, serve)
            launched = launch(nursery, cfg, TrioWallClock(BASE_NS), net)
            await wait_for(lambda: net.opened >= 2)  # the first connection is over
            code = await launched.stop()
            nursery.cancel_scope.cancel()
        return code

    assert trio.run(main, clock=mock_clock()) == 0
    rows = read_table(root, "OptionNbboQuote").to_pylist()
    assert_rows_equal("OptionNbboQuote", "A", [f[14:] for f in quotes], rows)


def test_a_refusal_after_the_requests_went_out_at_logon_timeout_is_an_auth_failure(
    tmp_path: Path,
) -> None:
    """A server that says nothing until it gets requests (PROTOCOL.md §7.1, [I]), then
    refuses the key: the worker must treat it as a rejected credential (long backoff, health
    auth_failed), not as a network error to retry at once."""
    root = tmp_path / "data"
    (refused,) = _sample_frames("MLinkAdmin", b"LogonFailed")
    cfg = config(root, ["A"], ["OptionNbboQuote"], supervision={"logon_timeout": 5.0})
    requests_seen: list[float] = []

    async def serve(stream: trio.abc.Stream, n: int) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                elif isinstance(event, BytesMessage) and b"MLinkStream" in event.data:
                    requests_seen.append(trio.current_time())
                    await stream.send_all(ws.send(BytesMessage(data=refused)))
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(bytes(data))

    async def main() -> tuple[str, str | None]:
        async with trio.open_nursery() as nursery:
            launched = launch(nursery, cfg, TrioWallClock(BASE_NS), ScriptedNet(nursery, serve))
            stats = launched.daemon.supervisor.workers["A"].stats
            await wait_for(lambda: stats.state == "auth_failed")
            outcome = (stats.state, stats.last_error)
            await launched.stop()
            nursery.cancel_scope.cancel()
        return outcome

    state, error = trio.run(main, clock=mock_clock())
    assert state == "auth_failed"
    assert error is not None and "LogonFailed" in error and "invalid api key" in error
    assert requests_seen and requests_seen[0] >= 5.0  # sent at logon_timeout, unasked
