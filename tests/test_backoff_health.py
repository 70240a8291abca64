"""Backoff values and the health file's verdicts."""

from __future__ import annotations

import json
import random
from pathlib import Path

from capture import health
from capture.backoff import Backoff
from capture.stats import StripeStats

S = 1_000_000_000


def test_backoff_grows_exponentially_is_capped_and_jittered_within_bounds() -> None:
    b = Backoff(initial=1.0, maximum=60.0, multiplier=2.0, jitter=0.0)
    assert [b.delay(n, random.Random(0)) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    j = Backoff(initial=10.0, maximum=60.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(1)
    samples = [j.delay(0, rng) for _ in range(500)]
    assert min(samples) >= 8.0 and max(samples) <= 12.0 and len(set(samples)) > 400
    assert all(j.delay(20, rng) <= 60.0 for _ in range(100))


def streaming(code: str, **kw: int) -> StripeStats:
    s = StripeStats(code, state="streaming", connected_since_ns=100 * S, last_data_ns=100 * S)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_health_document_states_and_atomic_write(tmp_path: Path) -> None:
    quiet = streaming("B", last_data_ns=10 * S)
    doc = health.build(
        [streaming("A", rows_written=5), quiet],
        now_ns=101 * S, started_ns=1 * S, data_root=tmp_path, quiet_after_s=30, open_files=2,
    )
    assert doc["stripes"]["A"]["state"] == "streaming"
    assert doc["stripes"]["B"]["state"] == "quiet"  # heartbeats only for 91 s
    assert doc["healthy"] is True
    path = tmp_path / "h" / "health.json"
    health.write_atomic(path, doc)
    process = json.loads(path.read_text())["process"]
    assert process["uptime_s"] == 100.0 and process["open_files"] == 2
    assert process["journal_lag_frames"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["health.json"]  # no temp left behind

    code, _ = health.check(path, max_age_s=30, now_ns=102 * S)
    assert code == 0
    code, line = health.check(path, max_age_s=30, now_ns=102 * S, require_data=True)
    assert code == 1 and "B=quiet" in line
    code, line = health.check(path, max_age_s=30, now_ns=200 * S)
    assert code == 1 and "old" in line
    assert health.check(tmp_path / "missing.json", max_age_s=30, now_ns=0)[0] == 2


def test_unhealthy_states_and_secret_free_errors(tmp_path: Path) -> None:
    from capture.logs import register_secret

    register_secret("key-1234-abcd")
    bad = StripeStats("C", state="auth_failed", last_error="rejected key-1234-abcd")
    doc = health.build(
        [streaming("A"), bad], now_ns=101 * S, started_ns=S, data_root=tmp_path,
        quiet_after_s=30, open_files=0,
    )
    assert doc["healthy"] is False
    assert "key-1234-abcd" not in json.dumps(doc)
    path = tmp_path / "health.json"
    health.write_atomic(path, doc)
    code, line = health.check(path, max_age_s=30, now_ns=101 * S)
    assert code == 1 and "C=auth_failed" in line


def test_a_stripe_with_neither_data_nor_heartbeat_for_stale_after_is_stale(tmp_path: Path) -> None:
    silent = streaming("A", last_alive_ns=60 * S, last_data_ns=60 * S)
    beating = streaming("B", last_alive_ns=99 * S, last_data_ns=10 * S)  # heartbeats only
    doc = health.build(
        [silent, beating], now_ns=101 * S, started_ns=S, data_root=tmp_path, quiet_after_s=30,
        open_files=0, stale_after_s=30,
    )
    assert doc["stripes"]["A"]["state"] == "stale"
    assert doc["stripes"]["B"]["state"] == "quiet"
    assert doc["healthy"] is False
    path = tmp_path / "health.json"
    health.write_atomic(path, doc)
    code, line = health.check(path, max_age_s=30, now_ns=101 * S)
    assert code == 1 and "A=stale" in line
