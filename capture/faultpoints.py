"""Named crash points for the crash tests: ``MLINK_CAPTURE_CRASH_AT=name[:n][,name[:n]...]``
makes the process SIGKILL itself the n-th time (default 1st) it passes ``crash_point(name)``.

Unset (always, in production) a crash point costs one falsy check.  The points sit between the
steps that make data durable, so the tests can prove recovery from a crash at each of them:

* ``sink.commit.footer``    part file closed (footer written), not yet fsynced
* ``sink.commit.fsync``     fsynced, not yet renamed to its final name
* ``sink.commit.rename``    renamed, directory not yet fsynced
* ``sink.commit.done``      committed, nothing after it done yet
* ``journal.retire``        segments about to be retired
* ``worker.decoded``        a batch decoded, not yet written to the sink
* ``lake.uploaded``         a file is in the object store, not yet in a table
* ``lake.committed``        a catalog commit went through, the lake has not noted it
* ``lake.deleted``          a local file in a snapshot deleted (``delete_local``)

``MLINK_CAPTURE_POISON=text`` makes the decoder step die of SIGSEGV on a frame containing
``text`` (:func:`poison_point`), like a native library crashing on some input.
"""

from __future__ import annotations

import os
import signal

_ENV = "MLINK_CAPTURE_CRASH_AT"


def _parse(text: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition(":")
        armed[name] = int(count) if count.isdigit() and int(count) > 0 else 1
    return armed


_armed = _parse(os.environ.get(_ENV, ""))


def crash_point(name: str) -> None:
    if not _armed:
        return
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    os.kill(os.getpid(), signal.SIGKILL)


_POISON_ENV = "MLINK_CAPTURE_POISON"
_poison = os.environ.get(_POISON_ENV, "").encode()


def poison_point(bodies: list[bytes]) -> None:
    """``MLINK_CAPTURE_POISON=text``: the process dies of SIGSEGV when the decoder is given a
    frame body containing ``text`` (tests: a native crash in a library on some new input)."""
    if not _poison:
        return
    for body in bodies:
        if _poison in body:
            os.kill(os.getpid(), signal.SIGSEGV)


# -- injected OS errors (tests only) ------------------------------------------------------------

_failures: dict[str, tuple[int, int]] = {}  # point -> (errno, how many more times)


def arm_failure(name: str, errno_: int, times: int) -> None:
    """Make ``fail_point(name)`` raise ``OSError(errno_)`` the next ``times`` times (tests: a
    full or broken disk, without one)."""
    _failures[name] = (errno_, times)


def disarm_failures() -> None:
    """Forget every armed failure (tests: cleanup)."""
    _failures.clear()


def fail_point(name: str) -> None:
    if not _failures:
        return
    armed = _failures.get(name)
    if armed is None:
        return
    code, left = armed
    if left <= 1:
        del _failures[name]
    else:
        _failures[name] = (code, left - 1)
    raise OSError(code, os.strerror(code))
