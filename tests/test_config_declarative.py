"""The declarative configuration: secrets by reference, old keys as aliases, one host id, and
every bad value named by its key (never a traceback)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.auth import make_provider
from capture.config import ALIASES, Config, ConfigError, read_section
from capture.credentials import Secret, SecretRef, SecretSource
from capture.errors import CredentialError

ROOT = Path(__file__).resolve().parents[1]
POOL, CLIENT = "eu-west-2_AbC123", "1a2b3c4d5e"


def minimal(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "source": {"url": "ws://127.0.0.1:9/mlink/jsonf", "stripes": ["A", "S"]},
        "output": {"root": "data"},
    }
    raw.update(over)
    return raw


def problems(raw: dict[str, Any], base_dir: Path = Path(".")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw, base_dir=base_dir)
    return info.value.problems


# -- SecretRef ------------------------------------------------------------------------------------


def test_a_secret_ref_never_prints_its_value() -> None:
    ref = SecretRef(inline=Secret("hunter2-inline-value"))
    auth = read_section("auth", {"method": "api_key"})
    cfg = Config.from_mapping(minimal())
    cfg = dataclasses.replace(cfg, auth=dataclasses.replace(auth, api_key=ref))
    for text in (repr(ref), str(ref), repr(cfg), str(cfg), f"{cfg.auth}"):
        assert "hunter2-inline-value" not in text
    assert repr(ref) == "SecretRef(inline=[redacted])"
    assert repr(SecretRef(env="K")) == "SecretRef(env='K')" and str(SecretRef(env="K")) == (
        "environment variable K"
    )


def test_a_secret_ref_names_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef()
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef(env="A", file=Path("b"))


def test_every_source_is_read(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mlink").write_text("from-credential\n")
    (tmp_path / "creds" / "mlink").chmod(0o600)
    (tmp_path / "key").write_text("from-file\n")
    (tmp_path / "key").chmod(0o600)
    environ = {"K": "from-env", "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    table = {
        "method": "cognito",
        "api_key": {"env": "K"},
        "cognito": {
            "password": {"file": "key"},
            "totp_secret": {"credential": "mlink"},
        },
    }
    auth = read_section("auth", table, base_dir=tmp_path)
    assert auth.api_key.read(environ).value == "from-env"
    assert auth.cognito.password.read(environ).value == "from-file"
    assert auth.cognito.totp_secret.read(environ).value == "from-credential"
    assert SecretRef(inline=Secret("in-code")).read({}).value == "in-code"
    # The key each was configured by travels with it (for messages), but is not its identity.
    assert auth.cognito.password.key == "auth.cognito.password"
    assert auth.cognito.password == SecretRef(file=tmp_path / "key")


def test_a_missing_secret_names_its_source_and_its_key(tmp_path: Path) -> None:
    cfg = Config.from_mapping(minimal(auth={"api_key": {"env": "NOT_SET_ANYWHERE"}}))
    with pytest.raises(CredentialError) as info:
        make_provider(cfg, {}).bearer()
    assert str(info.value) == (
        "API key from environment variable NOT_SET_ANYWHERE is not set or empty "
        "(configured by auth.api_key)"
    )
    missing = read_section("lake", {"host_id": "h", "bucket": "b-1", "catalog_password": {
        "file": "nope"}}, base_dir=tmp_path)  # fmt: skip
    with pytest.raises(CredentialError, match=r"\(configured by lake\.catalog_password\)$"):
        SecretSource("catalog password", missing.catalog_password).read()
    with pytest.raises(CredentialError, match="catalog password from nowhere"):
        SecretSource("catalog password", None).read()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"api_key": {}}, "auth.api_key: names no source: give env, file or credential"),
        ({"api_key": {"env": "A", "file": "b"}}, "auth.api_key: give one source, not env and file"),
        ({"api_key": {"env": ""}}, "auth.api_key.env: must be a non-empty string"),
        ({"api_key": {"env": 5}}, "auth.api_key.env: must be a non-empty string"),
        ({"api_key": {"value": "x"}}, "auth.api_key.value: unknown key (known: credential, env,"),
        ({"api_key": 7}, "auth.api_key: must be a table naming where the secret lives"),
        ({"api_key": "s3cr3t-in-file"}, "auth.api_key: secrets are not read from the TOML"),
        ({"cognito": {"password": "s3cr3t-in-file"}}, "auth.cognito.password: secrets are not"),
        ({"cognito": {"password": {"token": "s3cr3t-in-file"}}}, "auth.cognito.password.token:"),
    ],
)
def test_bad_secret_tables_are_named_by_key_without_echoing(
    table: dict[str, Any], expected: str
) -> None:
    got = problems(minimal(auth=table))
    assert any(p.startswith(expected) for p in got), got
    assert "s3cr3t-in-file" not in "; ".join(got)


# -- old keys --------------------------------------------------------------------------------------

FLAT_AUTH = {
    "method": "cognito",
    "cognito_user_pool_id": POOL,
    "cognito_client_id": CLIENT,
    "cognito_username": "trader1",
    "cognito_region": "eu-west-2",
    "cognito_password_file": "secrets/pw",
    "cognito_totp_secret_credential": "mlink-totp",
    "cognito_client_secret_env": "CS",
    "cognito_flow": "password",
    "cognito_token": "id",
    "cognito_refresh_margin": 120,
    "cognito_endpoint_url": "http://127.0.0.1:5000",
    "api_key_env": "MLINK_KEY",
}
NESTED_AUTH = {
    "method": "cognito",
    "api_key": {"env": "MLINK_KEY"},
    "cognito": {
        "user_pool_id": POOL,
        "client_id": CLIENT,
        "username": "trader1",
        "region": "eu-west-2",
        "password": {"file": "secrets/pw"},
        "totp_secret": {"credential": "mlink-totp"},
        "client_secret": {"env": "CS"},
        "flow": "password",
        "token": "id",
        "refresh_margin": 120,
        "endpoint_url": "http://127.0.0.1:5000",
    },
}
FLAT_LAKE = {
    "host_id": "cap-1",
    "bucket": "b-1",
    "access_key_id_env": "KID",
    "secret_access_key_file": "s3-secret",
    "catalog_uri": "postgresql+psycopg2://u:{password}@db/x",
    "catalog_password_credential": "pg",
}
NESTED_LAKE = {
    "bucket": "b-1",
    "access_key_id": {"env": "KID"},
    "secret_access_key": {"file": "s3-secret"},
    "catalog_uri": "postgresql+psycopg2://u:{password}@db/x",
    "catalog_password": {"credential": "pg"},
}


def test_old_flat_keys_give_the_same_configuration_as_the_nested_ones() -> None:
    base = Path("/etc/mlink")
    old = Config.from_mapping(minimal(auth=FLAT_AUTH, lake=FLAT_LAKE), base_dir=base)
    new = Config.from_mapping(
        minimal(auth=NESTED_AUTH, lake=NESTED_LAKE, capture={"host_id": "cap-1"}), base_dir=base
    )
    assert old == new
    assert new.auth.cognito.password == SecretRef(file=base / "secrets/pw")
    assert new.lake is not None and new.lake.secret_access_key == SecretRef(file=base / "s3-secret")
    # Both forms in one file, agreeing, are fine too.
    both = {**FLAT_AUTH, **NESTED_AUTH}
    assert Config.from_mapping(minimal(auth=both, lake=FLAT_LAKE), base_dir=base) == old


def test_every_alias_points_at_a_setting() -> None:
    for old, new in ALIASES.items():
        *path, last = new.split(".")
        assert last in {f.name for f in dataclasses.fields(type_at(path))}, old


def type_at(path: list[str]) -> Any:
    typ: Any = Config
    for part in path:
        hint = typing.get_type_hints(typ)[part]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        typ = args[0] if args else hint
    return typ


@pytest.mark.parametrize(
    ("raw", "old", "new"),
    [
        (
            {"auth": {"cognito_user_pool_id": POOL, "cognito": {"user_pool_id": "us-east-1_X1"}}},
            "auth.cognito_user_pool_id",
            "auth.cognito.user_pool_id",
        ),
        (
            {"auth": {"api_key_env": "A", "api_key": {"env": "B"}}},
            "auth.api_key_env",
            "auth.api_key.env",
        ),
        (
            {"capture": {"host_id": "a"}, "lake": {"host_id": "b", "bucket": "b-1"}},
            "lake.host_id",
            "capture.host_id",
        ),
    ],
)
def test_an_old_and_a_new_key_that_disagree_are_one_error_naming_both(
    raw: dict[str, Any], old: str, new: str
) -> None:
    got = problems(minimal(**raw))
    assert got == [f"{new}: also given as {old} (its old name), with another value; give one of "
                   "the two"]  # fmt: skip


# -- one host id -----------------------------------------------------------------------------------


def test_one_host_id_for_the_daemon_and_the_lake() -> None:
    lake = {"bucket": "b-1"}
    old = Config.from_mapping(minimal(lake={**lake, "host_id": "cap-ny4-01"}))
    new = Config.from_mapping(minimal(lake=lake, capture={"host_id": "cap-ny4-01"}))
    for cfg in (old, new):
        assert cfg.capture.host_id == "cap-ny4-01"
        assert cfg.lake is not None and cfg.lake.host_id == "cap-ny4-01"
    assert old == new


def test_the_lake_needs_an_explicit_host_id_without_dots() -> None:
    assert problems(minimal(lake={"bucket": "b-1"})) == [
        "capture.host_id: required with [lake] (or lake.host_id, its old name): this host's "
        "name in object keys and snapshot summaries"
    ]
    dotted = "cap.ny4"  # fine in a footer, not in an object key or a snapshot summary key
    assert Config.from_mapping(minimal(capture={"host_id": dotted})).capture.host_id == dotted
    got = problems(minimal(lake={"bucket": "b-1", "host_id": dotted}))
    assert len(got) == 1 and got[0].startswith("lake.host_id: must be 1-63 letters")
    got = problems(minimal(lake={"bucket": "b-1"}, capture={"host_id": dotted}))
    assert len(got) == 1 and got[0].startswith("capture.host_id: must be 1-63 letters")


# -- paths of the right kind -----------------------------------------------------------------------


def test_paths_must_be_of_the_right_kind(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    got = problems(
        minimal(
            output={"root": "a-file"},
            journal={"directory": "a-file"},
            health={"path": "a-dir"},
        ),
        base_dir=tmp_path,
    )
    assert sorted(got) == [
        f"health.path: {tmp_path / 'a-dir'} is a directory; name the file to write",
        f"journal.directory: {tmp_path / 'a-file'} is not a directory",
        f"output.root: {tmp_path / 'a-file'} is not a directory",
    ]


# -- hostile files ---------------------------------------------------------------------------------


def every_key() -> list[str]:
    """Every setting's dotted key (nested tables included) and every old key."""
    keys: list[str] = []

    def walk(typ: Any, path: str) -> None:
        for f in dataclasses.fields(typ):
            if f.metadata.get("derived"):
                continue
            sub = type_at([*path.split("."), f.name])
            keys.append(f"{path}.{f.name}")
            if dataclasses.is_dataclass(sub) and sub.__name__ != "SecretRef":
                walk(sub, f"{path}.{f.name}")

    for f in dataclasses.fields(Config):
        walk(type_at([f.name]), f.name)
    return keys + list(ALIASES)


