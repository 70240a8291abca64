"""Helpers for end-to-end tests: run the simulator and the daemon on loopback, compare what the
simulator sent with what landed in Parquet."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import trio

from capture.app import Daemon
from capture.config import Config
from capture.schemas import lookup
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator

KEY = "0f3c5d2e-1a2b-4c3d-9e8f-0123456789ab"
KEY_ENV = "MLINK_TEST_KEY"


def daemon_config(
    root: Path, port: int, stripes: list[str], types: list[str], **over: Any
) -> Config:
    raw: dict[str, Any] = {
        "source": {
            "url": f"ws://127.0.0.1:{port}/mlink/jsonf",
            "stripes": stripes,
            "message_types": types,
        },
        "auth": {"api_key_env": KEY_ENV},
        "output": {"root": str(root), "rotate_interval": 60},
        "pipeline": {"flush_interval": 0.2, "batch_rows": 512},
        "health": {"path": str(root / "health.json"), "interval": 0.5},
        "supervision": {"backoff_initial": 0.2, "backoff_max": 1.0, "stale_after": 5.0},
    }
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return Config.from_mapping(raw)


async def run_capture(
    sim_cfg: SimConfig,
    make_cfg: Callable[[int], Config],
    *,
    seconds: float,
    during: Callable[[Daemon, Simulator], Any] | None = None,
    until: Callable[[], bool] | None = None,
) -> tuple[Daemon, int]:
    """Simulator + daemon for ``seconds`` of real time (then until ``until()``, if given), then
    a clean end: the simulator stops generating, the daemon receives everything the simulator
    sent, then stops gracefully.

    (What a server has sent but the socket has not delivered when a daemon stops is not
    received, so a comparison of sent and written frames is only exact after quiescing.)
    """
    assert sim_cfg.record_dir is not None
    sim = Simulator(sim_cfg)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.run)
        daemon = Daemon(make_cfg(port), environ={KEY_ENV: KEY}, install_signals=False)
        exit_code: list[int] = []
        done = trio.Event()

        async def run() -> None:
            exit_code.append(await daemon.run())
            done.set()

        nursery.start_soon(run)
        if during is not None:
            await during(daemon, sim)
        await trio.sleep(seconds)
        if until is not None:  # e.g. until every type was sent, however slow the machine
            with trio.fail_after(60):
                while not until():  # noqa: ASYNC110 - polls the recording on disk
                    await trio.sleep(0.1)
        sim.cfg = sim.cfg.with_overrides(rate=0.0, type_rates={})  # quiesce the market
        # The simulator may still flush records it generated just before the rate dropped (on a
        # busy machine, long after): wait until it holds nothing unsent, everything sent has
        # been received, and that stayed so for a while.
        with trio.fail_after(60):
            stable_since = trio.current_time()
            while trio.current_time() - stable_since < 0.5:
                if sim.busy() or received(daemon) != sent_count(sim_cfg.record_dir):
                    stable_since = trio.current_time()
                await trio.sleep(0.05)
        daemon.stop()
        with trio.fail_after(30):
            await done.wait()
        nursery.cancel_scope.cancel()
    return daemon, exit_code[0]


def received(daemon: Daemon) -> int:
    return sum(w.stats.messages for w in daemon.supervisor.workers.values())


def sent_count(record_dir: Path) -> int:
    return sum(len(v) for v in load_sent_data(record_dir).values()) if record_dir.exists() else -1


def read_table(root: Path, msg_type: str) -> pa.Table:
    """A table's rows sorted by stripe and receive order."""
    dataset = ds.dataset(root / msg_type, format="parquet", partitioning="hive")
    return dataset.to_table().sort_by([("stripe", "ascending"), ("_seq", "ascending")])


def expected_row(msg_type: str, body: bytes) -> dict[str, Any]:
    """The columns a data message must produce, derived from its JSON by the documented mapping."""
    obj = json.loads(body)
    header, message = obj["header"], obj["message"]
    mdef = lookup(msg_type)
    assert mdef is not None
    types = {f.name: f.ftype for f in mdef.fields if f.repeater is None}
    row: dict[str, Any] = {
        "h_seqN": header["seqN"],
        "h_sID": header["sID"],
        "h_sTim": _ts(header["sTim"]),
        "h_encT": _ts(header["encT"]),
        "h_appN": header["appN"],
    }
    flat = dict(message)
    for name, key in flat.pop("pkey", {}).items():
        flat[name] = key
    for name, value in flat.items():
        ftype = types.get(name)
        if isinstance(value, dict):
            for part, v in value.items():
                row[f"{name}_{part}"] = dt.date.fromisoformat(v) if part == "dt" else v
        elif ftype == "DateTime":
            row[name] = _ts(value)
        elif ftype == "DateKey":
            row[name] = dt.date.fromisoformat(value)
        else:
            row[name] = value
    return row


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def data_bodies(record: Path) -> dict[tuple[str, str], list[bytes]]:
    """Like ``load_sent_data``, but a body that is JSON apart from invalid UTF-8 counts as data
    (a client must keep such a row, not drop it)."""
    from capture.protocol import CONTROL_TYPES
    from capture.sim.record import load_sent_frames

    out: dict[tuple[str, str], list[bytes]] = {}
    for (stripe, _), frames in load_sent_frames(record).items():
        for fr in frames:
            try:
                obj = json.loads(fr.body.decode("utf-8", "surrogateescape"))
                mtyp = obj["header"]["mTyp"]
            except (ValueError, TypeError, KeyError):
                continue
            if isinstance(mtyp, str) and mtyp and mtyp not in CONTROL_TYPES:
                out.setdefault((mtyp, stripe), []).append(fr.body)
    return out


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=dt.UTC)


def assert_rows_equal(
    msg_type: str,
    stripe: str,
    sent: list[bytes],
    rows: list[Mapping[str, Any]],
    *,
    allow_extra: bool = False,
) -> None:
    assert len(rows) == len(sent), f"{msg_type}/{stripe}: {len(rows)} rows, {len(sent)} sent"
    for i, (body, row) in enumerate(zip(sent, rows, strict=True)):
        if not _utf8(body):
            # The row is kept; the undecodable value moves to _extra, surrogate-escaped, so
            # the original bytes can be rebuilt (str.encode("utf-8", "surrogateescape")).
            extra = row["_extra"]
            assert extra is not None and "\\udc" in extra, (msg_type, stripe, i, extra)
            continue
        want = expected_row(msg_type, body)
        for column, value in want.items():
            if allow_extra and column not in row:
                continue  # a drifted-in field: kept in _extra, checked by the caller
            got = row[column]
            same = (
                math.isclose(got, value, rel_tol=0, abs_tol=0)
                if isinstance(value, float)
                else got == value
            )
            assert same, f"{msg_type}/{stripe} row {i} column {column}: {got!r} != {value!r}"
        if not allow_extra:
            assert row["_extra"] is None, f"{msg_type}/{stripe} row {i}: {row['_extra']}"
        assert row["_stripe"] == stripe and row["stripe"] == stripe
