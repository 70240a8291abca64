"""Compaction: rewrite closed partitions into few large, sorted files, swapped in atomically.

A partition is one ``ROOT/<Type>/date=D/stripe=S`` directory.  A *unit* is what one rewrite
covers: the whole local day (``granularity = "day"``) or one UTC-aligned hour of it
(``"hour"``).  A unit is rewritten only when it is closed (its end plus ``min_age_s`` has
passed, so never the current day's open interval) and when it holds something not yet
compacted (a live part file, compacted files of another unit size, or new peer data).

Each unit's rows are sorted by the type's instrument key (the ``pkey`` columns of the schema
registry) then receive time, and written as row groups of ``row_group_rows`` rows (fewer if
``row_group_bytes`` of Arrow data come first) into files of about ``target_file_bytes``, zstd
and dictionary encoded.

Atomic replacement (docs/compaction.md): the new contents of ``stripe=S`` (compacted files
plus hard links to every file left alone) are built in ``ROOT/_compaction/work/<Type>/
date=D/stripe=S``, fsynced, then the two directory names are exchanged with
``renameat2(RENAME_EXCHANGE)`` (``capture.dirswap``).  A reader listing ``stripe=S`` sees the
old set or the new set.  After the exchange the work path holds the old files; committed part
files in it that the new set does not account for (a daemon committed one meanwhile) are moved
back, then it is deleted.  A crash at any step leaves the old or the new set visible; the next
run finishes the cleanup the same way (``recover``) and carries on: reruns are idempotent.

The first compacted file of a unit records in its footer the receive-sequence ranges of the
own root's files it replaced (``mlink.seq_ranges``), so ``capture.recovery`` and ``verify``
know those frames are stored even where the A/B merge dropped a row as another host's
duplicate.

Sync code; it must not run on an event loop.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capture import dirswap
from capture.errors import CompactionError
from capture.events import TABLE as EVENTS_TABLE
from capture.faultpoints import crash_point
from capture.logs import get_logger
from capture.recovery import format_seq_ranges, merge_ranges, parse_seq_ranges
from capture.rotation import day_start_ns
from capture.schemas import lookup
from capture.schemas.mapping import RECV_TIME_COLUMN, Leaf, layout
from capture.sink import (
    INPROGRESS_SUFFIX,
    META_COMPACTED,
    META_HOST,
    META_MSG_TYPE,
    META_ROWS,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    META_SESSION,
    META_STRIPE,
    META_WRITER,
    QUARANTINE_DIR,
    RECV_NS_COLUMN,
    WRITER_ID,
)

log = get_logger(component="compact")

__all__ = [
    "COMPACTION_DIR",
    "CompactionError",
    "CompactionSettings",
    "Outcome",
    "compact",
    "recover",
    "rewrite",
    "unit_ranges",
]

#: Under ROOT: the work area (``work/``) and the lock file.  Leading ``_``: no table, and
#: pyarrow.dataset/Spark skip it.
COMPACTION_DIR: Final = "_compaction"
HOST_COLUMN: Final = "_host"
COMPACTED_PREFIX: Final = "compacted-"
LIVE_PREFIX: Final = "part-"
COVERAGE_PREFIX: Final = "coverage-"  # A/B coverage reports in the events table

# Footer keys written only by compaction (the ones shared with the sink live in capture.sink).
META_UNIT: Final = "mlink.unit"
META_INPUTS: Final = "mlink.inputs"  # JSON list of the own root's file names replaced
META_PEER_INPUTS: Final = "mlink.peer_inputs"  # JSON {peer root: digest of its files}
META_PART: Final = "mlink.part"

NS: Final = 1_000_000_000
HOUR_NS: Final = 3600 * NS
_DICT_STRING: Final = pa.dictionary(pa.int32(), pa.string())
_TS_NS: Final = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True, slots=True)
class CompactionSettings:
    root: Path
    tz: str = "UTC"
    granularity: str = "day"  # "day" | "hour"
    #: A unit is closed this long after its end (rows still on their way, a restart's replay).
    min_age_s: int = 3600
    row_group_rows: int = 1_048_576
    row_group_bytes: int = 256 * 2**20  # Arrow bytes per row group at most
    target_file_bytes: int = 512 * 2**20
    compression_level: int = 6
    #: One unit is sorted in memory: a day whose inputs hold more Arrow bytes than this is
    #: compacted hour by hour; an hour over it is skipped (logged).
    max_unit_bytes: int = 4 * 2**30
    #: This root's capture host (rows of files without ``mlink.host`` in their footer).
    host_id: str = "local"
    #: Other hosts' capture roots for the A/B merge (read only).
    peers: tuple[Path, ...] = ()
    #: Rows are ordered by "underlier" (the key up to its ticker: an underlier's rows in
    #: receive order) or "instrument" (every key column: a contract's rows together), then by
    #: receive time.  Both let a ticker filter skip row groups; "instrument" also a contract
    #: filter; "underlier" compresses the time columns better, the one that meets the bytes
    #: target (docs/compaction.md, measured).
    sort: str = "underlier"


@dataclass
class Outcome:
    """What one run did (printed by the CLI, and the scheduled mode's log line)."""

    units_compacted: int = 0
    files_in: int = 0
    files_out: int = 0
    rows_in: int = 0
    rows_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duplicates_dropped: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)  # dry run: what would be compacted
    recovered: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class _Input:
    path: Path
    side: int  # 0: own root; 1..: peers
    host: str
    rows: int
    nbytes: int  # Arrow (uncompressed) bytes, from the footer
    min_ns: int
    max_ns: int
    meta: dict[str, str]

    @property
    def compacted(self) -> bool:
        return META_COMPACTED in self.meta

    def own_ranges(self) -> list[tuple[int, int]]:
        if self.side != 0:
            return []
        if self.compacted:
            return parse_seq_ranges(self.meta.get(META_SEQ_RANGES, ""))
        if META_SEQ_MIN in self.meta:
            return [(int(self.meta[META_SEQ_MIN]), int(self.meta[META_SEQ_MAX]))]
        return []


