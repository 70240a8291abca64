#!/usr/bin/env python3
"""End-to-end capture benchmark: the real daemon process against a replay server, with baselines.

Usage (``make bench`` runs the default: 1 M messages, 1 and 11 stripes, baselines a-d)::

    python bench/bench_e2e.py [--messages 1000000] [--stripes 1,11] [--baselines a,b,c,c1,d]
        [--rotate-interval 60] [--minutes N] [--profile gil|cpu] [--set SECTION.KEY=VALUE]
        [--pythonpath DIR] [--tag TAG] [--no-save]

1. ``gen_stream.py`` pre-generates the byte stream once (cached in ``bench/data``): simulator
   frames, mostly OptionNbboQuote plus StockBookQuote, OptionPrint and StockPrint, per stripe
   (11-stripe run) and all together (1-stripe run).
2. For each stripe count, ``replay_server.py`` (its own process) serves the MLink handshake and
   then the frames at full speed over loopback to ``mlink-capture run --config FILE`` (its own
   process, the real daemon).  Once the server has sent everything and the daemon's health file
   counts every message received, the daemon gets SIGTERM and commits what is open.
3. Measured: end-to-end time from the first data byte the server sends to the last file
   committed (``committed`` log lines), and to the last row received (max ``_recv_time``);
   messages/s, MB/s (frame bytes), daemon CPU seconds (``wait4`` rusage: user + system, all
   threads) per million messages and as cores used, peak RSS (the daemon's ``VmHWM``, from its
   last health file; not ``ru_maxrss``, which for a child also counts the RSS its parent had
   when it forked), ``VmRSS`` sampled from ``/proc``, receive-to-visible latency per row
   (commit time of its file minus its ``_recv_time``) and receive-to-durable (see
   ``durable_latency``).  The run is INVALID unless Parquet holds exactly one row per data
   frame sent, per type and stripe.
4. Baselines on the same frames, each in a fresh process (``baselines.py``): (a) the vendor
   sample client, (b) a straightforward json.loads/from_pylist/write_table writer, (c) pyarrow's
   C++ JSON reader + Parquet writer in one process (this design's limit; reader threads on (c)
   and off (c1), the faster taken), (d) the package's
   decode+sink pipeline in one thread without network (for the profile account).

``--minutes N``: soak instead: 11 stripes, the stream replayed in a loop for N minutes, RSS
sampled every 5 s; flat = the per-minute mean RSS of minutes 2..N within 10 % of each other
(single samples swing with row-group buffering; a leak shows as a trend).

Cores: this machine has 2.  The daemon may use both (it is not pinned); the replay server is
pinned to the last core (``--server-cpu``) and its own CPU time is reported, so what it takes
from the daemon is visible.  Each run also measures how much work 2 CPU-bound processes get
done relative to one (the vCPUs are shared with the host).  Results are printed and written to
``bench/results/<date>[-soak][-TAG].json``; ``make bench`` fails when a run is INVALID.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# bench/ is sys.path[0] when this runs as a script
from gen_stream import DEFAULT_DIR, STRIPES, TYPE_MIX, generate, load_manifest

from capture.sim.tls import make_test_ca

HERE = Path(__file__).resolve().parent

BIN = Path(sys.executable).parent / "mlink-capture"
WORK = HERE / "work"
RESULTS = HERE / "results"
KEY_ENV = "MLINK_BENCH_KEY"
DURABLE_EVENT = "journal synced"
"""Hook for receive-to-durable: a daemon log line with this ``event``, a ``stripe`` and a
``durable_seq`` (every data frame of that stripe with ``_seq <= durable_seq`` is fsynced), at
the time in its ``synced_ns`` (else its ``timestamp``).  Until the journal logs such lines a row
is durable when its Parquet file is committed (fsynced before the rename), i.e. durable ==
visible."""

BASELINE_NAMES = {
    "a": "(a) vendor sample client: CRLF split + json.loads, keep nothing",
    "b": "(b) straightforward: json.loads + dict lists + from_pylist + write_table",
    "c": "(c) limit: C++ JSON reader (explicit schema) + Parquet, in memory",
    "c1": "(c) same, JSON reader threads off",
    "d": "(d) package decode+sink, 1 thread, in memory (no network/trio)",
}


# ---------------------------------------------------------------------------------------------
# Machine and helpers


def machine() -> dict[str, Any]:
    cpu = "unknown"
    mem_kb = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    versions = {}
    for mod in ("pyarrow", "trio", "trio_websocket", "wsproto", "structlog"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
    }


_SPIN = "import time\nt=time.perf_counter()\nx=0\nfor i in range(8_000_000): x+=i\n" \
    "print(time.perf_counter()-t)"


def parallel_scaling() -> float:
    """Throughput of 2 CPU-bound processes at once relative to 1 (2.0 = two real cores)."""
    def spin(n: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE,
                                  text=True) for _ in range(n)]
        return n / max(float(p.communicate()[0]) for p in procs)  # work units per second

    return round(spin(2) / spin(1), 2)


def package_version(pythonpath: str | None) -> str:
    """The git commit of the package under test (and whether it is a patched copy)."""
    try:
        head = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        head = "?"
    dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "capture"],
                           capture_output=True, text=True, check=False).stdout.strip()
    text = head + (" (capture/ modified)" if dirty else "")
    return f"patched copy ({Path(pythonpath).name}) of {text}" if pythonpath else text


def iso_ns(text: str) -> int:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def quantiles(values: pa.Array, qs: tuple[float, ...] = (0.5, 0.99)) -> list[float]:
    if len(values) == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in pc.quantile(values, q=list(qs), interpolation="nearest").to_pylist()]


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def proc_pss_kb(pid: int) -> int:
    """Proportional set size: each shared page (libarrow's code, ...) divided among the
    processes that map it, so that summed over processes every page counts once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon and its stripe-group processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exited(proc: subprocess.Popen[Any]) -> bool:
    """Whether ``proc`` has exited, without reaping it (its rusage is still to be had)."""
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def wait_rusage(proc: subprocess.Popen[Any]) -> tuple[int, Any]:
    """Reap ``proc`` with wait4: exit status and the rusage of that child alone."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


@dataclass
class Sampler:
    """VmRSS, PSS and CPU of a process and its descendants every ``interval`` seconds, in a
    thread; each sample sums over the processes."""

    pid: int
    interval: float
    # (t, rss kB, cpu s, pss kB), each summed over the process tree
    samples: list[tuple[float, int, float, int]] = field(default_factory=list)
    hwm_kb: dict[int, int] = field(default_factory=dict)  # the highest VmHWM seen, per pid
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            rss = pss = 0
            cpu_sum = 0.0
            for pid in process_tree(self.pid):
                st = proc_status(pid)
                cpu = proc_cpu_s(pid)
                if not st or cpu is None:
                    continue
                rss += st.get("VmRSS", 0)
                pss += proc_pss_kb(pid)
                cpu_sum += cpu
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), st.get("VmHWM", 0))
            if rss:
                self.samples.append((time.monotonic() - t0, rss, cpu_sum, pss))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


class ServerOutput:
    """JSON lines of the replay server, read in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.events: list[dict[str, Any]] = []
        self.listening = threading.Event()
        self._lock = threading.Lock()
        assert proc.stdout is not None
        self._stdout = proc.stdout
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for line in self._stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(event)
            if event.get("event") == "listening":
                self.listening.set()

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == name]


