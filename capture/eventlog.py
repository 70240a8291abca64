"""One stripe's capture-event ledger: recording connects, gaps, acks and recoveries as they happen.

The events table's rows (capture.events) are data like any other: the ledger of "which
intervals are missing" must be as durable as the frames.  An :class:`EventLog` owns the
events a stripe has recorded and not yet handed to its writer, and their journaling:

* every event is journaled (an EVENT record) as well as queued for the table;
* an event raised while a WebSocket message is being handled is journaled only after that
  message (its journal position is never below its own seq): the reader brackets each message
  with :meth:`begin_message` / :meth:`end_message`;
* text from the server (``detail``, ``result``) may echo a secret: it is redacted here;
* when the journal is replayed the events come from its EVENT records (:meth:`replayed`), not
  from the replayed messages, and events an earlier run already committed are skipped.

Event-loop code, no I/O of its own beyond the journal's buffered append.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from capture import journal as journal_mod
from capture.events import Event
from capture.logs import redact
from capture.recovery import EventKey

__all__ = ["EventLog", "event_from"]


class EventLog:
    """The events of one stripe on their way to the events table and the journal."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.journal: journal_mod.JournalWriter | None = None
        self.replaying = False  # events come from the journal's EVENT records, not from here
        self.before: frozenset[EventKey] = frozenset()  # committed by an earlier run
        self._queued: list[Event] = []  # for the events table
        self._unjournaled: list[Event] = []  # raised while a message is being handled
        self._in_message = False

    def add(self, kind: str, *, time_ns: int, session: str | None, seq: int, **fields: Any) -> None:
        """Record that ``kind`` happened now (nothing while the journal is replayed: the events
        are in it, as EVENT records)."""
        if self.replaying:
            return
        for name in ("detail", "result"):  # text from the server may echo a secret
            if isinstance(fields.get(name), str):
                fields[name] = redact(fields[name])
        self.record(Event(time_ns=time_ns, session=session, seq=seq, event=kind, **fields))

    def record(self, event: Event) -> None:
        """Queue an event for the events table and journal it (capture.durability: the gap
        ledger is as durable as the data)."""
        self._queued.append(event)
        if self.journal is not None:
            self._unjournaled.append(event)
            if not self._in_message:
                self._journal()

    def begin_message(self) -> None:
        """A received message is being handled: events wait for it to be journaled."""
        self._in_message = True

    def end_message(self) -> None:
        """The message is journaled: so are the events it raised."""
        self._in_message = False
        if self._unjournaled:
            self._journal()

    def _journal(self) -> None:
        journal = self.journal
        events, self._unjournaled = self._unjournaled, []
        if journal is None:
            return
        try:
            for ev in events:
                journal.append_event(
                    ev.time_ns, max(journal.next_seq, ev.seq), dataclasses.asdict(ev)
                )
        except journal_mod.JournalError as exc:  # the syncer stops the stripe for it
            self.log.error("journal: could not record an event", error=str(exc))

    def take(self) -> list[Event]:
        """The events queued for the table (journaled already); the log forgets them."""
        events, self._queued = self._queued, []
        return events

    def low_seq(self) -> int | None:
        """The lowest seq of the queued events: they hold the journal there (capture.durability)."""
        return min(e.seq for e in self._queued) if self._queued else None

    def replayed(self, fields: Mapping[str, Any]) -> Event | None:
        """An EVENT record read back from the journal: queued for the table unless an earlier
        run committed it.  Returns the event (None: not one this version understands)."""
        event = event_from(fields)
        if event is not None and (event.time_ns, event.event, event.session) not in self.before:
            self._queued.append(event)  # journaled already
        return event

    def close_unended(
        self, last_of: Mapping[str, int], closed: Iterable[str | None], seq: int
    ) -> None:
        """After a replay: a session of the journal with no disconnect recorded ended because
        the process died with it open (SIGKILL, a crash).  Record that now, once: the event's
        key is the same at every start.  ``last_of``: session -> its last message's receive
        time."""
        ended = set(closed)
        for session, ended_ns in last_of.items():
            if session in ended or session == "unknown":
                continue
            event = Event(
                time_ns=ended_ns,
                session=session,
                seq=seq,
                event="disconnect",
                detail="capture process ended without closing the session (killed or crashed)",
                gap_start_ns=ended_ns,
            )
            if (event.time_ns, event.event, event.session) not in self.before:
                self.record(event)


def event_from(fields: Mapping[str, Any]) -> Event | None:
    """The event a journal EVENT record holds (None: not one this version understands)."""
    if not (isinstance(fields.get("time_ns"), int) and isinstance(fields.get("seq"), int)):
        return None
    try:
        return Event(**fields)
    except TypeError:
        return None