@dataclass
class _Unit:
    tag: str  # "day:2026-01-02" | "hour:2026-01-02T13"
    end_ns: int
    inputs: list[_Input] = field(default_factory=list)


# ---------------------------------------------------------------------------- planning


def _table_dirs(root: Path, tables: Sequence[str] | None) -> Iterator[Path]:
    if not root.is_dir():
        return
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(("_", ".")):
            continue
        if tables is None or d.name in tables:
            yield d


def _partitions(
    roots: Sequence[Path], tables: Sequence[str] | None, dates: Sequence[dt.date] | None
) -> list[tuple[str, dt.date, str]]:
    """(table, date, stripe) of every partition in any of ``roots``."""
    found: set[tuple[str, dt.date, str]] = set()
    for root in roots:
        for tdir in _table_dirs(root, tables):
            for ddir in tdir.glob("date=*"):
                try:
                    day = dt.date.fromisoformat(ddir.name.removeprefix("date="))
                except ValueError:
                    continue
                if dates is not None and day not in dates:
                    continue
                for sdir in ddir.glob("stripe=*"):
                    if sdir.is_dir():
                        found.add((tdir.name, day, sdir.name.removeprefix("stripe=")))
    return sorted(found)


def _recv_bounds(meta: pq.FileMetaData) -> tuple[int, int]:
    """[min, max] receive time (ns) from the row groups' statistics."""
    schema = meta.schema.to_arrow_schema()
    name = RECV_NS_COLUMN if RECV_NS_COLUMN in schema.names else RECV_TIME_COLUMN
    idx = schema.get_field_index(name)
    typ = schema.field(idx).type
    scale = 1 if name == RECV_NS_COLUMN else {"s": NS, "ms": 10**6, "us": 1000, "ns": 1}[typ.unit]
    col = next(i for i in range(meta.num_columns) if meta.schema.column(i).name == name)
    lo, hi = None, None
    for rg in range(meta.num_row_groups):
        st = meta.row_group(rg).column(col).statistics
        if st is None or not st.has_min_max:
            raise CompactionError(f"no statistics for {name}")
        lo = st.min_raw if lo is None else min(lo, st.min_raw)
        hi = st.max_raw if hi is None else max(hi, st.max_raw)
    if lo is None or hi is None:
        return 0, 0
    return int(lo) * scale, int(hi) * scale


