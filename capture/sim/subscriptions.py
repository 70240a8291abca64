"""Stream requests and subscriptions: what one MLinkStream asked for, and its live state.

A :class:`StreamRequest` is the MLinkStream message read leniently (unknown fields ignored,
``""`` absent, PROTOCOL.md §6.1).  A :class:`Subscription` is one active stream on one
connection: its filters, the updates waiting to be sent (a "dirty pkey -> latest record" map,
or a bounded queue with conflation off, §7.3) and its counters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from capture.schemas import MessageDef, by_number, lookup
from capture.sim.cached_record import Record
from capture.sim.faults import OutFrame
from capture.sim.inbound import opt_int, opt_str

if TYPE_CHECKING:
    from capture.sim.connection import Connection

__all__ = ["StreamRequest", "Subscription", "resolve_msg_name"]


def resolve_msg_name(raw: Any) -> MessageDef | None:
    """msgName is a type name (any case) or its protobuf message number (§6.1)."""
    number = opt_int(raw)
    if number is not None:
        return by_number(number)
    if isinstance(raw, str):
        return lookup(raw.strip())
    return None


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """The MLinkStream fields the simulator uses; unknown fields are ignored, ``""`` = absent."""

    msg_name_raw: Any
    msg_name_text: str | None
    session_id: int = 0
    query_id: int | None = None
    label: str | None = None
    unsubscribe: bool = False
    stripe: str | None = None
    highwater_ts: int | None = None
    active_latency: int = 0
    where: str | None = None
    view: str | None = None

    @classmethod
    def parse(cls, m: Mapping[str, Any]) -> StreamRequest:
        raw = m.get("msgName")
        if isinstance(raw, str):
            text: str | None = raw if raw.strip() else None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            text = str(raw)
        else:
            text = None
        return cls(
            msg_name_raw=raw,
            msg_name_text=text,
            session_id=opt_int(m.get("sessionID")) or 0,
            query_id=opt_int(m.get("queryID")),
            label=opt_str(m.get("queryLabel")),
            unsubscribe=(opt_str(m.get("unsubscribe")) or "").casefold() == "yes",
            stripe=opt_str(m.get("stripeFilter")),
            highwater_ts=opt_int(m.get("highwaterTs")),
            active_latency=opt_int(m.get("activeLatency")) or 0,
            where=opt_str(m.get("where")),
            view=opt_str(m.get("view")),
        )


@dataclass(eq=False)
class Subscription:
    """One active MLinkStream on one connection: filter, pending updates, counters."""

    conn: Connection
    mdef: MessageDef
    req: StreamRequest
    stripe: str | None
    where: Callable[[Mapping[str, Any]], bool] | None
    view: frozenset[str] | None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    wake: trio.Event = field(default_factory=trio.Event)
    signals: deque[tuple[int, bool]] = field(default_factory=deque)
    live: bool = False
    sent: int = 0
    bytes_sent: int = 0
    high_ns: int = 0
    cp_stim_ns: int | None = None
    _pending: dict[tuple[Hashable, ...], Record] = field(default_factory=dict)
    _fifo: deque[Record] = field(default_factory=deque)

    def accepts(self, rec: Record) -> bool:
        if self.stripe is not None and self.stripe not in rec.stripes:
            return False
        return self.where is None or self.where(rec.values)

    def wants_snapshot(self, rec: Record) -> bool:
        """highwaterTs: absent/0 = everything, -1 = nothing, T = records sent after T (§6.1)."""
        hw = self.req.highwater_ts
        if hw is not None and hw < 0:
            return False
        if hw and rec.sent_ns <= hw:
            return False
        return self.accepts(rec)

    def offer(self, rec: Record) -> None:
        """A new record from the market (called synchronously by the market loop)."""
        if not self.accepts(rec):
            return
        if self.conn.cfg.conflate:
            self._pending.pop(rec.pkey, None)  # keep the map in update order
            self._pending[rec.pkey] = rec
        else:
            self._fifo.append(rec)
            if len(self._fifo) > self.conn.cfg.max_pending:
                self._fifo.clear()
                self.conn.kill_slow_consumer(self)
                return
        self.wake.set()

    def has_pending(self) -> bool:
        return bool(self._pending or self._fifo)

    def take(self) -> list[Record]:
        if self.conn.cfg.conflate:
            out = list(self._pending.values())
            self._pending.clear()
        else:
            out = list(self._fifo)
            self._fifo.clear()
        return out

    def count(self, records: Sequence[Record], frames: Sequence[OutFrame]) -> None:
        self.sent += len(records)
        self.bytes_sent += sum(len(f.body) + 14 for f in frames)
        for r in records:
            self.high_ns = max(self.high_ns, r.sent_ns)
