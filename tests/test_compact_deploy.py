"""The scheduled mode's deployment files: the systemd timer and service, the compose service,
and ``compact --every`` itself (it runs, repeats and stops on SIGTERM with exit 0)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "mlink-capture"
UNITS = ("mlink-capture-compact.service", "mlink-capture-compact.timer")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_timer_and_service_verify_clean_and_are_sandboxed(tmp_path: Path) -> None:
    paths = []
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        out = tmp_path / unit
        out.write_text(text.replace("/opt/mlink-capture/bin/mlink-capture", str(BIN)))
        paths.append(out)
    verify = subprocess.run(["systemd-analyze", "verify", *map(str, paths)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(paths[0])],
                              capture_output=True, text=True, check=False)  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert match and float(match.group(1)) <= 1.0, security.stdout[-500:]


def test_service_runs_the_daemons_config_as_the_daemons_user() -> None:
    text = (ROOT / "systemd" / UNITS[0]).read_text()
    daemon = (ROOT / "systemd" / "mlink-capture.service").read_text()
    assert "compact --config /etc/mlink-capture/capture.toml" in text
    assert "--config /etc/mlink-capture/capture.toml" in daemon
    assert "User=mlink-capture" in text and "StateDirectory=mlink-capture" in text
    assert "SuccessExitStatus=75" in text and "Type=oneshot" in text
    assert "OnCalendar=hourly" in (ROOT / "systemd" / UNITS[1]).read_text()


def test_compose_runs_compact_every_hour_on_the_capture_volume() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    block = text.split("\n  compact:\n", 1)[1].split("\n\n", 1)[0]
    assert '"compact", "--config", "/etc/mlink-capture/compose.toml", "--every", "3600"' in block
    assert "capture-data:/var/lib/mlink-capture" in block


def test_every_repeats_until_sigterm_then_exits_0(
    tmp_path: Path, reap: Callable[..., None]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[source]\nurl = "ws://127.0.0.1:9/mlink/jsonf"\nstripes = ["A"]\n'
        f'[output]\nroot = "{tmp_path / "data"}"\n[logging]\nformat = "json"\n'
    )
    (tmp_path / "data").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "capture", "compact", "--config", str(config), "--every", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "MLINK_CAPTURE_CRASH_AT"},
    )  # fmt: skip
    reap(proc)
    deadline = time.monotonic() + 60
    runs = 0
    assert proc.stderr is not None
    while runs < 2 and time.monotonic() < deadline:
        line = proc.stderr.readline()
        runs += '"housekeeping.done"' in line
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert runs == 2 and proc.returncode == 0
    assert out.count('"compaction"') >= 2
