"""Quarantine: bytes that could not be used, kept with why, once.

``ROOT/_quarantine/stripe=<S>/<local date>.jsonl``, one JSON object per line::

    {"key": ..., "recv_time_ns": ..., "stripe": ..., "session": ..., "reason": ...,
     "size": ..., "bytes_b64": ...}

``key`` names the item by its place in the stripe's receive stream, so that replaying the
journal after a restart produces the same key for the same bytes and can tell that they are
already here (issue 15, item 9: a restart does not quarantine again what a previous run did):

* ``<session>/<seq>/<n>``: the n-th item the reader quarantined while the stripe's next frame
  number was ``seq`` in that connection session (garbage between frames, a frame without a
  type, a malformed control frame, a truncated tail);
* ``seq/<seq>``: data frame ``seq``, rejected by the decoder (or found to crash it).

Each line is written with O_APPEND and fsynced before the journal may retire its bytes.  The
key comes first in the line, so :func:`known_keys` need not parse the (possibly large) rest.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture.rotation import partition_date
from capture.sink import QUARANTINE_DIR
from capture.stats import StripeStats

__all__ = ["Collector", "Quarantined", "append", "append_many", "known_keys", "stripe_dir"]

_KEY_PREFIX = '{"key":"'


@dataclass(frozen=True, slots=True)
class Quarantined:
    """Bytes that could not be used, kept with why, for a human or a later replay.  ``seq``:
    the stripe's next frame number when they were set aside (they hold the journal until
    written); ``key``: see the module docstring."""

    recv_ns: int
    session: str
    reason: str
    data: bytes
    seq: int = 0
    key: str = ""


def stripe_dir(root: Path, stripe: str) -> Path:
    return Path(root) / QUARANTINE_DIR / f"stripe={stripe}"


def append(root: Path, stripe: str, tz: str, q: Quarantined) -> None:
    """Add one item to the stripe's file for its local date, fsynced."""
    append_many(root, stripe, tz, [q])


def append_many(root: Path, stripe: str, tz: str, items: list[Quarantined]) -> None:
    """Add items to the stripe's files for their local dates: written a thousand at a time,
    one fsync per file at the end (the journal may retire these bytes: they must be on disk
    first), so that a message of thousands of bad frames costs one fsync, not thousands."""
    if not items:
        return
    directory = stripe_dir(root, stripe)
    directory.mkdir(parents=True, exist_ok=True)
    fds: dict[str, int] = {}
    try:
        for start in range(0, len(items), 1000):
            by_day: dict[str, list[str]] = {}
            for q in items[start : start + 1000]:
                record = {
                    "key": q.key,
                    "recv_time_ns": q.recv_ns,
                    "stripe": stripe,
                    "session": q.session,
                    "reason": q.reason,
                    "size": len(q.data),
                    "bytes_b64": base64.b64encode(q.data).decode("ascii"),
                }
                day = partition_date(q.recv_ns, tz).isoformat()
                by_day.setdefault(day, []).append(json.dumps(record, separators=(",", ":")))
            for day, lines in by_day.items():
                if day not in fds:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
                    fds[day] = os.open(directory / f"{day}.jsonl", flags, 0o640)
                data = ("\n".join(lines) + "\n").encode("ascii")
                while data:
                    data = data[os.write(fds[day], data) :]
        for fd in fds.values():
            os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)


def known_keys(root: Path, stripe: str, *, since_ns: int | None) -> set[str]:
    """Keys of the items already quarantined for ``stripe`` in files dated from the day before
    ``since_ns`` on (every file when None)."""
    directory = stripe_dir(root, stripe)
    first = None
    if since_ns is not None:
        first = dt.datetime.fromtimestamp(since_ns / 1e9, tz=dt.UTC).date() - dt.timedelta(days=1)
    keys: set[str] = set()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return keys
    for name in names:
        try:
            day = dt.date.fromisoformat(name.removesuffix(".jsonl"))
        except ValueError:
            continue
        if not name.endswith(".jsonl") or (first is not None and day < first):
            continue
        with open(directory / name, "rb") as f:
            for raw in f:
                line = raw.decode("ascii", "replace")
                if line.startswith(_KEY_PREFIX):
                    end = line.find('"', len(_KEY_PREFIX))
                    if end > len(_KEY_PREFIX):
                        keys.add(line[len(_KEY_PREFIX) : end])
    return keys


