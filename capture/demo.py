"""``mlink-capture demo``: the simulator and the daemon in one process, then what was captured.

The simulator listens on an ephemeral loopback port with a random API key that only this
process knows; the daemon connects to it exactly as it would to the real server.  While it
captures, one progress line (rows written per type, messages per second) is all the terminal
shows: both components' logs go to ``<root>/demo.log`` as JSON lines, summarised at the end.
After the capture window the daemon stops gracefully (files committed) and the demo reads the
Parquet back with pyarrow.dataset.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import trio

from capture import logs
from capture.app import Daemon
from capture.config import Config, ConfigError

DEMO_KEY_ENV = "MLINK_DEMO_KEY"

# The built-in demo configuration; config/demo.toml is the same as a file.
DEFAULT: dict[str, Any] = {
    "demo": {"seconds": 20.0, "rate": 1500, "seed": 7},
    "source": {
        "url": "ws://127.0.0.1:0/mlink/jsonf",
        "stripes": ["A", "B", "C", "M", "S"],
        "message_types": [
            "OptionNbboQuote",
            "OptionPrint",
            "StockBookQuote",
            "StockPrint",
            "LiveImpliedQuote",
            "LiveSurfaceCurve",
        ],
    },
    "auth": {"api_key_env": DEMO_KEY_ENV},
    "output": {"root": "demo-data", "rotate_interval": 60},
    "pipeline": {"flush_interval": 0.5},
    "health": {"path": "demo-data/health.json", "interval": 2.0},
    "logging": {"level": "info"},
}


def main(
    *, config: Path | None, seconds: float | None, root: Path | None, lake: bool = False
) -> int:
    if config is not None:
        try:
            raw = tomllib.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # (TOMLDecodeError, not UTF-8)
            print(f"mlink-capture demo: cannot read {config}: {exc}", file=sys.stderr)
            return 2
        base = config.parent
    else:
        raw = copy.deepcopy(DEFAULT)
        base = Path.cwd()
    demo = raw.pop("demo", {})
    if root is not None:
        raw.setdefault("output", {})["root"] = str(root.resolve())
        raw.setdefault("health", {})["path"] = str(root.resolve() / "health.json")
    duration = seconds if seconds is not None else float(demo.get("seconds", 20.0))
    try:  # the same checks as the daemon's, before anything starts
        output = Config.from_mapping(raw, base_dir=base, source="demo configuration").output
    except ConfigError as exc:
        print(f"mlink-capture demo: {exc}", file=sys.stderr)
        return 2
    os.umask(output.umask)
    data_root = output.root
    data_root.mkdir(parents=True, exist_ok=True)
    log_path = data_root / "demo.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        logs.configure(raw.get("logging", {}).get("level", "info"), "json", stream=log_file)
        if lake:
            return _lake_demo(raw, base, demo, duration, log_path)
        cfg_root = trio.run(_demo, raw, base, demo, duration, sys.stderr, {})
    print(summarise_log(log_path), file=sys.stderr)
    if cfg_root is None:
        return 1
    show(cfg_root)
    return 0


def _lake_demo(
    raw: dict[str, Any], base: Path, demo: dict[str, Any], duration: float, log_path: Path
) -> int:
    """The demo with the lake on: S3 (moto) and an Iceberg SQLite catalog on loopback."""
    from capture.lake import demo as lake_demo

    try:
        with lake_demo.s3_on_loopback() as (section, environ):
            raw["lake"] = section
            cfg_root = trio.run(_demo, raw, base, demo, duration, sys.stderr, environ)
            print(summarise_log(log_path), file=sys.stderr)
            if cfg_root is None:
                return 1
            show(cfg_root)
            lake_demo.show(section, environ, cfg_root)
    except lake_demo.LakeDemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


def summarise_log(path: Path, *, show_at_most: int = 5) -> str:
    """Where the log is, how many lines at each level, and the first warnings and errors."""
    levels: Counter[str] = Counter()
    notable: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            level = str(event.get("level", event.get("log_level", "info")))
            levels[level] += 1
            if level in ("warning", "error", "critical") and len(notable) < show_at_most:
                where = f" [stripe {event['stripe']}]" if "stripe" in event else ""
                notable.append(f"  {level}: {event.get('event')}{where}")
    counts = ", ".join(f"{n} {level}" for level, n in sorted(levels.items()))
    return "\n".join([f"demo: logs in {path} ({counts or 'empty'})", *notable])


def progress_line(daemon: Daemon, elapsed: float, seconds: float, rate: float) -> str:
    """``12/20 s  1,523 msg/s  rows written: OptionNbboQuote 1,234  OptionPrint 567 ...``"""
    rows: Counter[str] = Counter()
    for worker in daemon.supervisor.workers.values():
        rows.update(worker.stats.rows_by_type)
    per_type = "  ".join(f"{t} {n:,}" for t, n in sorted(rows.items()) if not t.startswith("_"))
    done = min(elapsed, seconds)
    return f"{done:3.0f}/{seconds:g} s  {rate:7,.0f} msg/s  rows written: {per_type}"


async def _progress(daemon: Daemon, seconds: float, out: TextIO) -> None:
    """The progress line, rewritten in place on a terminal (a line every 5 s otherwise)."""
    tty = out.isatty()
    start = last_t = trio.current_time()
    last_messages = 0
    last_print = -5.0
    unprinted = None  # off a terminal: the latest line, if not printed yet
    try:
        while True:
            await trio.sleep(0.5)
            now = trio.current_time()
            messages = sum(w.stats.messages for w in daemon.supervisor.workers.values())
            rate = (messages - last_messages) / (now - last_t)
            last_messages, last_t = messages, now
            line = progress_line(daemon, now - start, seconds, rate)
            if tty:
                out.write("\r" + line + "\x1b[K")
                out.flush()
            elif now - start - last_print >= 5:
                last_print = now - start
                print(line, file=out, flush=True)
                unprinted = None
            else:
                unprinted = line
    finally:  # the window is over: where it ended
        if unprinted is not None:
            print(unprinted, file=out, flush=True)


async def _demo(
    raw: dict[str, Any],
    base: Path,
    demo: dict[str, Any],
    seconds: float,
    out: TextIO,
    env: dict[str, str],
) -> Path | None:
    from capture.sim.config import SimConfig
    from capture.sim.server import serve

    key = secrets.token_hex(16)
    logs.register_secret(key)
    stripes = list(raw["source"]["stripes"])
    types = list(raw["source"]["message_types"])
    sim_cfg = SimConfig(
        host="127.0.0.1",
        port=0,
        api_keys=frozenset({key}),
        rate=float(demo.get("rate", 1500)),
        seed=int(demo.get("seed", 7)),
        heartbeat_interval=float(demo.get("heartbeat_interval", 10.0)),
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, sim_cfg)
        raw["source"]["url"] = f"ws://127.0.0.1:{port}/mlink/jsonf"
        cfg = Config.from_mapping(raw, base_dir=base, source="demo configuration")
        print(
            f"demo: simulator on 127.0.0.1:{port}; capturing stripes {', '.join(stripes)} "
            f"x {len(types)} message types for {seconds:g} s into {cfg.output.root}",
            file=out,
        )
        daemon = Daemon(cfg, environ={DEMO_KEY_ENV: key, **env}, install_signals=False)
        done = trio.Event()
        result: list[int] = []

        async def run_daemon() -> None:
            result.append(await daemon.run())
            done.set()

        nursery.start_soon(run_daemon)
        with trio.move_on_after(seconds):
            await _progress(daemon, seconds, out)
        if out.isatty():
            out.write("\n")
        print("demo: stopping (committing every file)", file=out, flush=True)
        daemon.stop()
        await done.wait()
        nursery.cancel_scope.cancel()
    return cfg.output.root if result == [0] else None


def show(root: Path, *, out: Any = None, sample_rows: int = 3) -> None:
    """Rows per message type and stripe, where the files are, and a few rows read back."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    stream = out if out is not None else sys.stdout
    tables = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    print(f"\nCaptured into {root}:", file=stream)
    for table_dir in tables:
        files = sorted(table_dir.rglob("*.parquet"))
        if not files:
            continue
        dataset = ds.dataset(table_dir, format="parquet", partitioning="hive")
        table = dataset.to_table()
        counts = table.group_by(["stripe"]).aggregate([("stripe", "count")]).to_pylist()
        per_stripe = ", ".join(
            f"{c['stripe']}={c['stripe_count']}" for c in sorted(counts, key=lambda c: c["stripe"])
        )
        print(
            f"\n{table_dir.name}: {table.num_rows} rows in {len(files)} file(s)  [{per_stripe}]",
            file=stream,
        )
        print(f"  e.g. {files[0].relative_to(root)}", file=stream)
        preview_cols = [c for c in table.column_names if not c.startswith(("h_", "_"))][:8]
        preview = table.select(["_recv_time", *preview_cols]).slice(0, sample_rows)
        preview = preview.set_column(0, "_recv_time", preview.column(0).cast(pa.string()))
        for row in preview.to_pylist():
            cells = (f"{k}={v}" for k, v in row.items() if v is not None)
            print("    " + "  ".join(cells), file=stream)
    print(
        "\nRead it with DuckDB:  SELECT * FROM read_parquet('"
        f"{root}/OptionNbboQuote/**/*.parquet', hive_partitioning = true) LIMIT 5;",
        file=stream,
    )
