"""Stripe groups in child processes (``supervision.processes``, capture.groups), from the outside:
the real ``mlink-capture run`` against the simulator in another process.

The everyday path (READY/WATCHDOG/STOPPING, SIGHUP, SIGTERM, one health file, rows equal to what
was sent) is ``test_process.py``'s test run with a process per stripe.  Here: what happens when a
group's process dies, and when the parent dies.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fake_group
import pyarrow.dataset as ds
import pytest
import trio
import trio.testing
from runtime_env import runtime_env
from test_process import BIN, KEY, _wait, simulator, write_config

from capture.config import Config, ConfigError
from capture.forkserver import ForkServer
from capture.groups import (
    Child,
    GroupSpec,
    Parent,
    child_config,
    config_message,
    read_config_message,
    split,
)
from capture.sim.record import load_sent_data

pytestmark = pytest.mark.e2e
__all__ = ["simulator"]  # the fixture, shared with test_process


def _health(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc


def _groups(path: Path) -> dict[str, dict[str, Any]]:
    return {g["stripes"][0]: g for g in _health(path).get("process", {}).get("processes", [])}


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaps (a CI container's PID 1 may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _shared_dirty_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Shared_Dirty:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Shared_Dirty in smaps_rollup")


def _rows(root: Path, msg_type: str, stripe: str) -> list[int]:
    table = ds.dataset(root / msg_type, format="parquet", partitioning="hive").to_table()
    ordered = table.select(["_seq", "h_seqN", "stripe"]).sort_by("_seq").to_pylist()
    return [r["h_seqN"] for r in ordered if r["stripe"] == stripe]


def test_a_killed_group_is_restarted_and_a_killed_parent_stops_its_groups(
    tmp_path: Path, simulator: tuple[int, Path]
) -> None:
    port, record = simulator
    cfg = write_config(tmp_path, port, processes=2)
    env = runtime_env()
    for name in ("MLINK_API_KEY", "NOTIFY_SOCKET"):
        env.pop(name, None)
    log = tmp_path / "daemon.log"  # a file: three processes' logs must never block on a pipe
    with log.open("w") as log_file:
        daemon = subprocess.Popen(
            [str(BIN), "run", "--config", str(cfg)],
            env=env, stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    health_file = tmp_path / "run" / "health.json"
    root = tmp_path / "data"
    try:

        def streaming() -> bool:
            stripes = _health(health_file).get("stripes", {})
            return len(stripes) == 2 and all(
                s["state"] == "streaming" and s["rows_written"] > 0 for s in stripes.values()
            )

        _wait(streaming, 30, "both stripes streaming with rows written")
        first = _groups(health_file)
        # Forked by the fork server, they share the daemon's imports copy-on-write: pages
        # written by the daemon before the fork and not by the group since.
        assert first["A"]["forked"] is True and first["M"]["forked"] is True
        assert all(_shared_dirty_mb(g["pid"]) > 8 for g in first.values())
        os.kill(first["A"]["pid"], signal.SIGKILL)  # the OOM killer, say

        def a_back() -> bool:
            doc = _health(health_file)
            a = _groups(health_file).get("A", {})
            return (
                a.get("restarts") == 1
                and a.get("state") == "running"
                and a.get("pid") not in (None, first["A"]["pid"])
                and doc.get("stripes", {}).get("A", {}).get("state") == "streaming"
            )

        # In between, the health file tells the truth about A (and M is undisturbed).
        _wait(
            lambda: (
                _health(health_file).get("stripes", {}).get("A", {}).get("state")
                not in (None, "streaming")
            ),
            10,
            "A down",
        )
        down = _health(health_file)
        assert down["healthy"] is False
        assert down["stripes"]["M"]["state"] == "streaming"
        _wait(a_back, 30, "A's group restarted and streaming")
        assert _groups(health_file)["A"]["last_exit"] == "killed by SIGKILL"
        assert _groups(health_file)["A"]["forked"] is True  # the restart too
        assert _groups(health_file)["M"]["pid"] == first["M"]["pid"]  # M's process untouched
        rows_a = _health(health_file)["stripes"]["A"]["rows_written"]
        _wait(
            lambda: (
                _health(health_file).get("stripes", {}).get("A", {}).get("rows_written", 0) > rows_a
            ),
            30,
            "rows written by A's new process",
        )

        # The parent dies without a word: its groups notice (stdin closed) and stop cleanly.
        children = [g["pid"] for g in _groups(health_file).values()]
        daemon.kill()
        daemon.wait(timeout=10)
        _wait(lambda: all(_gone(pid) for pid in children), 40, "the groups to stop")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    err = log.read_text()
    events = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(e["event"] == "group process died; restarting it" for e in events)
    assert sum(e["event"] == "the daemon's end of stdin closed; stopping" for e in events) == 2
    assert sum(e["event"] == "stopped" for e in events) == 2  # both groups, gracefully
    unfinished = [p for p in root.rglob("*") if p.name.endswith(".inprogress")]
    # Only the killed process's open files, moved aside by its successor (never M's).
    assert unfinished and all(
        p.parent.name == "stripe=A" and (root / "_quarantine" / "inprogress") in p.parents
        for p in unfinished
    )
    assert KEY not in err

    # M never stopped: exactly what was sent, in order.  A: a clean tree (verify), no frame
    # stored twice across its two processes.
    sent = load_sent_data(record)
    for msg_type in ("OptionNbboQuote", "StockPrint"):
        rows = _rows(root, msg_type, "M")
        sent_seq = [json.loads(b)["header"]["seqN"] for b in sent[(msg_type, "M")]]
        assert rows and rows == sent_seq[: len(rows)], msg_type
        # A frame is (sID, seqN, encT): after a reconnect the server may send a record again,
        # encoded anew (tests/crash_harness.py); one frame is never stored twice.
        table = ds.dataset(root / msg_type, format="parquet", partitioning="hive").to_table(
            columns=["h_sID", "h_seqN", "h_encT"], filter=ds.field("stripe") == "A"
        )
        frames_a = list(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
        assert frames_a and len(set(frames_a)) == len(frames_a), msg_type
    verify = subprocess.run(
        [str(BIN), "verify", str(root)], capture_output=True, text=True, check=False,
        env=runtime_env(),
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_group_split_and_child_configuration(tmp_path: Path) -> None:
    assert split(list("ABCDEFGHMSX"), 2) == [tuple("ACEGMX"), tuple("BDFHS")]
    assert split(["A", "B"], 5) == [("A",), ("B",)]  # never more processes than stripes
    assert split(["A"], 2) == [("A",)]

    raw = _raw(tmp_path, ["A", "B", "C"])
    cfg = Config.from_mapping(raw)
    child = child_config(cfg, GroupSpec.parse("1/2:B"))
    assert child.source.stripes == ("B",)
    assert child.output.memory_budget_mb == 24
    assert child.health.path is None  # it reports to the parent instead
    assert child.supervision.processes == 1
    with pytest.raises(ValueError, match=r"not in source\.stripes"):
        child_config(cfg, GroupSpec.parse("0/2:A,Z"))
    for bad_spec in ("2/2:A", "0/2:", "x/2:A", "0:A"):
        with pytest.raises(ValueError, match="expected I/N"):
            GroupSpec.parse(bad_spec)
    assert GroupSpec.parse("1/2:B,D").argument() == "1/2:B,D"

    for section, key, value, problem in (
        ("supervision", "processes", 0, "supervision.processes"),
        ("output", "memory_budget_mb", 40, "output.memory_budget_mb"),  # < 16 x 3 processes
    ):
        bad = _raw(tmp_path, ["A", "B", "C"], processes=3)
        bad[section][key] = value
        with pytest.raises(ConfigError) as err:
            Config.from_mapping(bad)
        assert any(problem in p for p in err.value.problems), err.value.problems


def test_the_configuration_goes_to_a_group_on_its_stdin(tmp_path: Path) -> None:
    text = '[source]\nurl = "ws://127.0.0.1:1/mlink/jsonf"\n# é\n'
    r, w = os.pipe()
    os.write(w, config_message(text) + b"stop\n")
    os.close(w)
    try:
        assert read_config_message(r) == text
        assert os.read(r, 100) == b"stop\n"  # the commands that follow are left in the pipe
    finally:
        os.close(r)


# -- the parent with stand-in groups (tests/fake_group.py): real processes, real clock ---------


def _raw(tmp_path: Path, stripes: list[str], processes: int = 2, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "source": {"url": "ws://127.0.0.1:1/mlink/jsonf", "stripes": stripes},
        "auth": {"api_key_env": "K"},
        "output": {"root": str(tmp_path / "data")},
        "health": {"path": str(tmp_path / "health.json"), "interval": 0.05},
        "supervision": {"processes": processes, "backoff_initial": 0.01, "backoff_max": 0.05},
    }
    for section, values in over.items():
        raw[section].update(values)
    return raw


def _fake_entry(modes: tuple[str, ...], group: str) -> int:
    """A forked group's entry point (capture.forkserver): the stand-in, in its mode."""
    spec = GroupSpec.parse(group)
    return fake_group.run(modes[spec.index], list(spec.stripes))


