"""``mlink-capture status`` as a person meets it: in a real pseudo-terminal beside a running
daemon, the screen read back through a terminal emulator (pyte); ``--once`` and ``--json`` as a
script meets them; the exit codes of a stopped daemon and of no daemon at all."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pyte
import pytest
import test_process

from capture.status import SHOW_CURSOR, rows

simulator = test_process.simulator  # the simulator in its own process, as in test_process
BIN = test_process.BIN
COLS, LINES = 110, 30


def _status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "MLINK_CAPTURE_HEALTH_FILE"}
    return subprocess.run(
        [str(BIN), "status", *args], capture_output=True, text=True, check=False, timeout=60,
        env={**environ, **(env or {})},
    )  # fmt: skip


def _stripe_line(screen: pyte.Screen, stripe: str) -> list[str] | None:
    found = [line.split() for line in screen.display if line.startswith(f"{stripe} ")]
    return found[0] if len(found) == 1 else None


def _flowing(screen: pyte.Screen) -> bool:
    for stripe in ("A", "M"):
        cells = _stripe_line(screen, stripe)
        if cells is None or cells[1] != "streaming" or cells[2] == "...":
            return False
        if float(cells[2].replace(",", "")) <= 0:
            return False
    return True


@pytest.mark.e2e
def test_status_in_a_terminal_beside_a_running_daemon(
    tmp_path: Path, simulator: tuple[int, Path]
) -> None:
    port, _ = simulator
    cfg = test_process.write_config(tmp_path, port)
    health_file = tmp_path / "run" / "health.json"
    daemon = subprocess.Popen(
        [str(BIN), "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        test_process._wait(health_file.exists, 30, "the health file")

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLS, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        viewer = subprocess.Popen(
            [str(BIN), "status", "--config", str(cfg), "--interval", "0.2"],
            stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm"},
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        screen = pyte.Screen(COLS, LINES)
        stream = pyte.ByteStream(screen)
        raw = bytearray()

        def pump(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the viewer closed the terminal
                        return
                    raw.extend(data)
                    stream.feed(data)

        try:
            deadline = time.monotonic() + 30
            while not _flowing(screen):
                assert time.monotonic() < deadline, "\n".join(screen.display)
                pump(0.2)
            pump(0.5)  # a few more redraws
            display = screen.display
            # One table, redrawn in place: the header is at the top, once, though drawn often.
            assert display[0].startswith("mlink-capture ") and "healthy" in display[0]
            assert sum(1 for line in display if line.startswith("STRIPE")) == 1
            assert raw.count(b"STRIPE") >= 3
            header = next(line for line in display if line.startswith("STRIPE")).split()
            assert header == ["STRIPE", "STATE", "MSG/S", "LAST", "DATA", "ROWS", "FILES",
                              "QUAR", "LAG"]  # fmt: skip
            doc = json.loads(health_file.read_text())
            for stripe in ("A", "M"):
                cells = _stripe_line(screen, stripe)
                assert cells is not None
                assert cells[1] == "streaming"
                assert float(cells[3]) < 10 and cells[4] == "s"  # last data, seconds ago
                assert int(cells[5].replace(",", "")) <= doc["stripes"][stripe]["rows_written"]
                assert cells[7] == "0"  # nothing quarantined
            assert any(line.startswith("memory: pss ") for line in display)
            assert "Ctrl-C to quit" in "\n".join(display)
            viewer.send_signal(signal.SIGINT)
            pump(1.0)
            assert viewer.wait(timeout=10) == 0
            assert raw.endswith(SHOW_CURSOR.encode())  # the cursor is given back
        finally:
            if viewer.poll() is None:
                viewer.kill()
            os.close(master)

        # For scripts: --json (and --once) print once, with rates, and exit as health does.
        result = _status("--config", str(cfg), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["healthy"] is True and report["stale"] is False
        assert set(report["stripes"]) == {"A", "M"}
        for view in report["stripes"].values():
            assert view["state"] == "streaming" and view["msg_per_s"] > 0
            assert view["rows_written"] > 0 and view["quarantined_frames"] == 0
        # as in the container: the image names the file in its environment
        once = _status("--once", env={"MLINK_CAPTURE_HEALTH_FILE": str(health_file)})
        assert once.returncode == 0, once.stderr
        assert re.search(r"^A\s+streaming\s+[\d,.]+\s", once.stdout, re.M), once.stdout
        assert "\x1b" not in once.stdout  # no escape sequences in a pipe
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=40)

    # The daemon is gone: its last report never changes.
    stale = _status("--config", str(cfg), "--once", "--max-age", "1")
    assert stale.returncode == 1 and "stuck or gone" in stale.stdout
    assert "stopped" in stale.stdout


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "no health file"),
        (b"", "not a health file"),
        (b"{\"written_at_ns\": ", "not a health file"),
        (b"[1, 2]", "not a health file"),
        (b"\xff\xfe garbage", "not a health file"),
        (b"{\"written_at_ns\": \"yesterday\"}", "not a health file"),
        (b"[" * 200_000 + b"]" * 200_000, "not a health file"),  # nested beyond the parser
    ],
)
def test_no_readable_health_file_exits_2(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "health.json"
    if content is not None:
        path.write_bytes(content)
    result = _status("--file", str(path), "--once")
    assert result.returncode == 2 and why in result.stderr and not result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _status("--once").returncode == 2  # no file, no config
    assert _status("--file", str(tmp_path / "h"), "--interval", "0").returncode == 2


def _doc(written_s: float, **stripes: dict[str, Any]) -> dict[str, Any]:
    return {"written_at_ns": int(written_s * 1e9), "stripes": stripes}


def test_rates_are_the_difference_of_two_reports() -> None:
    first = _doc(100, A={"messages": 100}, B={"messages": 50}, C={"messages": 9})
    second = _doc(102, A={"messages": 300}, B={"messages": 10}, C={"messages": "x"},
                  D={"messages": 5})  # fmt: skip
    got = {r.stripe: r.msg_per_s for r in rows(second, first, now_ns=int(102e9))}
    # B went back (its daemon restarted), C is not a number, D is new: no rate, not a guess.
    assert got == {"A": 100.0, "B": None, "C": None, "D": None}
    assert {r.stripe: r.msg_per_s for r in rows(second, None, 0)} == dict.fromkeys("ABCD")
    assert rows(second, second, 0)[0].msg_per_s is None  # same report: no interval


def test_nothing_from_the_file_reaches_the_terminal_as_a_control_sequence(
    tmp_path: Path,
) -> None:
    """last_error can quote a server's text; a stripe name, a version, a summary are strings
    from a file. None of them may move the cursor, retitle the window or clear the screen."""
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\n\x9b1;1H\x00"
    path = tmp_path / "health.json"
    now = time.time_ns()
    path.write_text(json.dumps({
        "written_at_ns": now, "healthy": False, "summary": evil,
        "process": {"version": evil, "pid": evil, "memory": {"pss_mb": evil}},
        "stripes": {evil: {"state": evil, "last_error": evil, "messages": 1},
                    "A": {"state": "failed", "last_error": evil, "messages": "many"}},
    }))  # fmt: skip
    result = _status("--file", str(path), "--once", "--max-age", "0.3")
    assert result.returncode == 1  # unhealthy (and no new report)
    for ch in result.stdout:
        assert ch == "\n" or ch.isprintable(), repr(ch)  # no C0/C1 control, no ESC
    assert "A: failed: ?]0;pwned??[2J?[31mred" in result.stdout
