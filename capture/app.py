"""Composition root: config, logging, signals, supervisor, health ticker, sd_notify.

Nothing else knows about all of them.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from capture import health
from capture.auth import make_provider
from capture.clock import SystemClock, WallClock
from capture.config import Config
from capture.logs import get_logger
from capture.memory import (
    HeapTrimmer,
    InFlightBudget,
    arrow_allocated_bytes,
    arrow_pool_name,
    decode_slots,
    peak_rss_bytes,
    pss_bytes,
    rss_bytes,
)
from capture.sdnotify import Notifier
from capture.sink import CommittedFile, cleanup_in_progress
from capture.supervisor import Supervisor
from capture.transport import StreamFactory
from capture.worker import Offload, StripeWorker, in_flight_limit, new_session_id

if TYPE_CHECKING:
    from capture.lake.pipeline import Lake
    from capture.metrics import HealthCollector

log = get_logger(component="app")

# malloc_trim: how often the heap's free pages go back (capture.memory).  At full rate ~60 MB/s
# of frames and Arrow buffers pass through glibc's heap; every 0.25 s rather than every second
# took 10-15 MB off the soak's RSS at no measurable cost (bench/README.md).
TRIM_INTERVAL_S = 0.25
EXIT_OK = 0
EXIT_ALL_FAILED = 1


@dataclass
class Daemon:
    """The running daemon; tests and the demo drive it through :meth:`stop`."""

    cfg: Config
    clock: WallClock = field(default_factory=SystemClock)
    notifier: Notifier = field(default_factory=Notifier)
    environ: dict[str, str] | None = None
    install_signals: bool = True
    stream_factory: StreamFactory | None = None  # tests: in-memory streams on the mock clock
    offload: Offload | None = None  # tests on the mock clock: blocking work inline, no threads
    processes: int = 1  # stripe-group processes sharing the host's cores (capture.groups)

    def __post_init__(self) -> None:
        self._stop = trio.Event()
        self.started_ns = self.clock.now_ns()
        self.run_id = new_session_id(self.started_ns)
        self.files_committed = 0  # a count, not a list: the daemon runs for months
        # One provider for every stripe (auth.method): a Cognito login is shared, not repeated.
        credentials = self.credentials = make_provider(self.cfg, self.environ, clock=self.clock)
        # Memory bounds for the process, not per stripe (capture.memory).
        self.in_flight = InFlightBudget(in_flight_limit(self.cfg))
        decode_limiter = trio.CapacityLimiter(decode_slots(self.processes))
        self.lake: Lake | None = None
        if self.cfg.lake is not None:  # imports boto3 and pyiceberg only then
            from capture.lake.pipeline import Lake

            self.lake = Lake(self.cfg, self.cfg.source.stripes, self.environ)
        self.workers = [
            StripeWorker(
                self.cfg,
                stripe,
                clock=self.clock,
                credentials=credentials,
                run_id=self.run_id,
                on_commit=self._on_commit,
                stream_factory=self.stream_factory,
                offload=self.offload,
                in_flight=self.in_flight,
                decode_limiter=decode_limiter,
                journal_hold=self.lake,
            )
            for stripe in self.cfg.source.stripes
        ]
        self.supervisor = Supervisor(self.workers, self.cfg.supervision)
        # The metrics endpoint's view of the health document, when [metrics] is enabled
        # (prometheus_client is imported only then: start-up time).
        self.metrics: HealthCollector | None = None
        self.metrics_url: str | None = None

    def stop(self) -> None:
        self._stop.set()

    def _on_commit(self, committed: CommittedFile) -> None:
        self.files_committed += 1

    def rotate(self) -> None:
        self.supervisor.request_rotate()

    def reload(self) -> None:
        """SIGHUP: commit every open file now; forget cached credentials and retry the stripes
        whose credentials were refused, at once rather than after their auth backoff."""
        self.rotate()
        self.credentials.reload()
        self.supervisor.retry_auth()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        cfg = self.cfg
        offload = self.offload or trio.to_thread.run_sync
        # Only this daemon's stripes: instances for other stripe groups may share the root
        # (systemd/mlink-capture@.service) and be writing their own in-progress files now.
        moved = await offload(cleanup_in_progress, cfg.output.root, cfg.source.stripes)
        for path in moved:
            log.warning("moved an unfinished file left by an earlier run", path=str(path))
        log.info(
            "starting",
            stripes=list(cfg.source.stripes),
            message_types=list(cfg.source.message_types),
            root=str(cfg.output.root),
            run_id=self.run_id,
        )
        server = None
        if cfg.metrics.enabled:
            from capture import metrics

            self.metrics = metrics.HealthCollector()
            server = metrics.start(cfg.metrics, self.metrics)
            self.metrics_url = server.url if server is not None else None
        try:
            return await self._run(task_status)
        finally:
            if server is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(server.close)

    async def _run(self, task_status: trio.TaskStatus[None]) -> int:
        cfg = self.cfg
        async with trio.open_nursery() as outer:
            if self.install_signals:
                outer.start_soon(self._signals)
            if cfg.health.path is not None or self.metrics_url is not None:
                outer.start_soon(self._health_loop)
            if self.notifier.watchdog_interval:
                outer.start_soon(self._watchdog, self.notifier.watchdog_interval)
            if self.lake is not None:
                outer.start_soon(self.lake.run)
            trimmer = HeapTrimmer()
            if trimmer.available and self.offload is None:  # not in tests on the mock clock
                outer.start_soon(self._trim_heap, trimmer)
            async with trio.open_nursery() as workers:
                workers.start_soon(self._stop_watch, workers.cancel_scope)
                await workers.start(self._supervise, workers.cancel_scope)
                outer.start_soon(self._announce_ready)
                task_status.started()
            self.notifier.stopping(self._summary())
            if self.lake is not None:  # what the workers committed last, within the grace
                with trio.move_on_after(cfg.supervision.shutdown_grace):
                    await self.lake.flush()
            self._write_health()
            outer.cancel_scope.cancel()
        if self.supervisor.failed and len(self.supervisor.failed) == len(self.workers):
            log.critical("every stripe failed; exiting")
            return EXIT_ALL_FAILED
        log.info("stopped", files_committed=self.files_committed)
        return EXIT_OK

    async def _supervise(
        self,
        workers_scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # The supervisor returns once every worker has stopped (or failed for good); then the
        # stop watch has nothing left to guard.
        await self.supervisor.run(task_status=task_status)
        workers_scope.cancel()

    async def _stop_watch(self, workers_scope: trio.CancelScope) -> None:
        await self._stop.wait()
        log.info("stopping: closing streams and committing files")
        self.notifier.stopping("closing streams, committing files")
        self.supervisor.request_stop()
        await trio.sleep(self.cfg.supervision.shutdown_grace)
        log.error(
            "shutdown grace expired; unfinished files stay hidden for recovery",
            grace_s=self.cfg.supervision.shutdown_grace,
        )
        workers_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: rotating files now, reloading credentials")
                    self.reload()
                elif self._stop.is_set():
                    log.warning("second stop signal: not waiting for the grace period")
                    raise KeyboardInterrupt
                else:
                    log.info("stop signal", signal=signal.Signals(signum).name)
                    self.stop()

    async def _announce_ready(self) -> None:
        """READY=1, again until the receiver had room for it (sd_notify never waits)."""
        while self.notifier.enabled and not self.notifier.ready(self._summary()):  # noqa: ASYNC110 - polls the receiver's room
            await trio.sleep(1)

    async def _health_loop(self) -> None:
        while True:
            doc = self.health_doc()
            self._write_health(doc)
            self.notifier.status(str(doc["summary"]))
            await trio.sleep(self.cfg.health.interval)

    async def _trim_heap(self, trimmer: HeapTrimmer) -> None:
        while True:
            await trio.sleep(TRIM_INTERVAL_S)
            await trio.to_thread.run_sync(trimmer.trim)

    async def _watchdog(self, interval: float) -> None:
        # Only pings while the event loop turns: a wedged loop stops the pings and systemd
        # restarts us.
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    def health_doc(self) -> dict[str, object]:
        doc = self._health_doc()
        if self.lake is not None:
            doc["lake"] = self.lake.health()
        return doc

    def _health_doc(self) -> dict[str, object]:
        doc = health.build(
            (w.stats for w in self.supervisor.workers.values()),
            now_ns=self.clock.now_ns(),
            started_ns=self.started_ns,
            data_root=self.cfg.output.root,
            quiet_after_s=self.cfg.health.quiet_after,
            stale_after_s=self.cfg.supervision.stale_after,
            open_files=sum(
                w.sink.open_file_count for w in self.supervisor.workers.values() if w.sink
            ),
            memory=self._memory(),
        )
        doc["process"]["metrics_url"] = self.metrics_url
        return doc

    def _memory(self) -> dict[str, float | str | None]:
        workers = self.supervisor.workers.values()
        return {
            "rss_mb": _mb(rss_bytes()),
            "pss_mb": _mb(pss_bytes()),
            "peak_rss_mb": _mb(peak_rss_bytes()),
            "arrow_mb": _mb(arrow_allocated_bytes()),
            "batching_mb": _mb(sum(w.batching_bytes for w in workers)),
            "journal_queue_mb": _mb(sum(w.journal_pending_bytes for w in workers)),
            "in_flight_mb": _mb(self.in_flight.used),
            "in_flight_peak_mb": _mb(self.in_flight.peak),
            "row_group_buffers_mb": _mb(sum(w.sink.buffered_bytes for w in workers if w.sink)),
            "open_footers_mb": _mb(sum(w.sink.open_footer_bytes for w in workers if w.sink)),
            "budget_mb": self.cfg.output.memory_budget_mb,
            "arrow_pool": arrow_pool_name(),
        }

    def _write_health(self, doc: dict[str, object] | None = None) -> None:
        """The health file, and the same document to the metrics endpoint."""
        path = self.cfg.health.path
        if path is None and self.metrics_url is None:
            return
        doc = doc if doc is not None else self.health_doc()
        if path is not None:
            health.publish(path, doc, health.file_mode(self.cfg.output.file_mode))
        if self.metrics is not None:
            self.metrics.update(doc)

    def _summary(self) -> str:
        doc = self.health_doc()
        return str(doc["summary"])


def _mb(n: int | None) -> float | None:
    """Bytes as MiB with one decimal, for the health file (None: not known here)."""
    return None if n is None else round(n / 2**20, 1)
