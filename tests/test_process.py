"""The daemon as an operator runs it: a real process started with the exact command line of
the Docker image and the systemd unit (``mlink-capture run --config FILE``), against the
simulator in another process.

Checked from the outside: sd_notify messages on a real socket (READY, STATUS, WATCHDOG,
STOPPING), SIGHUP rotates, SIGTERM stops gracefully with every file committed and exit 0, logs
are JSON lines, ``mlink-capture health`` exit codes, and the API key appears nowhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from runtime_env import runtime_env

from capture.sim.record import load_sent_data

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent / "mlink-capture"
KEY = "7c1e4b2a-55d0-4f8e-9a6b-3d2c1b0a9f8e.s3cr3t-pw"


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    record = tmp_path / "sent"
    proc = subprocess.Popen(
        [
            str(BIN),
            "simulate",
            "--port",
            "0",
            "--rate",
            "40",
            "--seed",
            "4",
            "--record-dir",
            str(record),
            "--heartbeat-interval",
            "1",
            "--stripes",
            "A,M",
        ],
        env={**os.environ, "MLINK_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    port = None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "sim.listening":
            port = int(event["url"].split(":")[2].split("/")[0])
            break
    assert port is not None
    yield port, record
    proc.terminate()
    proc.wait(timeout=10)


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def write_config(tmp_path: Path, port: int, processes: int = 1, fork_server: bool = True) -> Path:
    cfg = tmp_path / "capture.toml"
    cfg.write_text(
        f"""
[supervision]
processes = {processes}
fork_server = {str(fork_server).lower()}

[source]
url = "ws://127.0.0.1:{port}/mlink/jsonf"
stripes = ["A", "M"]
message_types = ["OptionNbboQuote", "StockPrint"]

[auth]
api_key_file = "key"

[output]
root = "data"
rotate_interval = 3600

[health]
path = "run/health.json"
interval = 0.5

