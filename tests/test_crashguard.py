"""Recovery never crash-loops on a journaled message (issue 15, item 3): a frame that kills the
process in the decoder (SIGSEGV, as a native library would) is found and set aside by the
following starts, and every other frame lands in Parquet exactly once.  Real processes."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from journal_util import MSG_TYPE, write_journal
from runtime_env import runtime_env

from capture.crashguard import CrashGuard

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent / "mlink-capture"
KEY = "c0ffee00-1234-4abc-8def-0123456789ab"
BASE_NS = 1_780_000_000 * 10**9
POISON = "POISON-FRAME-137"


def config(tmp: Path) -> Path:
    cfg = tmp / "capture.toml"
    cfg.write_text(
        f"""
[source]
url = "ws://127.0.0.1:9/mlink/jsonf"
stripes = ["A"]
message_types = ["{MSG_TYPE}"]
[auth]
api_key_env = "MLINK_API_KEY"
[output]
root = "data"
rotate_interval = 60
[pipeline]
batch_rows = 64
[supervision]
backoff_initial = 0.2
backoff_max = 1.0
[logging]
format = "json"
level = "debug"
"""
    )
    return cfg


def start(tmp: Path, n: int, reap: Callable[..., None]) -> subprocess.Popen[bytes]:
    env = runtime_env(MLINK_API_KEY=KEY, MLINK_CAPTURE_POISON=POISON)
    env.pop("MLINK_CAPTURE_CRASH_AT", None)
    proc = subprocess.Popen(
        [str(BIN), "run", "--config", str(config(tmp))],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / f"daemon-{n}.log").open("w"),
    )
    reap(proc)
    return proc


def wait_logged(proc: subprocess.Popen[bytes], log: Path, *events: str) -> None:
    """Until the daemon has logged one of ``events`` (it is alive then), at most 60 s."""
    deadline = time.monotonic() + 60
    while not any(f'"event": "{e}"'.encode() in log.read_bytes() for e in events):
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


RECOVERED = ("recovered from the journal", "recovered: nothing to replay")


def stored(root: Path) -> list[int]:
    if not (root / MSG_TYPE).is_dir():
        return []
    dataset = ds.dataset(root / MSG_TYPE, partitioning="hive")
    if not dataset.files:  # only a hidden in-progress file so far: nothing committed
        return []
    table = dataset.to_table(columns=["_seq"])
    return sorted(table["_seq"].to_pylist())


def test_a_frame_that_kills_the_decoder_is_set_aside_after_two_crashes(
    tmp_path: Path, reap: Callable[..., None]
) -> None:
    root = tmp_path / "data"
    write_journal(root / "_journal" / "stripe=A", 300, BASE_NS, marker=137, marker_text=POISON)
    codes = []
    for n in range(2):  # the batch with frame 137 crashes; then frame 137 alone
        proc = start(tmp_path, n, reap)
        codes.append(proc.wait(timeout=60))
    assert codes == [-signal.SIGSEGV, -signal.SIGSEGV]
    proc = start(tmp_path, 2, reap)
    wait_logged(proc, tmp_path / "daemon-2.log", "connecting")  # signal handlers installed
    deadline = time.monotonic() + 60
    while len(stored(root)) < 299 and time.monotonic() < deadline and proc.poll() is None:
        proc.send_signal(signal.SIGHUP)  # rotate now: commit what was replayed
        time.sleep(0.5)
    assert proc.poll() is None, (tmp_path / "daemon-2.log").read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert stored(root) == [s for s in range(300) if s != 137]  # every other frame, once
    lines = [
        json.loads(line)
        for path in (root / "_quarantine").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert [q["key"] for q in lines] == ["seq/137"]
    assert POISON.encode() in base64.b64decode(lines[0]["bytes_b64"])
    # A fourth start has nothing left to do: no crash, nothing quarantined again.
    proc = start(tmp_path, 3, reap)
    wait_logged(proc, tmp_path / "daemon-3.log", *RECOVERED)  # its recovery did not crash
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert stored(root) == [s for s in range(300) if s != 137]
    assert sum(1 for p in (root / "_quarantine").rglob("*.jsonl") for _ in p.open()) == 1


def test_one_crash_alone_never_quarantines(tmp_path: Path) -> None:
    """A SIGKILL that lands during a decode makes its batch a suspect (decoded one frame at a
    time next start), never poison; the same frame dying alone a second time is."""
    guard = CrashGuard(tmp_path)
    assert not guard.open(oldest_seq=0)
    note = guard.note("live")
    note.begin("T", 5, 5)  # a one-frame batch, killed (nothing suspected it before)
    note.close()
    suspects = CrashGuard(tmp_path).open(oldest_seq=0)
    assert suspects.verdict("T", 5) == "suspect" and not suspects.poisoned
    g = CrashGuard(tmp_path)
    g.open(oldest_seq=0)
    live, replay = g.note("live"), g.note("replay")
    replay.begin("T", 0, 9)
    replay.end()  # finished: nothing to suspect from this one
    replay.begin("T", 5, 5)  # alone again, and killed again (the live writer was idle)
    live.close()
    replay.close()
    suspects = CrashGuard(tmp_path).open(oldest_seq=0)
    assert suspects.verdict("T", 5) == "poison" and suspects.verdict("T", 6) is None
    assert not CrashGuard(tmp_path).open(oldest_seq=6)  # the journal moved on: forgotten
