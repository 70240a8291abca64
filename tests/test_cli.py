"""The command line's conventions, as an operator meets them: ``-V``, help that says what a
command does and what its exit codes mean, ``--config`` everywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from capture import __version__

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "mlink-capture"
COMMANDS = ["run", "check-config", "health", "status", "demo", "verify", "replay", "simulate"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = _cli(flag)
    assert result.returncode == 0
    assert result.stdout.strip() == f"mlink-capture {__version__}"


def test_top_level_help_lists_every_command() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_what_it_does_and_its_exit_codes(command: str) -> None:
    result = _cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: mlink-capture {command}")
    description = rest.split("\n\n", 1)[0]
    assert len(description.split()) >= 8, f"{command}: no description: {description!r}"
    codes = dict(re.findall(r"^  (\d+)  (.+)$", text.split("\nexit codes:\n", 1)[1], re.M))
    assert "0" in codes and "bad usage" in codes["2"], codes
    # one way to name the configuration
    if command not in ("simulate",):
        assert "--config" in text


def test_check_config_takes_config_or_the_old_positional(tmp_path: Path) -> None:
    demo = str(ROOT / "config" / "demo.toml")
    for args in (["--config", demo], ["-c", demo], [demo]):
        result = _cli("check-config", *args)
        assert (result.returncode, result.stdout.strip()) == (0, f"{demo}: OK"), args
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nurl = "ws://h/mlink/jsonf"\nstripes = ["ZZ"]\n')
    result = _cli("check-config", "--config", str(bad))
    assert result.returncode == 2 and "source.stripes" in result.stderr
    for args in ([], ["--config", demo, demo]):
        result = _cli("check-config", *args)
        assert result.returncode == 2 and "--config FILE" in result.stderr, args


def test_unknown_command_and_option_exit_2() -> None:
    assert _cli("frobnicate").returncode == 2
    assert _cli("health", "--no-such-option").returncode == 2
