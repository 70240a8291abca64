"""Real processes for crash tests: the simulator in one, the daemon in another, SIGKILL at
random moments or at named crash points (capture/faultpoints.py), then checks of what a user
finds afterwards.

The invariant checked (issue: "lose nothing"): every frame the daemon said was durable is in
Parquet, and every frame a cleanly stopped run received; nothing is there twice or that was not
sent; every Parquet file opens with pyarrow and DuckDB; ``verify`` finds no problem.

"Said was durable" is exact, not a guess from the clock: each run logs the sequence number its
connection starts at ("connecting", ``next_seq``) and, at debug level, each fsync of its
journal ("journal synced", ``durable_seq``).  What a run numbered up to the last durable_seq it
logged before the kill must be in Parquet after recovery.  The send time cannot say it: on a
busy machine a daemon reads its socket late, and what the kernel still held at the kill was
never received, so never durable.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from runtime_env import runtime_env

from capture.frames import Frame, FrameDecoder
from capture.protocol import CONTROL_TYPES, header_time_ns
from capture.sim.record import recorded_bytes
from capture.verify import verify

BIN = Path(sys.executable).parent / "mlink-capture"
KEY = "c0ffee00-1234-4abc-8def-0123456789ab"
TYPES = ("OptionNbboQuote", "StockPrint")
DURABILITY = 0.5
LAKE_ENV = {"AWS_ACCESS_KEY_ID": "crash-id", "AWS_SECRET_ACCESS_KEY": "crash-secret"}
POINTS = [  # capture/faultpoints.py
    "sink.commit.footer",
    "sink.commit.fsync",
    "sink.commit.rename",
    "sink.commit.done",
    "journal.retire",
    "worker.decoded",
]


Key = tuple[int, int, int]  # (sID, seqN, encT ns): a frame the simulator sent


@dataclass
class Stored:
    """What a user finds, per frame the simulator sent: how many rows, and the receive
    sequence number (``_seq``) of its row."""

    count: Counter[Key] = field(default_factory=Counter)
    seq: dict[Key, int] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        keys = frame_keys(table)
        self.count.update(keys)
        self.seq.update(zip(keys, table["_seq"].to_pylist(), strict=True))


@dataclass
class Harness:
    tmp: Path
    rate: int = 150
    kills_ns: list[int] = field(default_factory=list)  # when each run ended (graceful too)
    stops_ns: list[int] = field(default_factory=list)  # when each graceful run was stopped
    # Per killed run: what its writers were decoding when it died (the crash guard's notes).
    died_decoding: list[list[tuple[str, int, int]]] = field(default_factory=list)
    sim: subprocess.Popen[str] | None = None
    port: int = 0
    logs: list[Path] = field(default_factory=list)
    lake: dict[str, object] | None = None  # a [lake] section (tests/test_lake_crash.py)

    @property
    def root(self) -> Path:
        return self.tmp / "data"

    @property
    def record(self) -> Path:
        return self.tmp / "sent"

    def start_simulator(self) -> None:
        self.sim = subprocess.Popen(
            [
                str(BIN),
                "simulate",
                "--port",
                "0",
                "--rate",
                str(self.rate),
                "--seed",
                "9",
                "--stripes",
                "A",
                "--types",
                ",".join(TYPES),
                "--record-dir",
                str(self.record),
                "--heartbeat-interval",
                "1",
            ],
            env={**os.environ, "MLINK_API_KEY": KEY},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.sim.stdout is not None
        for line in self.sim.stdout:
            event = json.loads(line)
            if event.get("event") == "sim.listening":
                self.port = int(event["url"].split(":")[2].split("/")[0])
                break
        assert self.port
        self._drain(self.sim.stdout)

    @staticmethod
    def _drain(stream: IO[str]) -> None:
        import threading

        threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()

    def config(self) -> Path:
        cfg = self.tmp / "capture.toml"
        cfg.write_text(
            f"""