class FakeGroups(Parent):
    """The real parent; each group runs tests/fake_group.py in the mode given for it, exec'd,
    or forked by a real fork server (``fork``)."""

    def __init__(self, tmp_path: Path, modes: list[str], fork: bool = False, **over: Any) -> None:
        stripes = [chr(ord("A") + i) for i in range(len(modes))]
        cfg = Config.from_mapping(_raw(tmp_path, stripes, processes=len(modes), **over))
        text = '[source]\nurl = "ws://127.0.0.1:1/mlink/jsonf"\n'
        server = None
        if fork:  # (this test process runs pyarrow's threads; the daemon has none when it forks)
            entry = functools.partial(_fake_entry, tuple(modes))
            server = ForkServer.start(entry, allow_threads=True)
            assert server is not None
        super().__init__(
            cfg, tmp_path / "capture.toml", text, environ=dict(os.environ), forkserver=server
        )
        self.modes = modes

    def command(self, child: Child) -> list[str]:
        fake = str(Path(__file__).with_name("fake_group.py"))
        return [sys.executable, fake, self.modes[child.index], ",".join(child.stripes)]


@pytest.fixture(params=[False, True], ids=["exec", "fork"])
def fork(request: pytest.FixtureRequest) -> bool:
    """Stand-in groups exec'd, or forked by the fork server: the parent treats them alike."""
    return bool(request.param)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the state of other tasks and real processes
        await trio.sleep(0.01)


