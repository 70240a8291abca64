"""Bookkeeping of one ``decode`` call: the state of the call, the pieces of the batch on their
way through the fast path, the rows a converted chunk sends to the slow path, and the bodies a
failed read points at."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from capture.decode.jsontext import _Arr
from capture.decode.slowpath import _SlowRow

_MIN_BISECT_ROWS: Final = 4
"""A failing chunk this small goes to the slow path whole instead of being split further."""


class _ChunkFailed(Exception):
    """The fast path cannot hold this chunk as a whole."""


class _Chunk:
    """Drift and rows-to-redo-slowly collected while converting one parsed chunk."""

    def __init__(self) -> None:
        self.unknown: set[str] = set()
        self.mistyped = 0
        self._masks: list[_Arr] = []
        self._rows: set[int] = set()

    def redo_slowly(self, mask: _Arr) -> None:
        """Rows where ``mask`` is true go through the slow path."""
        self._masks.append(mask)

    def redo_rows_slowly(self, rows: Iterable[int]) -> None:
        self._rows.update(rows)

    def slow_rows(self) -> set[int]:
        out = set(self._rows)
        for mask in self._masks:
            if pc.any(mask).as_py():
                out.update(pc.indices_nonzero(mask).to_pylist())
        return out


@dataclass(slots=True)
class _Run:
    """State of one ``decode`` call."""

    bodies: Sequence[bytes]
    read_budget: int
    """Bytes of failed reads still allowed."""
    decoded: dict[int, _SlowRow | str] = field(default_factory=dict)
    """Slow-path results computed early (while isolating), by body index."""
    unknown: set[str] = field(default_factory=set)
    mistyped: int = 0
    fast: list[tuple[list[int], pa.Table]] = field(default_factory=list)
    slow: list[int] = field(default_factory=list)


_Piece = tuple[list[int], list[bytes], bytes | None, int, int]
"""(body indices, their lines, the lines joined if at hand, read attempts, pre-screen version)."""

_ROW_HINT: Final = re.compile(r" in row (\d+)\s*$")
_VALUE_HINTS: Final = (
    re.compile(r"couldn't parse:(.+)$", re.S),
    re.compile(r"Failed to parse string: '(.+)' as a scalar of type", re.S),
)


def _suspects(exc: Exception, lines: Sequence[bytes]) -> set[int]:
    """Lines a read error points at (empty when it does not point anywhere useful)."""
    message = str(exc)
    if (m := _ROW_HINT.search(message)) is not None:
        row = int(m.group(1))
        return {row} if row < len(lines) else set()
    for pattern in _VALUE_HINTS:
        if (m := pattern.search(message)) is not None:
            value = m.group(1).encode("utf-8", "surrogateescape")
            needles = (b":" + value + b",", b":" + value + b"}", b'"' + value + b'"')
            found = {p for p, line in enumerate(lines) if any(x in line for x in needles)}
            return found if len(found) <= max(_MIN_BISECT_ROWS, len(lines) // 8) else set()
    return set()
