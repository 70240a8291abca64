"""What every daemon process does for its operator, whatever it runs: the one place that wires
signals, the stop deadline, the systemd watchdog, sd_notify, the health file and the metrics
endpoint around an :class:`Engine`.

Two engines run under it: :class:`capture.app.Daemon` (the stripes, in this process) and
:class:`capture.groups.Parent` (stripe groups in child processes).  The service

* serves ``[metrics]`` (when enabled) for as long as the engine runs;
* on SIGTERM/SIGINT asks the engine to stop (``STOPPING``), and on a second one to stop now;
  on SIGHUP asks it to reload; a stop requested any other way (:meth:`Service.stop`) is the
  same as the first signal;
* once a stop began, gives the engine its ``grace`` seconds, then calls ``force`` (again every
  ``force_every`` seconds while it runs);
* pings the systemd watchdog while the event loop turns;
* every ``health.interval`` publishes the engine's health document (file and metrics) and sends
  ``STATUS``, or ``READY`` once the engine says it is ready (again until the receiver had room);
* when the engine returns: ``STOPPING`` with the summary and a last health document.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, Protocol

import trio

from capture import health
from capture.config import Config
from capture.logs import get_logger
from capture.sdnotify import Notifier

if TYPE_CHECKING:
    from capture.metrics import HealthCollector

log = get_logger(component="service")


class Engine(Protocol):
    """What the service runs (module docstring)."""

    async def work(self, *, task_status: trio.TaskStatus[None]) -> int:
        """Run until stopped (started: what runs is up); the exit status."""

    def health_doc(self) -> dict[str, Any]: ...

    def ready(self) -> bool:
        """READY may be announced."""

    async def begin_stop(self) -> None:
        """Stop gracefully (the first stop signal)."""

    async def stop_now(self) -> None:
        """Stop without the grace period (the second stop signal)."""

    def reload(self) -> None:
        """SIGHUP."""

    def force(self) -> None:
        """The stop's grace period is over."""


class Service:
    def __init__(
        self,
        cfg: Config,
        notifier: Notifier,
        *,
        install_signals: bool = True,
        grace: float,
        force_every: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.notifier = notifier
        self.install_signals = install_signals
        self.grace = grace
        self.force_every = force_every
        self._stop = trio.Event()
        self._started = trio.Event()  # the engine's work is up
        self._ready = False
        # The metrics endpoint's view of the health document, when [metrics] is enabled
        # (prometheus_client is imported only then: start-up time).
        self.metrics: HealthCollector | None = None
        self.metrics_url: str | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    async def run(
        self, engine: Engine, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> int:
        server = None
        if self.cfg.metrics.enabled:
            from capture import metrics

            self.metrics = metrics.HealthCollector()
            server = metrics.start(self.cfg.metrics, self.metrics)
            self.metrics_url = server.url if server is not None else None
        try:
            return await self._run(engine, task_status)
        finally:
            if server is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(server.close)

    async def _run(self, engine: Engine, task_status: trio.TaskStatus[None]) -> int:
        async with trio.open_nursery() as outer:
            if self.install_signals:
                outer.start_soon(self._signals, engine)
            outer.start_soon(self._stop_watch, engine)
            if self.notifier.watchdog_interval:
                outer.start_soon(self._watchdog, self.notifier.watchdog_interval)
            if self.cfg.health.path is not None or self.metrics is not None or (
                self.notifier.enabled
            ):
                outer.start_soon(self._ticker, engine)
            code = await engine.work(task_status=_Started(self._started, task_status))
            doc = engine.health_doc()
            self.notifier.stopping(str(doc["summary"]))
            self.publish(doc)
            outer.cancel_scope.cancel()
        return code

    async def _ticker(self, engine: Engine) -> None:
        """Every ``health.interval``: publish, then READY (once the engine started and is
        ready; again every second until the receiver had room) or STATUS."""
        interval = self.cfg.health.interval
        while True:
            wait = interval
            try:
                doc = engine.health_doc()
                self.publish(doc)
                summary = str(doc["summary"])
                if (
                    not self._ready
                    and not self.stopping
                    and self._started.is_set()
                    and engine.ready()
                ):
                    # (again soon if the receiver had no room: sd_notify never waits)
                    self._ready = self.notifier.ready(summary) or not self.notifier.enabled
                    wait = interval if self._ready else min(interval, 1.0)
                else:
                    self.notifier.status(summary)
            except Exception as exc:  # a bug here must not stop the capture
                log.error("health report failed", error=repr(exc), exc_info=exc)
            if self._started.is_set():
                await trio.sleep(wait)
            else:  # READY as soon as the engine is up, not an interval later
                with trio.move_on_after(wait):
                    await self._started.wait()

    def publish(self, doc: dict[str, Any]) -> None:
        """The health file (``health.path``), and the same document to the metrics endpoint."""
        path = self.cfg.health.path
        if path is not None:
            health.publish(path, doc, health.file_mode(self.cfg.output.file_mode))
        if self.metrics is not None:
            self.metrics.update(doc)

    async def _stop_watch(self, engine: Engine) -> None:
        await self._stop.wait()
        self.notifier.stopping("stopping: closing streams, committing files")
        await engine.begin_stop()
        await trio.sleep(self.grace)
        while True:
            engine.force()
            if self.force_every is None:
                return
            await trio.sleep(self.force_every)

    async def _signals(self, engine: Engine) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    engine.reload()
                elif self.stopping:
                    log.warning("second stop signal: not waiting for the grace period")
                    await engine.stop_now()
                else:
                    log.info("stop signal", signal=signal.Signals(signum).name)
                    self.stop()

    async def _watchdog(self, interval: float) -> None:
        # Only pings while the event loop turns: a wedged loop stops the pings and systemd
        # restarts us.
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)


class _Started:
    """The task status the engine reports to: the service's event, then the caller's."""

    def __init__(self, event: trio.Event, outer: trio.TaskStatus[None]) -> None:
        self._event = event
        self._outer = outer

    def started(self, value: None = None) -> None:
        self._event.set()
        self._outer.started()
