"""Feeding a stripe's journal back through its reader: the replay of received messages.

The journal holds every WebSocket message as received, with its receive time, its session and
the sequence number of its first frame (capture.journal).  :func:`replay_journal` reads it
back, record by record, and hands each message to the reader's own path for a received
message (``feed``), so the rows come out as the live run wrote them: same receive times,
sessions, sequence numbers and snapshot flags.  Around the messages it rebuilds what the
reader knew then:

* a SESSION record starts a :class:`capture.link.Link` whose MLink session is rebuilt from
  the streams it requested (capture.session.replayed); a record that resumes the same session
  at a segment boundary continues it;
* EVENT records go to the events table through the stripe's :class:`capture.eventlog.EventLog`
  (unless an earlier run committed them), and a session left open by a killed run gets its
  disconnect;
* ``committed`` (capture.recovery) says which frames are already in committed Parquet: the
  replay skips them and counts the others.

:func:`replay` runs it on a stripe worker of its own (:class:`Replaying`: its reader without a
connection, its writer and sink), offline (``mlink-capture replay``) and at start-up beside
live capture (capture.stripe_recovery).  Reads run in threads (``offload``), 512 records at a
time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from capture import journal as journal_mod
from capture import protocol
from capture import session as mlink
from capture.eventlog import EventLog
from capture.link import Link
from capture.recovery import CommittedIndex

__all__ = ["Replaying", "replay", "replay_journal"]

Feed = Callable[[Link, journal_mod.MessageRecord, Callable[[str, int], bool]], Awaitable[None]]
EndOfStream = Callable[[Link], Awaitable[None]]


class Replaying(Protocol):
    """A stripe's reader and writer fed from the journal (capture.worker.StripeWorker)."""

    stripe: str
    eventlog: EventLog
    offload: Callable[..., Awaitable[Any]]

    @property
    def next_seq(self) -> int:
        """The next frame to be numbered."""
        ...

    def replaying(self) -> AbstractAsyncContextManager[tuple[Feed, EndOfStream]]:
        """The writer running and the reader's ``feed`` and ``end_of_stream``; on exit
        everything pending is written and every file committed."""
        ...


async def replay(
    reader: Replaying,
    directories: list[Path],
    *,
    committed: CommittedIndex | None = None,
    only: list[Path] | None = None,
) -> int:
    """Rebuild a stripe's Parquet from journal segments through ``reader``, a worker with a
    sink and writer of its own (offline: ``mlink-capture replay``; at start-up: beside live
    capture, skipping what ``committed`` holds, reading ``only`` these segments); returns the
    number of data frames written.  Every file is committed when it returns."""
    async with reader.replaying() as (feed, end_of_stream):
        replayed, _ = await replay_journal(
            directories,
            stripe=reader.stripe,
            committed=committed,
            only=only,
            eventlog=reader.eventlog,
            feed=feed,
            end_of_stream=end_of_stream,
            next_seq=lambda: reader.next_seq,
            offload=reader.offload,
        )
    return replayed


async def replay_journal(
    directories: list[Path],
    *,
    stripe: str,
    committed: CommittedIndex | None,
    only: list[Path] | None,
    eventlog: EventLog,
    feed: Feed,
    end_of_stream: EndOfStream,
    next_seq: Callable[[], int],
    offload: Callable[..., Awaitable[Any]],
) -> tuple[int, int | None]:
    """Feed the journaled messages of ``directories`` (``only`` these segments, if given) to
    ``feed(link, record, committed)``; returns (frames replayed, last receive time).
    ``end_of_stream(link)`` ends each session; ``next_seq()`` is the reader's next sequence
    number (where a killed session's disconnect is placed)."""
    eventlog.replaying = True
    replayed = 0
    last_ns: int | None = None
    link: Link | None = None
    contains = committed.contains if committed is not None else None
    last_of: dict[str, int] = {}  # session -> its last message's receive time
    closed: set[str | None] = set()  # sessions whose disconnect is in the journal

    def already(msg_type: str, seq: int) -> bool:
        nonlocal replayed
        if contains is not None and contains(msg_type, seq):
            return True
        replayed += 1
        return False

    try:
        for directory in directories:
            records = journal_mod.read_records(directory, only=only)
            while chunk := await offload(_take, records, 512):
                for rec in chunk:
                    if isinstance(rec, journal_mod.SessionRecord):
                        if rec.resumed and link is not None and link.id == rec.session:
                            continue  # a segment boundary inside the same session
                        if link is not None:
                            await end_of_stream(link)
                        link = Link(rec.session, mlink.replayed(_requests(rec, stripe)))
                        continue
                    if isinstance(rec, journal_mod.EventRecord):
                        event = eventlog.replayed(rec.fields)
                        if event is not None and event.event == "disconnect":
                            closed.add(event.session)
                        continue
                    if link is None:  # the journal starts inside a session
                        link = Link("unknown", mlink.replayed(()))
                    await feed(link, rec, already)
                    last_ns = last_of[link.id] = rec.recv_ns
        if link is not None:
            await end_of_stream(link)
    finally:
        eventlog.replaying = False
    eventlog.close_unended(last_of, closed, next_seq())
    return replayed, last_ns


def _requests(rec: journal_mod.SessionRecord, stripe: str) -> list[protocol.StreamRequest]:
    """The stream requests a journaled session made (its SESSION record's context)."""
    streams = rec.context.get("streams", {})
    items = streams.items() if isinstance(streams, dict) else ()
    return [
        protocol.StreamRequest(msg_name=name, query_id=int(qid), stripe=stripe, label="replay")
        for name, qid in items
    ]


def _take(records: Iterator[tuple[Path, journal_mod.Record]], n: int) -> list[journal_mod.Record]:
    """The next ``n`` journal records (blocking reads: called in a thread)."""
    return [rec for _, rec in islice(records, n)]
