"""End to end on real loopback sockets: simulator + daemon, several stripes and message types.

The simulator records every byte it sends; the rows in Parquet must be exactly the data
messages it sent, per type and stripe, in order, with equal field values.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.compute as pc
import pytest
import trio
from e2e_util import KEY, assert_rows_equal, daemon_config, read_table, run_capture

from capture.config import Config
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data
from capture.sim.tls import make_test_ca
from capture.transport import CLIENTS

TYPES = [
    "OptionNbboQuote",
    "StockBookQuote",
    "StockPrint",
    "OptionPrint",
    "LiveImpliedQuote",
    "LiveSurfaceCurve",
]
STRIPES = ["A", "M", "S", "X"]

pytestmark = pytest.mark.e2e


def test_rows_in_parquet_are_exactly_the_data_messages_the_simulator_sent(tmp_path: Path) -> None:
    record, root = tmp_path / "sent", tmp_path / "data"
    sim = SimConfig(
        api_keys=frozenset({KEY}), rate=150, seed=11, record_dir=record, heartbeat_interval=0.5
    )
    _, code = trio.run(
        lambda: run_capture(
            sim, lambda port: daemon_config(root, port, STRIPES, TYPES), seconds=2.5
        )
    )
    assert code == 0
    sent = load_sent_data(record)
    assert {stripe for _, stripe in sent} >= {"A", "M", "S"}
    assert {t for t, _ in sent} == set(TYPES)
    total = 0
    for msg_type in TYPES:
        table = read_table(root, msg_type)
        for stripe in STRIPES:
            bodies = sent.get((msg_type, stripe), [])
            rows = table.filter(pc.equal(table.column("stripe"), stripe)).to_pylist()
            assert_rows_equal(msg_type, stripe, bodies, rows)
            total += len(rows)
    assert total == sum(len(v) for v in sent.values()) > 1000

    # Snapshot rows come first on each stream and are flagged; live rows follow.
    nbbo = read_table(root, "OptionNbboQuote").to_pylist()
    snap = [r for r in nbbo if r["_snapshot"]]
    live = [r for r in nbbo if not r["_snapshot"]]
    assert snap and live
    for stripe in {r["stripe"] for r in nbbo}:
        flags = [r["_snapshot"] for r in nbbo if r["stripe"] == stripe]
        assert flags == sorted(flags, reverse=True), "snapshot rows precede live rows"

    # Every row carries its connection session and a receive time.
    sessions = {r["_session"] for r in nbbo}
    assert len(sessions) == len({r["stripe"] for r in nbbo})
    assert all(r["_recv_time"] is not None for r in nbbo)

    # The health file written at shutdown reports what happened, per stripe.
    doc = json.loads((root / "health.json").read_text())
    assert set(doc["stripes"]) == set(STRIPES)
    assert sum(s["rows_written"] for s in doc["stripes"].values()) == total
    assert all(s["quarantined_frames"] == 0 for s in doc["stripes"].values())


def test_duckdb_and_polars_read_the_partitioned_dataset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    sim = SimConfig(api_keys=frozenset({KEY}), rate=100, seed=5, record_dir=tmp_path / "sent")
    _, code = trio.run(
        lambda: run_capture(
            sim,
            lambda port: daemon_config(root, port, ["A", "M"], ["OptionNbboQuote", "StockPrint"]),
            seconds=1.5,
        )
    )
    assert code == 0
    sent = load_sent_data(tmp_path / "sent")
    glob = str(root / "OptionNbboQuote" / "**" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT stripe, count(*) AS n, count(DISTINCT date) AS days, "
        f"min(okey_xx) > 0 AS strikes_ok, bool_and(bidPrice <= askPrice) AS crossed_free "
        f"FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY stripe ORDER BY stripe"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        (s, len(sent[("OptionNbboQuote", s)])) for s in ("A", "M")
    ]
    assert all(r[2] == 1 and r[3] for r in rows)
    frame = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert frame.height == sum(r[1] for r in rows)
    assert frame.schema["_recv_time"] == pl.Datetime("us", "UTC")
    assert frame.schema["_recv_time_ns"] == pl.Int64
    assert set(frame["stripe"].unique().to_list()) == {"A", "M"}


@pytest.mark.parametrize("client", CLIENTS)
def test_wss_end_to_end_with_certificate_checks(
    client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real endpoints are wss://: the simulator serves TLS with a certificate from a test
    CA, the daemon trusts that CA through OpenSSL's default paths (as it would a system CA)
    and checks certificate and host name as it does in production."""
    tls = make_test_ca(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    record, root = tmp_path / "sent", tmp_path / "data"
    sim = SimConfig(
        api_keys=frozenset({KEY}), rate=100, seed=5, record_dir=record, heartbeat_interval=0.5,
        tls_cert=tls.cert, tls_key=tls.key,
    )
    types, stripes = ["OptionNbboQuote", "StockPrint"], ["A", "M"]

    def cfg(port: int) -> Config:
        url = f"wss://127.0.0.1:{port}/mlink/jsonf"
        return daemon_config(root, port, stripes, types, source={"websocket": client, "url": url})

    daemon, code = trio.run(lambda: run_capture(sim, cfg, seconds=1.5))
    assert code == 0
    assert all(w.stats.connects == 1 for w in daemon.supervisor.workers.values())
    sent = load_sent_data(record)
    assert sum(len(v) for v in sent.values()) > 100
    for msg_type in types:
        table = read_table(root, msg_type)
        for stripe in stripes:
            rows = table.filter(pc.equal(table.column("stripe"), stripe)).to_pylist()
            assert_rows_equal(msg_type, stripe, sent.get((msg_type, stripe), []), rows)