def _drive(parent: Parent, scenario: Callable[[], Awaitable[None]]) -> int:
    """Run ``parent`` with ``scenario`` beside it, then stop it; its exit status."""

    async def main() -> int:
        code: list[int] = []

        async def run() -> None:
            code.append(await parent.run())

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await scenario()
                await parent.stop()
        return code[0]

    return trio.run(main)


def _health_now(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "health.json").read_text())


def test_a_crashed_group_is_restarted_the_others_go_on(tmp_path: Path, fork: bool) -> None:
    parent = FakeGroups(tmp_path, ["crash", "report"], fork)
    a, b = parent.children
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        await _until(lambda: a.restarts >= 3 and b.state == "running")
        seen["health"] = _health_now(tmp_path)

    code = _drive(parent, scenario)
    doc = seen["health"]
    assert code == 0
    assert a.last_exit == "exit code 1" and a.restarts >= 3  # a crash: restarted, again and again
    assert doc["healthy"] is False
    assert doc["stripes"]["A"]["state"] in ("backoff", "starting")
    assert doc["stripes"]["A"]["last_error"] == "group process exit code 1"
    assert doc["stripes"]["B"]["state"] == "streaming"
    assert doc["process"]["memory"]["arrow_pool"] == "system"
    assert [p["stripes"] for p in doc["process"]["processes"]] == [["A"], ["B"]]
    assert b.restarts == 0 and b.last_exit == "exit code 0"  # B: stopped on request, once


def test_a_stop_during_a_group_restart_backoff_stops_at_once(tmp_path: Path, fork: bool) -> None:
    """A stop requested while a crashed group waits out its restart backoff ends the wait at
    once: the mock clock does not advance by the backoff and no new process is started."""
    parent = FakeGroups(
        tmp_path, ["crash", "report"], fork,
        supervision={"backoff_initial": 120.0, "backoff_max": 120.0, "backoff_jitter": 0.0},
    )  # fmt: skip
    a, b = parent.children
    seen: dict[str, Any] = {}

    async def main() -> int:
        code: list[int] = []

        async def run() -> None:
            code.append(await parent.run())

        with trio.fail_after(60):  # mock seconds: half the backoff
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await _until(lambda: a.state == "backoff" and b.state == "running")
                seen["pid"], seen["stop_at"] = a.pid, trio.current_time()
                await parent.stop()
        seen["ended"] = trio.current_time()
        return code[0]

    # Time jumps only while every task has waited 50 ms (the processes are real).
    clock = trio.testing.MockClock(autojump_threshold=0.05)
    assert trio.run(main, clock=clock) == 0
    assert seen["ended"] - seen["stop_at"] < 5  # not the 120 s backoff
    assert a.restarts == 0 and a.pid == seen["pid"]  # no new process for A
    assert a.state == "stopped" and a.last_exit == "exit code 1"
    assert _health_now(tmp_path)["stripes"]["A"]["state"] == "stopped"


@pytest.mark.parametrize(
    ("mode", "last_exit"),
    [("all-failed", "exit code 3"), ("bad-config", "exit code 78")],
)
def test_a_group_that_gives_up_stays_down(
    tmp_path: Path, mode: str, last_exit: str, fork: bool
) -> None:
    """Exit 3 (every stripe of the group failed for good) and 78 (unusable configuration) are
    the group's own verdicts: not restarted; all groups down -> the daemon exits 1."""
    parent = FakeGroups(tmp_path, [mode, mode], fork)

    async def main() -> int:
        with trio.fail_after(30):
            return await parent.run()

    assert trio.run(main) == 1
    doc = _health_now(tmp_path)
    assert {s["state"] for s in doc["stripes"].values()} == {"failed"}
    assert doc["stripes"]["A"]["last_error"] == f"group process {last_exit}"
    assert [p["restarts"] for p in doc["process"]["processes"]] == [0, 0]


