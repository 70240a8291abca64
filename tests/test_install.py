"""Install outside a clone, as the README says: ``make dist`` builds a wheel, a fresh virtual
environment installs it (its dependencies from the package index), and the installed command
runs: ``--version`` and ``check-config`` on every configuration the project ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from capture import __version__

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd,
        timeout=900,
    )  # fmt: skip


def test_make_dist_wheel_installs_and_runs(tmp_path: Path) -> None:
    # What `make dist` runs (pip's own wheel builder: no extra build tool), into a scratch dir.
    built = _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                 "--wheel-dir", tmp_path / "dist", ROOT, cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = list((tmp_path / "dist").glob("*.whl"))
    assert [w.name for w in wheels] == [f"mlink_capture-{__version__}-py3-none-any.whl"]

    venv = tmp_path / "venv"
    # Without a pip of its own: this one installs into it (pip --python). A fresh copy of pip
    # in the new environment would compile itself first, more than half of the install's CPU.
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    # --no-compile: no .pyc for every module of every dependency (pyarrow, boto3, ...): most of
    # the install's CPU, and nothing this test checks; Python compiles what it imports anyway.
    installed = _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
                     "--quiet", "--no-compile", wheels[0], cwd=tmp_path)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]

    # The installed package, not this checkout's sources.
    where = _run(venv / "bin" / "python", "-c", "import capture; print(capture.__file__)",
                 cwd=tmp_path)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    command = venv / "bin" / "mlink-capture"
    version = _run(command, "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"mlink-capture {__version__}")
    configs = sorted((ROOT / "config").glob("*.toml"))
    assert len(configs) >= 3
    for config in configs:
        checked = _run(command, "check-config", "--config", config, cwd=tmp_path)
        assert checked.returncode == 0, (config.name, checked.stderr)
        assert checked.stdout.strip() == f"{config}: OK"
    # What the systemd unit and the image run is there too.
    for args in (["run", "--help"], ["status", "--help"], ["simulate", "--help"]):
        shown = _run(command, *args, cwd=tmp_path)
        assert shown.returncode == 0 and "exit codes:" in shown.stdout, args
