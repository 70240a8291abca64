"""One batch of frames, decoded and written: the writer's work in a worker thread.

A :class:`BatchWriter` takes a :class:`capture.batching.PendingBatch`, decodes it in bulk
(capture.decode), quarantines the bodies the decoder rejects, and writes the rows to the
stripe's sink, which splits them at local midnight.  What it did comes back as a
:class:`WriteOutcome` for the event loop to count and report.

Two protections live here because they wrap exactly this step:

* **the crash guard** (capture.crashguard): the batch is noted before it is decoded, so a batch
  that kills the process is not decoded the same way after the restart;
* **containment**: a bug in the decoder (any exception) does not lose the batch: it is decoded
  again body by body, and only the bodies the bug is about are quarantined, with the error.

Sync code: no trio (the writer runs it with ``offload``).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from capture import quarantine
from capture.batching import PendingBatch
from capture.crashguard import Note
from capture.decode import BatchDecoder, DecodeResult, DriftReport
from capture.faultpoints import crash_point, poison_point
from capture.quarantine import Quarantined
from capture.resume import latest_plausible
from capture.schemas import lookup as lookup_message
from capture.schemas.mapping import RECV_TIME_NS_COLUMN
from capture.sink import CommittedFile, PartitionSink

__all__ = ["BatchWriter", "WriteOutcome", "number_mismatches"]


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What writing one batch did."""

    committed: list[CommittedFile]
    rows: int
    rejected: int
    slow_rows: int
    latest_sent: tuple[int, int] | None  # resume point candidate (capture.resume)
    unknown_fields: frozenset[str] = frozenset()
    number_mismatches: int = 0


class BatchWriter:
    """Decodes and writes the batches of one stripe (one per writer: the live one, a replay's)."""

    def __init__(self, stripe: str, root: Path, tz: str, log: Any) -> None:
        self.stripe = stripe
        self.root = root
        self.tz = tz
        self.log = log

    def write(
        self,
        dec: BatchDecoder,
        sink: PartitionSink,
        pb: PendingBatch,
        guard: Note | None,
        quarantined_before: Container[str],
    ) -> WriteOutcome:
        """Bulk decode, split by partition date, write; noted in ``guard`` meanwhile, so that
        a crash here is not repeated.  ``quarantined_before``: keys an earlier run quarantined
        (a replay skips them: they were kept and counted then)."""
        if guard is None:
            return self._write(dec, sink, pb, quarantined_before)
        guard.begin(pb.msg_type, pb.seq[0], pb.seq[-1])
        try:
            return self._write(dec, sink, pb, quarantined_before)
        finally:
            guard.end()

    def _write(
        self,
        dec: BatchDecoder,
        sink: PartitionSink,
        pb: PendingBatch,
        quarantined_before: Container[str],
    ) -> WriteOutcome:
        poison_point(pb.bodies)
        try:
            result = self._decode(dec, pb)
        except Exception as exc:  # a bug in the decoder: contained, body by body
            self.log.error(
                "bug while decoding a batch; decoding its frames one by one",
                msg_type=pb.msg_type,
                frames=len(pb.bodies),
                exc_info=exc,
            )
            result = self._decode_each(dec, pb)
        kept: list[Quarantined] = []
        for index, body, reason in result.rejected:
            key = f"seq/{pb.seq[index]}"
            if key in quarantined_before:
                continue  # a replay: an earlier run kept (and counted) it
            seq = pb.seq[index]
            kept.append(Quarantined(pb.recv_ns[index], pb.session, reason, body, seq=seq, key=key))
        self.write_quarantine(kept)
        rejected = len(kept)
        batch = result.batch
        crash_point("worker.decoded")
        committed: list[CommittedFile] = []
        latest: tuple[int, int] | None = None
        if batch.num_rows:
            committed.extend(sink.write(pb.msg_type, batch))  # splits at local midnight
            latest = latest_plausible(batch.column("h_sTim"), batch.column(RECV_TIME_NS_COLUMN))
        return WriteOutcome(
            committed=committed,
            number_mismatches=number_mismatches(pb.msg_type, pb.type_numbers),
            rows=batch.num_rows,
            rejected=rejected,
            slow_rows=result.drift.slow_path_rows,
            unknown_fields=result.drift.unknown_fields,
            latest_sent=latest,
        )

    def _decode(self, dec: BatchDecoder, pb: PendingBatch, rows: list[int] | None = None) -> Any:
        pick = (lambda xs: xs) if rows is None else (lambda xs: [xs[i] for i in rows])
        return dec.decode(
            pick(pb.bodies),
            type_numbers=pick(pb.type_numbers),
            recv_ns=pick(pb.recv_ns),
            snapshot=pick(pb.snapshot),
            seq=pick(pb.seq),
            stripe=self.stripe,
            session=pb.session,
        )

    def _decode_each(self, dec: BatchDecoder, pb: PendingBatch) -> DecodeResult:
        """The batch decoded one body at a time: a body the decoder fails on is quarantined
        with the error, the others are kept (in order)."""
        batches: list[pa.RecordBatch] = []
        rejected: list[tuple[int, bytes, str]] = []
        drift = DriftReport()
        for i, body in enumerate(pb.bodies):
            try:
                one = self._decode(dec, pb, [i])
            except Exception as exc:  # noqa: BLE001 - the body the bug is about
                rejected.append((i, body, f"internal error: {type(exc).__name__}: {exc}"[:500]))
                continue
            batches.append(one.batch)
            drift = drift.merged(one.drift)
            rejected += [(i, b, reason) for _, b, reason in one.rejected]
        table = pa.Table.from_batches(batches, schema=dec.schema).combine_chunks()
        batch = (
            table.to_batches()[0]
            if table.num_rows
            else pa.RecordBatch.from_pylist([], schema=dec.schema)
        )
        return DecodeResult(batch=batch, drift=drift, rejected=rejected)

    def write_quarantine(self, items: list[Quarantined]) -> None:
        """Quarantined frames to their file, with one fsync (capture.quarantine)."""
        quarantine.append_many(self.root, self.stripe, self.tz, items)


def number_mismatches(msg_type: str, numbers: list[int]) -> int:
    """Frames whose 5-digit header number is not the dictionary's number for their ``mTyp``
    (numbers changed over time, §9.3; 0 is what clients send and is not checked)."""
    mdef = lookup_message(msg_type)
    if mdef is None:
        return 0
    expected = mdef.number
    unchecked = numbers.count(0) if expected else 0  # list.count: C speed, per batch
    return len(numbers) - numbers.count(expected) - unchecked