[source]
url = "ws://127.0.0.1:{self.port}/mlink/jsonf"
stripes = ["A"]
message_types = {json.dumps(list(TYPES))}
[auth]
api_key_env = "MLINK_API_KEY"
[output]
root = "data"
rotate_interval = 60
[journal]
durability_interval = {DURABILITY}
[pipeline]
flush_interval = 0.2
batch_rows = 256
[supervision]
backoff_initial = 0.2
backoff_max = 1.0
[health]
path = "health.json"
interval = 0.5
[logging]
format = "json"
level = "debug"
"""
            + (_toml_section("lake", self.lake) if self.lake else "")
        )
        return cfg

    def daemon(self, crash_at: str | None = None) -> subprocess.Popen[str]:
        env = runtime_env(MLINK_API_KEY=KEY, **LAKE_ENV)
        env.pop("MLINK_CAPTURE_CRASH_AT", None)
        if crash_at:
            env["MLINK_CAPTURE_CRASH_AT"] = crash_at
        log = self.tmp / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        proc = subprocess.Popen(
            [str(BIN), "run", "--config", str(self.config())],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            text=True,
        )
        _wait_until_up(proc, log)
        return proc

    def kill_after(
        self, seconds: float, *, hup_at: float | None = None, durable: int = 0
    ) -> None:
        """Run the daemon, optionally SIGHUP (rotate: commits) at ``hup_at``, SIGKILL after
        ``seconds``: counted from its start, or from when it said ``durable`` frames of its own
        were durable (:meth:`wait_durable`)."""
        proc = self.daemon()
        if durable:
            self.wait_durable(proc, durable)
        start = time.monotonic()
        if hup_at is not None and hup_at < seconds:
            time.sleep(hup_at)
            proc.send_signal(signal.SIGHUP)
        time.sleep(max(0.0, seconds - (time.monotonic() - start)))
        self.kills_ns.append(time.time_ns())
        proc.kill()
        proc.wait(timeout=10)
        self.died_decoding.append(self.decoding_notes())

    def wait_durable(self, proc: subprocess.Popen[str], frames: int, timeout: float = 120) -> None:
        """Until the running daemon has said (logged "journal synced") that ``frames`` frames of
        its own are durable: a wait for what it did, not for a time a busy machine may stretch."""
        log, deadline = self.logs[-1], time.monotonic() + timeout
        while (claim := _claim(log)) is None or claim[1] + 1 - claim[0] < frames:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)

    def crash_at(self, point: str, *, hup_at: float = 1.5, timeout: float = 30) -> None:
        """Run the daemon armed to SIGKILL itself at ``point``; force commits with SIGHUP."""
        proc = self.daemon(crash_at=point)
        start = time.monotonic()
        deadline = start + timeout
        next_hup = start + hup_at
        while proc.poll() is None and time.monotonic() < deadline:
            if time.monotonic() >= next_hup:
                proc.send_signal(signal.SIGHUP)  # rotate now: the commit path runs
                next_hup = time.monotonic() + 0.3
            time.sleep(0.005)
        died = time.time_ns()  # within ~5 ms of the real death: what the invariant needs
        if proc.poll() is None:  # never reached the point: leave no daemon behind the test
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"{point}: still running after {timeout} s, not at the point")
        assert proc.poll() == -signal.SIGKILL, f"{point}: exited {proc.poll()}, not at the point"
        self.kills_ns.append(died)
        self.died_decoding.append(self.decoding_notes())

    def graceful(
        self,
        seconds: float = 0.0,
        *,
        offline: bool = False,
        durable: int = 0,
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Run the daemon for ``seconds``, until its recovery has replayed the journal (on a
        busy machine that can take longer), until it said ``durable`` frames of its own were
        durable (:meth:`wait_durable`) and until ``until()`` holds, then SIGTERM.
        ``offline``: against a port nobody listens on (start-up recovery only, nothing new
        captured)."""
        if offline:
            self.port, live_port = 9, self.port  # discard port: connection refused
        proc = self.daemon()
        if offline:
            self.port = live_port
        time.sleep(seconds)
        log, deadline = self.logs[-1], time.monotonic() + 180
        while not any(done in log.read_bytes() for done in _RECOVERED) or (
            until is not None and not until()
        ):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        if durable:
            self.wait_durable(proc, durable)
        self.kills_ns.append(time.time_ns())
        self.stops_ns.append(self.kills_ns[-1])
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # a stop that hangs fails the test, and leaves no daemon
                proc.kill()
                proc.wait(timeout=10)
        assert code == 0, self.logs[-1].read_text()[-3000:]

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.terminate()
            self.sim.wait(timeout=10)

    # -- what a user finds ------------------------------------------------------------------

    def parquet_rows(self) -> dict[str, list[tuple[object, ...]]]:
        """Every data row, per table."""
        out = {}
        for t in TYPES:
            table = ds.dataset(self.root / t, partitioning="hive").to_table()
            out[t] = sorted(tuple(r.values()) for r in table.to_pylist())
        return out

    def sent_frames(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        """Data frames the simulator sent: (sID, seqN, encT ns) -> (encT ns, the send time of
        the first frame on the same connection, which identifies the daemon run it went to)."""
        out: dict[tuple[int, int, int], tuple[int, int]] = {}
        for data in recorded_bytes(self.record).values():
            opened: int | None = None
            for ev in FrameDecoder().feed(data):
                if not isinstance(ev, Frame):
                    continue
                header = json.loads(ev.body)["header"]
                if header["mTyp"] in CONTROL_TYPES:
                    continue
                enc = header_time_ns(header["encT"])
                assert enc is not None
                opened = enc if opened is None else opened
                out[(header["sID"], header["seqN"], enc)] = (enc, opened)
        return out

    def crash_guard_quarantined(self) -> set[tuple[int, int, int]]:
        return _crash_guard_keys(self.root)

    def crash_guard_seqs(self) -> set[int]:
        return _crash_guard_seqs(self.root)

    def decoding_notes(self) -> list[tuple[str, int, int]]:
        """(type, first seq, last seq) of what a dead daemon's writers were decoding: its
        crash guard's notes (capture.crashguard), read before the next start clears them."""
        notes = []
        for path in sorted((self.root / "_journal" / "stripe=A").glob("DECODING.*")):
            try:
                note = json.loads(path.read_bytes())
            except ValueError:  # empty: that writer was between batches
                continue
            notes.append((note["msg_type"], note["lo"], note["hi"]))
        return notes

    def durability_claims(self) -> list[tuple[str, int, int]]:
        """Per run that made one: (its log's name, the seq its first connection started at,
        the last ``durable_seq`` it logged: every frame it numbered up to there was fsynced in
        its journal, so recovery must bring it to Parquet)."""
        return [(log.name, *claim) for log in self.logs if (claim := _claim(log)) is not None]

    def check(self, stored: Stored | None = None) -> dict[str, int]:
        """The invariant over the local files, or over ``stored`` (e.g. an Iceberg table's)."""
        sent = self.sent_frames()
        files: list[Path] = []
        if stored is None:
            files = sorted(p for t in TYPES for p in (self.root / t).rglob("*.parquet"))
            for path in files:  # every file opens, with pyarrow and DuckDB
                pq.read_table(path)
                duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()
            stored = Stored()
            for t in TYPES:
                stored.add(ds.dataset(self.root / t, partitioning="hive").to_table())
        rows = stored.count
        twice = [k for k, n in rows.items() if n > 1]
        assert not twice, f"{len(twice)} frames stored twice, e.g. {twice[:3]}"
        phantom = [k for k in rows if k not in sent]
        assert not phantom, f"{len(phantom)} rows were never sent, e.g. {phantom[:3]}"
        kills = sorted(self.kills_ns)
        # A frame the process died decoding twice (the second time alone) is quarantined by the
        # crash guard instead of being decoded again (README, Guarantee): kept, not lost. The
        # kills here are ours, so an innocent frame can be caught that way, but only so: one
        # run died with it in the batch it was decoding, a later one decoding it alone.  (On a
        # busy machine the replay of such a batch, one frame at a time, can outlast several
        # runs, and each kill during it sets one frame aside.)
        guarded = self.crash_guard_quarantined()
        guarded_seqs = self.crash_guard_seqs()
        notes = self.died_decoding
        for seq in guarded_seqs:
            alone = [i for i, d in enumerate(notes) if any(lo == hi == seq for _, lo, hi in d)]
            inside = [i for i, d in enumerate(notes) if any(lo <= seq <= hi for _, lo, hi in d)]
            assert alone and inside[0] < alone[-1], (
                f"frame {seq} quarantined as a decoder crash, but no run died decoding it "
                f"alone after one died decoding it: {notes}"
            )
        kept = set(stored.seq.values()) | guarded_seqs
        # Every frame a run said was durable (fsynced in its journal) is in Parquet: the
        # numbers it gave out from its first connection up to its last "journal synced".
        # (Later runs number above everything journaled, so these numbers are its frames'.)
        required = 0
        lost: list[tuple[str, int]] = []
        for log, first, durable in self.durability_claims():
            required += max(0, durable + 1 - first)
            lost += [(log, seq) for seq in range(first, durable + 1) if seq not in kept]
        assert not lost, f"{len(lost)} of {required} frames said durable are missing: {lost[:5]}"
        # A cleanly stopped run commits everything it received; frames arrive in the order
        # they were sent, so every frame sent on its connection before one it stored was
        # received, and is stored.
        connections: dict[int, list[Key]] = {}
        for key, (_, opened) in sent.items():  # in the order sent
            connections.setdefault(opened, []).append(key)
        for opened, frames in connections.items():
            ended = next((k for k in kills if k > opened), None)
            if ended is None or ended not in self.stops_ns:
                continue  # killed (see above), or sent after the last run
            last = max((i for i, key in enumerate(frames) if key in rows), default=-1)
            before = frames[:last]
            required += len(before)
            missing = [k for k in before if k not in rows and k not in guarded]
            assert not missing, (
                f"{len(missing)} of the {len(before)} frames a cleanly stopped run received "
                f"are missing, e.g. {missing[:3]}"
            )
        report = verify(self.root)  # what `mlink-capture verify` checks, in this process
        assert report.ok, report.render()
        return {
            "sent": len(sent),
            "rows": sum(rows.values()),
            "required": required,
            "files": len(files),
        }


_RECOVERED = (b'"recovered from the journal"', b'"recovered: nothing to replay"')  # logged


def _claim(log: Path) -> tuple[int, int] | None:
    """What a run's log says was durable: (the seq its first connection started at, the last
    ``durable_seq`` it logged), or None before its first "journal synced"."""
    first = durable = None
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # the last line, cut by SIGKILL (or still being written)
            continue
        if event.get("event") == "connecting" and first is None:
            first = int(event["next_seq"])
        elif event.get("event") == "journal synced":
            durable = int(event["durable_seq"])
    if durable is None:
        return None
    assert first is not None, f"{log.name}: durable_seq {durable} before connecting"
    return first, durable


def _crash_guard_seqs(root: Path) -> set[int]:
    """The receive sequence numbers of the frames the crash guard quarantined under ``root``
    (their quarantine key is ``seq/<seq>``: capture.quarantine)."""
    seqs: set[int] = set()
    for path in sorted((root / "_quarantine").glob("stripe=*/*.jsonl")):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if item["reason"].startswith("the process died decoding this frame"):
                seqs.add(int(item["key"].removeprefix("seq/")))
    return seqs


def _crash_guard_keys(root: Path) -> set[tuple[int, int, int]]:
    """(sID, seqN, encT ns) of the frames the crash guard quarantined under ``root``."""
    keys: set[tuple[int, int, int]] = set()
    for path in sorted((root / "_quarantine").glob("stripe=*/*.jsonl")):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if not item["reason"].startswith("the process died decoding this frame"):
                continue
            header = json.loads(base64.b64decode(item["bytes_b64"]))["header"]
            enc = header_time_ns(header["encT"])
            assert enc is not None
            keys.add((header["sID"], header["seqN"], enc))
    return keys


def _wait_until_up(proc: subprocess.Popen[str], log: Path, timeout: float = 120) -> None:
    """Until the daemon's first stripe logs "connecting" (imports done, signal handlers in
    place, recovery under way) or the process ends: the runs' durations count from there, so
    that a busy machine (parallel test workers, other jobs) shortens no run to a start-up."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and b'"event": "connecting"' not in log.read_bytes():
        assert time.monotonic() < deadline, f"the daemon did not start: {log.read_text()[-3000:]}"
        time.sleep(0.02)


def frame_keys(table: pa.Table) -> list[tuple[int, int, int]]:
    """(sID, seqN, encT ns) of each row: what identifies a frame the simulator sent."""
    enc = table["h_encT"].cast("int64").to_pylist()  # microseconds
    sids, seqns = table["h_sID"].to_pylist(), table["h_seqN"].to_pylist()
    return [(sid, seqn, e * 1000) for sid, seqn, e in zip(sids, seqns, enc, strict=True)]


def _toml_section(name: str, values: dict[str, object]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
