"""Permissions of what the daemon creates (``output.file_mode`` and ``dir_mode``): licensed
market data is not world-readable, whatever umask the daemon was started with; the health file
is readable by the group that monitors it."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import test_process
from runtime_env import runtime_env

from capture.config import Config, ConfigError

simulator = test_process.simulator  # the simulator in its own process, as in test_process


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("setting", "file_mode", "dir_mode"),
    [("", 0o640, 0o750), ('file_mode = "0660"\ndir_mode = 0o770\n', 0o660, 0o770)],
    ids=["defaults", "group-writable"],
)
def test_what_the_daemon_creates_has_the_configured_modes(
    tmp_path: Path, simulator: tuple[int, Path], setting: str, file_mode: int, dir_mode: int
) -> None:
    port, _ = simulator
    cfg = test_process.write_config(tmp_path, port, processes=2)
    cfg.write_text(cfg.read_text().replace("[output]\n", "[output]\n" + setting))
    root, health_file = tmp_path / "data", tmp_path / "run" / "health.json"
    daemon = subprocess.Popen(
        [str(test_process.BIN), "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=runtime_env(),
        umask=0,  # a careless parent: everything would be world-writable
    )  # fmt: skip
    try:

        def streaming() -> bool:
            if not health_file.exists():
                return False
            doc = json.loads(health_file.read_text())
            return all(s["rows_written"] > 0 for s in doc["stripes"].values())

        test_process._wait(streaming, 30, "rows written")
        daemon.send_signal(signal.SIGHUP)  # commit files now
        test_process._wait(lambda: len(list(root.rglob("*.parquet"))) >= 4, 20, "files")
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=40)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err[-2000:]

    assert _mode(health_file) == file_mode | 0o040  # the group reads it
    assert _mode(health_file.parent) == dir_mode
    parquet = list(root.rglob("*.parquet"))
    journal = list((root / "_journal").rglob("*"))
    assert parquet and any(p.is_file() for p in journal)
    for path in [root, *root.rglob("*")]:
        mode = _mode(path)
        if path.is_dir():
            assert mode == dir_mode, (path, oct(mode))
        elif path.suffix == ".parquet":
            assert mode == file_mode, (path, oct(mode))
        else:  # journal segments, locks, events: at most the configured mode
            assert mode & ~file_mode == 0 and mode & 0o007 == 0, (path, oct(mode))


def _raw(**output: Any) -> dict[str, Any]:
    return {
        "source": {"url": "ws://h/mlink/jsonf", "stripes": ["A"]},
        "output": {"root": "data", **output},
    }


def test_defaults_are_not_world_readable() -> None:
    out = Config.from_mapping(_raw()).output
    assert (out.file_mode, out.dir_mode, out.umask) == (0o640, 0o750, 0o027)
    out = Config.from_mapping(_raw(file_mode="644", dir_mode="0755")).output
    assert (out.file_mode, out.dir_mode, out.umask) == (0o644, 0o755, 0o022)


@pytest.mark.parametrize(
    ("output", "key"),
    [
        ({"file_mode": "0649"}, "output.file_mode"),
        ({"file_mode": "rw-r-----"}, "output.file_mode"),
        ({"file_mode": 0o1640}, "output.file_mode"),
        ({"file_mode": -1}, "output.file_mode"),
        ({"file_mode": True}, "output.file_mode"),
        ({"file_mode": "0400"}, "output.file_mode"),  # the daemon could not write its files
        ({"file_mode": "0750", "dir_mode": "0750"}, "output.file_mode"),  # executable data
        ({"dir_mode": "0640"}, "output.dir_mode"),  # the daemon could not enter its dirs
        ({"dir_mode": "07500"}, "output.dir_mode"),
        ({"file_mode": "0600", "dir_mode": "0750"}, "output.file_mode"),  # one umask cannot
        ({"file_mode": "0640", "dir_mode": "0700"}, "output.file_mode"),
    ],
)
def test_bad_modes_name_the_key(output: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(_raw(**output))
    assert [p.split(":")[0] for p in info.value.problems] == [key]
