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

from capture.sink import QUARANTINE_DIR, partition_date

__all__ = ["Quarantined", "append", "known_keys", "stripe_dir"]

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
    day = partition_date(q.recv_ns, tz)
    directory = stripe_dir(root, stripe)
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "key": q.key,
        "recv_time_ns": q.recv_ns,
        "stripe": stripe,
        "session": q.session,
        "reason": q.reason,
        "size": len(q.data),
        "bytes_b64": base64.b64encode(q.data).decode("ascii"),
    }
    line = json.dumps(record, separators=(",", ":")) + "\n"
    fd = os.open(
        directory / f"{day.isoformat()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
    )
    try:
        os.write(fd, line.encode("ascii"))
        os.fsync(fd)  # the journal may retire these bytes: they must be on disk first
    finally:
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