class Collector:
    """The reader's side of quarantine: keys what it sets aside by its place in the receive
    stream (see the module docstring) and gathers it per WebSocket message, so that a message
    of thousands of bad frames is written with one fsync and logged in one line.  Items whose
    key ``before`` holds were kept (and counted) by an earlier run: a replay skips them."""

    BATCH = 1000
    """Items gathered before they go to the writer without waiting for the message's end."""

    def __init__(self, log: Any, stats: StripeStats) -> None:
        self.log = log
        self.stats = stats
        self.before: frozenset[str] = frozenset()
        self._items: list[Quarantined] = []  # of the message being handled
        self._slot: tuple[str, int] = ("", -1)  # (session, seq) of the last item
        self._n = 0  # items set aside at that slot so far
        self._tracebacks: set[str] = set()  # where contained bugs were raised (logged once each)

    def add(self, recv_ns: int, session: str, seq: int, reason: str, data: bytes) -> bool:
        """Set bytes aside; ``seq`` is the stripe's next frame number.  True: a batch is full,
        :meth:`take` it now."""
        slot = (session, seq)
        if slot == self._slot:
            self._n += 1
        else:
            self._slot, self._n = slot, 0
        key = f"{session}/{seq}/{self._n}"
        if key in self.before:
            return False  # a replay: an earlier run kept (and counted) these bytes
        self.stats.quarantined += 1
        self._items.append(Quarantined(recv_ns, session, reason, data, seq=seq, key=key))
        return len(self._items) >= self.BATCH

    def bug(self, exc: Exception, recv_ns: int, session: str, seq: int, data: bytes) -> bool:
        """A bug met while handling one frame (or message): set its bytes aside with the error
        and log the traceback once per place it was raised (at most 100 places), so that
        capture goes on with the next frame.  True: a batch is full, :meth:`take` it now."""
        reason = f"internal error: {type(exc).__name__}: {exc}"[:500]
        where = f"{type(exc).__name__}@{_origin(exc)}"
        if where not in self._tracebacks and len(self._tracebacks) < 100:
            self._tracebacks.add(where)
            self.log.error(
                "bug while handling a frame; frame quarantined, capture goes on",
                reason=reason,
                exc_info=exc,
            )
        else:
            self.log.error("bug while handling a frame (traceback logged before)", reason=reason)
        return self.add(recv_ns, session, seq, reason, data)

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> list[Quarantined]:
        """What was gathered (logged in one line, however many frames); the collector forgets
        it.  Empty: nothing was set aside."""
        items, self._items = self._items, []
        if items:
            reasons = sorted({q.reason for q in items})
            self.log.warning(
                "quarantined bytes",
                frames=len(items),
                size=sum(len(q.data) for q in items),
                reason=reasons[0] if len(reasons) == 1 else reasons[:3],
            )
        return items

    def crashed_decoder(
        self, recv_ns: int, session: str, seq: int, body: bytes
    ) -> Quarantined | None:
        """A frame the process died decoding twice, the second time alone (capture.crashguard):
        set aside under its data-frame key.  None: an earlier run did."""
        key = f"seq/{seq}"
        if key in self.before:
            return None
        self.stats.quarantined += 1
        reason = "the process died decoding this frame (twice; the second time alone)"
        self.log.error("quarantined a frame that crashed the decoder", seq=seq, size=len(body))
        return Quarantined(recv_ns, session, reason, body, seq=seq, key=key)


def _origin(exc: BaseException) -> str:
    """Where an exception was raised (file:line of the innermost frame), to log a traceback
    once per place rather than once per frame."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
