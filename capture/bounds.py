"""What a server may send: bounds on frame bodies and on message type names.

Every JSON parser the daemon uses (Arrow's C++ reader, Python's ``json``, the ``_extra``
renderer) recurses on nesting; Arrow's crashes the process on deep enough input, Python's
raises ``RecursionError``.  So no body reaches a parser before :func:`check_body` has bounded
its size, its nesting depth and its member count, and no type name reaches the sink before
:func:`check_type_name` has made sure it can be a table (a directory) and is not one of the
daemon's own.  Both raise :class:`~capture.frames.RemoteProtocolError` (the protocol layer's
one exception for bad input); the reader quarantines the frame.

The scan is on the hot path (every frame), so it first counts bytes at C speed: a body with at
most ``max_depth`` opening brackets cannot be nested deeper, and one shorter than 4 bytes per
allowed member (or with at most ``max_fields`` colons) cannot have more members.  Only a body
that fails those cheap bounds is scanned exactly (in linear time; brackets and colons inside
strings do not count).
Cost per frame: ``bench/bench_reader.py``; design notes: ``docs/hostile-input.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Final

from capture.frames import MAX_BODY_LEN, RemoteProtocolError

__all__ = [
    "RESERVED_PREFIX",
    "Limits",
    "RemoteProtocolError",
    "check_body",
    "check_type_name",
    "type_name_problem",
]

RESERVED_PREFIX: Final = "capture_"
"""Table names of the daemon's own (``capture_events``, and any later one); compared without
case, since a data root may live on a case-insensitive file system."""

# The ranges check-config accepts (config.py reads each field's "within"), and why.
DEPTH_RANGE: Final = (8, 200)
"""MLink bodies nest 4 to 6 deep; Python's parser and the ``_extra`` renderer need headroom
below the interpreter's recursion limit (1,000)."""
FIELDS_RANGE: Final = (100, 1_000_000)
FRAME_BYTES_RANGE: Final = (1024, MAX_BODY_LEN)
TYPE_NAME_RANGE: Final = (16, 200)
"""A type name is a directory name: 255 bytes at most on common file systems."""
OPEN_TYPES_RANGE: Final = (4, 4096)


@dataclass(frozen=True, slots=True)
class Limits:
    """``[limits]``: what one frame may hold, and how many types a stripe keeps open."""

    max_depth: int = field(default=64, metadata={"within": DEPTH_RANGE})
    """Nesting of JSON arrays and objects in one body (the body's own braces count as 1)."""
    max_fields: int = field(default=10_000, metadata={"within": FIELDS_RANGE})
    """JSON object members in one body, all levels together."""
    max_frame_bytes: int = field(default=MAX_BODY_LEN, metadata={"within": FRAME_BYTES_RANGE})
    """Bytes of one frame body (the frame header's six digits allow 999,999)."""
    max_type_name: int = field(default=128, metadata={"within": TYPE_NAME_RANGE})
    """Characters of a message type name (``header.mTyp``) of a data frame."""
    max_open_types: int = field(default=64, metadata={"within": OPEN_TYPES_RANGE})
    """Per stripe: Parquet files held open at once (one per type, date and interval); past it
    the least recently written one is committed early (:mod:`capture.sink`)."""


_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")
_AS_SQUARE: Final = bytes.maketrans(b"{}", b"[]")
_STEP: Final = {ord("["): 1, ord("]"): -1}


def check_body(body: bytes, limits: Limits) -> None:
    """Raise RemoteProtocolError if ``body`` is over a bound (size, nesting, members)."""
    if len(body) > limits.max_frame_bytes:
        raise RemoteProtocolError(
            f"frame body of {len(body)} bytes is over limits.max_frame_bytes "
            f"({limits.max_frame_bytes})"
        )
    max_depth = limits.max_depth
    if (
        body.count(b"{") + body.count(b"[") > max_depth
        and _too_deep(body, max_depth)  # brackets inside strings count here ...
        and _too_deep(_outside_strings(body), max_depth)  # ... and not here
    ):
        raise RemoteProtocolError(f"frame body nests deeper than limits.max_depth ({max_depth})")
    # A member takes at least 5 bytes (``"":0`` and a comma or brace): a body under 4 bytes per
    # allowed member cannot have too many, and is not scanned for them.
    if len(body) > 4 * limits.max_fields and body.count(b":") > limits.max_fields:
        fields = _outside_strings(body).count(b":")
        if fields > limits.max_fields:
            raise RemoteProtocolError(
                f"frame body has {fields} members, over limits.max_fields ({limits.max_fields})"
            )


def _outside_strings(body: bytes) -> bytes:
    """The body without the contents of its JSON strings, in linear time whatever the input
    (a regular expression for strings backtracks quadratically on a run of ``\\"``): escaped
    backslashes go first, then escaped quotes, and what is left between unescaped quotes is
    string contents."""
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(text.split(b'"')[0::2])


def _too_deep(text: bytes, max_depth: int) -> bool:
    # Only the brackets, every opener as "[" and every closer as "]" (depth does not care).
    brackets = text.translate(_AS_SQUARE, _NOT_BRACKET)
    run = b"[" * (max_depth + 1)
    # Each round removes the innermost level (every empty pair) at C speed, so a body nested
    # ``d`` deep is empty after ``d`` rounds (a Repeater: 3 or 4); a run of openers longer than
    # the bound (the usual attack) ends it at once.  At most ``max_depth`` rounds.
    for _ in range(max_depth + 1):
        if len(brackets) <= max_depth:
            return False
        if run in brackets:
            return True
        rest = brackets.replace(b"[]", b"")
        if len(rest) == len(brackets):
            break  # unbalanced (not JSON): count the plain way
        brackets = rest
    else:
        return True
    # Linear, about 40 ns per bracket: at most ~40 ms for the largest frame.
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


# Letters, digits and _ . + - (ASCII: no look-alikes, no invisible characters), not starting
# with one of ". _ + -" (readers skip hidden and underscore directories) nor ending with "."
# (some file systems drop it).
_TYPE_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.+-]*[A-Za-z0-9_+-])?")


def type_name_problem(name: str, max_len: int) -> str | None:
    """Why ``name`` cannot be a data table's name, or None if it can."""
    if len(name) > max_len:
        return f"{len(name)} characters, over limits.max_type_name ({max_len})"
    if not _TYPE_NAME.fullmatch(name):
        return (
            "not usable as a directory name (allowed: ASCII letters, digits and _ . + -, "
            "starting with a letter or digit, not ending with '.')"
        )
    if name.lower().startswith(RESERVED_PREFIX):
        return f"names starting with {RESERVED_PREFIX!r} are the daemon's own tables"
    return None


def check_type_name(name: str, limits: Limits) -> None:
    """Raise RemoteProtocolError if the data type ``name`` cannot be a table of its own."""
    problem = type_name_problem(name, limits.max_type_name)
    if problem is not None:
        raise RemoteProtocolError(f"message type {name[:80]!r}: {problem}")
