"""The health file: a JSON snapshot, atomically replaced every few seconds, and its reader.

Schema (``"schema": 1``; documented in the README):

* ``written_at`` (ISO 8601 UTC), ``written_at_ns``, ``healthy`` (bool), ``summary`` (one line);
* ``process``: ``version``, ``pid``, ``started_at``, ``uptime_s``, ``data_root``, ``open_files``,
  ``journal_lag_frames``, ``memory`` (``rss_mb``, ``pss_mb``: the proportional set size, which
  counts pages shared with other processes a share each, ``peak_rss_mb``, ``arrow_mb``: Arrow's
  pool, ``batching_mb``: frames received and waiting for their batch to fill,
  ``journal_queue_mb``: received messages not yet written to the journal, ``in_flight_mb``
  and its peak: frames handed to writers and not yet decoded, ``row_group_buffers_mb``,
  ``open_footers_mb``: row-group metadata of the open files, ``budget_mb``; see
  :mod:`capture.memory`);
* ``process.processes`` (only with ``supervision.processes`` > 1): per child process its
  ``index``, ``pid``, ``stripes``, ``state`` (starting, running, backoff, failed, stopped),
  ``restarts``, ``last_exit``, ``forked`` (from the fork server, else exec'd) and memory;
  ``memory`` is then summed over the processes (``pss_mb`` is the sum that means something:
  RSS counts the pages the processes share once per process); ``process.fork_server``:
  its ``pid`` and why it was ``lost`` (null while it serves), or null (exec only);
* ``stripes``: per stripe code, ``state`` (starting, connecting, streaming, quiet, stale, backoff,
  auth_failed, paused: the lake's disk budget is reached, failed, stopping, stopped; with
  stripe-group processes also ``unresponsive``: its process stopped reporting) and the
  counters of :class:`capture.worker.StripeStats`;
* ``lake`` (only with ``[lake]``): see capture.lake.pipeline.Lake.health; with stripe-group
  processes summed over them (:func:`merge_lake`).

A stripe is *quiet* when it is connected but no data message arrived for ``quiet_after``
seconds (heartbeats only): the connection is fine, the market may be closed.  It is *stale*
(unhealthy) when neither data nor a heartbeat arrived for ``supervision.stale_after`` seconds;
the reader then reconnects, and a reconnect is *connecting* until data or a heartbeat arrives.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from capture import __version__
from capture.logs import get_logger, redact
from capture.states import OK_STATES, StripeState
from capture.stats import StripeStats

log = get_logger(component="health")

# The lake's states (capture.lake.pipeline), worst last: the merged state is the worst.
LAKE_STATES = ("ok", "near_budget", "over_budget", "conflict")


def merge_lake(parts: Iterable[object]) -> dict[str, Any]:
    """The ``lake`` object of stripe-group processes' reports, as one: counts and bytes
    added up, the worst state, the oldest last commit, a pause or error of any of them."""
    out: dict[str, Any] = {"state": "ok", "processes": 0}
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        out["processes"] += 1
        for key, value in part.items():
            if key == "state":
                rank = LAKE_STATES.index(value) if value in LAKE_STATES else len(LAKE_STATES)
                if rank > LAKE_STATES.index(out["state"]) and rank < len(LAKE_STATES):
                    out["state"] = value
            elif key == "last_commit_age_s":
                if value is not None and (out.get(key) is None or value > out[key]):
                    out[key] = value
                out.setdefault(key, None)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
            elif value is not None or key not in out:
                out[key] = value if out.get(key) is None else out[key]
    return out


def stripe_view(
    stats: StripeStats, now_ns: int, quiet_after_s: float, stale_after_s: float | None = None
) -> dict[str, Any]:
    view = stats.snapshot()
    if stats.state == StripeState.STREAMING:
        alive = stats.last_alive_ns or stats.connected_since_ns or now_ns
        since = stats.last_data_ns or stats.connected_since_ns or now_ns
        if stale_after_s is not None and now_ns - alive > stale_after_s * 1e9:
            # neither data nor heartbeat: the reader will reconnect
            view["state"] = str(StripeState.STALE)
        elif now_ns - since > quiet_after_s * 1e9:
            view["state"] = str(StripeState.QUIET)
    if view["last_error"] is not None:
        view["last_error"] = redact(view["last_error"])
    return view


def build(
    stats: Iterable[StripeStats],
    *,
    now_ns: int,
    started_ns: int,
    data_root: Path,
    quiet_after_s: float,
    open_files: int,
    memory: Mapping[str, Any] | None = None,
    stale_after_s: float | None = None,
) -> dict[str, Any]:
    return assemble(
        {s.stripe: stripe_view(s, now_ns, quiet_after_s, stale_after_s) for s in stats},
        now_ns=now_ns,
        started_ns=started_ns,
        data_root=data_root,
        open_files=open_files,
        memory=memory,
    )


def assemble(
    stripes: Mapping[str, Mapping[str, Any]],
    *,
    now_ns: int,
    started_ns: int,
    data_root: Path,
    open_files: int,
    memory: Mapping[str, Any] | None = None,
    processes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The document from per-stripe views (this process's, or its children's: capture.groups)."""
    states = [str(v.get("state")) for v in stripes.values()]
    healthy = bool(states) and all(s in OK_STATES for s in states)
    counts: dict[str, int] = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    rows = sum(v.get("rows_written") or 0 for v in stripes.values())
    return {
        "schema": 1,
        "written_at": _iso(now_ns),
        "written_at_ns": now_ns,
        "healthy": healthy,
        "summary": f"{len(states)} stripes: {summary}; {rows} rows written",
        "process": {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": _iso(started_ns),
            "uptime_s": round((now_ns - started_ns) / 1e9, 3),
            "data_root": str(data_root),
            "open_files": open_files,
            # Frames received but not yet fsynced in the journals (all stripes).
            "journal_lag_frames": sum(v.get("journal_lag_frames") or 0 for v in stripes.values()),
            "memory": dict(memory or {}),
            **({"processes": processes} if processes is not None else {}),
        },
        "stripes": dict(stripes),
    }


