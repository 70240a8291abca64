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
from memnet import KEY, MemoryNet, config, mock_clock, run, wait_for

from capture.app import Daemon
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
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=30, seed=21, record_dir=record, faults=faults,
        heartbeat_interval=10.0,
    )
    cfg = config(
        root, ["A"], TYPES, supervision={"stale_after": 30.0}, source={"websocket": client}
    )
    during: dict[str, Any] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(60)
        during["health"] = json.loads((root / "health.json").read_text())
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        worker = daemon.supervisor.workers["A"]
        # Everything the simulator wrote has been read by the daemon.
        await wait_for(
            lambda: worker.stats.bytes == sum(len(b) for b in recorded_bytes(record).values())
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
