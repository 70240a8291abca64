"""``mlink-capture verify --config FILE --lake``: the Iceberg tables against this host's local
files and watermarks, from the tables' file lists (no data is scanned).

Problems: two data files of one stripe whose ``_seq`` ranges overlap (rows twice); a stripe's
watermark that is not the highest ``_seq`` of this host's files of it; a local file at or below
the watermark whose object is not in the table, or is with another row count. Local files above
the watermark are only counted (not committed yet).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capture.config import Config
from capture.events import TABLE as EVENTS_TABLE
from capture.lake.files import scan_local
from capture.lake.tables import CatalogError, LakeTables, read_watermarks


@dataclass
class LakeReport:
    problems: list[str] = field(default_factory=list)
    tables: int = 0
    data_files: int = 0
    pending_local: int = 0


def verify_lake(cfg: Config, environ: Mapping[str, str] | None = None) -> LakeReport:
    """Raises CatalogError when the catalog cannot be read."""
    assert cfg.lake is not None
    lake = cfg.lake
    report = LakeReport()
    tables = LakeTables(lake, cfg.output.root, environ)
    local = [f for s in cfg.source.stripes for f in scan_local(cfg.output.root, s, since=None)]
    try:
        catalog = tables.catalog()
        idents = sorted(catalog.list_tables(lake.namespace))
        for ident in idents:
            tbl = catalog.load_table(ident)
            report.tables += 1
            _check_table(ident[-1], tbl, cfg, local, report)
    except CatalogError:
        raise
    except Exception as exc:  # noqa: BLE001 - the catalog's and the store's failures
        raise CatalogError(f"reading the tables: {type(exc).__name__}: {exc}") from None
    return report


def _check_table(name: str, tbl: Any, cfg: Config, local: list[Any], report: LakeReport) -> None:
    assert cfg.lake is not None
    files = tbl.inspect.files().to_pylist() if tbl.current_snapshot() is not None else []
    report.data_files += len(files)
    by_stripe: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    counts: dict[str, int] = {}
    for f in files:
        metrics = f["readable_metrics"]
        stripe = metrics["_stripe"]["lower_bound"]
        if stripe != metrics["_stripe"]["upper_bound"]:
            report.problems.append(f"{name}: {f['file_path']} holds more than one stripe")
        by_stripe[str(stripe)].append(
            (metrics["_seq"]["lower_bound"], metrics["_seq"]["upper_bound"], f["file_path"])
        )
        counts[f["file_path"]] = f["record_count"]
    for stripe, spans in by_stripe.items():
        spans.sort()
        for (_, hi, a), (lo, _, b) in itertools.pairwise(spans):
            if _unit_of(a) is not None and _unit_of(a) == _unit_of(b):
                continue  # parts of one compacted unit: their rows are sorted by key, not _seq
            if lo <= hi and name != EVENTS_TABLE:  # events share the _seq of their moment
                report.problems.append(f"{name}: stripe {stripe} _seq {lo}..{hi} in {a} and {b}")
    host = cfg.lake.host_id
    marks = read_watermarks(tbl, host, cfg.source.stripes)
    for stripe in cfg.source.stripes:
        mine = [hi for _, hi, path in by_stripe.get(stripe, []) if f"/{host}_{stripe}_" in path]
        if mine and marks.get(stripe) != max(mine):
            report.problems.append(
                f"{name}: watermark of {host}/{stripe} is {marks.get(stripe)}, "
                f"its files reach _seq {max(mine)}"
            )
    compacted = [  # (stripe, lo, hi) of this host's compacted units (capture.lakecompact)
        (stripe, *unit)
        for stripe, spans in by_stripe.items()
        for _, _, path in spans
        if f"/{host}_{stripe}_" in path and (unit := _unit_span(path)) is not None
    ]
    prefix = f"s3://{cfg.lake.bucket}/"
    for f in (f for f in local if f.table == name):
        if f.seq_max > marks.get(f.stripe, -1):
            report.pending_local += 1
            continue
        uri = prefix + f.key(cfg.lake.prefix, host)
        if uri not in counts and any(
            s == f.stripe and lo <= f.seq_min and f.seq_max <= hi for s, lo, hi in compacted
        ):
            continue  # its rows are in a compacted file of the lake
        if uri not in counts:
            report.problems.append(f"{name}: {f.path} is under the watermark but not in the table")
        elif counts[uri] != f.rows:
            report.problems.append(f"{name}: {uri} has {counts[uri]} rows, {f.path} {f.rows}")


_COMPACTED = re.compile(r"_(\d{20})_(\d{20})-c([0-9a-f]{16})-\d{3}\.parquet$")


def _unit_of(path: str) -> str | None:
    """The compaction digest of a compacted data file's key, None for any other file."""
    m = _COMPACTED.search(path)
    return m.group(3) if m else None


def _unit_span(path: str) -> tuple[int, int] | None:
    """The receive-sequence span a compacted data file's key names (its unit's)."""
    m = _COMPACTED.search(path)
    return (int(m.group(1)), int(m.group(2))) if m else None
