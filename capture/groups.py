"""Stripe groups in child processes: ``supervision.processes`` > 1.

A process has one GIL.  At full rate one process's event loop holds it most of the time
(bench/README.md, "Where the time goes"), so with many stripes the decode threads wait for it
while a core idles.  With ``processes = N`` the daemon splits its stripes into N groups (round
robin) and runs each group in a child process: an ordinary daemon for those stripes (its own
event loop, workers, journals and 1/N of the memory budget) on the same data root.  Stripes
never share a file or a journal, and a starting child recovers only its own stripes' unfinished
files.

The parent captures nothing.  It imports what the children run before it starts, only to fork
them from a fork server that shares those pages with them all (capture.forkserver; or it
execs them, and then does not import pyarrow).  Between it and each child:

* the child's **stdin** carries, first, the configuration the parent read and validated at
  start (a restarted child never reads a file that changed since), then commands: ``stop``
  (gracefully), ``now`` (stop without the grace period: the operator's second signal).  End of
  file, i.e. the parent is gone, means ``stop``;
* the child's **stdout** carries its health document, one JSON line every ``health.interval``,
  written from its event loop: the parent's proof that the child's loop turns (no disk needed).

The parent

* restarts a child that dies unexpectedly (a crash, SIGKILL, the OOM killer) or whose reports
  stop for ``UNRESPONSIVE_AFTER_S`` (a wedged event loop: killed first), with the supervision
  backoff and restart-intensity limit; a child that exits :data:`CHILD_ALL_FAILED` (every stripe
  of its group failed for good) or :data:`CHILD_BAD_CONFIG` stays down;
* passes SIGHUP (rotate now) on to the children that are running;
* merges the reports into the health file at ``health.path`` (``process.processes`` lists the
  children) and speaks sd_notify for all: READY once every child has reported, WATCHDOG while
  its own loop turns, STATUS with the merged summary, STOPPING.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from capture import health
from capture.config import Config, group_count
from capture.forkserver import ForkedProcess, ForkServer, ForkServerError
from capture.logs import get_logger
from capture.memory import peak_rss_bytes, pss_bytes, rss_bytes
from capture.restart import Ending, Failure, RestartLimit, keep_running
from capture.sdnotify import Notifier
from capture.service import Service
from capture.states import GroupState, StripeState
from capture.stats import StripeStats

if TYPE_CHECKING:
    from capture.app import Daemon

log = get_logger(component="groups")

EXIT_OK = 0
EXIT_ALL_FAILED = 1
# A child's deliberate exits.  Any other status (an uncaught exception: 1 exec'd, 70 forked; a
# signal) is a crash, and a crashed group is restarted.
CHILD_ALL_FAILED = 3
CHILD_BAD_CONFIG = 78  # EX_CONFIG
# A child reports from its event loop every health.interval.  One silent for this long (or 10
# intervals, if longer) is wedged: killed, then restarted.
UNRESPONSIVE_AFTER_S = 60.0
# ... and its stripes show "unresponsive" in the merged file after 3 intervals (at least 5 s).
LATE_AFTER_INTERVALS = 3
# Not passed to children: the parent speaks to systemd for all of them.
_PARENT_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_MAX_REPORT_BYTES = 16 * 2**20  # a line longer than this is not a report
# Stripe counters that add up over a group's successive processes (the others are "now").
_CUMULATIVE = (
    "messages", "control_messages", "heartbeats", "bytes", "snapshot_rows", "rows_written",
    "files_committed", "connects", "restarts", "quarantined_frames", "garbage_bytes",
    "drift_rows", "type_number_mismatches", "reader_wait_seconds",
)  # fmt: skip


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A child's environment: the daemon's, without what only the daemon may use (systemd's
    notify socket and watchdog: the daemon speaks for all)."""
    return {k: v for k, v in environ.items() if k not in _PARENT_ONLY_ENV}


def split(stripes: Sequence[str], processes: int) -> list[tuple[str, ...]]:
    """Round robin: stripe i goes to group i mod N (N at most the number of stripes)."""
    n = group_count(processes, len(stripes))
    return [tuple(stripes[i::n]) for i in range(n)]


@dataclass(frozen=True)
class GroupSpec:
    """Which group a child process is: ``index`` of ``count``, with these stripes."""

    index: int
    count: int
    stripes: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> GroupSpec:
        """From the hidden ``run --group I/N:A,B,C`` argument; ValueError if malformed."""
        try:
            position, _, codes = text.partition(":")
            index_text, _, count_text = position.partition("/")
            spec = cls(int(index_text), int(count_text), tuple(s for s in codes.split(",") if s))
        except ValueError:
            raise ValueError(f"--group {text!r}: expected I/N:STRIPE,STRIPE,...") from None
        if not spec.stripes or not 0 <= spec.index < spec.count:
            raise ValueError(f"--group {text!r}: expected I/N:STRIPE,STRIPE,...")
        return spec

    def argument(self) -> str:
        return f"{self.index}/{self.count}:{','.join(self.stripes)}"


