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

from capture.rotation import partition_date
from capture.sink import QUARANTINE_DIR

__all__ = ["Quarantined", "append", "append_many", "known_keys", "stripe_dir"]

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