def file_mode(data_file_mode: int) -> int:
    """The health file's mode: the data files' (``output.file_mode``), and always readable by
    the group, which monitors it (``status``, ``health``, an exporter); it holds no secret and no
    market data."""
    return data_file_mode | 0o040


def write_atomic(path: Path, doc: Mapping[str, Any], mode: int = 0o640) -> None:
    """Write to a temporary file in the same directory, then rename over the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(doc, indent=2, sort_keys=False).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(path: Path, doc: Mapping[str, Any], mode: int = 0o640) -> None:
    """:func:`write_atomic`, and an error log instead of an exception (a full disk must not stop
    the daemon that reports it)."""
    try:
        write_atomic(path, doc, mode)
    except OSError as exc:
        log.error("cannot write the health file", path=str(path), error=exc.strerror)


def check(
    path: Path, *, max_age_s: float, now_ns: int, require_data: bool = False
) -> tuple[int, str]:
    """Exit code and one line for ``mlink-capture health``: 0 healthy, 1 unhealthy, 2 unknown."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 2, f"no health file at {path}"
    except (OSError, ValueError) as exc:
        return 2, f"health file unreadable: {exc}"
    written = doc.get("written_at_ns")
    if not isinstance(written, int):
        return 2, "health file has no written_at_ns"
    age = (now_ns - written) / 1e9
    if age > max_age_s:
        return 1, f"health file is {age:.0f} s old (max {max_age_s:g} s): daemon stuck or gone"
    bad = {
        code: v.get("state")
        for code, v in doc.get("stripes", {}).items()
        if v.get("state") not in ({StripeState.STREAMING} if require_data else OK_STATES)
    }
    if bad or not doc.get("stripes"):
        detail = ", ".join(f"{k}={v}" for k, v in sorted(bad.items())) or "no stripes"
        return 1, f"unhealthy: {detail}"
    return 0, f"healthy: {doc.get('summary', '')}"


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="milliseconds")
