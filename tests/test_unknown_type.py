"""A message type the data dictionary does not know: its rows are kept (tests/test_drift.py),
and the operator is told once per stripe, with what it means and what to do."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import structlog
import trio
from memnet import KEY, KEY_ENV, MemoryNet, config, mock_clock, run

from capture import logs
from capture.app import Daemon
from capture.auth import make_provider
from capture.clock import SystemClock
from capture.driftlog import UNKNOWN_TYPES_LOGGED
from capture.sim.config import SimConfig
from capture.sim.faults import UNKNOWN_TYPE_NAME, Faults
from capture.sim.server import Simulator
from capture.worker import StripeWorker

EVENT = "message type not in the data dictionary: its rows go to a generic table"


@pytest.fixture
def captured() -> object:
    buf = io.StringIO()
    logs.configure(level="info", fmt="json", stream=buf)
    yield buf
    structlog.reset_defaults()


def _events(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_logged_once_per_stripe_with_a_hint(tmp_path: Path, captured: io.StringIO) -> None:
    root = tmp_path / "data"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=20, seed=5, faults=Faults(unknown_type_every=7)
    )
    cfg = config(root, ["A", "M"], ["OptionNbboQuote", "StockPrint"])

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(60)

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    rows = ds.dataset(root / UNKNOWN_TYPE_NAME, partitioning="hive").count_rows()
    warned = [e for e in _events(captured) if e["event"] == EVENT]
    assert rows > 10  # many rows of it, ...
    assert sorted(e["stripe"] for e in warned) == ["A", "M"]  # ... one warning per stripe
    for e in warned:
        assert e["level"] == "warning" and e["msg_type"] == UNKNOWN_TYPE_NAME
        assert "`message`" in str(e["hint"]) and "tools/gen_schemas.py" in str(e["hint"])


def test_a_server_inventing_types_cannot_flood_the_log(
    tmp_path: Path, captured: io.StringIO
) -> None:
    cfg = config(tmp_path, ["A"], ["OptionNbboQuote"])
    worker = StripeWorker(
        cfg, "A", clock=SystemClock(), credentials=make_provider(cfg, {KEY_ENV: KEY}),
        run_id="test",
    )  # fmt: skip
    names = [f"Invented{i}\x1b[31m\n" for i in range(5000)]  # odd names, repeated
    for name in names + names:
        worker.driftlog.unknown_type(name)
    events = _events(captured)
    warned = [e for e in events if e["event"] == EVENT]
    assert [e["msg_type"] for e in warned] == names[:UNKNOWN_TYPES_LOGGED]
    assert [e["event"] for e in events[len(warned):]] == [
        "more message types not in the data dictionary; not logging them any more"
    ]
    assert len(worker.driftlog.unknown_types) == UNKNOWN_TYPES_LOGGED + 1  # bounded memory
    assert all("\n" not in line and "\x1b" not in line for line in captured.getvalue().split("\n"))
