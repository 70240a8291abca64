"""What one ``BatchDecoder.decode`` call returns: the rows, and the drift it saw."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class DriftReport:
    """What one ``decode`` call saw that the dictionary did not predict."""

    unknown_fields: frozenset[str] = frozenset()
    """Paths of members the dictionary does not know: ``message.prcFramework``,
    ``message.pkey.okey.zz``, ``header.newHdr``, ``message.Legs[].foo``, ``other`` (top level)."""
    mistyped_values: int = 0
    """Values of known fields that their column cannot hold (unexpected JSON kind, out of range,
    unparsable, repeated member name); each is kept verbatim in ``_extra``."""
    slow_path_rows: int = 0
    """Bodies decoded by the Python slow path (rejected bodies included)."""
    unknown_enum_values: frozenset[tuple[str, str]] = frozenset()
    """(column, value) for Enum/Flag values outside the dictionary's eSet (stored as sent)."""

    def __bool__(self) -> bool:
        return bool(
            self.unknown_fields
            or self.mistyped_values
            or self.slow_path_rows
            or self.unknown_enum_values
        )

    def merged(self, other: DriftReport) -> DriftReport:
        """Union/sum of two reports, for per-stream accounting."""
        return DriftReport(
            unknown_fields=self.unknown_fields | other.unknown_fields,
            mistyped_values=self.mistyped_values + other.mistyped_values,
            slow_path_rows=self.slow_path_rows + other.slow_path_rows,
            unknown_enum_values=self.unknown_enum_values | other.unknown_enum_values,
        )


@dataclass(frozen=True)
class DecodeResult:
    batch: pa.RecordBatch
    """One row per accepted body, in input order; ``batch.schema == decoder.schema``."""
    drift: DriftReport
    rejected: list[tuple[int, bytes, str]]
    """(index, body, reason) for bodies that are not a JSON object; they have no row."""