_WIDTH: Final = {"INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def _arrow_bytes(meta: pq.FileMetaData) -> int:
    """About the Arrow (in-memory) bytes of a file, from its footer: fixed-width columns by
    their width, the rest by their uncompressed size.  Not the pages' sizes alone: those
    depend on the encoding (a delta-encoded time column is a fraction of its 8 bytes a row),
    and a compacted file must weigh what its rows weigh in memory, or a day once compacted by
    hours would look small enough to be merged into one day the next run."""
    total = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            width = _WIDTH.get(col.physical_type)
            total += col.num_values * width if width else col.total_uncompressed_size
    return total


def _read_input(path: Path, side: int, default_host: str) -> _Input:
    meta = pq.read_metadata(path)
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    lo, hi = _recv_bounds(meta) if meta.num_rows else (0, 0)
    nbytes = _arrow_bytes(meta)
    return _Input(
        path=path,
        side=side,
        host=kv.get(META_HOST, default_host),
        rows=meta.num_rows,
        nbytes=nbytes,
        min_ns=lo,
        max_ns=hi,
        meta=kv,
    )


def _unit_of(inp: _Input, day: dt.date, granularity: str, tz: str) -> tuple[str, int]:
    if granularity == "day":
        return f"day:{day.isoformat()}", day_start_ns(day + dt.timedelta(days=1), tz)
    start = inp.min_ns // HOUR_NS * HOUR_NS
    stamp = dt.datetime.fromtimestamp(start // NS, dt.UTC).strftime("%Y-%m-%dT%H")
    return f"hour:{stamp}", start + HOUR_NS


def _peer_digest(inputs: Sequence[_Input]) -> dict[str, str]:
    by_side: dict[int, list[str]] = {}
    for i in inputs:
        if i.side:
            st = i.path.stat()
            by_side.setdefault(i.side, []).append(f"{i.path.name}:{st.st_size}")
    return {
        str(side): hashlib.blake2b("\n".join(sorted(names)).encode(), digest_size=8).hexdigest()
        for side, names in sorted(by_side.items())
    }


def _needs_work(unit: _Unit) -> bool:
    own = [i for i in unit.inputs if i.side == 0]
    if any(not i.compacted or i.meta.get(META_UNIT) != unit.tag for i in own):
        return True
    if not any(i.side for i in unit.inputs):
        return False
    recorded = {}
    for i in own:
        if META_PEER_INPUTS in i.meta:
            recorded = json.loads(i.meta[META_PEER_INPUTS])
    return bool(recorded != _peer_digest(unit.inputs))


# ---------------------------------------------------------------------------- rewriting


def _recv_key(table: pa.Table) -> str:
    return RECV_NS_COLUMN if RECV_NS_COLUMN in table.column_names else RECV_TIME_COLUMN


def key_columns(msg_type: str, sort: str = "instrument") -> list[str]:
    """The instrument key's columns of ``msg_type`` (``pkey`` leaves), in dictionary order;
    with ``sort="underlier"`` only those up to the first ticker (``*_tk``)."""
    msg = lookup(msg_type)
    if msg is None:
        return []
    cols = [c.column for c in layout(msg).columns if isinstance(c, Leaf) and c.path[0] == "pkey"]
    if sort == "underlier":
        ticker = next((i for i, c in enumerate(cols) if c.endswith("_tk")), len(cols) - 1)
        return cols[: ticker + 1]
    return cols


def _normalize(tables: list[pa.Table]) -> list[pa.Table]:
    """Make the receive-time columns agree: files written before ``_recv_time_ns`` existed get
    it (exact, from their ns ``_recv_time``) and their ``_recv_time`` in the newer type."""
    newer = next((t for t in tables if RECV_NS_COLUMN in t.column_names), None)
    if newer is None:
        return tables
    recv_type = newer.schema.field(RECV_TIME_COLUMN).type
    out = []
    for t in tables:
        if RECV_NS_COLUMN not in t.column_names:
            ns = t.column(RECV_TIME_COLUMN).cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64())
            i = t.schema.get_field_index(RECV_TIME_COLUMN)
            t = t.set_column(i, RECV_TIME_COLUMN, t.column(RECV_TIME_COLUMN).cast(recv_type))
            t = t.add_column(i + 1, pa.field(RECV_NS_COLUMN, pa.int64(), nullable=False), ns)
        out.append(t)
    return out


def _with_host(table: pa.Table, host: str) -> pa.Table:
    col = pa.DictionaryArray.from_arrays(
        pa.array([0] * table.num_rows, pa.int32()), pa.array([host], pa.string())
    )
    if HOST_COLUMN in table.column_names:
        return table
    return table.append_column(pa.field(HOST_COLUMN, _DICT_STRING), col)


def _sortable(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def sort_rows(table: pa.Table, msg_type: str, sort: str = "instrument") -> pa.Table:
    """Rows by instrument key, then receive time (then receive sequence)."""
    names = [c for c in key_columns(msg_type, sort) if c in table.column_names]
    names += [_recv_key(table), "_seq"]
    keys = pa.table({n: _sortable(table.column(n)) for n in names})
    order = pc.sort_indices(keys, sort_keys=[(n, "ascending", "at_end") for n in names])
    return table.take(order)


def _rows_per_group(table: pa.Table, settings: CompactionSettings) -> int:
    if table.num_rows == 0:
        return settings.row_group_rows
    per_row = max(1, table.nbytes // table.num_rows)
    return int(max(1, min(settings.row_group_rows, settings.row_group_bytes // per_row)))


def _sorting_columns(table: pa.Table, msg_type: str, sort: str) -> list[pq.SortingColumn]:
    names = [c for c in key_columns(msg_type, sort) if c in table.column_names]
    names.append(_recv_key(table))
    return [pq.SortingColumn(table.schema.get_field_index(n)) for n in names]


def _write_outputs(
    table: pa.Table,
    directory: Path,
    base: str,
    first_meta: dict[str, str],
    common_meta: dict[str, str],
    msg_type: str,
    settings: CompactionSettings,
) -> list[Path]:
    """Write ``table`` (sorted) as files of about ``target_file_bytes``; fsync each."""
    rg_rows = _rows_per_group(table, settings)
    paths: list[Path] = []
    offset = 0
    part = 0
    sorting = _sorting_columns(table, msg_type, settings.sort)
    dictionary, encodings = encodings_for(table, settings.compression_level)
    while offset < table.num_rows or (part == 0 and table.num_rows == 0):
        path = directory / f"{base}-{part:03d}.parquet"
        sink = pa.OSFile(str(path), "wb")
        writer = pq.ParquetWriter(
            sink,
            table.schema,
            version="2.6",
            use_dictionary=dictionary,
            column_encoding=encodings or None,
            compression="zstd",
            compression_level=settings.compression_level,
            write_statistics=True,
            data_page_size=1 << 20,
            data_page_version="1.0",
            coerce_timestamps=None,
            store_schema=True,
            sorting_columns=sorting,
            write_page_index=True,
        )
        rows = 0
        while offset < table.num_rows:
            chunk = table.slice(offset, rg_rows)
            writer.write_table(chunk, row_group_size=rg_rows)
            offset += chunk.num_rows
            rows += chunk.num_rows
            if sink.tell() >= settings.target_file_bytes:
                break
        meta = dict(common_meta)
        if part == 0:
            meta.update(first_meta)
        meta[META_ROWS] = str(rows)
        meta[META_PART] = str(part)
        writer.add_key_value_metadata(meta)
        writer.close()
        sink.close()
        _fsync_file(path)
        paths.append(path)
        crash_point("compact.output")
        part += 1
        if table.num_rows == 0:
            break
    return paths


def rewrite(
    parts: list[pa.Table],
    msg_type: str,
    directory: Path,
    base: str,
    first_meta: dict[str, str],
    common_meta: dict[str, str],
    settings: CompactionSettings,
) -> tuple[list[Path], int]:
    """One unit's rows (``parts``: whole files, one host) concatenated, sorted and written as
    compacted files ``directory/base-NNN.parquet`` (the lake's compaction uses it too).
    Returns (the files, rows written)."""
    merged = pa.concat_tables(_normalize(parts), promote_options="permissive")
    merged = sort_rows(merged, msg_type, settings.sort)
    return _write_outputs(merged, directory, base, first_meta, common_meta, msg_type, settings), (
        merged.num_rows
    )


def unit_ranges(footers: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """The receive-sequence ranges the files with these footers hold (a compacted file's
    recorded ranges, a live file's ``seq_min..seq_max``), merged."""
    ranges: list[tuple[int, int]] = []
    for kv in footers:
        if META_COMPACTED in kv:
            ranges += parse_seq_ranges(kv.get(META_SEQ_RANGES, ""))
        elif META_SEQ_MIN in kv:
            ranges.append((int(kv[META_SEQ_MIN]), int(kv[META_SEQ_MAX])))
    return merge_ranges(ranges)


_SAMPLE_CHUNKS: Final = 4
_SAMPLE_CHUNK_ROWS: Final = 16_384
_ENCODINGS: Final = ("DELTA_BINARY_PACKED", "BYTE_STREAM_SPLIT")


def _encoded_size(column: pa.ChunkedArray, encoding: str | None, level: int) -> int | None:
    """Compressed bytes of ``column`` as a Parquet column chunk: dictionary (None) or plain
    with ``encoding`` ("PLAIN" or one of _ENCODINGS); None where it does not apply."""
    buf = pa.BufferOutputStream()
    kw: dict[str, Any] = {"use_dictionary": encoding is None}
    if encoding not in (None, "PLAIN"):
        kw["column_encoding"] = {"c": encoding}
    try:
        pq.write_table(pa.table({"c": column}), buf, compression="zstd", compression_level=level,
                       row_group_size=1 << 30, **kw)  # fmt: skip
    except (pa.ArrowException, ValueError, OSError):  # not for this type
        return None
    meta = pq.read_metadata(pa.BufferReader(buf.getvalue()))
    return int(meta.row_group(0).column(0).total_compressed_size)


def encodings_for(table: pa.Table, level: int) -> tuple[list[str], dict[str, str]]:
    """Per column, the smallest of dictionary, plain, delta and byte-stream-split, measured on
    a sample of the sorted rows (a few contiguous stretches, so deltas see real neighbours).
    Returns (the Parquet column paths that use a dictionary, {column: encoding} for the rest).
    Only numeric and temporal columns are tried; strings, dictionaries, booleans and nested
    columns keep their dictionary."""
    n = table.num_rows
    if n > _SAMPLE_CHUNKS * _SAMPLE_CHUNK_ROWS:
        stride = n // _SAMPLE_CHUNKS
        sample = pa.concat_tables(
            [table.slice(i * stride, _SAMPLE_CHUNK_ROWS) for i in range(_SAMPLE_CHUNKS)]
        )
    else:
        sample = table
    chosen: dict[str, str] = {}
    for f in table.schema:
        t = f.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t)):
            continue
        if pa.types.is_date(t) or sample.num_rows == 0:
            continue
        col = sample.column(f.name)
        sizes = {None: _encoded_size(col, None, level), "PLAIN": _encoded_size(col, "PLAIN", level)}
        for enc in _ENCODINGS:
            if enc == "DELTA_BINARY_PACKED" and pa.types.is_floating(t):
                continue  # integers only
            sizes[enc] = _encoded_size(col, enc, level)
        valid = {k: v for k, v in sizes.items() if v is not None}
        best = min(valid, key=lambda k: (valid[k], k is not None))
        if best is not None:
            chosen[f.name] = best
    paths = _leaf_paths(table.schema)
    dictionary = [p for p in paths if p.split(".", 1)[0] not in chosen]
    return dictionary, {k: v for k, v in chosen.items() if v != "PLAIN"}


def _leaf_paths(schema: pa.Schema) -> list[str]:
    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf)
    meta = pq.read_metadata(pa.BufferReader(buf.getvalue()))
    return [meta.schema.column(i).path for i in range(meta.num_columns)]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- the swap


def _work_dir(root: Path, table: str, day: dt.date, stripe: str) -> Path:
    return root / COMPACTION_DIR / "work" / table / f"date={day.isoformat()}" / f"stripe={stripe}"


def _listing(directory: Path) -> set[str]:
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def _manifest_inputs(directory: Path) -> set[str] | None:
    """File names the compacted files visible in ``directory`` say they replaced; None when a
    compacted file's list cannot be read (then nobody can tell a replaced file from a stray)."""
    names: set[str] = set()
    for path in directory.glob(f"{COMPACTED_PREFIX}*.parquet"):
        try:
            kv = pq.read_metadata(path).metadata or {}
            raw = kv.get(META_INPUTS.encode())
            listed = json.loads(raw.decode()) if raw is not None else []
        except (OSError, ValueError):
            return None
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            return None
        names.update(listed)
    return names


def _finish_work_dir(visible: Path, work: Path) -> list[str]:
    """After an exchange (or a crash before or after one): move back every committed part file
    in ``work`` that the visible set neither holds nor replaced, then delete ``work``.

    Before the exchange ``work`` holds new compacted files and hard links of visible files:
    nothing is moved.  After it, it holds the old set: inputs (replaced), links (still
    visible) and any file a daemon committed meanwhile (moved back)."""
    rescued: list[str] = []
    if not work.is_dir():
        return rescued
    present = _listing(visible)
    strays = [
        n for n in sorted(_listing(work))
        if n.startswith(LIVE_PREFIX) and n.endswith(".parquet") and n not in present
    ]  # fmt: skip
    replaced = _manifest_inputs(visible) if strays else set()
    if replaced is None:
        raise CompactionError(
            f"{work}: left in place: the compacted files in {visible} do not say which files "
            "they replaced, so its part files can be neither moved back nor deleted"
        )
    for name in strays:
        if name not in replaced:
            os.rename(work / name, visible / name)
            rescued.append(name)
            # A sink committed it in the old directory after its in-progress file had been
            # linked into the new one: that link is the same file under its hidden name.
            link = visible / f".{name}{INPROGRESS_SUFFIX}"
            if link.exists() and os.path.samefile(link, visible / name):
                link.unlink()
    if rescued:
        dirswap.fsync_dir(visible)
        log.warning("compact.rescued", directory=str(visible), files=rescued)
    shutil.rmtree(work)
    dirswap.fsync_dir(work.parent)
    return rescued


def recover(root: Path, outcome: Outcome) -> set[str]:
    """Finish what a crashed run left in the work area (idempotent): cleaned-up partitions go
    to ``outcome.recovered``, ones that cannot be to ``outcome.failed``; returns the latter
    (this run leaves them alone)."""
    base = root / COMPACTION_DIR / "work"
    stuck: set[str] = set()
    if not base.is_dir():
        return stuck
    for work in sorted(base.glob("*/date=*/stripe=*")):
        rel = work.relative_to(base)
        visible = root / rel
        try:
            if visible.is_dir():
                _finish_work_dir(visible, work)
            else:  # retention removed the partition since: nothing of it is to come back
                shutil.rmtree(work)
        except (OSError, CompactionError) as exc:
            log.error("compact.recover_failed", partition=str(rel), error=str(exc))
            outcome.failed.append(f"{rel}: {exc}")
            stuck.add(str(rel))
            continue
        outcome.recovered.append(str(rel))
    return stuck


# ---------------------------------------------------------------------------- one partition


@dataclass
class _Context:
    settings: CompactionSettings
    now_ns: int
    dry_run: bool
    outcome: Outcome
    merge: Any = None  # capture.abmerge.merge, when peers are configured


def _is_data_file(name: str) -> bool:
    """A file readers read (``*.parquet``, not hidden, not ``_``-prefixed)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _is_input(table: str, name: str) -> bool:
    """A data file compaction rewrites: any but an A/B coverage report (the events table holds
    those beside the events; each is replaced whole by the merge that wrote it)."""
    return _is_data_file(name) and not (table == EVENTS_TABLE and name.startswith(COVERAGE_PREFIX))


def _compact_partition(ctx: _Context, table: str, day: dt.date, stripe: str) -> None:
    s = ctx.settings
    rel = Path(table) / f"date={day.isoformat()}" / f"stripe={stripe}"
    visible = s.root / rel
    before = _listing(visible)
    if s.granularity == "day" and any(n.endswith(INPROGRESS_SUFFIX) for n in before):
        # A daemon writes into a past day only when it replays its journal: let it finish.
        # (Hour units share today's directory with the open file: see _finish_work_dir.)
        ctx.outcome.skipped.append(f"{rel}: a file is being written")
        return
    if any(not (visible / n).is_file() or (visible / n).is_symlink() for n in before):
        ctx.outcome.skipped.append(f"{rel}: holds something other than files (left alone)")
        return
    inputs: list[_Input] = []
    for name in sorted(before):
        if _is_input(table, name):
            inputs.append(_read_input(visible / name, 0, s.host_id))
    for side, peer in enumerate(s.peers, start=1):
        if table == EVENTS_TABLE:
            break  # each root keeps its own events; the merge writes the coverage reports
        pdir = peer / rel
        for name in sorted(_listing(pdir)):
            if _is_input(table, name):
                inputs.append(_read_input(pdir / name, side, f"peer{side}"))
    units: dict[str, _Unit] = {}
    for inp in inputs:
        tag, end = _unit_of(inp, day, s.granularity, s.tz)
        unit = units.setdefault(tag, _Unit(tag, end))
        unit.end_ns = max(unit.end_ns, end)
        unit.inputs.append(inp)
    horizon = ctx.now_ns - s.min_age_s * NS
    due = []
    pending = list(units.values())
    while pending:
        unit = pending.pop(0)
        if unit.end_ns > horizon or any(i.max_ns >= horizon for i in unit.inputs):
            continue  # open (or too young): never touched
        if not _needs_work(unit):
            continue
        size = sum(i.nbytes for i in unit.inputs)
        if size > s.max_unit_bytes and unit.tag.startswith("day:"):
            # Too big to sort in memory at once: this day is compacted hour by hour.
            hours: dict[str, _Unit] = {}
            for inp in unit.inputs:
                tag, end = _unit_of(inp, day, "hour", s.tz)
                hours.setdefault(tag, _Unit(tag, end)).inputs.append(inp)
            pending.extend(hours.values())
            continue
        if size > s.max_unit_bytes:
            ctx.outcome.skipped.append(f"{rel} {unit.tag}: {size} Arrow bytes > max_unit_bytes")
            continue
        due.append(unit)
    if not due:
        return
    if ctx.dry_run:
        for unit in due:
            rows = sum(i.rows for i in unit.inputs)
            ctx.outcome.planned.append(f"{rel} {unit.tag}: {len(unit.inputs)} files, {rows} rows")
        return
    work = _work_dir(s.root, table, day, stripe)
    if work.exists():
        _finish_work_dir(visible, work)
    work.mkdir(parents=True)
    replaced: set[str] = set()
    generation = f"{ctx.now_ns:x}"
    for unit in due:
        outputs = _rewrite_unit(ctx, table, day, stripe, unit, work, generation)
        replaced.update(i.path.name for i in unit.inputs if i.side == 0)
        ctx.outcome.files_out += len(outputs)
        ctx.outcome.bytes_out += sum(p.stat().st_size for p in outputs)
    for name in sorted(before - replaced):  # every other file stays, under its name
        os.link(visible / name, work / name)
    dirswap.fsync_dir(work)
    crash_point("compact.built")
    if _listing(visible) != before:
        shutil.rmtree(work)
        ctx.outcome.skipped.append(f"{rel}: changed while being compacted (next run)")
        return
    if not visible.exists():
        visible.mkdir(parents=True)
        dirswap.fsync_dir(visible.parent)
    dirswap.exchange(visible, work)
    dirswap.fsync_dir(visible.parent)
    dirswap.fsync_dir(work.parent)
    crash_point("compact.exchanged")
    _finish_work_dir(visible, work)
    crash_point("compact.done")
    ctx.outcome.units_compacted += len(due)
    log.info("compact.partition", partition=str(rel), units=[u.tag for u in due])


def _rewrite_unit(
    ctx: _Context,
    table: str,
    day: dt.date,
    stripe: str,
    unit: _Unit,
    work: Path,
    generation: str,
) -> list[Path]:
    s = ctx.settings
    parts: list[pa.Table] = []
    sides: list[int] = []
    for inp in unit.inputs:
        parts.append(pq.read_table(inp.path))
        sides.append(inp.side)
    merging = ctx.merge is not None and any(sides)
    # The _host column exists only where rows of several hosts meet (one host's data keeps
    # the live schema, so `SELECT *` over a glob needs no union_by_name for it).
    if merging or any(HOST_COLUMN in p.column_names for p in parts):
        parts = [_with_host(p, i.host) for p, i in zip(parts, unit.inputs, strict=True)]
    parts = _normalize(parts)
    rows_in = sum(p.num_rows for p in parts)
    if merging:
        lo = min(i.min_ns for i in unit.inputs)
        hi = max(i.max_ns for i in unit.inputs)
        gaps = [g for g in _gaps(ctx, day, stripe) if g[1] < hi and g[2] > lo]
        merged, report = ctx.merge(parts, sides, table, gaps, stripe=stripe)
        _write_coverage(ctx, table, day, stripe, unit, report)
    else:
        merged = pa.concat_tables(parts, promote_options="permissive")
    merged = sort_rows(merged, table, s.sort)
    own = [i for i in unit.inputs if i.side == 0]
    ranges = merge_ranges([r for i in own for r in i.own_ranges()])
    first_meta = {
        META_SEQ_RANGES: format_seq_ranges(ranges),
        META_INPUTS: json.dumps(sorted(i.path.name for i in own)),
        META_PEER_INPUTS: json.dumps(_peer_digest(unit.inputs)),
    }
    if ranges:
        first_meta[META_SEQ_MIN] = str(ranges[0][0])
        first_meta[META_SEQ_MAX] = str(ranges[-1][1])
    hosts = [s.host_id]
    if HOST_COLUMN in merged.column_names:
        found = pc.unique(merged.column(HOST_COLUMN).cast(pa.string())).to_pylist()
        hosts = sorted({str(h) for h in found if h is not None})
    common = {
        META_MSG_TYPE: table,
        META_STRIPE: stripe,
        META_SESSION: "compaction",
        META_WRITER: WRITER_ID,
        META_COMPACTED: "1",
        META_UNIT: unit.tag,
        META_HOST: s.host_id if hosts == [s.host_id] else ",".join(hosts),
    }
    tag = unit.tag.split(":", 1)[1].replace("-", "")
    base = f"{COMPACTED_PREFIX}{tag}-g{generation}"
    paths = _write_outputs(merged, work, base, first_meta, common, table, s)
    ctx.outcome.files_in += len(unit.inputs)
    ctx.outcome.rows_in += rows_in
    ctx.outcome.rows_out += merged.num_rows
    ctx.outcome.bytes_in += sum(i.path.stat().st_size for i in unit.inputs)
    ctx.outcome.duplicates_dropped += rows_in - merged.num_rows
    return paths


def _gaps(ctx: _Context, day: dt.date, stripe: str) -> list[tuple[str, int, int]]:
    """``gap`` events of every side for this date and stripe: (host, start ns, end ns)."""
    s = ctx.settings
    rel = Path(EVENTS_TABLE) / f"date={day.isoformat()}" / f"stripe={stripe}"
    out: list[tuple[str, int, int]] = []
    for side, root in enumerate([s.root, *s.peers]):
        default_host = s.host_id if side == 0 else f"peer{side}"
        for path in sorted((root / rel).glob("*.parquet")):
            if not _is_input(EVENTS_TABLE, path.name):
                continue
            pf = pq.ParquetFile(path)
            kv = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()}
            host = kv.get(META_HOST, default_host)
            t = pf.read(columns=["event", "gap_start", "gap_end"])
            gaps = t.filter(pc.equal(t.column("event").cast(pa.string()), "gap"))
            for start, end in zip(
                gaps.column("gap_start").cast(_TS_NS).cast(pa.int64()).to_pylist(),
                gaps.column("gap_end").cast(_TS_NS).cast(pa.int64()).to_pylist(),
                strict=True,
            ):
                if start is not None and end is not None:
                    out.append((host, start, end))
    return out


def _write_coverage(
    ctx: _Context, table: str, day: dt.date, stripe: str, unit: _Unit, report: pa.Table
) -> None:
    """The A/B coverage report of one unit as a file of the events table (replaced whole on a
    rerun: its name is fixed per table and unit)."""
    s = ctx.settings
    directory = s.root / EVENTS_TABLE / f"date={day.isoformat()}" / f"stripe={stripe}"
    directory.mkdir(parents=True, exist_ok=True)
    tag = unit.tag.split(":", 1)[1].replace("-", "")
    final = directory / f"{COVERAGE_PREFIX}{table}-{tag}.parquet"
    tmp = directory / f".{final.name}.inprogress"
    meta = {
        META_MSG_TYPE: EVENTS_TABLE,
        META_STRIPE: stripe,
        META_SESSION: "compaction",
        META_SEQ_MIN: "0",
        META_SEQ_MAX: "0",
        META_ROWS: str(report.num_rows),
        META_WRITER: WRITER_ID,
    }
    report = report.replace_schema_metadata(None)
    pq.write_table(report.replace_schema_metadata(meta), tmp, compression="zstd")
    _fsync_file(tmp)
    os.replace(tmp, final)
    dirswap.fsync_dir(directory)


# ---------------------------------------------------------------------------- entry point


class _Lock:
    """``ROOT/_compaction/lock`` (flock): one housekeeping run per root at a time."""

    def __init__(self, root: Path) -> None:
        self.path = root / COMPACTION_DIR / "lock"
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BlockingIOError(exc.errno, "another compaction is running") from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def lock(root: Path) -> _Lock:
    """The root's housekeeping lock (raises BlockingIOError when another run holds it)."""
    return _Lock(root)


def compact(
    settings: CompactionSettings,
    *,
    now_ns: int | None = None,
    tables: Sequence[str] | None = None,
    dates: Sequence[dt.date] | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Compact every closed partition of ``settings.root`` that needs it.  Raises
    ``BlockingIOError`` when another run holds the lock and ``dirswap.ExchangeUnsupported``
    when the file system cannot swap directories (before touching anything)."""
    root = settings.root
    outcome = Outcome()
    if not root.is_dir():
        return outcome
    ctx = _Context(settings, time.time_ns() if now_ns is None else now_ns, dry_run, outcome)
    if settings.peers:
        from capture.abmerge import merge

        ctx.merge = merge
    with _Lock(root):
        if not dry_run:
            if not dirswap.supported(root / COMPACTION_DIR):
                raise dirswap.ExchangeUnsupported(
                    errno.EINVAL, "this file system cannot exchange directories", str(root)
                )
        stuck = recover(root, outcome) if not dry_run else set()
        for table, day, stripe in _partitions([root, *settings.peers], tables, dates):
            where = f"{table}/date={day.isoformat()}/stripe={stripe}"
            if table == QUARANTINE_DIR or where in stuck:
                continue
            try:
                _compact_partition(ctx, table, day, stripe)
            except (OSError, ValueError, pa.ArrowException, CompactionError) as exc:
                log.error("compact.failed", partition=where, error=f"{type(exc).__name__}: {exc}")
                outcome.failed.append(f"{where}: {type(exc).__name__}: {exc}")
    return outcome
