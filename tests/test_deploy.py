"""Deployment files are code: checked by the tools that exist for them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capture.config import Config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "mlink-capture"
UNITS = ["mlink-capture.service", "mlink-capture@.service"]


def installed_copy(tmp_path: Path, unit: str, name: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's executable (verify checks it)."""
    text = (ROOT / "systemd" / unit).read_text()
    out = tmp_path / (name or unit)
    out.write_text(text.replace("/opt/mlink-capture/bin/mlink-capture", str(BIN)))
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_units_verify_clean_and_are_sandboxed(tmp_path: Path) -> None:
    paths = [installed_copy(tmp_path, u) for u in UNITS]
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True,
        check=False,
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    for unit in (paths[0], installed_copy(tmp_path, UNITS[1], "mlink-capture@group.service")):
        security = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(unit)],
            capture_output=True, text=True, check=False,
        )
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
        assert match, security.stdout[-500:]
        assert float(match.group(1)) <= 1.5, security.stdout  # README reports the score


def test_units_are_what_the_daemon_expects() -> None:
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=",
                     "LoadCredential=mlink-api-key:", "ExecReload=/bin/kill -HUP $MAINPID",
                     "KillSignal=SIGTERM",
                     # stripe-group processes: the daemon stops and restarts them itself
                     "KillMode=mixed", "OOMPolicy=continue"):
            assert line in text, (unit, line)
    assert "--config /etc/mlink-capture/%i.toml" in (ROOT / "systemd" / UNITS[1]).read_text()


def test_dockerfile_runs_the_tested_command_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2 and "-slim" in text  # multi-stage onto a slim image
    assert re.search(r"^USER mlink$", text, re.M)
    assert 'ENTRYPOINT ["mlink-capture"]' in text  # exec form: signals reach the daemon
    assert 'CMD ["run", "--config", "/etc/mlink-capture/capture.toml"]' in text
    assert "STOPSIGNAL SIGTERM" in text and "tzdata" in text and "VOLUME" in text
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["mlink-capture", "health"', text)
    # The configuration the image ships is valid.
    Config.from_toml(ROOT / "config" / "docker.toml")


def test_every_shipped_configuration_is_valid() -> None:
    names = []
    for path in sorted((ROOT / "config").glob("*.toml")):
        Config.from_toml(path)  # raises ConfigError naming every problem
        names.append(path.name)
    assert names == ["capture.toml", "demo.toml", "docker.toml"]