# ---------------------------------------------------------------------------------------------
# One daemon run


def write_config(
    work: Path, port: int, stripes: list[str], rotate_interval: int, overrides: list[str],
    *, tls: bool = False,
) -> Path:
    """The daemon's TOML; ``overrides`` are ``section.key=value`` (value in TOML syntax)."""
    scheme = "wss" if tls else "ws"
    sections: dict[str, dict[str, str]] = {
        "source": {
            "url": f'"{scheme}://127.0.0.1:{port}/mlink/jsonf"',
            "stripes": json.dumps(stripes),
            "message_types": json.dumps(list(TYPE_MIX)),
            "resume": "false",
        },
        "auth": {"api_key_env": f'"{KEY_ENV}"'},
        "output": {"root": '"data"', "rotate_interval": str(rotate_interval)},
        "health": {"path": '"health.json"', "interval": "0.1"},
        "logging": {"level": '"debug"', "format": '"json"'},  # debug: "journal synced"
    }
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        sections.setdefault(section, {})[name] = value
    lines = ["# written by bench/bench_e2e.py"]
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
    cfg = work / "capture.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def read_health(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def note_durable(doc: dict[str, Any], seen: dict[str, tuple[list[int], list[int]]]) -> None:
    """Record (``durable_seq``, ``written_at_ns``) per stripe from a health document."""
    written = doc.get("written_at_ns")
    for stripe, view in doc.get("stripes", {}).items():
        durable = view.get("durable_seq")
        if durable is None or written is None:
            continue
        seqs, times = seen.setdefault(stripe, ([], []))
        if not seqs or durable > seqs[-1]:
            seqs.append(int(durable))
            times.append(int(written))