[logging]
format = "auto"
"""
    )
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    return cfg


@pytest.mark.parametrize(
    ("processes", "fork_server"),
    [(1, True), (2, True), (2, False)],
    ids=["one process", "a process per stripe, forked", "a process per stripe, exec'd"],
)
def test_run_command_notify_rotate_and_graceful_stop(
    tmp_path: Path, simulator: tuple[int, Path], processes: int, fork_server: bool
) -> None:
    """The same checks whether the stripes run in the daemon's process or in stripe-group
    processes under it (supervision.processes, capture.groups), forked by the fork server
    (capture.forkserver) or exec'd: from the outside it is one daemon with one health file,
    one sd_notify voice, and the same data."""
    port, record = simulator
    cfg = write_config(tmp_path, port, processes, fork_server)
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.2)
    messages: list[str] = []
    done_reading = threading.Event()

    def read_notifications() -> None:  # as systemd does, all along
        while not done_reading.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass

    reader = threading.Thread(target=read_notifications, daemon=True)
    reader.start()

    env = runtime_env(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="1000000")
    env.pop("MLINK_API_KEY", None)
    daemon = subprocess.Popen(
        [str(BIN), "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    root = tmp_path / "data"
    health_file = tmp_path / "run" / "health.json"
    try:
        _wait(lambda: any("READY=1" in m for m in messages), 20, "READY=1")

        def streaming() -> bool:
            if not health_file.exists():
                return False
            doc = json.loads(health_file.read_text())
            return all(
                s["state"] == "streaming" and s["rows_written"] > 0 for s in doc["stripes"].values()
            )

        _wait(streaming, 20, "both stripes streaming with rows written")
        # Memory as the operator sees it: the process's RSS, Arrow's allocator (glibc's,
        # chosen at start-up: capture.memory), the budget and what is in flight under it.
        process = json.loads(health_file.read_text())["process"]
        memory = process["memory"]
        assert memory["arrow_pool"] == "system"
        assert 30 < memory["rss_mb"] <= memory["peak_rss_mb"] < 1000
        assert 0 < memory["pss_mb"] <= memory["rss_mb"]
        assert memory["budget_mb"] == 48  # the daemon's, split between the processes
        if processes > 1:
            groups = process["processes"]
            assert [(g["stripes"], g["state"]) for g in groups] == [
                (["A"], "running"),
                (["M"], "running"),
            ]
            child_pids = {g["pid"] for g in groups}
            assert len(child_pids) == 2 and daemon.pid not in child_pids
            assert all(g["rss_mb"] > 30 for g in groups)
            assert [g["forked"] for g in groups] == [fork_server, fork_server]
            server = process["fork_server"]
            if fork_server:
                assert server["lost"] is None
                assert {_parent_pid(pid) for pid in child_pids} == {server["pid"]}
                assert _parent_pid(server["pid"]) == daemon.pid
                child_pids.add(server["pid"])
            else:
                assert server is None
                assert {_parent_pid(pid) for pid in child_pids} == {daemon.pid}
        assert 0 <= memory["in_flight_mb"] <= memory["in_flight_peak_mb"]
        assert memory["batching_mb"] >= 0 and memory["journal_queue_mb"] >= 0
        assert memory["open_footers_mb"] >= 0
        ok = subprocess.run(
            [str(BIN), "health", "--config", str(cfg), "--max-age", "10"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr

        # SIGHUP: rotate now -> committed files appear although the interval is an hour.
        assert not list(root.rglob("*.parquet"))
        daemon.send_signal(signal.SIGHUP)
        _wait(lambda: len(list(root.rglob("*.parquet"))) >= 4, 20, "files after SIGHUP")

        # SIGTERM: graceful stop, exit 0, nothing left in progress.
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err[-2000:]
    if processes > 1:  # the children (and the fork server) are gone with the daemon
        for pid in child_pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    time.sleep(0.3)  # the last datagrams
    done_reading.set()
    reader.join()
    sock.close()

    assert any(m.startswith("READY=1") for m in messages)
    assert any("WATCHDOG=1" in m for m in messages)
    assert any("STOPPING=1" in m for m in messages)
    assert any(m.startswith("STATUS=") and "streaming" in m for m in messages)
    assert not [p for p in root.rglob("*") if p.name.endswith(".inprogress")]

    # Logs: one JSON object per line on stderr (not a TTY), with stripe context.
    events = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert {"starting", "logged on", "stopped"} <= {e["event"] for e in events}
    assert any(e.get("stripe") == "M" for e in events)

    # What was written is exactly what was sent, in order, up to the moment of the stop.
    sent = load_sent_data(record)
    for msg_type in ("OptionNbboQuote", "StockPrint"):
        table = ds.dataset(root / msg_type, format="parquet", partitioning="hive").to_table()
        for stripe in ("A", "M"):
            ordered = table.select(["_seq", "h_seqN", "stripe"]).sort_by("_seq").to_pylist()
            rows = [r["h_seqN"] for r in ordered if r["stripe"] == stripe]
            sent_seq = [json.loads(b)["header"]["seqN"] for b in sent[(msg_type, stripe)]]
            assert rows and rows == sent_seq[: len(rows)], (msg_type, stripe)

    # The key is nowhere: logs, health file, notify messages, process title is the command.
    everything = out + err + health_file.read_text() + "".join(messages)
    assert KEY not in everything and KEY.split(".")[1] not in everything

    # A stopped daemon's health file goes stale: health says so (once it is over 1 s old).
    time.sleep(max(0.0, health_file.stat().st_mtime + 1.2 - time.time()))
    stale = subprocess.run(
        [str(BIN), "health", "--config", str(cfg), "--max-age", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert stale.returncode == 1 and "old" in stale.stdout


def test_check_config_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    (tmp_path / "a-file").write_text("not a directory")
    bad.write_text(
        '[source]\nurl = "ws://h/mlink/jsonf"\nstripes = ["A", "Q"]\n'
        'message_types = ["NotAType"]\n[output]\nroot = "a-file/data"\n'
        "rotate_interval = 7\n[surprise]\n"
    )
    result = subprocess.run(
        [str(BIN), "check-config", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    for key in (
        "source.stripes",
        "source.message_types",
        "output.root",
        "output.rotate_interval",
        "surprise",
    ):
        assert key in result.stderr, key
