"""``mlink-capture status``: the daemon's stripes for a person, read from the health file.

It needs nothing but the file (``health.path``), so it works beside any running daemon, on the
host or in its container (``docker exec CONTAINER mlink-capture status``).  Rates are the
difference of two reports: the daemon writes one every ``health.interval``, so ``msg/s`` is the
average over the last interval, and ``--once`` waits for a second report before it prints.

On a terminal the table is redrawn in place (cursor home, each line cleared to its end) until
Ctrl-C; otherwise (a pipe, ``--once``, ``--json``) it prints once.  Exit codes are those of
``mlink-capture health``: 0 healthy, 1 unhealthy or stale, 2 no readable health file.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from capture.errors import StatusError as StatusError
from capture.states import OK_STATES

EXIT_OK, EXIT_UNHEALTHY, EXIT_UNKNOWN = 0, 1, 2
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def read(path: Path) -> dict[str, Any]:
    """The health document at ``path``; :class:`StatusError` if there is none to read."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StatusError(f"no health file at {path} (is the daemon running?)") from None
    except OSError as exc:
        raise StatusError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # not JSON, or nested beyond the parser
        raise StatusError(f"{path} is not a health file: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("written_at_ns"), int):
        raise StatusError(f"{path} is not a health file (no written_at_ns)")
    return doc


@dataclass(frozen=True)
class Row:
    stripe: str
    state: str
    msg_per_s: float | None  # None: one report only, or the counter went back (a restart)
    last_data_age_s: float | None
    rows_written: int | None
    files_committed: int | None
    quarantined_frames: int | None
    journal_lag_frames: int | None
    last_error: str | None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _age(value: Any, now_ns: int) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return max(0.0, now_ns / 1e9 - when.timestamp()) if when.tzinfo else None


def _stripes(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    stripes = doc.get("stripes")
    if not isinstance(stripes, Mapping):
        return {}
    return {str(k): v for k, v in stripes.items() if isinstance(v, Mapping)}


def rows(
    doc: Mapping[str, Any], previous: Mapping[str, Any] | None, now_ns: int
) -> list[Row]:
    """One row per stripe of ``doc``; rates against the earlier report ``previous``."""
    before = _stripes(previous) if previous is not None else {}
    span_ns = 0
    if previous is not None:
        span_ns = (_int(doc.get("written_at_ns")) or 0) - (
            _int(previous.get("written_at_ns")) or 0
        )
    out = []
    for code, view in sorted(_stripes(doc).items()):
        rate = None
        now_count, then = _int(view.get("messages")), _int(before.get(code, {}).get("messages"))
        if previous is not None and span_ns > 0 and now_count is not None and then is not None:
            if now_count >= then:
                rate = (now_count - then) / (span_ns / 1e9)
        error = view.get("last_error")
        out.append(
            Row(
                stripe=code,
                state=str(view.get("state")),
                msg_per_s=rate,
                last_data_age_s=_age(view.get("last_data"), now_ns),
                rows_written=_int(view.get("rows_written")),
                files_committed=_int(view.get("files_committed")),
                quarantined_frames=_int(view.get("quarantined_frames")),
                journal_lag_frames=_int(view.get("journal_lag_frames")),
                last_error=str(error) if error is not None else None,
            )
        )
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


COLUMNS = ("STRIPE", "STATE", "MSG/S", "LAST DATA", "ROWS", "FILES", "QUAR", "LAG")


def render(
    doc: Mapping[str, Any], table: list[Row], now_ns: int, *, path: Path, width: int = 100
) -> list[str]:
    """The screen's lines (no escape sequences)."""
    process = doc.get("process") if isinstance(doc.get("process"), Mapping) else {}
    assert isinstance(process, Mapping)
    written = _int(doc.get("written_at_ns")) or 0
    uptime = process.get("uptime_s")
    state = "healthy" if doc.get("healthy") is True else "UNHEALTHY"
    lines = [
        f"mlink-capture {process.get('version', '?')}  pid {process.get('pid', '?')}  "
        f"up {_duration(uptime if isinstance(uptime, int | float) else None)}  {state}  "
        f"report {_duration((now_ns - written) / 1e9)} old  ({path})",
        str(doc.get("summary", "")),
        "",
    ]
    cells = [
        (
            r.stripe,
            r.state,
            "..." if r.msg_per_s is None else f"{r.msg_per_s:,.1f}",
            _duration(r.last_data_age_s),
            _count(r.rows_written),
            _count(r.files_committed),
            _count(r.quarantined_frames),
            _count(r.journal_lag_frames),
        )
        for r in table
    ]
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    for line in [COLUMNS, *cells]:
        lines.append(
            "  ".join(
                v.ljust(w) if i < 2 else v.rjust(w)
                for i, (v, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
    problems = [r for r in table if r.state not in OK_STATES and r.last_error]
    if problems:
        lines.append("")
        lines.extend(f"{r.stripe}: {r.state}: {r.last_error}" for r in problems)
    memory = process.get("memory")
    if isinstance(memory, Mapping):
        lines.append("")
        lines.append(
            f"memory: pss {memory.get('pss_mb', '-')} MB, rss {memory.get('rss_mb', '-')} MB, "
            f"budget {memory.get('budget_mb', '-')} MB; open files {process.get('open_files', '-')}"
        )
    return [printable(line)[:width] for line in lines]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without control characters: a stripe's ``last_error`` can quote what a server
    sent, and an escape sequence in it must not reach the operator's terminal."""
    return _CONTROL.sub("?", text)


def as_json(doc: Mapping[str, Any], table: list[Row], now_ns: int, stale: bool) -> str:
    return json.dumps(
        {
            "written_at": doc.get("written_at"),
            "report_age_s": round((now_ns - (_int(doc.get("written_at_ns")) or 0)) / 1e9, 3),
            "stale": stale,
            "healthy": doc.get("healthy") is True and not stale,
            "summary": doc.get("summary"),
            "stripes": {
                r.stripe: {
                    "state": r.state,
                    "msg_per_s": None if r.msg_per_s is None else round(r.msg_per_s, 3),
                    "last_data_age_s": (
                        None if r.last_data_age_s is None else round(r.last_data_age_s, 3)
                    ),
                    "rows_written": r.rows_written,
                    "files_committed": r.files_committed,
                    "quarantined_frames": r.quarantined_frames,
                    "journal_lag_frames": r.journal_lag_frames,
                    "last_error": r.last_error,
                }
                for r in table
            },
        },
        indent=2,
    )


def _next_report(
    path: Path, doc: dict[str, Any], wait_s: float, sleep: Callable[[float], None]
) -> dict[str, Any] | None:
    """The first report newer than ``doc`` within ``wait_s``, or None."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        sleep(0.1)
        try:
            newer = read(path)
        except StatusError:
            continue
        if newer["written_at_ns"] > doc["written_at_ns"]:
            return newer
    return None


def once(path: Path, *, json_out: bool, max_age_s: float, out: TextIO) -> int:
    """Print one table (or JSON document) with rates, then exit as ``health`` would."""
    try:
        first = read(path)
    except StatusError as exc:
        print(f"mlink-capture status: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    # A second report for the rates: the daemon writes one every health.interval.
    second = _next_report(path, first, min(max_age_s, 30.0), time.sleep)
    doc, previous = (second, first) if second is not None else (first, None)
    now_ns = time.time_ns()
    stale = second is None or (now_ns - doc["written_at_ns"]) / 1e9 > max_age_s
    table = rows(doc, previous, now_ns)
    if json_out:
        print(as_json(doc, table, now_ns, stale), file=out)
    else:
        print("\n".join(render(doc, table, now_ns, path=path)), file=out)
        if stale:
            print(f"\nno new report for {max_age_s:g} s: the daemon is stuck or gone", file=out)
    return EXIT_OK if doc.get("healthy") is True and not stale else EXIT_UNHEALTHY


def live(path: Path, *, refresh_s: float, out: TextIO, width: Callable[[], int]) -> int:
    """Redraw the table in place every ``refresh_s`` until SIGINT/SIGTERM; exit 0."""
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    previous: dict[str, Any] | None = None
    doc: dict[str, Any] | None = None
    out.write(HIDE_CURSOR + HOME + "\x1b[2J")
    try:
        while not stop:
            try:
                latest = read(path)
                if doc is None or latest["written_at_ns"] > doc["written_at_ns"]:
                    previous, doc = doc, latest
                elif latest["written_at_ns"] < doc["written_at_ns"]:  # a new daemon
                    previous, doc = None, latest
                now_ns = time.time_ns()
                lines = render(doc, rows(doc, previous, now_ns), now_ns, path=path, width=width())
            except StatusError as exc:
                lines = [f"waiting: {exc}"]
            lines.append("")
            lines.append("Ctrl-C to quit")
            out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in lines) + CLEAR_BELOW)
            out.flush()
            deadline = time.monotonic() + refresh_s
            while not stop and time.monotonic() < deadline:
                time.sleep(min(0.05, refresh_s))
    finally:
        out.write(SHOW_CURSOR)
        out.flush()
        for s, handler in old.items():
            signal.signal(s, handler)
    return EXIT_OK