KEYS = every_key()
TOML_SCALARS = st.one_of(
    st.text(max_size=30),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.sampled_from(["", "/", ".", "..", "~", "$HOME", "\x00", "a" * 5000, "0640", "UTC"]),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=8,
)  # fmt: skip


def put(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


@settings(
    max_examples=600, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(key=st.sampled_from(KEYS), value=TOML_VALUES)
def test_any_value_for_any_key_is_accepted_or_named_never_a_traceback(
    key: str, value: Any
) -> None:
    raw = minimal(lake={"bucket": "b-1"}, capture={"host_id": "h1"})
    raw = {k: dict(v) for k, v in raw.items()}
    if key == "lake.host_id":
        del raw["capture"]
    put(raw, key, value)
    try:
        Config.from_mapping(raw, base_dir=Path("/nonexistent-base"))
    except ConfigError as exc:
        text = "; ".join(exc.problems)
        assert exc.problems and all(": " in p for p in exc.problems)
        named = {key, ALIASES.get(key, key)}
        # The key itself, or (a value that cannot be used with another setting) a problem
        # that names it.
        assert any(p.startswith(tuple(named)) or any(n in p for n in named)
                   for p in exc.problems), (key, text)  # fmt: skip


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(section=st.sampled_from([f.name for f in dataclasses.fields(Config)]), value=TOML_VALUES)
def test_any_value_for_a_whole_section_is_named(section: str, value: Any) -> None:
    raw = minimal(**{section: value})
    try:
        Config.from_mapping(raw)
    except ConfigError as exc:
        # Each problem is the section's (or names it: a setting it needs from another).
        assert all(p.startswith(section) or section in p for p in exc.problems), exc.problems


def test_numbers_of_every_kind_are_checked_for_finiteness() -> None:
    for key in ("auth.cognito.refresh_margin", "lake.commit_interval", "health.quiet_after"):
        raw = minimal(lake={"bucket": "b-1", "host_id": "h"})
        put(raw, key, math.inf)
        assert problems(raw) == [f"{key}: must be a finite number, got inf"]
    raw = minimal()
    put(raw, "output.root", dt.date(2026, 12, 3))
    assert problems(raw) == ["output.root: must be a path, got date"]
