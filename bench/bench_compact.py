#!/usr/bin/env python3
"""Compaction benchmark (``make bench-compact``): bytes, row groups and query time of one
compacted day against the live files of the same rows.

Usage::

    python bench/bench_compact.py [--messages 1500000] [--levels 3,6,9,12] [--repeat 5]

1. The benchmark stream (``gen_stream.py``, cached in ``bench/data``) is decoded with the
   daemon's decoder (``capture.decode.BatchDecoder``) in the batch size a busy 11-stripe
   daemon hands over (~1,700 frames) and written by the daemon's sink (``capture.sink``) with
   the memory share of one of 11 stripes (row groups of a few thousand rows, as in
   production), receive times spread over ``--minutes`` of one past day (the message rate
   sets the live files' row groups, not the span): the *live* tree.
2. ``mlink-capture compact``'s code (``capture.compact``) rewrites a copy of it, once per
   zstd level in ``--levels``: bytes and seconds per level.
3. DuckDB ``COPY (SELECT * ...) TO ... (FORMAT parquet, COMPRESSION zstd)`` of the same rows,
   per table: the reference size.
4. The README's three queries, ``--repeat`` times each (median), on the live tree and on the
   compacted tree (default level).
5. The quotes compacted again with both sorts into ``--skip-rg-rows`` row groups: how many
   row groups a ticker filter and a contract filter must read (footer min/max statistics).

Prints a report and writes ``bench/results/<date>-compact.json``.  Run it at low priority on a
shared machine: ``nice -n 19 make bench-compact``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import duckdb
import pyarrow.parquet as pq
from gen_stream import DEFAULT_DIR, STRIPES, generate

from capture.compact import CompactionSettings, compact
from capture.decode import BatchDecoder
from capture.frames import Frame, FrameDecoder, peek_mtyp
from capture.sink import PartitionSink, SinkSettings

DAY = dt.date(2026, 11, 20)
OPEN_NS = int(dt.datetime(2026, 11, 20, 14, 30, tzinfo=dt.UTC).timestamp()) * 10**9
BATCH = 1_700
# The daemon's row-group share per stripe with 11 stripes and the default 48 MB budget
# (capture.memory: three quarters of what frames in flight leave, split between stripes).
STRIPE_BUDGET = (48 * 2**20 - 12 * 2**20) // 11

QUERIES = {
    "nbbo_mid_per_minute": """
        SELECT date_trunc('minute', _recv_time::TIMESTAMPTZ) AS minute, okey_dt, okey_xx, okey_cp,
               avg((bidPrice + askPrice) / 2) AS mid, avg(askPrice - bidPrice) AS spread
        FROM read_parquet('{root}/OptionNbboQuote/**/*.parquet', hive_partitioning = true,
                          union_by_name = true)
        WHERE okey_tk = 'AAPL' AND bidPrice > 0 AND askPrice > 0
        GROUP BY ALL ORDER BY minute""",
    "print_volume_per_hour": """
        SELECT stripe, date_trunc('hour', _recv_time::TIMESTAMPTZ) AS hour, sum(prtSize) AS volume,
               count(*) AS prints
        FROM read_parquet('{root}/StockPrint/**/*.parquet', hive_partitioning = true,
                          union_by_name = true)
        GROUP BY ALL ORDER BY stripe, hour""",
    "snapshot_vs_live": """
        SELECT 'OptionNbboQuote' AS tbl, date, _snapshot, count(*) AS rows
        FROM read_parquet('{root}/OptionNbboQuote/**/*.parquet', hive_partitioning = true,
                          union_by_name = true)
        GROUP BY ALL ORDER BY date, _snapshot""",
}


def write_live(ds_dir: Path, root: Path, span_ns: int) -> dict[str, int]:
    """The live tree: every stripe's frames through the daemon's decoder and sink."""
    rows: dict[str, int] = {}
    for stripe in STRIPES:
        write_stripe(ds_dir, root, stripe, rows, span_ns)
    return rows


def write_stripe(
    ds_dir: Path, root: Path, stripe: str, rows: dict[str, int], span_ns: int
) -> None:
    frames = [
        ev for ev in FrameDecoder().feed((ds_dir / f"{stripe}.jsonf").read_bytes())
        if isinstance(ev, Frame)
    ]  # fmt: skip
    step = span_ns // max(1, len(frames))
    clock = [OPEN_NS]
    sink = PartitionSink(
        SinkSettings(root=root, rotate_interval_s=300, memory_budget_bytes=STRIPE_BUDGET),
        stripe=stripe,
        session="bench",
        now_ns=lambda: clock[0],
    )
    decoders: dict[str, BatchDecoder] = {}
    pending: dict[str, list[tuple[int, bytes, int]]] = {}

    def flush(mtyp: str, batch: list[tuple[int, bytes, int]]) -> None:
        dec = decoders.setdefault(mtyp, BatchDecoder(mtyp))
        res = dec.decode(
            [b for _, b, _ in batch],
            type_numbers=[n for _, _, n in batch],
            recv_ns=[OPEN_NS + i * step for i, _, _ in batch],
            snapshot=[False] * len(batch),
            seq=[i for i, _, _ in batch],
            stripe=stripe,
            session="bench",
        )
        clock[0] = OPEN_NS + batch[-1][0] * step
        sink.write(mtyp, res.batch)
        sink.rotate_due()
        rows[mtyp] = rows.get(mtyp, 0) + res.batch.num_rows

    for i, fr in enumerate(frames):
        mtyp = peek_mtyp(fr.body)
        if mtyp is None:
            continue
        batch = pending.setdefault(mtyp, [])
        batch.append((i, fr.body, fr.type_number))
        if len(batch) >= BATCH:
            flush(mtyp, batch)
            pending[mtyp] = []
    for mtyp, batch in pending.items():
        if batch:
            flush(mtyp, batch)
    sink.close()


def tree_stats(root: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for tdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        files = sorted(tdir.glob("**/*.parquet"))
        groups = [
            pq.read_metadata(f).row_group(i).num_rows
            for f in files
            for i in range(pq.read_metadata(f).num_row_groups)
        ]
        out[tdir.name] = {
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "rows": sum(groups),
            "row_groups": len(groups),
            "rows_per_row_group_mean": round(sum(groups) / max(1, len(groups))),
            "rows_per_row_group_min": min(groups, default=0),
            "rows_per_row_group_max": max(groups, default=0),
        }
    return out


def duckdb_copy_bytes(root: Path, table: str, work: Path) -> int:
    out = work / f"{table}-duckdb.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{root}/{table}/**/*.parquet', "
        f"hive_partitioning = false)) TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
    )
    con.close()
    size = out.stat().st_size
    out.unlink()
    return size


def time_queries(root: Path, repeat: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, sql in QUERIES.items():
        times = []
        result = None
        for _ in range(repeat):
            con = duckdb.connect()  # a fresh connection: no cached metadata
            t0 = time.perf_counter()
            result = con.execute(sql.format(root=root)).fetchall()
            times.append(time.perf_counter() - t0)
            con.close()
        out[name] = {"median_s": statistics.median(times), "min_s": min(times), "all_s": times,
                     "result_rows": len(result or [])}  # fmt: skip
    return out


def skipping(root: Path, contract: tuple[Any, ...]) -> dict[str, int]:
    """OptionNbboQuote row groups, and how many a ticker filter and a contract filter must
    read: those whose footer min/max could hold the value (the test DuckDB's and pyarrow's
    scans apply to skip a row group)."""
    tk, dt_, xx, cp = contract
    out = {"row_groups": 0, "ticker_reads": 0, "contract_reads": 0}
    for f in sorted((root / "OptionNbboQuote").glob("**/*.parquet")):
        md = pq.read_metadata(f)
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        for g in range(md.num_row_groups):
            rg = md.row_group(g)

            def holds(col: str, v: Any, rg: Any = rg, names: list[str] = names) -> bool:
                st = rg.column(names.index(col)).statistics
                return bool(st is None or not st.has_min_max or st.min <= v <= st.max)

            out["row_groups"] += 1
            if holds("okey_tk", tk):
                out["ticker_reads"] += 1
                if holds("okey_dt", dt_) and holds("okey_xx", xx) and holds("okey_cp", cp):
                    out["contract_reads"] += 1
    return out


def busiest_contract(root: Path, ticker: str) -> tuple[Any, ...]:
    con = duckdb.connect()
    row = con.execute(
        f"SELECT okey_tk, okey_dt, okey_xx, okey_cp FROM read_parquet("
        f"'{root}/OptionNbboQuote/**/*.parquet') WHERE okey_tk = '{ticker}' "
        "GROUP BY ALL ORDER BY count(*) DESC, okey_dt, okey_xx, okey_cp LIMIT 1"
    ).fetchone()
    con.close()
    assert row is not None
    return tuple(row)


def lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=1_500_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--minutes", type=float, default=30.0,
                   help="receive times spread over this much of the day (5-minute files)")
    p.add_argument("--levels", default="3,6,9,12", help="zstd levels measured (plus the default)")
    p.add_argument("--default-level", type=int, default=6)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--sort", choices=("instrument", "underlier"), default="underlier")
    p.add_argument("--skip-rg-rows", type=int, default=8192,
                   help="row groups of this size for the skipping measurement (a real day's "
                        "stripe holds ~100 row groups of 1M rows; the bench's a few hundred "
                        "thousand rows)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: tmp)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    levels = sorted({int(x) for x in args.levels.split(",")} | {args.default_level})

    ds_dir = generate(DEFAULT_DIR, args.messages, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-compact-", dir=args.work))
    try:
        live = work / "live"
        t0 = time.perf_counter()
        rows = write_live(ds_dir, live, int(args.minutes * 60) * 10**9)
        print(f"live tree: {sum(rows.values()):,} rows in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)  # fmt: skip
        doc: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "messages": args.messages,
            "minutes": args.minutes,
            "sort": args.sort,
            "lscpu": lscpu(),
            "live": tree_stats(live),
            "levels": {},
        }
        now = OPEN_NS + 3 * 86_400 * 10**9
        for level in levels:
            tree = work / f"compacted-{level}"
            shutil.copytree(live, tree)
            t0 = time.perf_counter()
            settings = CompactionSettings(root=tree, compression_level=level, sort=args.sort)
            out = compact(settings, now_ns=now)
            seconds = time.perf_counter() - t0
            assert not out.failed, out.failed
            doc["levels"][level] = {"seconds": round(seconds, 2), "tables": tree_stats(tree)}
            print(f"level {level}: {seconds:.1f} s", file=sys.stderr)
            if level != args.default_level:
                shutil.rmtree(tree)
        compacted = work / f"compacted-{args.default_level}"
        contract = busiest_contract(live, "AAPL")
        doc["skipping"] = {"contract": [str(v) for v in contract], "live": skipping(live, contract)}
        for sort in ("instrument", "underlier"):
            tree = work / f"skip-{sort}"
            shutil.copytree(live, tree)
            compact(CompactionSettings(root=tree, sort=sort, row_group_rows=args.skip_rg_rows),
                    now_ns=now, tables=["OptionNbboQuote"])  # fmt: skip
            doc["skipping"][sort] = skipping(tree, contract)
            doc["skipping"][sort]["bytes"] = sum(
                f.stat().st_size for f in (tree / "OptionNbboQuote").glob("**/*.parquet"))
            shutil.rmtree(tree)
        doc["duckdb_zstd_bytes"] = {t: duckdb_copy_bytes(live, t, work) for t in doc["live"]}
        doc["queries_live"] = time_queries(live, args.repeat)
        doc["queries_compacted"] = time_queries(compacted, args.repeat)
        report(doc, args.default_level)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{dt.date.today().isoformat()}-compact-{args.sort}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results: {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(doc: dict[str, Any], level: int) -> None:
    comp = doc["levels"][level]["tables"]
    print(f"\n{'table':<18}{'live MB':>10}{'duckdb MB':>11}{'compact MB':>12}{'vs duckdb':>11}"
          f"{'rows/rg live':>14}{'rows/rg comp':>14}")  # fmt: skip
    for t, s in doc["live"].items():
        c, d = comp[t], doc["duckdb_zstd_bytes"][t]
        print(f"{t:<18}{s['bytes'] / 1e6:>10.1f}{d / 1e6:>11.1f}{c['bytes'] / 1e6:>12.1f}"
              f"{c['bytes'] / d:>10.2f}x{s['rows_per_row_group_mean']:>14,}"
              f"{c['rows_per_row_group_mean']:>14,}")  # fmt: skip
    sk = doc["skipping"]
    print(f"\nrow groups read (of all) by okey_tk = 'AAPL' / by the contract {sk['contract']}:")
    for name in ("live", "instrument", "underlier"):
        r = sk[name]
        print(f"  {name:<11}{r['ticker_reads']:>6} / {r['contract_reads']:>6}"
              f"  of {r['row_groups']}")
    print("\nzstd level: seconds, OptionNbboQuote MB")
    for lv, r in doc["levels"].items():
        mb = r["tables"]["OptionNbboQuote"]["bytes"] / 1e6
        print(f"  {lv:>2}: {r['seconds']:>6.1f} s  {mb:.1f}")
    print("\nquery (s: median, min)            live          compacted   speed-up (median, min)")
    for name in QUERIES:
        a, b = doc["queries_live"][name], doc["queries_compacted"][name]
        print(f"  {name:<22}{a['median_s']:>7.3f}{a['min_s']:>7.3f}    {b['median_s']:>7.3f}"
              f"{b['min_s']:>7.3f}   {a['median_s'] / b['median_s']:>5.1f}x"
              f"{a['min_s'] / b['min_s']:>6.1f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
