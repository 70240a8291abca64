"""``mlink-capture compact`` killed (SIGKILL) at every step: users read the old rows or the new
ones, never both and never fewer; the next run finishes the job; exit codes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from compact_util import TYPE, duck_rows, ns_of, write_live
from runtime_env import runtime_env

CONFIG = """
[source]
url = "ws://127.0.0.1:9/mlink/jsonf"
stripes = ["A"]
[output]
root = "{root}"
[compaction]
min_age = 0
row_group_rows = 2048
target_file_mb = 1
"""


def capture_tree(root: Path) -> None:
    seq = 0
    for day in ("2026-01-04", "2026-01-05"):
        for stripe in ("1", "2"):
            seq = write_live(root, start_ns=ns_of(f"{day}T09:00:00+00:00"), seconds=1800,
                             rows=3_000, seq0=seq, stripe=stripe)  # fmt: skip


def run(config: Path, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = runtime_env()
    env.pop("MLINK_CAPTURE_CRASH_AT", None)
    if crash_at:
        env["MLINK_CAPTURE_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "capture", "compact", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def partition_states(root: Path) -> dict[str, str]:
    """Per stripe directory: "old" (only live part files), "new" (only compacted files)."""
    states = {}
    for d in sorted((root / TYPE).glob("date=*/stripe=*")):
        names = [p.name for p in d.glob("*.parquet")]
        kinds = {n.split("-")[0] for n in names}
        assert kinds in ({"part"}, {"compacted"}), (d, names)  # never both
        states[f"{d.parent.name}/{d.name}"] = "old" if kinds == {"part"} else "new"
    return states


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live files, written once (by the real sink) and copied for each test."""
    root = tmp_path_factory.mktemp("captured") / "data"
    capture_tree(root)
    return root


@pytest.fixture
def tree(tmp_path: Path, captured: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(captured, root)
    config = tmp_path / "capture.toml"
    config.write_text(CONFIG.format(root=root))
    return root, config


@pytest.mark.parametrize(
    "point",
    [
        "compact.output",
        "compact.output:3",
        "compact.built",
        "compact.built:3",
        "compact.exchanged",
        "compact.exchanged:2",
        "compact.done",
    ],
)
def test_crash_at_every_step_leaves_old_or_new_and_a_rerun_finishes(
    tree: tuple[Path, Path], point: str
) -> None:
    root, config = tree
    before = duck_rows(root)
    crashed = run(config, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert duck_rows(root) == before
    states = partition_states(root)
    assert "old" in states.values() or point.startswith(("compact.exchanged", "compact.done"))
    done = run(config)
    assert done.returncode == 0, done.stderr
    assert duck_rows(root) == before
    assert set(partition_states(root).values()) == {"new"}
    assert not [p for p in (root / "_compaction" / "work").rglob("*") if p.is_file()]
    again = run(config)
    assert again.returncode == 0 and '"units_compacted": 0' in again.stdout
    verified = subprocess.run([sys.executable, "-m", "capture", "verify", str(root)],
                              capture_output=True, text=True, timeout=120,
                              env=runtime_env())  # fmt: skip
    assert verified.returncode == 0, verified.stdout


def test_exit_codes_bad_config_and_a_held_lock(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, config = tree
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.format(root=root) + 'granularity = "week"\n')
    out = run(bad)
    assert out.returncode == 2
    assert "compaction.granularity: must be one of day, hour" in out.stderr
    import fcntl

    (root / "_compaction").mkdir(exist_ok=True)
    with open(root / "_compaction" / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held = run(config)
    assert held.returncode == 75 and "another compaction is running" in held.stderr
    dry = subprocess.run(
        [sys.executable, "-m", "capture", "compact", "--config", str(config), "--dry-run",
         "--date", "2026-01-05", "--table", TYPE],
        capture_output=True, text=True, timeout=120, env=runtime_env(),
    )  # fmt: skip
    assert dry.returncode == 0 and dry.stdout.count("day:2026-01-05") == 2
    assert set(partition_states(root).values()) == {"old"}
    wrong = subprocess.run(
        [sys.executable, "-m", "capture", "compact", "-c", str(config), "--date", "05/01/2026"],
        capture_output=True,
        text=True,
        timeout=60,
        env=runtime_env(),
    )
    assert wrong.returncode == 2 and "not a date" in wrong.stderr
    folded = subprocess.run(
        [sys.executable, "-m", "capture", "compact", "-c", str(config), "--dry-run",
         "--table", "optionnbboquote", "--table", "NoSuchType"],
        capture_output=True, text=True, timeout=60, env=runtime_env(),
    )  # fmt: skip
    assert folded.returncode == 2 and "'NoSuchType': not an MLink message type" in folded.stderr
    lower = subprocess.run(
        [sys.executable, "-m", "capture", "compact", "-c", str(config), "--dry-run",
         "--table", "optionnbboquote"],
        capture_output=True, text=True, timeout=60, env=runtime_env(),
    )  # fmt: skip
    assert lower.returncode == 0 and lower.stdout.count("day:2026-01-0") == 4
