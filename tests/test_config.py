"""Configuration: every problem named by its key, all at once; the shipped files are valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from capture.config import Config, ConfigError
from capture.credentials import SecretRef

ROOT = Path(__file__).resolve().parents[1]


def minimal(**over: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "source": {"url": "ws://127.0.0.1:9/mlink/jsonf", "stripes": ["A", "S"]},
        "output": {"root": "data"},
    }
    raw.update(over)
    return raw


def test_shipped_configurations_are_valid() -> None:
    full = Config.from_toml(ROOT / "config" / "capture.toml")
    assert full.source.stripes == ("A", "B", "C", "D", "E", "F", "G", "H", "M", "S", "X")
    assert full.source.active_latency == 1
    assert full.source.websocket == "wsproto"
    demo_raw = (ROOT / "config" / "demo.toml").read_text()
    assert "[demo]" in demo_raw


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = Config.from_mapping(minimal(), base_dir=tmp_path)
    assert cfg.output.root == tmp_path / "data"
    assert cfg.output.timezone == "UTC" and cfg.output.rotate_interval == 300
    assert cfg.source.message_types == (
        "OptionNbboQuote", "OptionPrint", "StockBookQuote", "StockPrint"
    )


def test_message_type_names_are_case_insensitive_and_canonicalised() -> None:
    raw = minimal()
    raw["source"] = {**raw["source"], "message_types": ["optionnbboquote"]}  # type: ignore[dict-item]
    assert Config.from_mapping(raw).source.message_types == ("OptionNbboQuote",)


def test_every_problem_is_reported_with_its_key() -> None:
    raw = {
        "source": {
            "url": "http://example/mlink/json",
            "stripes": ["A", "Q9"],
            "message_types": ["OptionNbboQuote", "NoSuchType"],
            "active_latency": 0,
            "websocket": "aiohttp",
            "colour": "blue",
        },
        "auth": {"api_key": "super-secret-value"},
        "output": {"root": 5, "timezone": "Mars/Olympus", "rotate_interval": 7},
        "supervision": {"backoff_jitter": 3, "stale_after": "soon"},
        "logging": {"level": "loud"},
        "extra": {},
    }
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    problems = info.value.problems
    keys = {p.split(":", 1)[0] for p in problems}
    assert keys == {
        "extra", "source.url", "source.stripes", "source.message_types", "source.active_latency",
        "source.websocket", "source.colour", "auth.api_key", "output.root", "output.timezone",
        "output.rotate_interval", "supervision.backoff_jitter", "supervision.stale_after",
        "logging.level",
    }
    assert any("Q9" in p for p in problems) and any("NoSuchType" in p for p in problems)
    assert "source.websocket: must be one of wsproto, trio-websocket" in problems
    # The secret that was wrongly put in the file is never echoed back.
    assert "super-secret-value" not in str(info.value)


def test_unwritable_output_root_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    raw = minimal(output={"root": str(blocker / "data")})
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw, check_paths=True)
    assert [p.split(":")[0] for p in info.value.problems] == ["output.root"]


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "capture", "check-config", str(ROOT / "config" / "demo.toml")],
        capture_output=True, text=True, check=False,
    )
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[source]\nurl = "ws://h/mlink/jsonf"\nstripes = ["ZZ"]\n')
    bad = subprocess.run(
        [sys.executable, "-m", "capture", "check-config", str(bad_file)],
        capture_output=True, text=True, check=False,
    )
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 2
    assert "source.stripes" in bad.stderr and "output.root: required" in bad.stderr


@pytest.mark.parametrize("section", ["source", "output", "journal", "health", "demo", "logging"])
@pytest.mark.parametrize("key", ["api_key", "password", "client_secret", "token", "API_KEY"])
def test_a_secret_in_any_section_is_refused_without_echoing_it(section: str, key: str) -> None:
    raw = minimal()
    raw[section] = {**raw.get(section, {}), key: "hunter2-very-secret"}  # type: ignore[dict-item]
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    assert f"{section}.{key}: secrets are not read from the TOML" in str(info.value)
    assert "hunter2-very-secret" not in str(info.value)


def test_secret_sources_are_not_secrets() -> None:
    raw = minimal(auth={"api_key_env": "X", "api_key_file": "k", "api_key_credential": "c"})
    # Several old flat sources: the first of credential, file, env wins (as it always did).
    assert Config.from_mapping(raw).auth.api_key == SecretRef(credential="c")


@pytest.mark.parametrize(
    ("section", "key", "value", "why"),
    [
        ("journal", "durability_interval", float("inf"), "must be a finite number"),
        ("supervision", "backoff_max", float("inf"), "must be a finite number"),
        ("supervision", "backoff_initial", float("nan"), "must be a finite number"),
        ("health", "interval", float("-inf"), "must be a finite number"),
        ("pipeline", "flush_interval", 1e-9, "must be between 0.01 and 3600 seconds"),
        ("journal", "durability_interval", 1e-9, "must be between 0.01 and 3600 seconds"),
        ("health", "interval", 0, "must be between 0.01 and 3600 seconds"),
        ("supervision", "stale_after", 1e-6, "must be between 0.1 and 86400 seconds"),
        ("supervision", "backoff_multiplier", 0.5, "must be between 1 and 100"),
        ("supervision", "auth_backoff", 1e12, "must be between 0.01 and 604800 seconds"),
        ("journal", "retain_hours", -1, "must be between 0 and 87600 hours"),
        ("journal", "segment_mb", 10**9, "must be between 1 and 4,096"),
        ("pipeline", "batch_rows", 0, "must be between 1 and 1,048,576"),
    ],
)
def test_numbers_must_be_finite_and_sane(section: str, key: str, value: float, why: str) -> None:
    raw = minimal(**{section: {key: value}})
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    if "finite" in why:
        got = f"{value}"
    else:
        got = f"{value:,}" if isinstance(value, int) else f"{value:g}"
    assert info.value.problems == [f"{section}.{key}: {why}, got {got}"]


def test_the_filesystem_root_is_refused_as_data_root_or_journal(tmp_path: Path) -> None:
    raw = minimal(output={"root": "/"}, journal={"directory": "/"})
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "journal.directory", "output.root",
    ]
    assert "filesystem root" in str(info.value)
    # The same through a relative path that climbs to the root.
    depth = len(tmp_path.resolve().parts)
    with pytest.raises(ConfigError):
        Config.from_mapping(minimal(output={"root": "/".join([".."] * depth)}), base_dir=tmp_path)


def test_a_health_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "health").mkdir()
    raw = minimal(health={"path": "health"})
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw, base_dir=tmp_path)
    assert [p.split(":")[0] for p in info.value.problems] == ["health.path"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'[source]\nurl = "ws://h/mlink/jsonf"\n# caf\xe9 in Latin-1\n', "not UTF-8 text"),
        (b"\xff\xfe[\x00s\x00", "not UTF-8 text"),
        (b"[source\nurl = 1", "not valid TOML"),
        (None, "is a directory"),
        (b"x = " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"# " + b"x" * 2_000_000 + b"\n", "a configuration is at most 1,000,000"),
        (b"# " + b"\xc3\xa9" * 3_000_000 + b"\n", "over 4,000,000 bytes"),
    ],
)
def test_check_config_names_an_unreadable_file_without_a_traceback(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "c.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "capture", "check-config", str(path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_limits_have_sane_defaults_and_the_shipped_file_spells_them_out() -> None:
    cfg = Config.from_mapping(minimal())
    shipped = Config.from_toml(ROOT / "config" / "capture.toml")
    assert cfg.limits == shipped.limits
    assert (cfg.limits.max_depth, cfg.limits.max_frame_bytes) == (64, 999_999)
    assert cfg.limits.max_open_types == 64 and cfg.limits.max_type_name == 128


def test_limits_out_of_range_or_unknown_are_named_by_key() -> None:
    raw = minimal(
        limits={"max_depth": 1000, "max_fields": "many", "max_frame_bytes": 2_000_000, "depth": 3}
    )
    with pytest.raises(ConfigError) as err:
        Config.from_mapping(raw)
    problems = err.value.problems
    assert "limits.max_depth: must be between 8 and 200, got 1,000" in problems
    assert "limits.max_fields: must be an integer, got a string" in problems
    assert "limits.max_frame_bytes: must be between 1,024 and 999,999, got 2,000,000" in problems
    assert any(p.startswith("limits.depth: unknown key") for p in problems)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"x = " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"rate = 1 # caf\xe9", "not UTF-8 text"),
        (None, "cannot be read"),
    ],
)
def test_the_demo_and_the_simulator_name_a_bad_file_without_a_traceback(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "c.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    for command in (["simulate", "--config"], ["demo", "--seconds", "1", "--config"]):
        result = subprocess.run(
            [sys.executable, "-m", "capture", *command, str(path)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        if command[0] == "simulate":
            assert expected in result.stderr
