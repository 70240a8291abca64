"""What a stripe's reader hands its writer: batches, and the words for where they are.

The reader appends each data frame's body, unparsed, to the **pending batch** of its message
type (:class:`PendingBatch`); a pending batch fills until ``pipeline.batch_rows`` frames or
:func:`batch_max_bytes` bytes, or until ``pipeline.flush_interval`` has passed.  An item for
the writer (:data:`WriterItem`: a batch of frames, of quarantined bytes or of capture events)
then goes through four places, each with one name in the worker:

* **pending**: still filling (``StripeWorker._pending``, one batch per type);
* **queued**: taken out of the pending batches, waiting for the writer's channel to accept it
  (``StripeWorker._outbox``, in the order taken, so each type stays in receive order);
* **in flight**: handed to the writer and not yet decoded.  Only frame bytes in flight count,
  against the process's :class:`capture.memory.InFlightBudget` (:func:`in_flight_limit`);
  ``StripeWorker._in_flight_bytes`` is this stripe's share of it;
* **done**: decoded and written to the sink (or to quarantine).

For the journal's watermark (capture.durability) an item is **with the writer** from the
moment it is queued until it is done: its lowest sequence number (:func:`low_seq`) holds the
journal back meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capture.config import Config
from capture.events import Event
from capture.quarantine import Quarantined

__all__ = [
    "BATCH_MIN_BYTES",
    "EventBatch",
    "PendingBatch",
    "QuarantineBatch",
    "WriterItem",
    "batch_max_bytes",
    "in_flight_limit",
    "low_seq",
]


@dataclass(slots=True)
class PendingBatch:
    """Undecoded data frames of one message type, in arrival order."""

    msg_type: str
    session: str
    bodies: list[bytes] = field(default_factory=list)
    type_numbers: list[int] = field(default_factory=list)
    recv_ns: list[int] = field(default_factory=list)
    snapshot: list[bool] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    first_ns: int = 0
    nbytes: int = 0  # body bytes: the in-flight budget's charge once handed to the writer


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Rows for the capture-events table."""

    events: list[Event]


@dataclass(frozen=True, slots=True)
class QuarantineBatch:
    """The frames one WebSocket message (or one decoded batch) had to quarantine: written with
    one fsync, so that a message of thousands of bad frames costs one, not thousands."""

    items: list[Quarantined]

    @property
    def seq(self) -> int:
        """The lowest seq the batch holds the journal at (capture.durability)."""
        return min(q.seq for q in self.items)


WriterItem = PendingBatch | QuarantineBatch | EventBatch


def low_seq(item: WriterItem) -> int:
    """The lowest seq an item for the writer holds the journal at (capture.durability)."""
    if isinstance(item, PendingBatch):
        return item.seq[0]
    if isinstance(item, EventBatch):
        return min(e.seq for e in item.events)
    return item.seq


# The smallest byte bound of a pending batch (a tiny budget with many stripes): below this the
# per-batch costs (a thread hand-off, a JSON reader call) dominate.
BATCH_MIN_BYTES = 256 * 1024


def batch_max_bytes(cfg: Config) -> int:
    """A pending batch is handed over at ``pipeline.batch_rows`` frames, or at this many bytes
    of frames: with one busy type per stripe, the process's batches then hold about a third
    of its budget, whatever the number of stripes (capture.memory)."""
    n_stripes = max(1, len(cfg.source.stripes))
    return max(BATCH_MIN_BYTES, cfg.output.memory_budget_mb * 2**20 // (3 * n_stripes))


def in_flight_limit(cfg: Config) -> int:
    """A quarter of ``output.memory_budget_mb``: raw frames handed to the writers and not yet
    decoded, all stripes together (capture.memory: why a quarter)."""
    return cfg.output.memory_budget_mb * 2**20 // 4
