"""Process-wide memory bounds, and what the health file reports about memory.

The daemon's memory is its baseline (the interpreter, pyarrow, ~80 MB) plus data in flight,
and every kind of data in flight has a bound that holds for the *process*, whatever the number
of stripes (``output.memory_budget_mb``, default 48; with ``supervision.processes`` = N each
stripe-group process has 1/N of it and its own ~80 MB baseline, capture.groups):

* frames not yet handed to a writer: a pending batch per stripe and type, handed over at
  ``pipeline.batch_rows`` frames or at budget / (3 x stripes) bytes (capture.worker), so that
  with one busy type per stripe they hold about a third of the budget, whatever the stripes;
* frames handed to a writer and not yet decoded (queued, or being decoded): one
  :class:`InFlightBudget` shared by every stripe, a quarter of the budget.  A reader that would
  exceed it waits (backpressure: the server sees a slow consumer, PROTOCOL.md §7.3), in turn
  with the other waiting readers, so that no stripe starves;
* decoded rows waiting to fill a row group: the other three quarters, split between the
  stripes' sinks (a sink over its share writes its largest buffer out as a row group);
* the footers of the open files (the metadata of every row group written, kept until the
  file is committed): the same share again per sink (over it, the file with the most is
  committed early: capture.sink, ``footer_budget_bytes``);
* batches being decoded or written at once: :func:`decode_slots` (one per core), each holding
  one batch's JSON, its parsed table and its Parquet pages.

Why a quarter: a buffered row costs ~230 bytes of Arrow, the same row in flight ~850 (its
JSON and Python's list entries), and bigger row groups make better files; measured with 11
stripes at full rate (bench/README.md), a quarter gave 19k-row groups where a half gave 12k, at
the same peak RSS and throughput.  Beyond the in-flight budget the reader would only hold more
frames for a decoder that cannot go faster.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable

import trio

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class InFlightBudget:
    """Bytes of raw frames handed to the writers and not yet decoded, for the whole process.

    Used from the event loop only (no locking).  A batch goes in flight at once while the
    total stays within the limit; otherwise its reader queues (:meth:`admit`) and the queue is
    served first come, first served, so no stripe starves.  A batch larger than the whole
    budget goes when nothing else is in flight, so a small budget cannot deadlock.  The total
    therefore never exceeds the limit or the largest batch, whatever the number of stripes,
    except for a reader that stops waiting because its writer is gone (its send then fails and
    gives the bytes back)."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"limit_bytes must be positive, got {limit_bytes}")
        self.limit = limit_bytes
        self.used = 0
        self.peak = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._queue: deque[object] = deque()  # readers waiting, oldest first

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.limit

    async def admit(self, n: int, give_up: Callable[[], bool]) -> bool:
        """Wait until ``n`` more bytes may go in flight (then :meth:`take` them); True if it
        had to wait.  ``give_up()`` true ends the wait early (the writer is gone)."""
        if not self._queue and self._fits(n):
            return False
        me = object()
        self._queue.append(me)
        try:
            while not give_up() and not (self._queue[0] is me and self._fits(n)):
                await self._lot.park()
        finally:
            self._queue.remove(me)
            self._lot.unpark_all()  # the next in line may fit now
        return True

    def take(self, n: int) -> None:
        """Charge ``n`` bytes now (after :meth:`admit`, or when the caller must not wait)."""
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def wake(self) -> None:
        self._lot.unpark_all()

    def release(self, n: int) -> None:
        self.used -= n
        if self.used < 0:  # pragma: no cover - accounting invariant
            raise AssertionError(f"in-flight budget released below zero ({self.used})")
        self._lot.unpark_all()


def decode_slots(processes: int = 1) -> int:
    """How many batches may be decoded and written at once, all stripes together: one per
    core the process may run on, shared with the other ``processes - 1`` stripe-group
    processes (capture.groups).  More would only hold more batches in memory at once."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def rss_bytes() -> int | None:
    """Resident set size now (Linux: /proc/self/statm), or None where unknown."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def pss_bytes(pid: int | None = None) -> int | None:
    """Proportional set size now of this process or ``pid`` (Linux 4.14: smaps_rollup): pages
    shared with other processes (the stripe groups and the daemon share their imports:
    capture.forkserver) count a share each, so PSS adds up over processes where RSS counts
    shared pages every time.  (The kernel walks the page tables: ~1 ms per 100 MB.)"""
    return _proc_field(f"/proc/{'self' if pid is None else pid}/smaps_rollup", b"Pss:")


def _proc_field(path: str, name: bytes) -> int | None:
    """Bytes of the ``name`` line of a /proc file in kB (``VmHWM:``, ``Pss:``), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int | None:
    """This process's highest resident set size so far (Linux: ``VmHWM``), or None.

    Unlike ``getrusage``'s ``ru_maxrss``, it starts afresh at ``exec``: a child's ru_maxrss also
    counts the parent's RSS at the time it was forked."""
    return _proc_field("/proc/self/status", b"VmHWM:")


def arrow_allocated_bytes() -> int:
    """Bytes Arrow's default memory pool holds now (decoded batches, row-group buffers)."""
    import pyarrow as pa

    return int(pa.total_allocated_bytes())


def arrow_pool_name() -> str:
    """The allocator behind Arrow's default pool (``system``, ``jemalloc``, ``mimalloc``)."""
    import pyarrow as pa

    return str(pa.default_memory_pool().backend_name)


def choose_allocators() -> None:
    """Process start-up, before pyarrow is imported: the allocators this daemon is measured
    with (bench/README.md: 11 stripes at full rate, peak RSS 385 MB with Arrow's bundled
    mimalloc, 272 MB with glibc's malloc, same throughput).  An explicit environment wins:
    ``ARROW_DEFAULT_MEMORY_POOL`` (system, jemalloc, mimalloc), ``MALLOC_ARENA_MAX``.

    * Arrow's pool: glibc's malloc.  mimalloc keeps freed pages per thread, and decode threads
      come and go; glibc gives large blocks back when they are freed.
    * glibc: at most 2 arenas (it makes one per thread that allocates, and keeps them).
    * with the system pool, no jemalloc background thread (``JE_ARROW_MALLOC_CONF``), and no
      OpenBLAS thread pool (``OPENBLAS_NUM_THREADS``): the daemon forks its stripe-group
      server while it has one thread (capture.forkserver).
    """
    if "pyarrow" not in sys.modules:  # (in-process callers, e.g. tests: too late, keep it)
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
        if os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system":
            # pyarrow starts its bundled jemalloc's background thread at import even when the
            # pool is not jemalloc; that thread would make the daemon multi-threaded before it
            # forks its stripe-group server (capture.forkserver).
            os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
        # pyarrow imports numpy when it is installed (pandas, pyspark and pyiceberg bring
        # it), and numpy's OpenBLAS starts a thread pool at import: the same problem. The
        # daemon does no linear algebra.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "MALLOC_ARENA_MAX" not in os.environ and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX = 2 (glibc)
        except (OSError, AttributeError):
            pass  # not glibc: nothing to tune


class HeapTrimmer:
    """Gives glibc's free heap pages back to the system (``malloc_trim``), for a process that
    frees a lot: every batch of frames (Python bytes) and, with the system pool, every Arrow
    buffer.  Without it glibc keeps the holes; measured in the 10-minute soak (bench/README.md).
    A no-op where the C library is not glibc."""

    def __init__(self) -> None:
        self._trim = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                self._trim = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim(self) -> None:
        """Blocking (milliseconds): call it from a thread."""
        if self._trim is not None:
            self._trim(0)
