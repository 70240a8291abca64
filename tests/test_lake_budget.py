"""The lake's local disk budget during a store outage: moto's S3 server on loopback goes down,
local files and journal segments pile up, health says ``near_budget`` first, then capture
pauses (``over_budget``, every stripe ``paused``) with the bytes held locally bounded; the store
comes back, everything is committed, capture resumes, and the Iceberg tables hold every row the
simulator sent, exactly once."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import boto3
import pytest
import trio
from e2e_util import KEY, KEY_ENV, daemon_config, received
from moto.server import ThreadedMotoServer
from pyiceberg.catalog.sql import SqlCatalog
from test_lake import S3_ENV, ids, local_rows

from capture import events
from capture.app import Daemon
from capture.lake.tables import CATALOG_NAME
from capture.sim.config import SimConfig
from capture.sim.server import Simulator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TYPES = ["OptionNbboQuote", "StockPrint", "LiveSurfaceCurve"]
STRIPES = ["A", "M"]
BUDGET_MB = 10  # the 80 % window (2 MiB) is wider than two closing 1 MiB journal segments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def moto(port: int) -> ThreadedMotoServer:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def test_disk_budget_pauses_capture_and_the_store_takes_everything_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = moto(port)
    boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
    ).create_bucket(Bucket="budget")  # fmt: skip
    server.stop()  # the store is down from the start
    lake = {
        "host_id": "host1",
        "bucket": "budget",
        "endpoint": url,
        "commit_interval": 0.5,
        "disk_budget_mb": BUDGET_MB,
    }
    seen: list[dict[str, Any]] = []  # (lake doc, stripe states) every 0.1 s
    servers = [server]
    window: list[dict[str, Any]] = []  # once the files open at the pause are committed, 1 s
    timing: dict[str, float] = {}

    def look(daemon: Daemon) -> dict[str, Any]:
        doc = daemon.health_doc()
        lake_doc = doc["lake"]
        assert isinstance(lake_doc, dict)
        stripes = doc["stripes"]
        assert isinstance(stripes, dict)
        view = {
            **lake_doc,
            "stripes": {s: v["state"] for s, v in stripes.items()},
            "healthy": doc["healthy"],
            "open_files": doc["process"]["open_files"],
        }
        seen.append(view)
        return view

    async def until(daemon: Daemon, what: str, predicate: Any, seconds: float) -> None:
        with trio.fail_after(seconds):
            while not predicate(look(daemon)):  # noqa: ASYNC110 - polls the health document
                await trio.sleep(0.1)

    async def outage(daemon: Daemon, sim: Simulator) -> None:
        assert daemon.lake is not None
        daemon.lake.retry_max_s = 1.0  # retry the store every second once it is back
        await until(
            daemon, "capture paused",
            lambda v: v["state"] == "over_budget"
            and set(v["stripes"].values()) == {"paused"}, 90,
        )  # fmt: skip
        # Paused: nothing more is received, the bytes held stay put. The files open at the
        # pause are committed then (not at their interval's end): after that.
        paused_at = trio.current_time()
        await until(daemon, "open files committed", lambda v: v["open_files"] == 0, 150)
        timing["commit_after_pause"] = trio.current_time() - paused_at
        for _ in range(10):
            window.append(look(daemon))
            await trio.sleep(0.1)
        servers.append(await trio.to_thread.run_sync(moto, port))  # the store is back
        await until(
            daemon, "caught up and streaming again",
            lambda v: v["state"] == "ok" and v["uncommitted_files"] == 0
            and set(v["stripes"].values()) == {"streaming"}, 90,
        )  # fmt: skip

    root = tmp_path / "data"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=4000, seed=37)

    async def main() -> tuple[Daemon, int]:
        sim = Simulator(sim_cfg)
        async with trio.open_nursery() as nursery:
            p = await nursery.start(sim.run)
            cfg = daemon_config(
                root, p, STRIPES, TYPES, lake=lake,
                journal={"segment_mb": 1}, output={"max_file_mb": 1},
            )  # fmt: skip
            daemon = Daemon(cfg, environ={KEY_ENV: KEY}, install_signals=False)
            exit_code: list[int] = []

            async def run() -> None:
                exit_code.append(await daemon.run())

            nursery.start_soon(run)
            await outage(daemon, sim)
            # A pause is a disconnect: what the server had sent and the socket had not
            # delivered is not received. So: quiesce, then compare with what was received.
            sim.cfg = sim.cfg.with_overrides(rate=0.0, type_rates={})
            with trio.fail_after(20):
                before, stable_since = -1, trio.current_time()
                while trio.current_time() - stable_since < 1.0:
                    if received(daemon) != before:
                        before, stable_since = received(daemon), trio.current_time()
                    await trio.sleep(0.05)
            daemon.stop()
            with trio.fail_after(60):
                while not exit_code:  # noqa: ASYNC110 - the daemon's own task
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        return daemon, exit_code[0]

    try:
        daemon, code = trio.run(main)
    finally:
        for s in servers:
            s.stop()
        servers[-1:] = [moto(port)]  # to read the tables back
    try:
        assert code == 0
        states = [v["state"] for v in seen]
        # A warning first, then the pause, each said by the health document.
        assert "near_budget" in states
        assert states.index("near_budget") < states.index("over_budget")
        paused = [v for v in seen if v["state"] == "over_budget"]
        assert all(v["healthy"] is False for v in paused if "paused" in v["stripes"].values())
        assert all(f"lake.disk_budget_mb = {BUDGET_MB}" in v["capture_paused"] for v in paused)
        errors = {v["last_error"] for v in paused} - {None}  # (None: held by open files too)
        assert errors and all(e.startswith("S3 PutObject") for e in errors), errors
        # Bounded: the bytes held stay within the budget plus what arrives between two
        # measurements, one closing journal segment per stripe and the files still open when
        # the pause came (here at most output.max_file_mb per type and stripe: docs/lake.md).
        budget = BUDGET_MB * 2**20
        held = [v["held_bytes"] for v in paused]
        assert max(held) <= budget + len(STRIPES) * (1 + len(TYPES) + 1) * 2**20, held
        # ... and, once paused, they do not grow: nothing is received
        # The files open at the pause were committed at once, not at the 60 s boundary.
        assert timing["commit_after_pause"] < 20, timing
        assert all(v["state"] == "over_budget" for v in window)
        assert all(set(v["stripes"].values()) == {"paused"} for v in window)
        assert max(v["held_bytes"] for v in window) <= window[0]["held_bytes"], window
        assert seen[-1]["capture_paused"] is None and seen[-1]["upload_lag_files"] == 0

        # Nothing lost: every data row received is in the tables, exactly once.
        cat = SqlCatalog(
            CATALOG_NAME, uri=f"sqlite:///{root / '_lake' / 'catalog.db'}",
            **{"s3.endpoint": url, "s3.region": "us-east-1",
               "s3.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
               "s3.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"]},
        )  # fmt: skip
        rows = 0
        for table in TYPES:
            keys = ids(cat.load_table(("mlink", table)).scan().to_arrow())
            assert keys == ids(local_rows(root, table)), table
            assert len(set(keys)) == len(keys), table
            rows += len(keys)
        assert rows == received(daemon) > 2000
        # and the pause is in the events table: a disconnect naming the budget, then a gap
        scanned = cat.load_table(("mlink", events.TABLE)).scan().to_arrow().to_pylist()
        assert any(
            e["event"] == "disconnect" and "disk_budget_mb" in (e["detail"] or "")
            for e in scanned
        )
    finally:
        servers[-1].stop()