def test_a_group_that_cannot_be_started_is_retried(tmp_path: Path) -> None:
    class Missing(FakeGroups):
        def command(self, child: Child) -> list[str]:
            return [str(tmp_path / "no-such-program")]

    parent = Missing(tmp_path, ["report", "report"])

    async def scenario() -> None:
        await _until(lambda: all(c.restarts >= 3 for c in parent.children))

    code = _drive(parent, scenario)
    assert code == 0
    assert all(c.last_exit and c.last_exit.startswith("not started: ") for c in parent.children)


def test_a_silent_group_is_unresponsive_then_killed_and_restarted(
    tmp_path: Path, fork: bool
) -> None:
    """A wedged event loop stops its reports: first its stripes say ``unresponsive``, then the
    parent kills it, and it is restarted like any dead group."""
    parent = FakeGroups(tmp_path, ["silent", "report"], fork)
    parent.late_after, parent.unresponsive_after = 0.2, 1.0  # 5 s and 60 s in service
    a = parent.children[0]
    states: list[str] = []

    async def watch() -> None:
        while a.restarts < 1:
            states.append(parent.health_doc()["stripes"]["A"]["state"])
            await trio.sleep(0.02)

    assert _drive(parent, watch) == 0
    assert "streaming" in states and "unresponsive" in states
    assert states.index("streaming") < states.index("unresponsive")
    assert a.restarts >= 1
    # Its last incarnation (silent again) ignored "stop" until the parent's deadline, or was
    # killed as unresponsive again: either way by SIGKILL, never left running.
    assert a.last_exit == "killed by SIGKILL" and a.proc is None


def test_a_second_stop_signal_tells_the_groups_to_stop_now(tmp_path: Path, fork: bool) -> None:
    """SIGTERM: each group is asked to stop (these take their time); a second SIGTERM: to
    stop now (the stand-ins exit 2 on that)."""
    parent = FakeGroups(tmp_path, ["slow-stop", "slow-stop"], fork)

    async def scenario() -> None:
        await _until(lambda: all(c.state == "running" for c in parent.children))
        os.kill(os.getpid(), signal.SIGTERM)
        await _until(lambda: parent._stopping)
        assert all(c.proc is not None for c in parent.children)  # still stopping
        os.kill(os.getpid(), signal.SIGTERM)
        await _until(lambda: all(c.proc is None for c in parent.children))

    assert _drive(parent, scenario) == 0
    assert [c.last_exit for c in parent.children] == ["exit code 2", "exit code 2"]  # "now"


def test_without_its_fork_server_the_daemon_keeps_its_groups_and_execs_new_ones(
    tmp_path: Path,
) -> None:
    """The fork server dies (killed): the groups it forked go on capturing, now the daemon's
    children (it is their subreaper), so it still learns how they end; one that dies is
    restarted, by exec; the health file says the server is lost."""
    parent = FakeGroups(tmp_path, ["report", "report"], fork=True)
    server = parent.forkserver
    assert server is not None
    a, b = parent.children
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        await _until(lambda: a.state == b.state == "running")
        assert a.forked and b.forked
        pids = (a.pid, b.pid)
        os.kill(server.pid, signal.SIGKILL)
        await _until(lambda: server.lost is not None)
        await trio.sleep(0.3)  # several report intervals: both groups go on
        assert (a.pid, b.pid) == pids and a.proc is not None and b.proc is not None
        assert parent.health_doc()["healthy"] is True
        assert a.pid is not None
        os.kill(a.pid, signal.SIGKILL)
        await _until(lambda: a.restarts == 1)
        seen["a_exit"] = a.last_exit  # its first process's
        await _until(lambda: a.state == "running")
        seen["health"] = parent.health_doc()
        seen["a"] = (a.forked, a.pid, pids[0])

    assert _drive(parent, scenario) == 0
    doc = seen["health"]
    forked, pid, first_pid = seen["a"]
    assert forked is False and pid not in (None, first_pid)  # A's new process: exec'd
    assert doc["process"]["fork_server"] == {"pid": server.pid, "lost": "it exited"}
    assert [p["forked"] for p in doc["process"]["processes"]] == [False, True]
    assert doc["stripes"]["A"]["state"] == doc["stripes"]["B"]["state"] == "streaming"
    # A's first process and B's only one: reaped by the daemon, their statuses known.
    assert seen["a_exit"] == "killed by SIGKILL"
    assert b.last_exit == "exit code 0"  # stopped on request
    assert a.last_exit == "exit code 0"  # A's exec'd successor, stopped on request
    assert _gone(server.pid)
