"""Resume points: per message type, the send time a reconnect asks the server to resume after.

A stream request carries ``highwaterTs`` = the latest header ``sTim`` received of its type, and
the server sends only the records it sent after that (PROTOCOL.md §6.1, §7.4).  Every record
sent before the resume point is taken as held: a resume point in the future therefore loses,
silently, every change until that time; a resume point too old costs only duplicates.

So the resume point believes a send time only when it is plausible: after the epoch and no
later than ``MAX_AHEAD_NS`` after the moment the frame (or the checkpoint naming the time) was
received.  A server that sends the year 2200, 9999-12-31 or ``2**63 - 1`` (in a data header,
a checkpoint's ``highwaterTs`` or a file that recorded one) leaves the resume point where the
plausible times put it.  This module is the one place that decides; the journal, the committed
files, checkpoints and written batches only offer candidates.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["MAX_AHEAD_NS", "ResumePoints", "latest_plausible", "plausible"]

MAX_AHEAD_NS: Final = 3600 * 1_000_000_000
"""How far a send time may lie after its receive time (clock skew between server and host)
and still be a resume point.  Larger skews are a clock problem; they cost duplicates."""

_INT64_MAX: Final = 2**63 - 1


def plausible(sent_ns: int, recv_ns: int) -> bool:
    """Whether ``sent_ns``, received at ``recv_ns``, can be a resume point."""
    return 0 < sent_ns <= min(recv_ns + MAX_AHEAD_NS, _INT64_MAX)


def latest_plausible(
    sent: pa.ChunkedArray | pa.Array, recv_ns: pa.ChunkedArray | pa.Array
) -> tuple[int, int] | None:
    """A batch's candidate for :meth:`ResumePoints.offer`: (its latest plausible header send
    time, its latest receive time), as ns since the epoch; None when no time is plausible.

    ``sent`` is the ``h_sTim`` column (timestamp, microseconds), ``recv_ns`` the batch's
    ``_recv_time_ns`` (int64).  Exact: the microseconds are multiplied in Python (an Arrow cast
    to ns fails on a time beyond 2262, which a server can send)."""
    micros = pc.cast(sent, pa.int64())
    limit = pc.divide(pc.add(recv_ns, MAX_AHEAD_NS), 1000)  # int64: receive times are ours
    keep = pc.and_(pc.greater(micros, 0), pc.less_equal(micros, limit))
    value = pc.max(pc.filter(micros, keep)).as_py()
    if value is None:
        return None
    return int(value) * 1000, int(pc.max(recv_ns).as_py())


class ResumePoints(Mapping[str, int]):
    """Per message type, the latest plausible send time offered: the ``highwaterTs`` to send.

    A read-only mapping (type -> ns) that grows only through :meth:`offer` and :meth:`merge`,
    so that every candidate passes the same check."""

    __slots__ = ("_points", "rejected")

    def __init__(self) -> None:
        self._points: dict[str, int] = {}
        self.rejected = 0  # candidates refused as implausible (a server's clock or a lie)

    def offer(self, msg_type: str, sent_ns: int, recv_ns: int) -> bool:
        """Take ``sent_ns`` (received at ``recv_ns``) as ``msg_type``'s resume point if it is
        plausible and later than the current one.  False when refused as implausible."""
        if not plausible(sent_ns, recv_ns):
            self.rejected += 1
            return False
        if sent_ns > self._points.get(msg_type, 0):
            self._points[msg_type] = sent_ns
        return True

    def merge(self, other: ResumePoints) -> None:
        """Take ``other``'s points where they are later (they passed the check there)."""
        for msg_type, sent_ns in other._points.items():
            if sent_ns > self._points.get(msg_type, 0):
                self._points[msg_type] = sent_ns
        self.rejected += other.rejected

    def __getitem__(self, msg_type: str) -> int:
        return self._points[msg_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._points)

    def __len__(self) -> int:
        return len(self._points)

    def __repr__(self) -> str:
        return f"ResumePoints({self._points!r})"
