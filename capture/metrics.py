"""The Prometheus endpoint (``[metrics]``): the health document, as metrics.

The daemon already gathers everything an operator monitors into one document every
``health.interval`` (:mod:`capture.health`; with stripe-group processes the parent merges its
children's).  :class:`HealthCollector` keeps the latest one and turns it into metric families
when scraped, so the endpoint serves exactly what the health file says, in one process for the
whole daemon, and nothing on the hot path counts twice.  A scrape never touches the event
loop's state: the HTTP server is prometheus-client's, in its own thread, and reads the document
the loop handed over (one reference swap).

A document comes from our code, or from a child process's report (JSON read from a pipe):
:func:`families` takes any JSON shape and skips what is not a number where one is expected; it
never raises for a value.

Names follow Prometheus's conventions: ``mlink_capture_`` prefix, counters end in ``_total``,
units are base units in the name (``_bytes``, ``_seconds``).  A stripe's state is one series per
state with value 1 for the current one (``mlink_capture_stripe_state{stripe,state}``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from capture.config import MetricsConfig
from capture.logs import get_logger
from capture.states import GroupState, StripeState

log = get_logger(component="metrics")

PREFIX = "mlink_capture_"
MIB = 2**20

# Every state a stripe can show (capture.health), so that each has a series (0 or 1) and an
# alert on state="auth_failed" sees 0 rather than nothing.  A state not listed still gets its
# series while it is current.
S = StripeState
STATES: tuple[str, ...] = tuple(
    str(s) for s in (
        S.STARTING, S.CONNECTING, S.STREAMING, S.QUIET, S.BACKOFF, S.AUTH_FAILED, S.FAILED,
        S.STOPPING, S.STOPPED, S.UNRESPONSIVE, GroupState.RUNNING,
    )
)  # fmt: skip

# Stripe counters: health key -> (metric name without _total, help).
STRIPE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("messages", "messages", "Data messages received"),
    ("control_messages", "control_messages", "Control messages received (MLinkAdmin, acks, ...)"),
    ("heartbeats", "heartbeats", "Heartbeats received"),
    ("bytes", "received_bytes", "WebSocket payload bytes received"),
    ("snapshot_rows", "snapshot_rows", "Rows received as part of an initial snapshot"),
    ("rows_written", "rows_written", "Rows written to Parquet"),
    ("files_committed", "files_committed", "Parquet files committed (visible to readers)"),
    ("connects", "connects", "WebSocket connections established (more than 1: reconnects)"),
    ("restarts", "restarts", "Restarts of the stripe's worker (and of its group process)"),
    ("quarantined_frames", "quarantined_frames", "Frames quarantined (not a frame, not JSON)"),
    ("garbage_bytes", "garbage_bytes", "Bytes skipped between frames"),
    ("drift_rows", "drift_rows", "Rows with a field the dictionary does not know"),
    ("type_number_mismatches", "type_number_mismatches",
     "Frames whose type number differs from the dictionary's"),
    ("reader_wait_seconds", "reader_wait_seconds",
     "Time the socket reader waited for the writer (backpressure)"),
)  # fmt: skip

# Stripe gauges: health key -> (metric name, help).  A key no stripe has yields no family: the
# lake's upload lag appears here once the lake reports it (``upload_lag_seconds``).
STRIPE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("journal_lag_frames", "journal_lag_frames", "Frames received, not yet fsynced"),
    ("upload_lag_seconds", "upload_lag_seconds", "Age of the oldest committed file not uploaded"),
)

# Stripe times (ISO 8601 in the document) exported as the age at scrape time.
STRIPE_AGES: tuple[tuple[str, str, str], ...] = (
    ("last_data", "last_data_age_seconds", "Seconds since the last data message"),
    ("last_frame", "last_frame_age_seconds", "Seconds since the last frame of any kind"),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def families(doc: Mapping[str, Any], *, now: float) -> list[Metric]:
    """The metric families of one health document, ages computed at ``now`` (epoch seconds)."""
    out: list[Metric] = []
    stripes = {str(k): _mapping(v) for k, v in _mapping(doc.get("stripes")).items()}
    process = _mapping(doc.get("process"))

    info = InfoMetricFamily(PREFIX + "build", "The daemon's version", labels=())
    info.add_metric([], {"version": str(process.get("version", "unknown"))})
    out.append(info)

    written = _number(doc.get("written_at_ns"))
    if written is not None:
        g = GaugeMetricFamily(
            PREFIX + "report_timestamp_seconds", "When the daemon made the report served here"
        )
        g.add_metric([], written / 1e9)
        out.append(g)
        g = GaugeMetricFamily(
            PREFIX + "report_age_seconds",
            "Age of the report served here (a growing age: a stuck daemon)",
        )
        g.add_metric([], max(0.0, now - written / 1e9))
        out.append(g)
    healthy = doc.get("healthy")
    if isinstance(healthy, bool):
        g = GaugeMetricFamily(PREFIX + "healthy", "1 when every stripe is streaming or quiet")
        g.add_metric([], 1.0 if healthy else 0.0)
        out.append(g)
    started = _epoch(process.get("started_at"))
    if started is not None:
        g = GaugeMetricFamily(PREFIX + "start_time_seconds", "When the daemon started")
        g.add_metric([], started)
        out.append(g)
    open_files = _number(process.get("open_files"))
    if open_files is not None:
        g = GaugeMetricFamily(PREFIX + "open_files", "Parquet files being written")
        g.add_metric([], open_files)
        out.append(g)

    memory = _mapping(process.get("memory"))
    parts = GaugeMetricFamily(
        PREFIX + "memory_bytes",
        "Memory by part (the health file's process.memory; summed over stripe-group processes)",
        labels=["part"],
    )
    for key, value in memory.items():
        number = _number(value)
        if key.endswith("_mb") and key != "budget_mb" and number is not None:
            parts.add_metric([key[: -len("_mb")]], number * MIB)
    out.append(parts)
    budget = _number(memory.get("budget_mb"))
    if budget is not None:
        g = GaugeMetricFamily(PREFIX + "memory_budget_bytes", "output.memory_budget_mb")
        g.add_metric([], budget * MIB)
        out.append(g)

    state = GaugeMetricFamily(
        PREFIX + "stripe_state", "1 for the stripe's current state, else 0",
        labels=["stripe", "state"],
    )  # fmt: skip
    for code, view in stripes.items():
        current = str(view.get("state"))
        for name in (*STATES, *([current] if current not in STATES else [])):
            state.add_metric([code, name], 1.0 if name == current else 0.0)
    out.append(state)

    for key, name, text in STRIPE_COUNTERS:
        c = CounterMetricFamily(PREFIX + name, text, labels=["stripe"])
        out.append(_per_stripe(c, stripes, lambda v, k=key: _number(v.get(k))))
    reconnects = CounterMetricFamily(
        PREFIX + "reconnects",
        "Connections after the first one (connects - 1): the stripe lost its connection",
        labels=["stripe"],
    )
    out.append(_per_stripe(reconnects, stripes, _reconnects))
    for key, name, text in STRIPE_GAUGES:
        if any(key in view for view in stripes.values()):
            g = GaugeMetricFamily(PREFIX + name, text, labels=["stripe"])
            out.append(_per_stripe(g, stripes, lambda v, k=key: _number(v.get(k))))
    for key, name, text in STRIPE_AGES:
        g = GaugeMetricFamily(PREFIX + name, text, labels=["stripe"])
        out.append(_per_stripe(g, stripes, lambda v, k=key: _age(now, _epoch(v.get(k)))))

    groups = process.get("processes")
    if isinstance(groups, list):
        c = CounterMetricFamily(
            PREFIX + "group_restarts", "Restarts of a stripe-group process", labels=["group"]
        )
        up = GaugeMetricFamily(
            PREFIX + "group_running", "1 while a stripe-group process runs", labels=["group"]
        )
        for group in groups:
            group = _mapping(group)
            index = group.get("index")
            if isinstance(index, int) and not isinstance(index, bool):
                restarts = _number(group.get("restarts"))
                if restarts is not None:
                    c.add_metric([str(index)], restarts)
                running = group.get("state") == GroupState.RUNNING
                up.add_metric([str(index)], 1.0 if running else 0.0)
        out.extend((c, up))
    return out


class HealthCollector(Collector):
    """Serves the latest health document handed to :meth:`update`."""

    def __init__(self) -> None:
        self._doc: Mapping[str, Any] | None = None

    def update(self, doc: Mapping[str, Any]) -> None:
        self._doc = doc  # one reference: the scraping thread sees the old or the new document

    def collect(self) -> Iterator[Metric]:
        doc = self._doc
        if doc is None:
            return
        try:
            found = families(doc, now=time.time())
        except Exception as exc:  # noqa: BLE001 - a bug here must not fail every scrape
            log.error("cannot render metrics", error=repr(exc))
            return
        yield from found


class MetricsServer:
    """The HTTP endpoint (``GET /metrics``) in a thread of this process."""

    def __init__(self, cfg: MetricsConfig, collector: HealthCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.cfg = cfg
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self) -> str:
        """Listen; the URL it serves.  OSError if the address cannot be bound."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(
            self.cfg.port, addr=self.cfg.address, registry=self.registry
        )
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{port}/metrics"
        return self.url

    def close(self) -> None:
        """Stop listening (blocks for up to half a second: the server's poll interval)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def start(cfg: MetricsConfig, collector: HealthCollector) -> MetricsServer | None:
    """The endpoint if enabled and it could listen; a bind failure is logged, not raised: the
    capture goes on without metrics (the health file still reports)."""
    if not cfg.enabled:
        return None
    server = MetricsServer(cfg, collector)
    try:
        url = server.start()
    except OSError as exc:
        log.error(
            "cannot serve metrics; capturing without them",
            address=cfg.address, port=cfg.port, error=exc.strerror or str(exc),
        )  # fmt: skip
        return None
    log.info("serving metrics", url=url)
    return server


def _per_stripe(family: Any, stripes: Mapping[str, Mapping[str, Any]], value: Any) -> Any:
    """One sample per stripe that has a value (``value(view)`` not None)."""
    for code, view in stripes.items():
        number = value(view)
        if number is not None:
            family.add_metric([code], number)
    return family


def _reconnects(view: Mapping[str, Any]) -> float | None:
    number = _number(view.get("connects"))
    return None if number is None else max(0.0, number - 1)


def _age(now: float, when: float | None) -> float | None:
    return None if when is None else max(0.0, now - when)