def durable_latency(
    events: list[dict[str, Any]],
    files: list[tuple[int, str, pa.Array, pa.Array]],
    health_seen: dict[str, tuple[list[int], list[int]]],
) -> tuple[pa.Array, str]:
    """Receive-to-durable per row, and the definition used.

    ``files``: (commit ns, stripe, _recv_time ns, _seq) per committed file.  A row is durable
    at the first journal fsync of its stripe whose ``durable_seq`` reaches its ``_seq``:

    1. from ``DURABLE_EVENT`` log lines if the daemon writes them (exact sync times: the hook);
    2. else from the health file's per-stripe ``durable_seq``, polled every 20 ms while the run
       lasts: the time is the health document's ``written_at_ns``, an upper bound late by at
       most the health interval (0.1 s here);
    3. rows no sync covers (or a daemon without a journal): at their file's commit (committed
       Parquet is fsynced before its rename), i.e. durable == visible.
    """
    syncs: dict[str, tuple[list[int], list[int]]] = {}
    for e in events:
        if e.get("event") == DURABLE_EVENT and "durable_seq" in e and "stripe" in e:
            t = int(e["synced_ns"]) if "synced_ns" in e else iso_ns(e["timestamp"])
            seqs, times = syncs.setdefault(str(e["stripe"]), ([], []))
            seqs.append(int(e["durable_seq"]))
            times.append(t)
    how = f"journal fsync ({DURABLE_EVENT!r} log lines)"
    if not syncs and health_seen:
        syncs = health_seen
        how = ("journal fsync, from the health file's durable_seq (upper bound, <= 0.1 s "
               "late); rows no sync covers: file commit")
    if not syncs:
        parts = [pc.subtract(pa.scalar(c, pa.int64()), r) for c, _, r, _ in files]
        return (pa.concat_arrays(parts) if parts else pa.array([], pa.int64())), (
            "committed Parquet (fsynced before rename): durable == visible (no journal fsync "
            "seen: journal off, or the run was shorter than a sync)"
        )
    out: list[int] = []
    for commit, stripe, recv, seq in files:
        seqs, times = syncs.get(stripe, ([], []))
        # durable_seq only grows, so the first sync covering a row is found by bisection
        for r, s in zip(recv.to_pylist(), seq.to_pylist(), strict=True):
            i = bisect.bisect_left(seqs, s)
            out.append(min(times[i] if i < len(times) else commit, commit) - r)
    return pa.array(out, pa.int64()), how


