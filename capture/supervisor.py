"""Runs one worker per stripe in a nursery and restarts a worker that fails.

Connection trouble never reaches here: a worker reconnects by itself (transport errors ->
backoff, authentication errors -> long backoff).  What reaches the supervisor is unexpected:
a bug, a disk that stays broken.  Such a worker is restarted with backoff; if it fails more
than ``max_restarts`` times within ``restart_window`` seconds it is marked ``failed`` and left
down, so one stripe's failure never takes the others with it.  ``Cancelled`` and
``KeyboardInterrupt`` are never caught.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import trio

from capture.backoff import RestartLimit
from capture.config import SupervisionConfig
from capture.logs import get_logger, redact
from capture.states import StripeState
from capture.worker import StripeWorker

log = get_logger(component="supervisor")


class Supervisor:
    def __init__(
        self,
        workers: Sequence[StripeWorker],
        policy: SupervisionConfig,
        *,
        rng: random.Random | None = None,
        make_worker: Callable[[StripeWorker], StripeWorker] | None = None,
    ) -> None:
        self.workers = {w.stripe: w for w in workers}
        self.policy = policy
        self.rng = rng or random.Random()
        self._make_worker = make_worker or _same_worker
        self._stopping = False
        self._stop = trio.Event()
        self.failed: set[str] = set()

    def request_stop(self) -> None:
        self._stopping = True
        self._stop.set()  # ends a restart backoff at once: no replacement connects
        for w in self.workers.values():
            w.request_stop()

    def request_rotate(self) -> None:
        for w in self.workers.values():
            w.request_rotate()

    def retry_auth(self) -> None:
        """Stripes waiting out an auth backoff connect now (the credentials changed)."""
        for w in self.workers.values():
            w.retry_auth()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for stripe in self.workers:
                await nursery.start(self._supervise, stripe)
            task_status.started()

    async def _supervise(
        self, stripe: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        restarts = RestartLimit.of(self.policy, self.rng)
        first = True
        while True:
            worker = self.workers[stripe]
            try:
                if first:
                    first = False
                    await worker.run(task_status=task_status)
                else:
                    await worker.run()
                return  # stopped on request
            except Exception as exc:  # the supervisor is the catch-all boundary
                delay = restarts.failed(trio.current_time())
                error = redact(describe(exc))
                worker.stats.last_error = error
                if first:
                    first = False
                    task_status.started()
                if self._stopping:
                    log.error("worker failed while stopping", stripe=stripe, error=error)
                    return
                if delay is None:
                    worker.stats.state = StripeState.FAILED
                    self.failed.add(stripe)
                    log.critical(
                        "worker failed too often; giving up on this stripe",
                        stripe=stripe,
                        error=error,
                        failures=restarts.recent,
                        window_s=restarts.window,
                    )
                    return
                worker.stats.state = StripeState.BACKOFF
                log.error(
                    "worker failed; restarting",
                    stripe=stripe,
                    error=error,
                    delay=delay,
                    exc_info=exc,
                )
                with trio.move_on_after(delay):
                    await self._stop.wait()
                if self._stop.is_set():
                    worker.stats.state = StripeState.STOPPED
                    return
                replacement = self._make_worker(worker)
                replacement.stats = worker.stats
                replacement.stats.restarts += 1
                self.workers[stripe] = replacement


def describe(exc: BaseException) -> str:
    """``Type: message`` of the errors themselves, not of the nurseries that carried them."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(describe(e) for e in exc.exceptions))
    return f"{type(exc).__name__}: {exc}"


def _same_worker(w: StripeWorker) -> StripeWorker:
    return StripeWorker(
        w.cfg,
        w.stripe,
        clock=w.clock,
        credentials=w.credentials,
        run_id=w.run_id,
        rng=w.rng,
        on_commit=w.on_commit,
        stream_factory=w.stream_factory,
        offload=w.offload,
        in_flight=w.in_flight,
        decode_limiter=w.decode_limiter,
        journal_syncs_itself=w.journal_syncs_itself,
        journal_hold=w.journal_hold,
    )
