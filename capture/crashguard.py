"""A crash in the decoder is not repeated forever (issue 15, item 3).

Every data frame is journaled before it is decoded, so a frame that crashes the process in
native code (a segfault in a library on some new input) would crash every start-up again, in
recovery.  Before a writer hands a batch to the decoder and the sink, it notes in the stripe's
journal directory which frames it is working on (``DECODING.<writer>``: type and seq range), and
clears the note when they are done.  The note is one ``pwrite`` and one ``ftruncate`` per batch
and is not fsynced: it only has to survive the *process* (the page cache does), not a power
loss, which no input causes.

At the next start a note that is still there names the frames the process died on.  They become
*suspects* (kept in ``SUSPECTS``, one JSON line each, until the journal no longer holds them):

* frames in a suspect range are decoded **one per batch** during the replay;
* a single frame that was already a suspect and was being decoded, alone, when the process
  died again is **quarantined** instead of decoded (key ``seq/<seq>``, capture/quarantine.py).

So the worst case is two more crashes, then the frame is set aside and every other frame is
stored.  A SIGKILL that happens to land during a decode (an operator, the OOM killer) makes
that batch a suspect, which only costs the replay some speed: one crash alone never quarantines
a frame.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["CrashGuard", "Note", "Suspects"]

_MARKER: Final = "DECODING"
_SUSPECTS: Final = "SUSPECTS"
_MODE: Final = 0o640


@dataclass(frozen=True, slots=True)
class _Range:
    msg_type: str
    lo: int
    hi: int


class Suspects:
    """What earlier runs died decoding: look a frame up with :meth:`verdict`."""

    def __init__(self, ranges: list[_Range], poisoned: set[tuple[str, int]]) -> None:
        self._ranges = ranges
        self.poisoned = poisoned

    def __bool__(self) -> bool:
        return bool(self._ranges or self.poisoned)

    def verdict(self, msg_type: str, seq: int) -> str | None:
        """``"poison"`` (quarantine it), ``"suspect"`` (decode it alone) or None."""
        if (msg_type, seq) in self.poisoned:
            return "poison"
        for r in self._ranges:
            if r.msg_type == msg_type and r.lo <= seq <= r.hi:
                return "suspect"
        return None


class Note:
    """What one writer is decoding (``DECODING.<slot>``).  :meth:`begin` / :meth:`end` run in
    that writer's thread, one batch at a time."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _MODE
        )

    def begin(self, msg_type: str, lo: int, hi: int) -> None:
        """The frames of ``msg_type`` from ``lo`` to ``hi`` go to the decoder now."""
        if self._fd is None:
            return
        note = json.dumps({"msg_type": msg_type, "lo": lo, "hi": hi}).encode()
        os.pwrite(self._fd, note, 0)

    def end(self) -> None:
        """They are decoded and written (or rejected): clear the note."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class CrashGuard:
    """One stripe's crash guard: :meth:`open` at start-up (before any :meth:`note`), then one
    :class:`Note` per writer (the live one, the recovery's)."""

    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory)

    def note(self, slot: str) -> Note:
        return Note(self._dir / f"{_MARKER}.{slot}")

    def open(self, *, oldest_seq: int | None) -> Suspects:
        """Read what the last run left (a note means it died decoding), record it among the
        suspects, forget suspects the journal no longer holds (below ``oldest_seq``) and clear
        the notes.  Returns the suspects for the replay."""
        ranges = self._load()
        poisoned: set[tuple[str, int]] = set()
        died_on = None
        for marker in sorted(self._dir.glob(f"{_MARKER}*")):
            found = _parse(marker.read_bytes())
            if found is not None:
                died_on = found
                ranges.append(found)
            marker.unlink()
        if oldest_seq is not None:
            ranges = [r for r in ranges if r.hi >= oldest_seq]
        elif died_on is None:
            ranges = []  # the journal holds no frame: nothing to suspect
        # A frame decoded alone when the process died, inside a range it died on before.
        # Such frames stay in the list: a later start must not decode them either (the
        # quarantine's key keeps them from being set aside twice).
        for r in ranges:
            if r.lo == r.hi and any(
                o.msg_type == r.msg_type and o.lo <= r.lo <= o.hi and o is not r for o in ranges
            ):
                poisoned.add((r.msg_type, r.lo))
        self._save(ranges)
        return Suspects(ranges, poisoned)

    def _load(self) -> list[_Range]:
        try:
            lines = (self._dir / _SUSPECTS).read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [r for r in map(_parse, lines) if r is not None]

    def _save(self, ranges: list[_Range]) -> None:
        path = self._dir / _SUSPECTS
        if not ranges:
            path.unlink(missing_ok=True)
            return
        text = "".join(
            json.dumps({"msg_type": r.msg_type, "lo": r.lo, "hi": r.hi}) + "\n" for r in ranges
        )
        tmp = path.with_name(_SUSPECTS + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _parse(data: bytes) -> _Range | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    msg_type, lo, hi = obj.get("msg_type"), obj.get("lo"), obj.get("hi")
    if not (isinstance(msg_type, str) and isinstance(lo, int) and isinstance(hi, int)):
        return None
    return _Range(msg_type, lo, hi) if lo <= hi else None
