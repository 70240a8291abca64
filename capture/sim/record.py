"""Byte-exact recording of what the simulator sent, and helpers to read it back in tests.

Layout: ``<record_dir>/<stripe>/<connection-id>.jsonf``, one file per connection holding every
byte the server sent on it, in order (garbage and corrupted frames included: it is the wire).
``<stripe>`` is the ``stripeFilter`` of the connection's first MLinkStream request, ``_all`` if
that request had none or the connection never subscribed.  The protocol's model is one stripe
per connection (§8.1); a connection that streams several stripes is filed under its first.

Writes are synchronous and flushed per WebSocket message, so the file is complete as soon as
the send returns (and after the server stops) — recording order is send order.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import IO

from capture.frames import Frame, FrameDecoder
from capture.protocol import CONTROL_TYPES

__all__ = [
    "NO_STRIPE",
    "ConnectionRecording",
    "Recorder",
    "load_sent_data",
    "load_sent_frames",
    "recorded_bytes",
]

NO_STRIPE = "_all"
_HOLD_LIMIT = 64 * 1024  # bytes held in memory before a connection's stripe is known
_SAFE = re.compile(r"^[A-Za-z0-9_]+$")

_CONTROL = CONTROL_TYPES  # control messages are not data


class Recorder:
    """Creates one :class:`ConnectionRecording` per connection under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def next_connection_number(self) -> int:
        """1 + the highest ``cNNNN`` already recorded here (1 for a fresh directory)."""
        numbers = [_conn_number(p.stem) for p in self.root.glob("*/*.jsonf")]
        return max([n for n in numbers if n is not None], default=0) + 1

    def connection(self, conn_id: str) -> ConnectionRecording:
        if not _SAFE.match(conn_id):
            raise ValueError(f"unsafe connection id {conn_id!r}")
        return ConnectionRecording(self.root, conn_id)


class ConnectionRecording:
    """The recording of one connection; bytes are held until the stripe is known."""

    def __init__(self, root: Path, conn_id: str) -> None:
        self._root = root
        self.conn_id = conn_id
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._file: IO[bytes] | None = None
        self.path: Path | None = None
        self.stripe: str | None = None

    def set_stripe(self, stripe: str | None) -> None:
        """Fix the directory from the first stream request (later calls are ignored)."""
        if self._file is None:
            self._open(stripe or NO_STRIPE)

    def write(self, payload: bytes) -> None:
        """Append one WebSocket message's bytes, exactly as sent."""
        if self._file is None:
            self._held.append(payload)
            self._held_bytes += len(payload)
            if self._held_bytes > _HOLD_LIMIT:
                self._open(NO_STRIPE)
            return
        self._file.write(payload)
        self._file.flush()

    def close(self) -> None:
        if self._file is None:
            self._open(NO_STRIPE)
        assert self._file is not None
        self._file.close()

    def _open(self, stripe: str) -> None:
        if not _SAFE.match(stripe):
            stripe = NO_STRIPE
        directory = self._root / stripe
        directory.mkdir(parents=True, exist_ok=True)
        self.stripe = stripe
        self.path = directory / f"{self.conn_id}.jsonf"
        self._file = self.path.open("xb")  # ids are never reused: never append to a stranger
        for chunk in self._held:
            self._file.write(chunk)
        self._file.flush()
        self._held.clear()
        self._held_bytes = 0


def _conn_number(stem: str) -> int | None:
    return int(stem[1:]) if stem[:1] == "c" and stem[1:].isdigit() else None


def _recordings(record_dir: Path) -> list[Path]:
    """Recording files by stripe, then connection number (= connection order)."""
    paths = record_dir.glob("*/*.jsonf")
    return sorted(paths, key=lambda p: (p.parent.name, _conn_number(p.stem) or 0, p.stem))


def recorded_bytes(record_dir: Path) -> dict[tuple[str, str], bytes]:
    """Every recording as raw bytes, keyed by ``(stripe, connection id)``."""
    out: dict[tuple[str, str], bytes] = {}
    for path in _recordings(record_dir):
        out[(path.parent.name, path.stem)] = path.read_bytes()
    return out


def load_sent_frames(record_dir: Path) -> dict[tuple[str, str], list[Frame]]:
    """Every whole frame sent, per ``(stripe, connection id)``, in send order (garbage skipped)."""
    out: dict[tuple[str, str], list[Frame]] = {}
    for key, data in recorded_bytes(record_dir).items():
        dec = FrameDecoder()
        out[key] = [e for e in dec.feed(data) if isinstance(e, Frame)]
    return out


def load_sent_data(record_dir: Path) -> dict[tuple[str, str], list[bytes]]:
    """Data-message bodies sent, keyed by ``(message type, stripe)``, in send order.

    Admin, heartbeat, ack and checkpoint frames are left out, and so are frames whose body is
    not a JSON object with a ``header.mTyp`` (injected faults).  Connections of one stripe are
    concatenated in connection-id order.
    """
    out: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for (stripe, _conn), frames in load_sent_frames(record_dir).items():
        for fr in frames:
            mtyp = _mtyp(fr.body)
            if mtyp is None or mtyp in _CONTROL:
                continue
            out[(mtyp, stripe)].append(fr.body)
    return dict(out)


def _mtyp(body: bytes) -> str | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    header = obj.get("header") if isinstance(obj, dict) else None
    mtyp = header.get("mTyp") if isinstance(header, dict) else None
    return mtyp if isinstance(mtyp, str) and mtyp else None  # "" names no type
