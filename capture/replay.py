"""``mlink-capture replay``: rebuild Parquet from journal segments into a separate root.

The journal holds every WebSocket message as received (with receive time, session and sequence
numbers), so feeding it through the capture path again, for example after a decoder fix, gives
the rows the live run wrote: same receive times, sessions, sequence numbers and snapshot flags.
Segments are kept after commit only with ``journal.retain_hours`` > 0 (in
``<journal>/stripe=<S>/archive``); without it the journal holds just what is not yet committed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from capture.clock import SystemClock, WallClock
from capture.config import Config
from capture.credentials import Secret
from capture.errors import ReplayError as ReplayError
from capture.journal_replay import replay as replay_through
from capture.logs import get_logger
from capture.worker import Offload, StripeWorker, new_session_id

log = get_logger(component="replay")


class _NoCredentials:
    """Replay never connects."""

    source = "none (replay)"
    logon_field = "apiKey"

    def bearer(self) -> Secret:  # pragma: no cover - never called
        raise RuntimeError("replay does not connect")

    def invalidate(self) -> None:  # pragma: no cover - never called
        pass

    def reload(self) -> None:  # pragma: no cover - never called
        pass


def plan(cfg: Config, to_root: Path, stripes: list[str] | None = None) -> dict[str, Path]:
    """The journal directory of every stripe to replay; raises ReplayError if it cannot run."""
    if to_root.resolve() == cfg.output.root.resolve():
        raise ReplayError("replay writes into a separate root, not over the live data")
    out: dict[str, Path] = {}
    for stripe in stripes or list(cfg.source.stripes):
        directory = cfg.journal.stripe_dir(cfg.output.root, stripe)
        if not directory.is_dir():
            raise ReplayError(f"stripe {stripe}: no journal at {directory}")
        out[stripe] = directory
    return out


async def replay(
    cfg: Config,
    to_root: Path,
    journals: dict[str, Path],
    *,
    clock: WallClock | None = None,
    offload: Offload | None = None,
) -> dict[str, int]:
    """Rebuild each stripe of ``journals`` (see :func:`plan`); frames written per stripe."""
    out_cfg = dataclasses.replace(
        cfg,
        output=dataclasses.replace(cfg.output, root=to_root),
        journal=dataclasses.replace(cfg.journal, enabled=False),
    )
    clock = clock or SystemClock()
    done: dict[str, int] = {}
    for stripe, directory in journals.items():
        worker = StripeWorker(
            out_cfg,
            stripe,
            clock=clock,
            credentials=_NoCredentials(),
            run_id=new_session_id(clock.now_ns()),
            offload=offload,
        )
        done[stripe] = await replay_through(worker, [directory / "archive", directory])
        log.info("replayed", stripe=stripe, frames=done[stripe], root=str(to_root))
    return done