def child_config(cfg: Config, spec: GroupSpec) -> Config:
    """A child's configuration: its stripes, 1/N of the memory budget and of the lake's disk
    budget; it writes no health file and serves no metrics (it reports to the parent, which
    does both for all). ``ValueError`` if the stripes are not all in ``cfg``."""
    unknown = [s for s in spec.stripes if s not in cfg.source.stripes]
    if unknown:
        raise ValueError(f"stripes {unknown} are not in source.stripes")
    lake = cfg.lake
    if lake is not None and lake.disk_budget_mb:
        lake = dataclasses.replace(lake, disk_budget_mb=max(1, lake.disk_budget_mb // spec.count))
    return dataclasses.replace(
        cfg,
        source=dataclasses.replace(cfg.source, stripes=spec.stripes),
        output=dataclasses.replace(
            cfg.output, memory_budget_mb=max(1, cfg.output.memory_budget_mb // spec.count)
        ),
        health=dataclasses.replace(cfg.health, path=None),
        metrics=dataclasses.replace(cfg.metrics, enabled=False),
        supervision=dataclasses.replace(cfg.supervision, processes=1),
        lake=lake,
    )


def config_message(text: str) -> bytes:
    """What the parent writes first on a child's stdin: the configuration's length, then it."""
    data = text.encode("utf-8")
    return b"%d\n" % len(data) + data


def read_config_message(fd: int = 0) -> str:
    """The child's side of :func:`config_message`, read before anything else (blocking, exactly
    the message's bytes: what follows on ``fd`` are commands).  ValueError if malformed."""

    def read(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise ValueError("stdin closed before the configuration was complete")
            out += chunk
        return out

    header = b""
    while not header.endswith(b"\n"):
        header += read(1)
        if len(header) > 20:
            raise ValueError("no configuration length on stdin")
    return read(int(header)).decode("utf-8")


async def run_child(daemon: Daemon) -> int:
    """A child's main: the daemon, following the parent's commands on stdin and reporting its
    health on stdout (module docstring).  Returns the child's exit status."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_follow_parent, daemon)
        nursery.start_soon(_report, daemon)
        code = await daemon.run()
        nursery.cancel_scope.cancel()
    return CHILD_ALL_FAILED if code == EXIT_ALL_FAILED else code


async def _follow_parent(daemon: Daemon) -> None:
    buf = b""
    try:
        async with trio.lowlevel.FdStream(os.dup(0)) as parent:
            while chunk := await parent.receive_some(4096):
                buf += chunk
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    if line == b"stop":
                        log.info("the daemon asked this group to stop")
                        daemon.stop()
                    elif line == b"now":
                        log.warning("the daemon asked this group to stop now (second signal)")
                        raise KeyboardInterrupt
    except (OSError, trio.BrokenResourceError) as exc:
        log.error("cannot read commands from the daemon; stopping", error=str(exc))
    else:  # end of file: the parent is gone; nobody would restart us or read our reports
        log.warning("the daemon's end of stdin closed; stopping")
    daemon.stop()


async def _report(daemon: Daemon) -> None:
    interval = daemon.cfg.health.interval
    try:
        async with trio.lowlevel.FdStream(os.dup(1)) as parent:
            while True:
                line = json.dumps(daemon.health_doc(), separators=(",", ":")) + "\n"
                await parent.send_all(line.encode("utf-8"))
                await trio.sleep(interval)
    except (OSError, trio.BrokenResourceError):
        pass  # the parent is gone: _follow_parent sees the end of stdin and stops us


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    index: int
    stripes: tuple[str, ...]
    state: GroupState = GroupState.STARTING
    proc: trio.Process | ForkedProcess | None = None
    pid: int | None = None
    forked: bool = False  # this process came from the fork server (else exec)
    restarts: int = 0
    last_exit: str | None = None
    abnormal: bool = False  # the last exit was not a stop on request
    doc: dict[str, Any] | None = None  # its last report, this incarnation
    reported_at: float = 0.0  # trio time of that report
    # Per stripe: the cumulative counters of the group's earlier processes.
    carried: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


class Parent:
    """The process that runs the stripe groups (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        config_path: Path,
        config_text: str,
        *,
        notifier: Notifier | None = None,
        environ: dict[str, str] | None = None,
        rng: random.Random | None = None,
        forkserver: ForkServer | None = None,
    ) -> None:
        self.cfg = cfg
        self.forkserver = forkserver
        self.config_path = config_path.absolute()
        self._config_message = config_message(config_text)
        self.notifier = notifier or Notifier()
        self.child_env = child_environment(os.environ if environ is None else environ)
        self.rng = rng or random.Random()
        groups = split(cfg.source.stripes, cfg.supervision.processes)
        self.children = [Child(i, g) for i, g in enumerate(groups)]
        self.started_ns = time.time_ns()
        self._stopping = False
        self._stop = trio.Event()
        interval = cfg.health.interval
        self.unresponsive_after = max(UNRESPONSIVE_AFTER_S, 10 * interval)
        self.late_after = max(5.0, LATE_AFTER_INTERVALS * interval)
        # Each child has its own grace period; after that and 10 s more, the parent kills
        # what is left, every second (force).
        self.service = Service(
            cfg, self.notifier, grace=cfg.supervision.shutdown_grace + 10, force_every=1.0
        )

    def command(self, child: Child) -> list[str]:
        group = GroupSpec(child.index, len(self.children), child.stripes).argument()
        # -P: not the working directory on sys.path (the parent, a console script, has not)
        return [sys.executable, "-P", "-m", "capture", "run", "--config", str(self.config_path),
                "--group", group]  # fmt: skip

    async def run(self) -> int:
        """The parent in the process's service (capture.service): signals, sd_notify, health."""
        return await self.service.run(self)

    async def stop(self) -> None:
        self.service.stop()

    @property
    def metrics_url(self) -> str | None:
        return self.service.metrics_url

    # -- the engine (capture.service.Engine) -------------------------------------------------

    async def work(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        log.info(
            "starting stripe groups",
            processes=len(self.children),
            groups=[list(c.stripes) for c in self.children],
            root=str(self.cfg.output.root),
        )
        async with trio.open_nursery() as outer:
            outer.start_soon(self._watch_children)
            if self.forkserver is not None:
                outer.start_soon(self.forkserver.serve)
            task_status.started()
            async with trio.open_nursery() as children:
                for child in self.children:
                    children.start_soon(self._keep, child)
            outer.cancel_scope.cancel()
        if self.forkserver is not None:
            await self.forkserver.aclose()
        if all(c.state == GroupState.FAILED for c in self.children):
            log.critical("every stripe group failed; exiting")
            return EXIT_ALL_FAILED
        log.info("stopped", exits={c.index: c.last_exit for c in self.children})
        return EXIT_OK

    def ready(self) -> bool:
        """READY once every group has reported (or failed)."""
        return all(c.doc is not None or c.state == GroupState.FAILED for c in self.children)

    async def begin_stop(self) -> None:
        self._stopping = True
        self._stop.set()
        for child in self.children:
            await self._command(child, b"stop\n")

    async def stop_now(self) -> None:
        log.warning("second stop signal: groups stop without the grace period")
        for child in self.children:
            await self._command(child, b"now\n")

    def reload(self) -> None:
        log.info("SIGHUP: every group rotates its files now")
        for child in self.children:
            # Only to a child that reported: before that its handler may not be in place yet
            # (and it has no files to rotate).
            if child.proc is not None and child.state == GroupState.RUNNING:
                child.proc.send_signal(signal.SIGHUP)

    def force(self) -> None:
        """Each child has its own grace period; this is for a child that cannot even do that."""
        for child in self.children:
            if child.proc is not None:
                log.error("group did not stop in time; killing it", group=child.index)
                child.proc.kill()

    async def _command(self, child: Child, line: bytes) -> None:
        proc = child.proc
        if proc is not None and proc.stdin is not None:
            try:
                await proc.stdin.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass  # exiting anyway (its exit is on its way to _keep)

    async def _keep(self, child: Child) -> None:
        """Run one group's process; restart it when it dies unexpectedly (the stripes'
        supervision policy and loop: capture.restart)."""
        code: int | None = None  # the last process's exit status (None: did not start)

        async def run_once() -> Failure | None:
            nonlocal code
            self._carry(child)
            child.state = GroupState.STARTING
            code = await self._run_once(child)
            if self._stopping:
                return None
            final = code in (CHILD_ALL_FAILED, CHILD_BAD_CONFIG)
            return Failure(child.last_exit or "", final=final)

        def glog() -> Any:
            return log.bind(group=child.index, stripes=list(child.stripes), exit=child.last_exit)

        def backing_off(failure: Failure, delay: float) -> None:
            child.state = GroupState.BACKOFF
            glog().error("group process died; restarting it", delay=delay)

        def restarting() -> None:
            child.restarts += 1

        limit = RestartLimit.of(self.cfg.supervision, self.rng)
        outcome = await keep_running(
            run_once, limit, self._stop, backing_off=backing_off, restarting=restarting
        )
        if outcome.ending is Ending.STOPPED:
            child.state = GroupState.STOPPED
            if not outcome.waited:
                (glog().info if code in (0, None) else glog().error)("group stopped")
        elif outcome.ending is Ending.FINAL:
            child.state = GroupState.FAILED
            why = "every stripe failed" if code == CHILD_ALL_FAILED else "unusable config"
            glog().critical(f"group exited and stays down: {why}")
        else:
            child.state = GroupState.FAILED
            glog().critical(
                "group failed too often; giving up on it",
                failures=limit.recent,
                window_s=limit.window,
            )

    async def _run_once(self, child: Child) -> int | None:
        """One process of the group, start to exit: its status (None: it did not start)."""
        child.doc = None
        try:
            proc = await self._start(child)
        except (OSError, ForkServerError) as exc:  # fork/exec refused (no memory, no file, ...)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            child.last_exit, child.abnormal = f"not started: {reason}", True
            return None
        child.proc, child.pid = proc, proc.pid
        child.forked = isinstance(proc, ForkedProcess)
        log.info(
            "group started", group=child.index, pid=proc.pid, stripes=list(child.stripes),
            forked=child.forked,
        )  # fmt: skip
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports, child, proc)
                assert proc.stdin is not None
                try:
                    await proc.stdin.send_all(self._config_message)
                except trio.BrokenResourceError:
                    pass  # it died at once; its status says why
                if self._stopping:
                    await self._command(child, b"stop\n")
                code = await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            child.proc = None
            with trio.CancelScope(shield=True):
                for stream in (proc.stdin, proc.stdout):
                    if stream is not None:
                        await stream.aclose()
            if isinstance(proc, ForkedProcess):
                proc.release()
        if code is None:  # its parent, the fork server, is gone
            child.last_exit, child.abnormal = "exit status unknown (fork server lost)", True
            return None
        child.last_exit = describe_exit(code)
        child.abnormal = not (self._stopping and code == 0)
        return code

    async def _start(self, child: Child) -> trio.Process | ForkedProcess:
        """A new process for the group: forked by the fork server while it is there, else
        exec'd.  OSError or ForkServerError if neither works."""
        server = self.forkserver
        if server is not None and server.usable:
            try:
                return await server.spawn(
                    GroupSpec(child.index, len(self.children), child.stripes).argument()
                )
            except ForkServerError:
                if server.usable:
                    raise  # this fork failed (no memory?): like a failed exec, retried later
                # the server is gone (it said why): exec from now on
        return await trio.lowlevel.open_process(
            self.command(child), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=self.child_env,
        )  # fmt: skip

    async def _read_reports(self, child: Child, proc: trio.Process | ForkedProcess) -> None:
        """The child's health reports, one JSON line each, as they come."""
        assert proc.stdout is not None
        buf = bytearray()
        async for chunk in proc.stdout:
            buf += chunk
            while (end := buf.find(b"\n")) >= 0:
                line = bytes(buf[:end])
                del buf[: end + 1]
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = None
                if isinstance(doc, dict) and isinstance(doc.get("stripes"), dict):
                    child.doc, child.reported_at = doc, trio.current_time()
                    if child.proc is proc and child.state == GroupState.STARTING:
                        child.state = GroupState.RUNNING
                else:
                    log.warning("not a report on a group's stdout", group=child.index)
            if len(buf) > _MAX_REPORT_BYTES:
                log.warning("a group's report line is too long; dropped", group=child.index)
                buf.clear()

    def _carry(self, child: Child) -> None:
        """Before a restart: add the ending process's counters to what the group carries, so
        that a stripe's totals do not fall back to zero."""
        views = (child.doc or {}).get("stripes", {})
        for code in child.stripes:
            view = views.get(code)
            if not isinstance(view, dict):
                continue
            carried = child.carried.setdefault(code, {})
            for key in _CUMULATIVE:
                value = view.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    carried[key] = carried.get(key, 0) + value
        child.doc = None

    async def _watch_children(self) -> None:
        """Every ``health.interval``: kill wedged children.  An error here is logged:
        supervision must never take the capture down."""
        interval = self.cfg.health.interval
        expected = trio.current_time()
        while True:
            now = trio.current_time()
            if now - expected > self.late_after:
                # This process was frozen (SIGSTOP, a paused container): the children's reports
                # are old because we did not read them, not because they are wedged.
                for child in self.children:
                    child.reported_at = max(child.reported_at, now)
            expected = now + interval
            try:
                self._kill_unresponsive(now)
            except Exception as exc:  # a bug here must not stop the capture
                log.error("stripe-group watch failed", error=repr(exc), exc_info=exc)
            await trio.sleep(interval)

    def _kill_unresponsive(self, now: float) -> None:
        for child in self.children:
            # Only once it has reported: before that it may still be starting up (imports,
            # configuration) and its event loop not yet reporting.
            proc = child.proc
            if proc is None or child.doc is None:
                continue
            if now - child.reported_at > self.unresponsive_after:
                log.error(
                    "group's event loop unresponsive (no report); killing it",
                    group=child.index,
                    pid=child.pid,
                    seconds=round(now - child.reported_at, 1),
                )
                proc.kill()
                child.reported_at = now  # once: its exit is on its way to _keep

    def health_doc(self) -> dict[str, Any]:
        now = trio.current_time()
        stripes: dict[str, dict[str, Any]] = {}
        memory: dict[str, Any] = {}
        processes: list[dict[str, Any]] = []
        open_files = 0
        for child in self.children:
            doc = child.doc or {}
            views = doc.get("stripes", {})
            running = child.state == GroupState.RUNNING and child.proc is not None
            late = running and now - child.reported_at > self.late_after
            for code in child.stripes:
                view = views.get(code)
                view = dict(view) if isinstance(view, dict) else StripeStats(code).snapshot()
                for key, value in child.carried.get(code, {}).items():
                    mine = view.get(key)
                    view[key] = value + (mine if isinstance(mine, int | float) else 0)
                view["restarts"] = view.get("restarts", 0) + child.restarts
                if not running:
                    view["state"] = str(child.state)
                    if child.abnormal and child.last_exit is not None:
                        view["last_error"] = f"group process {child.last_exit}"
                elif late:
                    view["state"] = str(StripeState.UNRESPONSIVE)
                stripes[code] = view
            process = doc.get("process", {}) if running else {}
            process = process if isinstance(process, dict) else {}
            child_memory = process.get("memory", {})
            child_memory = child_memory if isinstance(child_memory, Mapping) else {}
            _add_memory(memory, child_memory)
            files = process.get("open_files")
            open_files += files if isinstance(files, int) else 0
            processes.append(
                {
                    "index": child.index,
                    "pid": child.pid if child.proc is not None else None,
                    "forked": child.forked if child.proc is not None else None,
                    "stripes": list(child.stripes),
                    "state": str(child.state),
                    "restarts": child.restarts,
                    "last_exit": child.last_exit,
                    "rss_mb": child_memory.get("rss_mb"),
                    "pss_mb": child_memory.get("pss_mb"),
                    "peak_rss_mb": child_memory.get("peak_rss_mb"),
                }
            )
        own, own_pss, own_peak = rss_bytes(), pss_bytes(), peak_rss_bytes()
        server = self.forkserver
        if server is not None and server.lost is None and own_pss is not None:
            # The fork server's share of what it shares with us all (it captures nothing).
            own_pss += pss_bytes(server.pid) or 0
        memory["parent_rss_mb"] = None if own is None else round(own / 2**20, 1)
        _add_memory(
            memory,
            {"rss_mb": None if own is None else own / 2**20,
             "pss_mb": None if own_pss is None else own_pss / 2**20,
             "peak_rss_mb": None if own_peak is None else own_peak / 2**20},
        )  # fmt: skip
        doc = health.assemble(
            stripes,
            now_ns=time.time_ns(),
            started_ns=self.started_ns,
            data_root=self.cfg.output.root,
            open_files=open_files,
            memory=memory,
            processes=processes,
        )
        if self.cfg.lake is not None:
            doc["lake"] = health.merge_lake(
                [c.doc.get("lake") for c in self.children if c.doc is not None]
            )
        doc["process"]["fork_server"] = (
            None if server is None else {"pid": server.pid, "lost": server.lost}
        )
        doc["process"]["metrics_url"] = self.metrics_url
        return doc


def _add_memory(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Sum the numbers (MiB) of one process's ``memory`` into ``total``; other values (the pool
    name) as first seen; unknown (None) values add nothing."""
    for key, value in part.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = round((total.get(key) or 0) + value, 1)
        elif value is not None:
            total.setdefault(key, value)
