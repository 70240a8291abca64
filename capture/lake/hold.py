"""What the capture side needs from the lake, without importing it (no boto3, no pyiceberg)."""

from __future__ import annotations

from typing import Protocol

from capture.sink import CommittedFile


class JournalHold(Protocol):
    """The lake's say in journal retirement (capture.worker): a stripe's journal segments are
    retired only below ``floor`` once the lake is on."""

    def file_committed(self, committed: CommittedFile) -> None:
        """A local file was committed. Called by the sink while it holds its lock (any thread),
        so the file is held before the sink stops counting its rows as uncommitted."""

    def floor(self, stripe: str) -> int | None:
        """Lowest ``_seq`` of ``stripe`` that is in a local file not yet in a committed Iceberg
        snapshot (0 while that is not known yet); None: nothing held."""

    def journal_low(self, stripe: str, low: int) -> None:
        """After a retire: the journal of ``stripe`` holds no frame below ``low``. A local file
        is deleted (``delete_local``) only when it lies entirely below: otherwise start-up
        recovery would find its frames in the journal, not in a file, and write them again."""

    def paused(self) -> str | None:
        """Why capture must pause now (the bytes held locally for the lake reached
        ``lake.disk_budget_mb``), or None. Called by every stripe after each socket read:
        must be quick and must not raise."""
