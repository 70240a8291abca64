"""``mlink-capture verify ROOT``: check a capture tree and say what is wrong.

For every committed Parquet file: it opens (footer and, with ``deep``, every page), its footer
metadata agrees with its rows, its ``_seq`` range agrees with the footer, and no two files of
one table and stripe hold the same receive sequence numbers (a row captured twice).  It also
reports unfinished (in-progress) files and quarantined frames.  Rows are counted per table,
date and stripe.  Exit status 0: no problem; 1: problems found.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from capture.events import TABLE as EVENTS_TABLE
from capture.sink import (
    META_COMPACTED,
    META_MSG_TYPE,
    META_ROWS,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    META_STRIPE,
)

_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclass
class Report:
    files: int = 0
    rows: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (table, date, stripe)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"{self.files} files, {sum(self.rows.values())} rows"]
        for (table, date, stripe), n in sorted(self.rows.items()):
            lines.append(f"  {table:<24} date={date} stripe={stripe:<4} {n:>12,} rows")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("OK" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def _tables(root: Path) -> Iterator[Path]:
    for d in sorted(root.iterdir()):
        if d.is_dir() and not d.name.startswith(("_", ".")):
            yield d


def _journal_accounting(root: Path, journal_root: Path, report: Report) -> None:
    """Per stripe: journal frames that are in committed Parquet, and those that are not yet
    (the next start replays them); a damaged journal is a problem."""
    from capture import journal as journal_mod
    from capture.frames import Frame, FrameDecoder, peek_mtyp
    from capture.protocol import CONTROL_TYPES
    from capture.recovery import scan_committed

    for jdir in sorted(journal_root.glob("stripe=*")):
        stripe = jdir.name.removeprefix("stripe=")
        index = scan_committed(root, stripe, since_ns=None, every_date=True)
        total = stored = 0
        decoder = FrameDecoder()

        def cut(path: Path, reason: object, start: int, end: int) -> None:
            report.problems.append(
                f"journal {path.relative_to(root) if path.is_relative_to(root) else path}: "
                f"{end - start} byte(s) damaged at byte {start} ({reason}); the next start "
                "cuts them (kept under corrupt/) and keeps the records after them"
            )

        for _, rec in journal_mod.read_records(jdir, on_cut=cut):
            if isinstance(rec, journal_mod.SessionRecord):
                if not rec.resumed:
                    decoder = FrameDecoder()
                continue
            if isinstance(rec, journal_mod.EventRecord):
                continue
            seq = rec.first_seq
            for ev in decoder.feed(rec.payload):
                if not isinstance(ev, Frame):
                    continue
                mtyp = peek_mtyp(ev.body)
                if mtyp is None or mtyp in CONTROL_TYPES:
                    continue
                total += 1
                stored += index.contains(mtyp, seq)
                seq += 1
        report.notes.append(
            f"journal stripe {stripe}: {total} data frame(s), {stored} in committed Parquet, "
            f"{total - stored} not yet (a running daemon commits them; a start replays them)"
        )
        cut_files = sorted((jdir / "corrupt").glob("*.cut"))
        if cut_files:
            size = sum(p.stat().st_size for p in cut_files)
            report.notes.append(
                f"journal stripe {stripe}: {size} byte(s) of damaged records were cut at start-up "
                f"and kept in {len(cut_files)} file(s) under "
                f"{(jdir / 'corrupt').relative_to(root) if jdir.is_relative_to(root) else jdir}"
                " (frames in them are missing unless in Parquet; see the recovery events)"
            )


def verify(root: Path, *, deep: bool = False, journal_root: Path | None = None) -> Report:
    report = Report()
    if not root.is_dir():
        report.problems.append(f"{root} is not a directory")
        return report
    ranges: dict[tuple[str, str], list[tuple[int, int, Path]]] = defaultdict(list)
    for table_dir in _tables(root):
        for path in sorted(table_dir.rglob("*")):
            if path.name.endswith(".inprogress"):
                report.notes.append(
                    f"unfinished file {path.relative_to(root)} (a running daemon's, or left by a "
                    "crash: the next start moves it to _quarantine)"
                )
            elif path.suffix == ".parquet":
                _check_file(root, table_dir.name, path, report, ranges, deep)
    for (table, stripe), spans in ranges.items():
        if table == EVENTS_TABLE:
            continue
        spans.sort()
        # Each span against the one of those before it that reaches highest: a file that sits
        # inside another is found, not only a file that overlaps its neighbour.
        widest: tuple[int, int, Path] | None = None
        for lo, hi, path in spans:
            if widest is not None and lo <= widest[1]:
                report.problems.append(
                    f"{table} stripe {stripe}: receive sequence {lo}..{min(hi, widest[1])} is "
                    f"in both {widest[2].relative_to(root)} and {path.relative_to(root)} "
                    "(rows twice)"
                )
            if widest is None or hi > widest[1]:
                widest = (lo, hi, path)
    quarantine = root / "_quarantine"
    if quarantine.is_dir():
        count = sum(1 for f in quarantine.rglob("*.jsonl") for line in f.open() if line.strip())
        if count:
            where = quarantine.relative_to(root)
            report.notes.append(f"{count} quarantined frame(s) under {where}")
    journals = journal_root or root / "_journal"
    if journals.is_dir():
        _journal_accounting(root, journals, report)
    return report


def _check_file(
    root: Path,
    table: str,
    path: Path,
    report: Report,
    ranges: dict[tuple[str, str], list[tuple[int, int, Path]]],
    deep: bool,
) -> None:
    rel = path.relative_to(root)
    report.files += 1
    date_dir, stripe_dir = path.parent.parent.name, path.parent.name
    match = _PARTITION.match(date_dir)
    if not match or not stripe_dir.startswith("stripe="):
        report.problems.append(f"{rel}: not under date=YYYY-MM-DD/stripe=S")
        return
    date, stripe = match.group(1), stripe_dir.removeprefix("stripe=")
    try:
        pf = pq.ParquetFile(path)
        meta = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()}
        rows = pf.metadata.num_rows
        if META_COMPACTED in meta:
            _check_compacted(root, table, stripe, path, meta, report, ranges)
            seq = None
        else:
            seq = pf.read(columns=["_seq"]).column("_seq") if rows else None
        if deep:
            for i in range(pf.num_row_groups):
                pf.read_row_group(i)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding itself
        report.problems.append(f"{rel}: cannot be read: {type(exc).__name__}: {exc}")
        return
    key = (table, date, stripe)
    report.rows[key] = report.rows.get(key, 0) + rows
    expected = {META_MSG_TYPE: table, META_STRIPE: stripe, META_ROWS: str(rows)}
    for k, v in expected.items():
        if meta.get(k) != v:
            report.problems.append(f"{rel}: footer {k}={meta.get(k)!r}, expected {v!r}")
    if seq is not None:
        bounds = pc.min_max(seq)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if (str(lo), str(hi)) != (meta.get(META_SEQ_MIN), meta.get(META_SEQ_MAX)):
            report.problems.append(
                f"{rel}: _seq spans {lo}..{hi} but the footer says "
                f"{meta.get(META_SEQ_MIN)}..{meta.get(META_SEQ_MAX)}"
            )
        ranges[(table, stripe)].append((lo, hi, path))


def _check_compacted(
    root: Path,
    table: str,
    stripe: str,
    path: Path,
    meta: dict[str, str],
    report: Report,
    ranges: dict[tuple[str, str], list[tuple[int, int, Path]]],
) -> None:
    """A compacted file (capture.compact): the first of its unit lists the sequence ranges it
    replaced, and those take part in the overlap check.  Its ``_seq`` column is not compared
    with them: rows of another capture host (A/B merge) carry that host's numbers, and a row
    the other host received first stands for this host's copy."""
    from capture.recovery import parse_seq_ranges

    rel = path.relative_to(root)
    if META_SEQ_RANGES not in meta:
        return
    try:
        spans = parse_seq_ranges(meta[META_SEQ_RANGES])
    except ValueError as exc:
        report.problems.append(f"{rel}: footer {META_SEQ_RANGES}: {exc}")
        return
    for lo, hi in spans:
        ranges[(table, stripe)].append((lo, hi, path))


def main(root: Path, *, deep: bool, as_json: bool, journal_root: Path | None = None) -> int:
    report = verify(root, deep=deep, journal_root=journal_root)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "files": report.files,
                    "rows": [
                        {"table": t, "date": d, "stripe": s, "rows": n}
                        for (t, d, s), n in sorted(report.rows.items())
                    ],
                    "problems": report.problems,
                    "notes": report.notes,
                },
                indent=2,
            )
        )
    else:
        print(report.render())
    return 0 if report.ok else 1
