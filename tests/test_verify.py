"""``mlink-capture verify``: clean captures pass; each kind of damage is named; exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from memnet import KEY, MemoryNet, config, mock_clock, run

from capture.app import Daemon
from capture.sim.config import SimConfig
from capture.sim.server import Simulator

BIN = Path(sys.executable).parent / "mlink-capture"


@pytest.fixture(scope="module")
def capture_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cap") / "data"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=20, seed=31)
    cfg = config(
        root, ["A", "M"], ["OptionNbboQuote", "StockPrint"], output={"rotate_interval": 60}
    )

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(70)  # a rotation at 60 s, and the files committed at the stop

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    return root


def verify(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "verify", str(root), *extra], capture_output=True, text=True, check=False
    )


def test_a_clean_capture_verifies_and_rows_are_counted(capture_tree: Path) -> None:
    result = verify(capture_tree, "--deep", "--json")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] and report["problems"] == []
    tables = {(r["table"], r["stripe"]) for r in report["rows"]}
    assert {("OptionNbboQuote", "A"), ("OptionNbboQuote", "M"), ("StockPrint", "M")} <= tables
    import pyarrow.dataset as ds

    for table in ("OptionNbboQuote", "StockPrint"):
        counted = sum(r["rows"] for r in report["rows"] if r["table"] == table)
        assert counted == ds.dataset(capture_tree / table, partitioning="hive").count_rows()


def test_damage_is_found_and_named(capture_tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(capture_tree, root)
    files = sorted((root / "OptionNbboQuote").rglob("*.parquet"))
    assert len(files) >= 2
    # A truncated file, and a file copied under a second name (its rows twice).
    files[0].write_bytes(files[0].read_bytes()[:-100])
    shutil.copy(files[1], files[1].with_name("part-copy.parquet"))
    (files[1].parent / ".part-x.parquet.inprogress").write_bytes(b"PAR1")
    result = verify(root)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"{files[0].name}: cannot be read" in out
    assert "part-copy.parquet" in out and "rows twice" in out
    assert "unfinished file" in out and "2 problem(s)" in out


def test_journal_accounting_and_damage(capture_tree: Path, tmp_path: Path) -> None:
    result = verify(capture_tree, "--json")
    notes = json.loads(result.stdout)["notes"]
    # After a clean stop every journaled frame is in committed Parquet.
    accounting = [n for n in notes if n.startswith("journal stripe")]
    assert len(accounting) == 2 and all(" 0 not yet" in n for n in accounting), accounting
    root = tmp_path / "data"
    shutil.copytree(capture_tree, root)
    segment = sorted((root / "_journal" / "stripe=A").glob("seg-*.mlj"))[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the middle of the segment
    segment.write_bytes(bytes(data))
    damaged = verify(root, "--json")
    problems = json.loads(damaged.stdout)["problems"]
    assert damaged.returncode == 1 and any("damaged at byte" in p for p in problems), problems


def test_a_file_inside_another_files_range_is_found(tmp_path: Path) -> None:
    """Files of one type holding receive sequence 0..299, 100..149 and 200..249: the first
    overlaps both others, also the one that is not its neighbour in order."""
    import pyarrow as pa

    from capture.sink import PartitionSink, SinkSettings
    from capture.verify import verify as verify_tree

    base_ns = 1_748_875_500_000_000_000
    sink = PartitionSink(SinkSettings(root=tmp_path), stripe="A", session="s", now_ns=lambda: 0)
    for seqs in ([0, 299], [100, 149], [200, 249]):
        recv = [base_ns + s for s in seqs]
        sink.write(
            "T",
            pa.RecordBatch.from_pydict(
                {
                    "_recv_time": pa.array([r // 1000 for r in recv], pa.int64()).cast(
                        pa.timestamp("us", tz="UTC")
                    ),
                    "_recv_time_ns": pa.array(recv, pa.int64()),
                    "_seq": pa.array(seqs, pa.int64()),
                }
            ),
        )
        sink.rotate_all()
    sink.close()
    problems = verify_tree(tmp_path).problems
    assert len(problems) == 2, problems
    assert "receive sequence 100..149 is in both" in problems[0]
    assert "receive sequence 200..249 is in both" in problems[1]
