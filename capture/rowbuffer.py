"""The rows an open Parquet file holds before they become row groups.

Every Arrow record batch costs memory beyond its rows: the C++ objects of each column (array
data, buffers, the dictionaries of enum columns) and allocator overhead, measured at ~0.8 KB per
column, ~40 KB for a 46-column OptionNbboQuote batch, whether it holds one row or a thousand.
At a low rate the decoder hands over a few rows per flush interval, so a file open for five
minutes used to collect thousands of tiny batches: ~14 KB per message captured, 400 MB in one
rotation interval with 11 stripes, none of it in the Arrow pool's accounting (bench/HISTORY.md,
item 28).

``RowBuffer`` keeps the number of batches it holds logarithmic in the number appended: small
batches are merged in groups of ``FANOUT`` of the same level (a base-``FANOUT`` counter), so each
row is copied at most a few times over a file's life. Batches of ``SMALL_ROWS`` rows or more are
kept as they are: their overhead is small beside their rows, and the busy path (thousands of
rows per batch) pays no copy. ``nbytes`` counts the rows and the per-batch overhead, so the
memory budget and the health file see what is really held.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

#: Batches of one level merged into one batch of the next.
FANOUT = 32
#: Batches with at least this many rows are never merged.
SMALL_ROWS = 1024
#: Memory a held batch costs per column beyond its buffers (measured, pyarrow 26).
BATCH_OVERHEAD_PER_COLUMN = 800

_BIG = -1  # the level of a batch that is never merged


class RowBuffer:
    """Record batches of one schema, in arrival order, appended and then taken from the front."""

    __slots__ = ("_batches", "_levels", "_nbytes", "_rows", "_schema")

    def __init__(self, schema: Any) -> None:
        self._schema = schema
        self._batches: list[Any] = []
        self._levels: list[int] = []
        self._rows = 0
        self._nbytes = 0

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def nbytes(self) -> int:
        """The rows' buffers plus the estimated overhead of each batch held."""
        return self._nbytes

    @property
    def batch_count(self) -> int:
        return len(self._batches)

    def __bool__(self) -> bool:
        return bool(self._batches)

    def append(self, batch: Any) -> None:
        if not batch.num_rows:
            return
        self._push(batch, 0 if batch.num_rows < SMALL_ROWS else _BIG)
        while (
            len(self._levels) >= FANOUT
            and self._levels[-1] != _BIG
            and self._levels[-FANOUT:].count(self._levels[-1]) == FANOUT
        ):
            level = self._levels[-1]
            tail = self._batches[-FANOUT:]
            for _ in range(FANOUT):
                self._pop()
            self._push(_merged(tail), level + 1)

    def table(self) -> Any:
        """Everything held, as one table (no copy)."""
        return pa.Table.from_batches(self._batches, schema=self._schema)

    def keep_from(self, table: Any, offset: int) -> None:
        """Hold only ``table``'s rows from ``offset`` on (``table`` is what ``table()`` gave)."""
        rest = table.slice(offset)
        self.clear()
        if not rest.num_rows:
            return
        chunks = rest.to_batches()
        if len(chunks) >= FANOUT:  # many small leftovers: one batch instead
            chunks = [_merged(chunks)]
        for chunk in chunks:
            self._push(chunk, 0 if chunk.num_rows < SMALL_ROWS else _BIG)

    def clear(self) -> None:
        self._batches.clear()
        self._levels.clear()
        self._rows = 0
        self._nbytes = 0

    def _push(self, batch: Any, level: int) -> None:
        self._batches.append(batch)
        self._levels.append(level)
        self._rows += batch.num_rows
        self._nbytes += _cost(batch)

    def _pop(self) -> None:
        batch = self._batches.pop()
        self._levels.pop()
        self._rows -= batch.num_rows
        self._nbytes -= _cost(batch)


def _cost(batch: Any) -> int:
    return int(batch.nbytes) + BATCH_OVERHEAD_PER_COLUMN * int(batch.num_columns)


def _merged(batches: list[Any]) -> Any:
    """One batch holding ``batches``' rows (enum dictionaries unified), contiguous."""
    return pa.concat_batches(batches)
