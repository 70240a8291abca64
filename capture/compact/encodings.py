"""Column encodings measured, not guessed: per column, the smallest of dictionary, plain, delta
and byte-stream-split on a sample of the sorted rows."""

from __future__ import annotations

from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

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
