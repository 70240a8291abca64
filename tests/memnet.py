"""Simulator and daemon joined by in-memory streams, on trio's mock clock.

Everything that waits (backoff, stale timeouts, heartbeats, rotation) waits on the mock clock,
so these tests are exact and take no real time.  The WebSocket, the MLink protocol, the
decoder and the Parquet files are all real.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
import trio.testing

from capture.app import Daemon
from capture.clock import TrioWallClock
from capture.config import Config
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator

KEY = "5b2d0c8e-7f41-4a3c-b1d2-9e8f7a6b5c4d"
KEY_ENV = "MLINK_TEST_KEY"
BASE_NS = 1_748_875_500_000_000_000  # 2025-06-02 14:45:00 UTC


@dataclass
class MemoryNet:
    """Opens an in-memory connection to the simulator for every connect attempt."""

    sim: Simulator
    nursery: trio.Nursery
    opened_at: list[float] = field(default_factory=list)

    async def open(self) -> trio.abc.Stream:
        self.opened_at.append(trio.current_time())
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.sim.serve_stream, server)
        return client


def config(root: Path, stripes: list[str], types: list[str], **over: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "source": {
            "url": "ws://sim.invalid:1/mlink/jsonf",
            "stripes": stripes,
            "message_types": types,
        },
        "auth": {"api_key_env": KEY_ENV},
        "output": {"root": str(root), "rotate_interval": 300},
        "pipeline": {"flush_interval": 0.5, "batch_rows": 256},
        "health": {"path": str(root / "health.json"), "interval": 1.0},
        # The mock clock runs ahead while writer threads work, so a real-time grace period
        # would expire in milliseconds; these tests are not about the grace period.
        "supervision": {"backoff_jitter": 0.0, "shutdown_grace": 3600.0},
    }
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return Config.from_mapping(raw)


class Network(Protocol):
    """Where the daemon's connect attempts go (``Daemon(stream_factory=net.open)``)."""

    async def open(self) -> trio.abc.Stream: ...


@dataclass
class ScriptedNet:
    """Every connect attempt gets an in-memory stream served by ``serve(stream, n)``, n
    counting the attempts from 1: a server scripted byte by byte, for what the simulator
    does not play."""

    nursery: trio.Nursery
    serve: Callable[[trio.abc.Stream, int], Awaitable[None]]
    opened: int = 0

    async def open(self) -> trio.abc.Stream:
        self.opened += 1
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.serve, server, self.opened)
        return client


@dataclass
class Launched:
    """A daemon started in a nursery; ``finished`` is set with its exit code in ``code``."""

    daemon: Daemon
    finished: trio.Event = field(default_factory=trio.Event)
    code: int | None = None

    async def stop(self) -> int:
        self.daemon.stop()
        await self.finished.wait()
        assert self.code is not None
        return self.code


def launch(
    nursery: trio.Nursery,
    cfg: Config,
    clock: TrioWallClock,
    net: Network,
    *,
    key: str = KEY,
    offload: Callable[..., Awaitable[Any]] | None = None,
) -> Launched:
    """Start a daemon on the in-memory network (blocking work inline unless ``offload``)."""
    daemon = Daemon(
        cfg,
        clock=clock,
        environ={KEY_ENV: key},
        install_signals=False,
        stream_factory=net.open,
        offload=offload or inline,
    )
    launched = Launched(daemon)

    async def go() -> None:
        launched.code = await daemon.run()
        launched.finished.set()

    nursery.start_soon(go)
    return launched


async def run(
    sim_cfg: SimConfig,
    cfg: Config,
    scenario: Callable[[Daemon, Simulator, MemoryNet], Awaitable[None]],
    *,
    key: str = KEY,
    offload: Callable[..., Awaitable[Any]] | None = None,
) -> tuple[Daemon, int]:
    """Start simulator (market only) and daemon, run ``scenario``, stop the daemon."""
    clock = TrioWallClock(BASE_NS)
    sim = Simulator(sim_cfg, clock_ns=clock.now_ns)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sim.run_market)
        net = MemoryNet(sim, nursery)
        launched = launch(nursery, cfg, clock, net, key=key, offload=offload)
        await scenario(launched.daemon, sim, net)
        code = await launched.stop()
        nursery.cancel_scope.cancel()
    return launched.daemon, code


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work on the loop: no threads, so the autojump clock only moves when every
    task really waits (with threads it would jump while a thread works)."""
    return fn(*args)


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def wait_for(predicate: Callable[[], bool]) -> float:
    """Wait (mock time, at most an hour) until ``predicate()``; returns when it became true."""
    with trio.fail_after(3600):
        while not predicate():  # noqa: ASYNC110 - state owned by other tasks' counters
            await trio.sleep(0.01)
    return trio.current_time()


class SentCount:
    """The number of data messages the simulator has sent so far, from its record: the oracle
    of "everything sent was received".  Parsed again only when the record changed, so that a
    test polling it every 0.01 s of mock time does not re-read every frame each time.

    ``load`` reads the record (``load_sent_data`` by default; a test whose data messages may
    hold invalid UTF-8 passes ``e2e_util.data_bodies``)."""

    def __init__(
        self,
        record: Path,
        load: Callable[[Path], Mapping[Any, Sequence[bytes]]] = load_sent_data,
    ) -> None:
        self.record = record
        self._load = load
        self._signature: tuple[tuple[str, int], ...] | None = None
        self._count = 0

    def __call__(self) -> int:
        files = sorted(p for p in self.record.rglob("*") if p.is_file())
        signature = tuple((str(p), p.stat().st_size) for p in files)
        if signature != self._signature:
            self._count = sum(len(v) for v in self._load(self.record).values())
            self._signature = signature
        return self._count
