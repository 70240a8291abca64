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

from capture.config import SupervisionConfig
from capture.logs import get_logger, redact
from capture.restart import Ending, Failure, RestartLimit, keep_running
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
        self._stop = trio.Event()
        self.failed: set[str] = set()

    def request_stop(self) -> None:
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
        """Keep the stripe's worker running (capture.restart).  Started once its first worker
        is live, or has failed: one stripe's trouble never holds up the others'."""
        started = False

        def mark_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        async def run_once() -> Failure | None:
            worker = self.workers[stripe]
            try:
                if started:
                    await worker.run()
                else:
                    await worker.run(task_status=_Started(mark_started))
                return None  # stopped on request
            # The supervisor is the catch-all boundary (logged by backing_off or at the end).
            except Exception as exc:  # noqa: BLE001
                error = redact(describe(exc))
                worker.stats.last_error = error
                return Failure(error, exc)
            finally:
                mark_started()

        def backing_off(failure: Failure, delay: float) -> None:
            self.workers[stripe].stats.state = StripeState.BACKOFF
            log.error(
                "worker failed; restarting",
                stripe=stripe,
                error=failure.error,
                delay=delay,
                exc_info=failure.exc,
            )

        def restarting() -> None:
            worker = self.workers[stripe]
            replacement = self._make_worker(worker)
            replacement.stats = worker.stats
            replacement.stats.restarts += 1
            self.workers[stripe] = replacement

        limit = RestartLimit.of(self.policy, self.rng)
        outcome = await keep_running(
            run_once, limit, self._stop, backing_off=backing_off, restarting=restarting
        )
        stats = self.workers[stripe].stats
        if outcome.ending is Ending.GAVE_UP:
            stats.state = StripeState.FAILED
            self.failed.add(stripe)
            log.critical(
                "worker failed too often; giving up on this stripe",
                stripe=stripe,
                error=outcome.failure.error if outcome.failure else None,
                failures=limit.recent,
                window_s=limit.window,
            )
        elif outcome.ending is Ending.STOPPED and outcome.waited:
            stats.state = StripeState.STOPPED  # while waiting out the backoff
        elif outcome.failure is not None:
            log.error("worker failed while stopping", stripe=stripe, error=outcome.failure.error)


class _Started:
    """The task status a stripe's first worker reports to: the supervisor's own, once."""

    def __init__(self, started: Callable[[], None]) -> None:
        self._started = started

    def started(self, value: None = None) -> None:
        self._started()


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
