"""One process's capture: its stripes' workers under the supervisor, the lake, the memory
bounds, and the health document of them all.  It runs as the engine of the process's service
(capture.service: signals, stop deadline, watchdog, sd_notify, health file, metrics), like the
stripe-group parent (capture.groups) when the stripes run in several processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
from capture.service import Service
from capture.sink import CommittedFile
from capture.supervisor import Supervisor
from capture.transport import StreamFactory
from capture.worker import Offload, StripeWorker, in_flight_limit, new_session_id

if TYPE_CHECKING:
    from capture.lake.pipeline import Lake

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
        self._workers_scope: trio.CancelScope | None = None
        self.service = Service(
            self.cfg,
            self.notifier,
            install_signals=self.install_signals,
            grace=self.cfg.supervision.shutdown_grace,
        )

    def stop(self) -> None:
        self.service.stop()

    def _on_commit(self, committed: CommittedFile) -> None:
        self.files_committed += 1

    def rotate(self) -> None:
        self.supervisor.request_rotate()

    def reload(self) -> None:
        """SIGHUP: commit every open file now; forget cached credentials and retry the stripes
        whose credentials were refused, at once rather than after their auth backoff."""
        log.info("SIGHUP: rotating files now, reloading credentials")
        self.rotate()
        self.credentials.reload()
        self.supervisor.retry_auth()

    @property
    def metrics_url(self) -> str | None:
        return self.service.metrics_url

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """The daemon in the process's service (capture.service): signals, sd_notify, health."""
        return await self.service.run(self, task_status=task_status)

    # -- the engine (capture.service.Engine) -------------------------------------------------

    async def work(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        cfg = self.cfg
        # Each stripe's worker moves its own unfinished files aside when it starts, before its
        # sink opens any (capture.stripe_recovery): only this daemon's stripes, as instances
        # for other stripe groups may share the root and be writing theirs now.
        log.info(
            "starting",
            stripes=list(cfg.source.stripes),
            message_types=list(cfg.source.message_types),
            root=str(cfg.output.root),
            run_id=self.run_id,
        )
        async with trio.open_nursery() as outer:
            if self.lake is not None:
                outer.start_soon(self.lake.run)
            trimmer = HeapTrimmer()
            if trimmer.available and self.offload is None:  # not in tests on the mock clock
                outer.start_soon(self._trim_heap, trimmer)
            async with trio.open_nursery() as workers:
                self._workers_scope = workers.cancel_scope
                await workers.start(self._supervise, workers.cancel_scope)
                task_status.started()
            self._workers_scope = None
            if self.lake is not None:  # what the workers committed last, within the grace
                with trio.move_on_after(cfg.supervision.shutdown_grace):
                    await self.lake.flush()
            outer.cancel_scope.cancel()
        if self.supervisor.failed and len(self.supervisor.failed) == len(self.workers):
            log.critical("every stripe failed; exiting")
            return EXIT_ALL_FAILED
        log.info("stopped", files_committed=self.files_committed)
        return EXIT_OK

    def ready(self) -> bool:
        return True  # once work() has started: every stripe's worker is up (or failed)

    async def begin_stop(self) -> None:
        log.info("stopping: closing streams and committing files")
        self.supervisor.request_stop()

    async def stop_now(self) -> None:
        raise KeyboardInterrupt

    def force(self) -> None:
        if self._workers_scope is None:
            return  # the workers are done (the lake's last flush has its own deadline)
        log.error(
            "shutdown grace expired; unfinished files stay hidden for recovery",
            grace_s=self.cfg.supervision.shutdown_grace,
        )
        self._workers_scope.cancel()

    async def _supervise(
        self,
        workers_scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # The supervisor returns once every worker has stopped (or failed for good); then the
        # grace deadline has nothing left to guard.
        await self.supervisor.run(task_status=task_status)
        workers_scope.cancel()

    async def _trim_heap(self, trimmer: HeapTrimmer) -> None:
        while True:
            await trio.sleep(TRIM_INTERVAL_S)
            await trio.to_thread.run_sync(trimmer.trim)

    def health_doc(self) -> dict[str, Any]:
        doc = self._health_doc()
        if self.lake is not None:
            doc["lake"] = self.lake.health()
        return doc

    def _health_doc(self) -> dict[str, Any]:
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


def _mb(n: int | None) -> float | None:
    """Bytes as MiB with one decimal, for the health file (None: not known here)."""
    return None if n is None else round(n / 2**20, 1)
