"""The Prometheus endpoint as a monitoring stack meets it: scraped over HTTP from the running
daemon (one process, and stripe-group processes behind one endpoint), parsed with
prometheus-client's own parser, values equal to the health file's and to what was captured."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
import test_process
from prometheus_client.parser import text_string_to_metric_families

from capture.config import Config, ConfigError, MetricsConfig
from capture.metrics import STATES, HealthCollector, MetricsServer, families, start
from capture.sim.record import load_sent_data

simulator = test_process.simulator  # the simulator in its own process, as in test_process
BIN = test_process.BIN


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET the endpoint; samples by name, then by their sorted labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by_stripe(samples: dict[str, dict[Any, float]], name: str) -> dict[str, float]:
    return {dict(labels)["stripe"]: value for labels, value in samples[name].items()}


def _config(tmp_path: Path, port: int, processes: int) -> Path:
    cfg = test_process.write_config(tmp_path, port, processes)
    cfg.write_text(cfg.read_text() + "\n[metrics]\nenabled = true\nport = 0\n")
    return cfg


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "stripe-group processes"])
def test_scrape_the_running_daemon(
    tmp_path: Path, simulator: tuple[int, Path], processes: int
) -> None:
    port, record = simulator
    cfg = _config(tmp_path, port, processes)
    health_file = tmp_path / "run" / "health.json"
    root = tmp_path / "data"
    daemon = subprocess.Popen(
        [str(BIN), "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def streaming() -> bool:
            if not health_file.exists():
                return False
            doc = json.loads(health_file.read_text())
            return all(
                s["state"] == "streaming" and s["rows_written"] > 0 for s in doc["stripes"].values()
            )

        test_process._wait(streaming, 30, "both stripes streaming with rows written")
        url = json.loads(health_file.read_text())["process"]["metrics_url"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")  # loopback

        # The endpoint serves the document the health file holds: find a scrape and a file of
        # the same report, then every stripe's numbers must be equal.
        deadline = time.monotonic() + 20
        while True:
            samples = scrape(url)
            doc = json.loads(health_file.read_text())
            stamp = samples["mlink_capture_report_timestamp_seconds"][()]
            if stamp == doc["written_at_ns"] / 1e9:
                break
            assert time.monotonic() < deadline, "no scrape matched a health file"
            time.sleep(0.1)
        stripes = doc["stripes"]
        assert set(stripes) == {"A", "M"}
        for key, name in [
            ("messages", "mlink_capture_messages_total"),
            ("bytes", "mlink_capture_received_bytes_total"),
            ("rows_written", "mlink_capture_rows_written_total"),
            ("files_committed", "mlink_capture_files_committed_total"),
            ("quarantined_frames", "mlink_capture_quarantined_frames_total"),
            ("connects", "mlink_capture_connects_total"),
            ("heartbeats", "mlink_capture_heartbeats_total"),
            ("journal_lag_frames", "mlink_capture_journal_lag_frames"),
        ]:
            assert by_stripe(samples, name) == {s: v[key] for s, v in stripes.items()}, name
        assert by_stripe(samples, "mlink_capture_rows_written_total")["A"] > 0
        assert by_stripe(samples, "mlink_capture_connects_total") == {"A": 1, "M": 1}
        assert by_stripe(samples, "mlink_capture_reconnects_total") == {"A": 0, "M": 0}
        state = samples["mlink_capture_stripe_state"]
        for stripe in ("A", "M"):
            current = [
                dict(labels)["state"] for labels, v in state.items()
                if v == 1 and dict(labels)["stripe"] == stripe
            ]  # fmt: skip
            assert current == ["streaming"]
            assert {dict(lb)["state"] for lb in state if dict(lb)["stripe"] == stripe} >= set(
                STATES
            )
        ages = by_stripe(samples, "mlink_capture_last_data_age_seconds")
        assert set(ages) == {"A", "M"} and all(0 <= a < 10 for a in ages.values())
        memory = {dict(k)["part"]: v for k, v in samples["mlink_capture_memory_bytes"].items()}
        assert memory["pss"] == doc["process"]["memory"]["pss_mb"] * 2**20 > 0
        assert samples["mlink_capture_memory_budget_bytes"][()] == 48 * 2**20
        assert samples["mlink_capture_healthy"][()] == 1
        assert samples["mlink_capture_build_info"][(("version", doc["process"]["version"]),)]
        if processes > 1:  # one endpoint for the daemon: the parent serves the merged reports
            assert doc["process"]["pid"] == daemon.pid
            groups = samples["mlink_capture_group_running"]
            assert groups == {(("group", "0"),): 1.0, (("group", "1"),): 1.0}
        last = samples

        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=40)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err[-2000:]
    # What the metrics counted was received and written: no more than the simulator sent and
    # no more than the Parquet holds after the graceful stop.
    sent = load_sent_data(record)
    for stripe in ("A", "M"):
        sent_count = sum(len(v) for (_, s), v in sent.items() if s == stripe)
        assert 0 < by_stripe(last, "mlink_capture_messages_total")[stripe] <= sent_count
    rows = 0
    for msg_type in ("OptionNbboQuote", "StockPrint"):
        rows += ds.dataset(root / msg_type, format="parquet", partitioning="hive").count_rows()
    assert 0 < sum(by_stripe(last, "mlink_capture_rows_written_total").values()) <= rows
    # The endpoint is gone with the daemon.
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_the_endpoint_is_off_by_default_and_on_loopback() -> None:
    cfg = Config.from_toml(Path(__file__).resolve().parents[1] / "config" / "capture.toml")
    assert cfg.metrics == MetricsConfig(enabled=False, address="127.0.0.1", port=9650)
    assert start(cfg.metrics, HealthCollector()) is None


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"enabled": "yes"}, "metrics.enabled"),
        ({"port": 70000}, "metrics.port"),
        ({"port": -1}, "metrics.port"),
        ({"port": "9650"}, "metrics.port"),
        ({"address": "example.com"}, "metrics.address"),
        ({"address": "127.0.0.1:9650"}, "metrics.address"),
        ({"path": "/metrics"}, "metrics.path"),
    ],
)
def test_bad_metrics_config_names_the_key(section: dict[str, Any], key: str) -> None:
    raw = {
        "source": {"url": "ws://h/mlink/jsonf", "stripes": ["A"]},
        "output": {"root": "data"},
        "metrics": section,
    }
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    assert [p.split(":")[0] for p in info.value.problems] == [key]


def test_a_taken_port_is_logged_and_the_capture_goes_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert start(MetricsConfig(True, "127.0.0.1", port), HealthCollector()) is None


def test_server_serves_the_latest_document_then_closes() -> None:
    collector = HealthCollector()
    server = MetricsServer(MetricsConfig(True, "127.0.0.1", 0), collector)
    url = server.start()
    try:
        assert "mlink_capture_messages_total" not in scrape(url)  # nothing reported yet
        doc: dict[str, Any] = {
            "written_at_ns": 1_700_000_000_000_000_000, "healthy": False,
            "process": {"version": "9.9", "memory": {"rss_mb": 1.5, "arrow_pool": "system"}},
            "stripes": {"A": {"state": "auth_failed", "messages": 7, "last_data": None}},
        }  # fmt: skip
        collector.update(doc)
        samples = scrape(url)
        assert samples["mlink_capture_messages_total"] == {(("stripe", "A"),): 7}
        assert samples["mlink_capture_stripe_state"][(("state", "auth_failed"), ("stripe", "A"))]
        assert samples["mlink_capture_memory_bytes"] == {(("part", "rss"),): 1.5 * 2**20}
        assert samples["mlink_capture_healthy"][()] == 0
        assert "mlink_capture_last_data_age_seconds" not in samples  # never had data
        assert samples["mlink_capture_report_age_seconds"][()] > 3e7  # a year old
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


HOSTILE: list[Any] = [
    {},
    {"stripes": None, "process": "x"},
    {"stripes": {"A": None, "B": [], "C": {"state": None, "messages": "12", "bytes": True}}},
    {"stripes": {"\n\"}{": {"state": "\\\"\n", "messages": 1e308, "last_data": "not a date"}}},
    {"stripes": {"A": {"messages": math.inf, "journal_lag_frames": -1, "last_data": 5}}},
    {"written_at_ns": "now", "healthy": "yes", "process": {"memory": {"x_mb": None, "": 3}}},
    {"process": {"processes": [None, {"index": True}, {"index": 2, "restarts": "1"}, 7]}},
    {"stripes": {str(i): {"messages": i} for i in range(2000)}},
    {"stripes": {"A": {"state": {"nested": [[[[[]]]]]}, "upload_lag_seconds": 3.5}}},
]


@pytest.mark.parametrize("doc", HOSTILE, ids=range(len(HOSTILE)))
def test_any_document_renders_and_parses_back(doc: Any) -> None:
    """A report read from a child's pipe can hold anything JSON can: the collector never
    raises, and what it renders is valid exposition text."""
    from prometheus_client import CollectorRegistry, generate_latest

    collector = HealthCollector()
    collector.update(doc)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode("utf-8")
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert "mlink_capture_build_info" in parsed
    # the hook for values a later component reports (the lake's upload lag)
    if "upload_lag_seconds" in json.dumps(doc):
        assert parsed["mlink_capture_upload_lag_seconds"].samples[0].value == 3.5
    # the family list is the same function the endpoint uses
    assert len(families(doc, now=0.0)) >= 1


def test_hostile_requests_do_not_stop_the_endpoint() -> None:
    """What a port scanner, a confused client or a slow one sends: the endpoint answers the next
    scrape all the same."""
    collector = HealthCollector()
    collector.update({"written_at_ns": 1, "stripes": {"A": {"messages": 3}}})
    server = MetricsServer(MetricsConfig(True, "127.0.0.1", 0), collector)
    url = server.start()
    host, port = url.split("/")[2].split(":")
    idle = socket.create_connection((host, int(port)))  # connects and says nothing
    try:
        for request in (
            b"GARBAGE\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 1_000_000 + b"\r\n\r\n",
            b"\x00\xff" * 1000,
            b"GET /" + b"%" * 70_000 + b" HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /metrics?name[]=" + b"x" * 10_000 + b" HTTP/1.0\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n",  # truncated, then closed
        ):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                try:
                    s.sendall(request)
                    s.shutdown(socket.SHUT_WR)
                    s.recv(65536)
                except OSError:
                    pass  # the server may close on us: fine, as long as it serves the next one
            assert scrape(url)["mlink_capture_messages_total"] == {(("stripe", "A"),): 3}
    finally:
        idle.close()
        server.close()