def run_daemon(
    ds_dir: Path,
    manifest: dict[str, Any],
    n_stripes: int,
    args: argparse.Namespace,
    *,
    processes: int = 1,
    loop_seconds: float = 0.0,
) -> dict[str, Any]:
    """One run: the daemon with ``n_stripes``, in ``processes`` stripe-group processes
    (``supervision.processes``; 1: all in the daemon's own process)."""
    layout = f"{n_stripes}" + (f"x{processes}" if processes > 1 else "")
    work = WORK / (f"soak-{layout}" if loop_seconds else f"e2e-{layout}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if n_stripes == 1:
        stripes = ["A"]
        mapping = {"A": str(ds_dir / "all.jsonf")}
        expect = {("A", t): n for t, n in manifest["per_type"].items()}
    elif n_stripes == len(STRIPES):
        stripes = list(STRIPES)
        mapping = {s: str(ds_dir / f"{s}.jsonf") for s in STRIPES}
        expect = {
            (s, t): n for s, types in manifest["stripe_types"].items() for t, n in types.items()
        }
    else:
        raise SystemExit(f"--stripes: 1 or {len(STRIPES)}, not {n_stripes}")

    server_cmd = [
        sys.executable, str(HERE / "replay_server.py"), "--map", json.dumps(mapping),
        "--types", str(len(TYPE_MIX)), "--frames-per-message", str(args.frames_per_message),
        "--loop-seconds", str(loop_seconds),
    ]
    tls = make_test_ca(WORK / "tls") if args.tls else None
    if tls is not None:  # wss://: the server encrypts on its own CPU, the daemon decrypts
        server_cmd += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    pin = {int(c) for c in args.server_cpu.split(",")} if args.server_cpu else None

    def pin_server() -> None:
        if pin is not None:
            os.sched_setaffinity(0, pin)

    with (work / "server.log").open("w") as server_log:
        server = subprocess.Popen(
            server_cmd, stdout=subprocess.PIPE, stderr=server_log, text=True,
            preexec_fn=pin_server,  # affinity is set in the child before exec
        )
    out = ServerOutput(server)
    if not out.listening.wait(120):
        server.kill()
        raise SystemExit("replay server did not start (see server.log)")
    port = out.of("listening")[0]["port"]
    cfg = write_config(work, port, stripes, args.rotate_interval,
                       [f"supervision.processes={processes}", *args.set], tls=tls is not None)
    log_path = work / "daemon.log"
    env = {**os.environ, KEY_ENV: "bench-key"}
    if tls is not None:  # trusted as a system CA would be: certificate and host name checked
        env["SSL_CERT_FILE"] = str(tls.ca)
    cmd = [str(BIN), "run", "--config", str(cfg)]
    if args.pythonpath:  # a patched copy of the package, for A/B experiments
        cmd = [sys.executable, "-m", "capture", "run", "--config", str(cfg)]
        env["PYTHONPATH"] = str(Path(args.pythonpath).resolve())
    with log_path.open("w") as log:
        daemon = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=log)
    pid = daemon.pid
    profile_out = spy_proc = None
    if args.profile:  # sampled from outside (the daemon's own process); ends when it exits
        profile_out = work / f"profile-{args.profile}.collapsed.txt"
        spy = Path(sys.executable).parent / "py-spy"
        spy_proc = subprocess.Popen(
            [str(spy), "record", "--threads", "--rate", "250", "--format", "raw",
             *(["--gil"] if args.profile == "gil" else []),
             "--pid", str(pid), "-o", str(profile_out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    sampler = Sampler(pid, args.sample_interval).start()
    health_path = work / "health.json"
    total_expected = sum(expect.values())
    deadline = time.monotonic() + args.timeout + loop_seconds
    received = 0
    failure = None
    durable_seen: dict[str, tuple[list[int], list[int]]] = {}
    memory_max: dict[str, float] = {}  # the health file's process.memory, maxima
    while True:
        sent = out.of("sent")
        if len(sent) == n_stripes:
            total_expected = sum(e["frames"] for e in sent)
        doc = read_health(health_path)
        if doc is not None:
            received = sum(s.get("messages", 0) for s in doc["stripes"].values())
            note_durable(doc, durable_seen)
            for key, value in doc.get("process", {}).get("memory", {}).items():
                if isinstance(value, (int, float)) and value > memory_max.get(key, -1):
                    memory_max[key] = value
            restarts = sum(s.get("restarts", 0) for s in doc["stripes"].values())
            if restarts:
                failure = f"a stripe reconnected or restarted ({restarts}x): see daemon.log"
                break
        if out.of("disconnected"):
            failure = f"the replay server lost a connection: {out.of('disconnected')}"
            break
        if exited(server):
            failure = "the replay server died: see server.log"
            break
        if len(sent) == n_stripes and received >= total_expected:
            break
        if exited(daemon):
            failure = "daemon exited early (see daemon.log)"
            break
        if time.monotonic() > deadline:
            failure = f"timed out: {received} of {total_expected} messages received"
            break
        time.sleep(0.02)
    t_sigterm = time.time_ns()
    if not exited(daemon):
        daemon.send_signal(signal.SIGTERM)
    code, usage = wait_rusage(daemon)
    if spy_proc is not None:
        spy_proc.wait(60)
    t_exit = time.time_ns()
    sampler.stop()
    server.terminate()
    server_code, server_usage = wait_rusage(server)
    (work / "server.jsonl").write_text("".join(json.dumps(e) + "\n" for e in out.events))
    if server_code not in (0, -signal.SIGTERM):
        problems_early = [f"replay server exit status {server_code}"]
    else:
        problems_early = []

    events = []
    for line in log_path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    levels: dict[str, int] = defaultdict(int)
    for e in events:
        levels[e.get("level", "?")] += 1
    commits = [e for e in events if e.get("event") == "committed"]
    files: list[tuple[int, str, pa.Array, pa.Array]] = []
    rows: dict[tuple[str, str], int] = defaultdict(int)
    other_rows: dict[str, int] = defaultdict(int)
    nbbo_groups: list[int] = []  # row groups per OptionNbboQuote file
    root = work / "data"
    for c in commits:
        path = Path(c["path"])
        path = path if path.is_absolute() else work / path
        table = pq.read_table(path, columns=["_recv_time_ns", "_seq"])
        rel = path.relative_to(root).parts  # <MsgType>/date=.../stripe=S/part-...
        stripe = rel[2].split("=", 1)[1]
        if rel[0] not in TYPE_MIX:  # the daemon's own tables (capture_events)
            other_rows[rel[0]] += table.num_rows
            continue
        rows[(stripe, rel[0])] += table.num_rows
        if rel[0] == "OptionNbboQuote":
            nbbo_groups.append(pq.ParquetFile(path).metadata.num_row_groups)
        recv = pc.cast(table.column("_recv_time_ns"), pa.int64()).combine_chunks()
        files.append((iso_ns(c["timestamp"]), stripe, recv, table.column("_seq").combine_chunks()))
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".inprogress")]
    total_rows = sum(rows.values())
    problems = list(problems_early)
    if failure:
        problems.append(failure)
    if code != 0:
        problems.append(f"daemon exit code {code}")
    if loop_seconds:
        if total_rows != total_expected:
            problems.append(f"{total_rows} rows in Parquet for {total_expected} frames sent")
    elif dict(rows) != {k: v for k, v in expect.items() if v}:
        bad = {f"{s}/{t}": (rows.get((s, t), 0), n) for (s, t), n in expect.items()
               if rows.get((s, t), 0) != n}
        problems.append(f"rows != frames sent (stripe/type: (rows, sent)) {bad}")
    if leftovers:
        problems.append(f"{len(leftovers)} in-progress files left")

    sent = out.of("sent")
    t_first = min((e["t_first_ns"] for e in out.of("sending")), default=t_sigterm)
    t_last_sent = max((e["t_last_ns"] for e in sent), default=t_sigterm)
    t_last_commit = max((f[0] for f in files), default=t_exit)
    t_last_recv = max((pc.max(f[2]).as_py() for f in files if len(f[2])), default=t_sigterm)
    wire = sum(e["bytes"] for e in sent)
    e2e_s = (t_last_commit - t_first) / 1e9
    recv_s = (t_last_recv - t_first) / 1e9
    visible = (
        pa.concat_arrays([pc.subtract(pa.scalar(c, pa.int64()), r) for c, _, r, _ in files])
        if files else pa.array([], pa.int64())
    )
    durable, durable_def = durable_latency(events, files, durable_seen)
    vis_q = quantiles(visible)
    dur_q = quantiles(durable)
    health = read_health(health_path) or {"stripes": {}}
    note_durable(health, durable_seen)
    stripes_h = health["stripes"].values()
    cpu_s = usage.ru_utime + usage.ru_stime
    # The daemon's own high-water mark, written in its last health file after the last commit
    # (a daemon that died wrote no last one: then the sampler's VmHWM can be higher).  Not
    # ru_maxrss: Linux carries the parent's RSS at fork/exec into a child's ru_maxrss, and
    # this process holds the previous run's Parquet by then.
    # With stripe-group processes: the sum of their high-water marks and the parent's (each at
    # its own moment: an upper bound), which counts the pages they share (libarrow's code,
    # ~40 MB) once per process; the peak of the sampled PSS sum counts every page once.
    peak_rss_mb = max(health.get("process", {}).get("memory", {}).get("peak_rss_mb") or 0,
                      sum(sampler.hwm_kb.values()) / 1024)
    peak_pss_mb = max((pss for *_, pss in sampler.samples), default=0) / 1024
    memory_mb = peak_rss_mb if processes == 1 else peak_pss_mb
    memory_samples = [(round(t, 1), round((kb if processes == 1 else pss) / 1024, 1))
                      for t, kb, _, pss in sampler.samples]
    result = {
        "stripes": n_stripes,
        "processes": processes,
        "label": f"{n_stripes} stripe{'s' if n_stripes > 1 else ''}"
                 + (f", {processes} processes" if processes > 1 else ""),
        "valid": not problems,
        "problems": problems,
        "messages": total_rows,
        "messages_sent": total_expected,
        "wire_bytes": wire,
        "files_committed": len(commits),
        "other_rows": dict(other_rows),
        "e2e_seconds": e2e_s,
        "recv_seconds": recv_s,
        "send_seconds": (t_last_sent - t_first) / 1e9,
        "shutdown_seconds": (t_last_commit - t_sigterm) / 1e9,
        "sigterm_after_last_recv_s": (t_sigterm - t_last_recv) / 1e9,
        "msgs_per_s": total_rows / e2e_s if e2e_s > 0 else 0.0,
        "recv_msgs_per_s": total_rows / recv_s if recv_s > 0 else 0.0,
        "mb_per_s": wire / 1e6 / e2e_s if e2e_s > 0 else 0.0,
        "cpu_seconds": cpu_s,
        "user_seconds": usage.ru_utime,
        "system_seconds": usage.ru_stime,
        "cpu_s_per_million": cpu_s / total_rows * 1e6 if total_rows else float("nan"),
        "cores_used": cpu_s / ((t_exit - t_first) / 1e9),
        "peak_rss_mb": peak_rss_mb,
        "peak_pss_mb": peak_pss_mb,
        "memory_mb": memory_mb,
        "memory_definition": "peak RSS (VmHWM)" if processes == 1 else
                             "peak of the summed PSS, sampled",
        "sampled_max_rss_mb": max((kb for _, kb, *_ in sampler.samples), default=0) / 1024,
        "server_cpu_seconds": server_usage.ru_utime + server_usage.ru_stime,
        "server_pinned_to": sorted(pin) if pin else None,
        "visible_p50_s": vis_q[0] / 1e9,
        "visible_p99_s": vis_q[1] / 1e9,
        "visible_max_s": (pc.max(visible).as_py() or 0) / 1e9 if len(visible) else None,
        "durable_p50_s": dur_q[0] / 1e9,
        "durable_p99_s": dur_q[1] / 1e9,
        "durable_definition": durable_def,
        "reader_wait_seconds": sum(s.get("reader_wait_seconds", 0) for s in stripes_h),
        "quarantined": sum(s.get("quarantined_frames", 0) for s in stripes_h),
        "log_levels": dict(levels),
        "rotate_interval_s": args.rotate_interval,
        "memory_samples_mb": memory_samples,
        "health_memory_max_mb": memory_max,
        "nbbo_rows_per_row_group": (
            sum(n for (_, t), n in rows.items() if t == "OptionNbboQuote") / sum(nbbo_groups)
            if nbbo_groups else None
        ),
        "profile": str(profile_out.relative_to(HERE.parent)) if profile_out else None,
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------
# Baselines


def run_baseline(kind: str, ds_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "baselines.py"), kind, str(ds_dir / "all.jsonf"),
           "--out", str(WORK / f"baseline-{kind}"),
           "--frames-per-message", str(args.frames_per_message)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"baseline {kind} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["msgs_per_s"] = result["rows"] / result["seconds"]
    result["cpu_s_per_million"] = result["cpu_seconds"] / result["rows"] * 1e6
    result["name"] = BASELINE_NAMES[kind]
    return result


# ---------------------------------------------------------------------------------------------
# Report


def print_report(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    ds = doc["dataset"]
    print()
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, "
          f"Python {m['python']}, pyarrow {m['pyarrow']}, trio {m['trio']}, "
          f"trio-websocket {m['trio_websocket']}; 2 CPU-bound processes run "
          f"{m['parallel_scaling_2_procs']:.2f}x the throughput of one")
    print(f"package: {doc['package']}")
    print(f"date: {doc['date']}   dataset: {ds['messages']:,} messages, "
          f"{ds['wire_bytes'] / 1e6:,.0f} MB of frames, mix {ds['per_type']}, mean body bytes "
          f"{ds['mean_body_bytes']}")
    runs = doc["runs"]
    if runs:
        print()
        print("| end to end (the daemon) | " + " | ".join(r["label"] for r in runs) + " |")
        print("|---|" + "---:|" * len(runs))
        rows = [
            ("valid (rows == frames sent)", lambda r: "yes" if r["valid"] else "NO"),
            ("messages", lambda r: f"{r['messages']:,}"),
            ("msgs/s, first byte sent -> last file committed",
             lambda r: f"{r['msgs_per_s']:,.0f}"),
            ("MB/s (frame bytes), same window", lambda r: f"{r['mb_per_s']:.1f}"),
            ("msgs/s, first byte sent -> last row received",
             lambda r: f"{r['recv_msgs_per_s']:,.0f}"),
            ("seconds: e2e / receive / shutdown commit",
             lambda r: f"{r['e2e_seconds']:.1f} / {r['recv_seconds']:.1f} / "
                       f"{r['shutdown_seconds']:.2f}"),
            ("CPU s per million messages (daemon)", lambda r: f"{r['cpu_s_per_million']:.1f}"),
            ("cores used (daemon CPU / wall)", lambda r: f"{r['cores_used']:.2f}"),
            ("peak RSS MB (VmHWM; several processes: summed)",
             lambda r: f"{r['peak_rss_mb']:.0f}"),
            ("peak PSS MB (sampled, summed over processes)",
             lambda r: f"{r['peak_pss_mb']:.0f}"),
            ("OptionNbboQuote rows per row group (mean)",
             lambda r: f"{r.get('nbbo_rows_per_row_group') or 0:,.0f}"),
            ("health file maxima MB: Arrow pool / batching / journal queue / in flight / "
             "row-group buffers",
             lambda r: " / ".join(
                 f"{r.get('health_memory_max_mb', {}).get(k, float('nan')):.0f}"
                 for k in ("arrow_mb", "batching_mb", "journal_queue_mb", "in_flight_mb",
                           "row_group_buffers_mb"))),
            ("receive->visible p50 / p99 s",
             lambda r: f"{r['visible_p50_s']:.2f} / {r['visible_p99_s']:.2f}"),
            ("receive->durable p50 / p99 s",
             lambda r: f"{r['durable_p50_s']:.2f} / {r['durable_p99_s']:.2f}"),
            ("reader waited on writer (s, summed)", lambda r: f"{r['reader_wait_seconds']:.1f}"),
            ("replay server CPU s", lambda r: f"{r['server_cpu_seconds']:.1f}"),
        ]
        for label, fn in rows:
            print(f"| {label} | " + " | ".join(fn(r) for r in runs) + " |")
        for r in runs:
            for p in r["problems"]:
                print(f"!! {r['label']} INVALID: {p}")
        print(f"(durable = {runs[0]['durable_definition']}; files rotate every "
              f"{runs[0]['rotate_interval_s']} s)")
    base = doc["baselines"]
    if base:
        print()
        print("| baseline, same frames, one process | msgs/s | CPU s / M msgs | peak RSS MB "
              "(input held) |")
        print("|---|---:|---:|---:|")
        for b in base.values():
            print(f"| {b['name']} | {b['msgs_per_s']:,.0f} | {b['cpu_s_per_million']:.1f} | "
                  f"{b['peak_rss_mb']:.0f} ({b['input_rss_mb']:.0f}) |")
    if runs and base:
        print()
        print("| ratio: daemon e2e msgs/s vs | " + " | ".join(r["label"] for r in runs)
              + " | target |")
        print("|---|" + "---:|" * len(runs) + "---|")
        best_c = limit_key(base)
        targets = {"a": "", "b": ">= 3x", "c": "", "c1": "", "d": ""}
        if best_c:
            targets[best_c] = (">= " + " / ".join(f"{limit_target(r):g}x" for r in runs)
                               + " (the faster (c))")
        for k, b in base.items():
            label = f"{b['name'][:3]}{' threads off' if k == 'c1' else ''}"
            print(f"| {label} | " + " | ".join(
                f"{r['msgs_per_s'] / b['msgs_per_s']:.2f}x" for r in runs) + f" | {targets[k]} |")
    if doc.get("targets"):
        print()
        for t in doc["targets"]:
            print(f"target {t['target']}: {'MET' if t['met'] else 'NOT MET'} ({t['value']})")
    soak = doc.get("soak")
    if soak:
        print()
        print(f"soak: {soak['minutes']:g} min, 11 stripes in {soak['processes']} process(es), "
              f"{soak['messages']:,} messages "
              f"({soak['msgs_per_s']:,.0f}/s, {soak['cpu_s_per_million']:.1f} CPU s/M, "
              f"{soak['cores_used']:.2f} cores), valid={soak['valid']}")
        print(f"  memory ({soak['memory_definition']}) {soak['memory_mb']:.0f} MB, peak RSS "
              f"(VmHWM, summed) {soak['peak_rss_mb']:.0f} MB; samples after the first minute "
              f"{soak['rss_min_mb']:.0f}..{soak['rss_max_mb']:.0f} MB (swing "
              f"{soak['rss_spread_pct']:.0f} %); per-minute means {soak['rss_minute_means_mb']} "
              f"(drift {soak['rss_minute_drift_pct']:.1f} %, flat={soak['flat']})")
        print(f"  receive->visible p50 {soak['visible_p50_s']:.1f} s, p99 "
              f"{soak['visible_p99_s']:.1f} s (rotate_interval {soak['run']['rotate_interval_s']}"
              f" s); receive->durable p50 {soak['durable_p50_s']:.2f} s, p99 "
              f"{soak['durable_p99_s']:.2f} s")
        for p in soak["problems"]:
            print(f"!! soak INVALID: {p}")


def limit_key(base: dict[str, Any]) -> str | None:
    """The faster of the (c) variants: the limit the daemon is held against."""
    found = [k for k in ("c", "c1") if k in base]
    return max(found, key=lambda k: base[k]["msgs_per_s"]) if found else None


# Issue 20's targets against the faster (c), by configuration: one stripe at the C++ reader's
# speed, 11 stripes in one process at 0.8 of it, in stripe-group processes at 1.3; and the
# daemon's CPU per message within 1.2 x that of (d), the package's decode + sink alone.
LIMIT_TARGETS = {"one stripe": 1.0, "one process": 0.8, "several processes": 1.3}
CPU_TARGET_X_D = 1.2


def limit_target(run: dict[str, Any]) -> float:
    if run["processes"] > 1:
        return LIMIT_TARGETS["several processes"]
    return LIMIT_TARGETS["one stripe" if run["stripes"] == 1 else "one process"]


def evaluate_targets(doc: dict[str, Any], durability_interval: float) -> list[dict[str, Any]]:
    out = []
    base = doc["baselines"]
    for r in doc["runs"]:
        tag = r["label"]
        best_c = limit_key(base)
        if best_c:
            ratio = r["msgs_per_s"] / base[best_c]["msgs_per_s"]
            want = limit_target(r)
            out.append({"target": f"e2e >= {want:g} x (c), {tag}", "met": ratio >= want,
                        "value": f"{ratio:.2f}x"})
        if "d" in base:
            ratio = r["cpu_s_per_million"] / base["d"]["cpu_s_per_million"]
            out.append({"target": f"CPU per message <= {CPU_TARGET_X_D:g} x (d)'s, {tag}",
                        "met": ratio <= CPU_TARGET_X_D, "value": f"{ratio:.2f}x"})
        if "b" in base:
            ratio = r["msgs_per_s"] / base["b"]["msgs_per_s"]
            out.append({"target": f"e2e >= 3 x (b), {tag}", "met": ratio >= 3,
                        "value": f"{ratio:.2f}x"})
        limit = durability_interval + 0.1
        out.append({"target": f"receive->durable p99 <= durability_interval + 100 ms, {tag}",
                    "met": r["durable_p99_s"] <= limit,
                    "value": f"{r['durable_p99_s']:.2f} s vs {limit:.2f} s "
                             f"(durability_interval {durability_interval:g} s)"})
        if r["stripes"] == len(STRIPES):
            out.append({"target": f"memory <= 300 MB ({r['memory_definition']}), {tag}, "
                                  "4 types",
                        "met": r["memory_mb"] <= 300, "value": f"{r['memory_mb']:.0f} MB"})
    soak = doc.get("soak")
    if soak:
        out.append({"target": "memory flat within 10 % over the soak (per-minute means)",
                    "met": soak["flat"],
                    "value": f"drift {soak['rss_minute_drift_pct']:.1f} %, samples swing "
                             f"{soak['rss_spread_pct']:.0f} %"})
        out.append({"target": f"memory <= 300 MB over the soak ({soak['memory_definition']})",
                    "met": soak["memory_mb"] <= 300, "value": f"{soak['memory_mb']:.0f} MB"})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stripes", default="1,11,11x2",
                        help="comma list of runs: 1, 11, or 11xN (11 stripes in N stripe-group "
                             "processes: supervision.processes = N)")
    parser.add_argument("--soak-processes", type=int, default=2,
                        help="soak mode: supervision.processes for the 11 stripes")
    parser.add_argument("--baselines", default="a,b,c,c1,d",
                        help="comma list of a,b,c,c1,d or ''")
    parser.add_argument("--rotate-interval", type=int, default=60,
                        help="daemon output.rotate_interval (s; >= 60, divides 86400)")
    parser.add_argument("--durability-interval", type=float, default=1.0,
                        help="the journal's fsync interval the durable target is checked against")
    parser.add_argument("--frames-per-message", type=int, default=16)
    parser.add_argument("--server-cpu", default=str((os.cpu_count() or 1) - 1),
                        help="CPU list the replay server is pinned to ('' = not pinned)")
    parser.add_argument("--minutes", type=float, default=0.0, help="soak mode: minutes to run")
    parser.add_argument("--sample-interval", type=float, default=None,
                        help="RSS sampling period (s); default 0.25, or 5 in soak mode")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", choices=("cpu", "gil"), default=None,
                        help="sample the daemon with py-spy (pip install py-spy) into "
                             "bench/work/*/profile.collapsed.txt (slows the daemon a little); "
                             "gil: only samples of the thread holding the GIL")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="daemon configuration override (TOML value), repeatable")
    parser.add_argument("--pythonpath", default=None,
                        help="run the daemon as python -m capture from this directory (a "
                             "patched copy of the package) instead of the installed one")
    parser.add_argument("--tls", action="store_true",
                        help="wss:// (TLS with a throw-away CA) instead of ws://, as the real "
                             "endpoints are")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--keep", action="store_true", help="keep the Parquet output")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args()
    if args.sample_interval is None:
        args.sample_interval = 5.0 if args.minutes else 0.25

    ds_dir = generate(DEFAULT_DIR, args.messages, args.seed)
    manifest = load_manifest(ds_dir)
    assert manifest is not None
    now = dt.datetime.now(dt.UTC)
    doc: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**machine(), "parallel_scaling_2_procs": parallel_scaling()},
        "dataset": {k: manifest[k] for k in
                    ("messages", "seed", "wire_bytes", "per_type", "mean_body_bytes")},
        "settings": {k: (Path(v).name if k == "pythonpath" and v else v)
                     for k, v in vars(args).items()},  # no absolute paths in results
        "package": package_version(args.pythonpath),
        "baselines": {},
        "runs": [],
    }
    if args.minutes:
        print(f"soak: 11 stripes for {args.minutes:g} min ...", file=sys.stderr)
        r = run_daemon(ds_dir, manifest, len(STRIPES), args, processes=args.soak_processes,
                       loop_seconds=args.minutes * 60)
        samples = r["memory_samples_mb"]
        # After the first minute, before the stop (the last sample may fall in the shutdown)
        warm = ([mb for t, mb in samples if 60 <= t < args.minutes * 60]
                or [mb for _, mb in samples])
        lo, hi = min(warm), max(warm)
        # Flat = no trend: the mean RSS of every whole minute after the first within 10 % of
        # each other (samples swing with row-group buffering; a leak shows as a trend).
        by_minute: dict[int, list[float]] = defaultdict(list)
        for t, mb in samples:
            by_minute[int(t // 60)].append(mb)
        means = [sum(v) / len(v) for m, v in sorted(by_minute.items())
                 if 1 <= m < int(args.minutes)]
        means = means or [sum(warm) / len(warm)]
        drift = (max(means) - min(means)) / min(means) * 100
        doc["soak"] = {
            "minutes": args.minutes, "processes": args.soak_processes, "messages": r["messages"],
            "msgs_per_s": r["msgs_per_s"], "valid": r["valid"], "problems": r["problems"],
            "peak_rss_mb": r["peak_rss_mb"], "memory_mb": r["memory_mb"],
            "memory_definition": r["memory_definition"],
            "rss_min_mb": lo, "rss_max_mb": hi, "rss_spread_pct": (hi - lo) / lo * 100,
            "rss_minute_means_mb": [round(m, 1) for m in means],
            "rss_minute_drift_pct": drift, "flat": drift <= 10.0,
            "visible_p50_s": r["visible_p50_s"], "visible_p99_s": r["visible_p99_s"],
            "durable_p50_s": r["durable_p50_s"], "durable_p99_s": r["durable_p99_s"],
            "cpu_s_per_million": r["cpu_s_per_million"], "cores_used": r["cores_used"],
            "run": r,
        }
    else:
        for kind in [k for k in args.baselines.split(",") if k]:
            print(f"baseline {kind} ...", file=sys.stderr)
            doc["baselines"][kind] = run_baseline(kind, ds_dir, args)
        for layout in [s for s in args.stripes.split(",") if s]:
            n, _, k = layout.partition("x")
            print(f"daemon, {layout} ...", file=sys.stderr)
            doc["runs"].append(run_daemon(ds_dir, manifest, int(n), args, processes=int(k or 1)))
    doc["targets"] = evaluate_targets(doc, args.durability_interval)
    print_report(doc)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = now.strftime("%Y-%m-%d") + ("-soak" if args.minutes else "")
        stem += f"-{args.tag}" if args.tag else ""
        path = RESULTS / f"{stem}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nresults: {path.relative_to(HERE.parent)}")
    invalid = [r for r in doc["runs"] if not r["valid"]]
    return 1 if invalid or (doc.get("soak") and not doc["soak"]["valid"]) else 0


if __name__ == "__main__":
    sys.exit(main())
