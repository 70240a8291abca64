"""The lake through a REST catalog: the ``[lake]`` keys a REST catalog needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capture.config import Config, ConfigError, LakeConfig
from capture.credentials import SecretRef

# -- configuration --------------------------------------------------------------------------------


def problems(tmp_path: Path, lake: dict[str, Any]) -> list[str]:
    raw: dict[str, Any] = {
        "source": {"url": "ws://127.0.0.1:1/mlink/jsonf", "stripes": ["A"]},
        "output": {"root": str(tmp_path)},
        "capture": {"host_id": "h"},
        "lake": {"bucket": "b-1", **lake},
    }
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    return info.value.problems


def test_rest_keys_are_read_and_their_problems_name_the_key(tmp_path: Path) -> None:
    rest = {"catalog": "rest", "catalog_uri": "https://catalog.example.net/api/catalog"}
    cfg = LakeConfig.from_table({
        "host_id": "h", "bucket": "b-1", **rest, "catalog_warehouse": "prod",
        "catalog_credential": {"credential": "rest-cred"}, "catalog_scope": "PRINCIPAL_ROLE:ALL",
        "catalog_oauth2_uri": "https://idp.example.net/token", "catalog_prefix": "prod",
    })  # fmt: skip
    assert cfg.catalog_credential == SecretRef(credential="rest-cred")
    assert cfg.catalog_warehouse == "prod" and cfg.catalog_prefix == "prod"
    assert cfg.catalog_scope == "PRINCIPAL_ROLE:ALL"
    assert cfg.catalog_oauth2_uri == "https://idp.example.net/token"
    old = LakeConfig.from_table(
        {"host_id": "h", "bucket": "b-1", **rest, "catalog_token_env": "REST_TOKEN"}
    )  # the flat spelling every secret key has
    assert old.catalog_token == SecretRef(env="REST_TOKEN")

    # a secret written in the file: refused, never echoed
    got = problems(tmp_path, {**rest, "catalog_token": "tok-3b1c9d", "catalog_credential": "id:s"})
    assert any(p.startswith("lake.catalog_token: secrets are not read from the TOML") for p in got)
    assert any(p.startswith("lake.catalog_credential: secrets are not read") for p in got)
    assert "tok-3b1c9d" not in "; ".join(got) and "id:s" not in "; ".join(got)
    # both ways of authenticating at once
    assert problems(tmp_path, {
        **rest, "catalog_token": {"env": "T"}, "catalog_credential": {"env": "C"},
    }) == [
        "lake.catalog_token: configure lake.catalog_credential (an OAuth2 client credential) "
        "or lake.catalog_token (a bearer token), not both"
    ]  # fmt: skip
    # REST keys with the SQL catalog: they would be ignored, so they are refused
    assert problems(
        tmp_path, {"catalog_warehouse": "prod", "catalog_token": {"env": "T"}}
    ) == [
        'lake.catalog_token: only with lake.catalog = "rest"',
        'lake.catalog_warehouse: only with lake.catalog = "rest"',
    ]
    got = problems(tmp_path, {**rest, "catalog_oauth2_uri": "idp/token", "catalog_prefix": "/x"})
    assert got == [
        "lake.catalog_oauth2_uri: must start with https://",
        "lake.catalog_prefix: must be path components of letters, digits, '_', '.', '=', '-' "
        "joined by '/'",
    ]
