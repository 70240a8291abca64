"""Rewriting one unit: its rows concatenated (receive-time columns made to agree), sorted by
instrument key then receive time, and written as large, fsynced files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capture.compact.encodings import encodings_for
from capture.compact.names import (
    HOST_COLUMN,
    META_PART,
)
from capture.compact.settings import CompactionSettings
from capture.faultpoints import crash_point
from capture.recovery import merge_ranges, parse_seq_ranges
from capture.schemas import lookup
from capture.schemas.mapping import RECV_TIME_COLUMN, Leaf, layout
from capture.sink import (
    META_COMPACTED,
    META_ROWS,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    RECV_NS_COLUMN,
)

_DICT_STRING: Final = pa.dictionary(pa.int32(), pa.string())


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


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
