"""Simulator configuration: one frozen dataclass, every knob documented, validated on load.

Where PROTOCOL.md marks a behaviour [I] (inferred), the behaviour is a knob here so tests can
play both readings; defaults follow the document's recommendation.  ``from_toml`` /
``from_mapping`` report every problem with the key that has it (``sim.rate: must be > 0``).

The accepted API keys are deliberately not loadable from TOML (secrets never live in config
files, same rule as the daemon): the CLI reads them from an environment variable, tests pass
``api_keys=`` to the constructor.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from capture import stripes as stripe_rules
from capture.config import ConfigError
from capture.schemas import lookup
from capture.sim.faults import Faults
from capture.sim.generators import CORE_TYPES
from capture.sim.universe import DEFAULT_UNIVERSE

__all__ = ["AUTH_MODES", "BAD_KEY_MODES", "SimConfig"]

BAD_KEY_MODES = ("logon_failed_close", "logon_failed_wait", "http_401")
AUTH_MODES = ("api_key", "jwt", "either")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every simulator knob.  Counts are per connection unless stated otherwise."""

    # -- listener ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Interface to bind (loopback by default)."""
    port: int = 0
    """TCP port; 0 picks an ephemeral port, reported through ``task_status.started(port)``."""
    path: str = "/mlink/jsonf"
    """The only WebSocket path served; any other path is refused with HTTP 404."""
    tls_cert: Path | None = None
    """Serve ``wss://`` with this PEM certificate (chain); None: plain ``ws://``."""
    tls_key: Path | None = None
    """The certificate's private key (PEM); required with ``tls_cert``."""

    # -- authentication (PROTOCOL §2) ---------------------------------------------------------
    api_keys: frozenset[str] = frozenset()
    """Accepted bearer tokens (``KEY`` or ``KEY.PASSWORD``, exact).  Empty: accept any token."""
    accept_query_apikey: bool = True
    """Also accept ``?apikey=`` on the upgrade URL (undocumented for WebSockets, §2.2)."""
    bad_key_mode: str = "logon_failed_close"
    """Wrong key: ``logon_failed_close`` (MLinkAdmin LogonFailed, then close),
    ``logon_failed_wait`` (LogonFailed, then wait for an MLinkLogon) or ``http_401``."""
    unauthorized_tokens: frozenset[str] = frozenset()
    """Dictionary mTokens the key is not entitled to: MLinkStream answers ``UnauthMsgType``."""
    auth_mode: str = "api_key"
    """Which credentials log on: ``api_key`` (``api_keys``), ``jwt`` (only a JWT from the
    Cognito user pool ``jwt_issuer``, PROTOCOL §2.4) or ``either``."""
    jwt_issuer: str | None = None
    """Required ``iss`` of a JWT: ``https://cognito-idp.<region>.amazonaws.com/<pool id>``."""
    jwt_jwks_url: str | None = None
    """Where the pool publishes its signing keys (JWKS).  None: ``<jwt_issuer>/.well-known/
    jwks.json`` (AWS's location; moto serves it on its own endpoint, so give that here)."""
    jwt_jwks: Mapping[str, Any] | None = None
    """The JWKS document itself, instead of fetching ``jwt_jwks_url``."""
    jwt_audiences: frozenset[str] = frozenset()
    """Accepted app client ids (``client_id`` of access tokens, ``aud`` of ID tokens); empty:
    any client of the pool."""
    jwt_token_uses: frozenset[str] = frozenset({"access", "id"})
    """Accepted ``token_use`` values."""

    # -- stream behaviour ([I] choices, §6, §7) ------------------------------------------------
    echo_query_id: bool = True
    """Echo ``queryID`` in MLinkStreamAck and checkpoints (the doc cannot tell, §15)."""
    echo_query_label: bool = False
    """Echo ``queryLabel`` in MLinkStreamAck (the one real example does not, §6.2)."""
    checkpoint_highwater: bool = False
    """Put ``highwaterTs`` and ``numBytesSent`` in Active/Complete checkpoints."""
    checkpoint_interval: float | None = None
    """Send a periodic Active checkpoint per stream every this many seconds (None: never)."""
    heartbeat_interval: float = 10.0
    """Seconds between MLinkHeartbeat messages ("by default every 10 seconds", §6.5)."""
    conflate: bool = True
    """Keep only the latest record per pkey while a stream waits to send (§7.3).  False sends
    every update (tests where rows sent must equal rows generated); see ``max_pending``."""
    max_pending: int = 100_000
    """Without conflation, a stream with more unsent records is a slow consumer: disconnect."""

    # -- outbound framing (§3, §4) -------------------------------------------------------------
    frames_per_message: int = 16
    """At most this many whole frames per WebSocket message."""
    max_message_bytes: int = 65_536
    """Byte budget per WebSocket message (a single larger frame still goes alone)."""
    text_frames: bool = False
    """Send text WebSocket messages instead of binary ones."""
    max_inbound_bytes: int = 1 << 20
    """Largest inbound WebSocket message accepted (bigger closes with 1009)."""

    # -- header identity (§5.1) ----------------------------------------------------------------
    env: str = "Saturn"
    """Header ``sEnv0``."""
    realm: str = "NMS"
    """Header ``sRlm0``."""
    app_name: str = "MLinkServer.Sim.A.Extern"
    """Header ``appN``."""
    machine: str = "SRSIM-001"
    """Header ``mn``."""
    git: str = "5e0f2c9a71"
    """Header ``git``."""

    # -- market data ---------------------------------------------------------------------------
    seed: int = 0
    """Seed of every random choice (market and faults)."""
    types: tuple[str, ...] = CORE_TYPES
    """Message types generated from the start (canonical dictionary names)."""
    generate_all_types: bool = False
    """Also serve any other dictionary type on request, from the generic generator."""
    symbols: tuple[str, ...] | None = None
    """Restrict the universe to these underliers (None: the full default universe)."""
    stripes: tuple[str, ...] | None = None
    """Restrict the universe to keys in these stripes (None: every key)."""
    stripe_table: str = stripe_rules.DEFAULT_TABLE
    """Stripe table: ``2024`` (default), ``2024-j5`` or ``2023``."""
    expiries: int = 3
    """Expiries per option root."""
    strikes: int = 3
    """Strikes each side of the money per expiry."""
    rate: float = 50.0
    """Live updates per second per message type, market-wide (before stripe filtering)."""
    type_rates: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Per-type overrides of ``rate`` (canonical names)."""
    tick_interval: float = 0.01
    """Seconds between market steps; updates of a step are spread over it."""
    warmup: float = 60.0
    """The initial cache is stamped over this many seconds before start (``highwaterTs``)."""

    # -- recording and faults ------------------------------------------------------------------
    record_dir: Path | None = None
    """Record every byte sent, per connection, under this directory (see ``record.py``)."""
    faults: Faults = field(default_factory=Faults)
    """Fault injection knobs."""

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(problems, "simulator configuration")
        object.__setattr__(self, "types", tuple(_canonical(t) for t in self.types))
        object.__setattr__(
            self,
            "type_rates",
            MappingProxyType({_canonical(k): float(v) for k, v in self.type_rates.items()}),
        )

    def rate_of(self, msg_type: str) -> float:
        return self.type_rates.get(msg_type, self.rate)

    def with_overrides(self, **changes: Any) -> SimConfig:
        """A copy with some knobs changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> SimConfig:
        """Load a simulator TOML file: top-level knobs plus an optional ``[faults]`` table."""
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{p}: file not found"], str(p)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not valid TOML: {exc}"], str(p)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{p}: not UTF-8 text (byte {exc.start})"], str(p)) from None
        except RecursionError:
            raise ConfigError(["not valid TOML: nested too deeply"], str(p)) from None
        except OSError as exc:
            raise ConfigError([f"{p}: cannot be read ({exc.strerror})"], str(p)) from None
        return cls.from_mapping(raw, base_dir=p.parent, source=str(p))

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        base_dir: Path = Path("."),
        source: str = "simulator configuration",
    ) -> SimConfig:
        """Build from a parsed TOML document; every bad key is reported by name."""
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        for key, value in raw.items():
            dotted = f"sim.{key}"
            if key == "api_keys":
                problems.append(
                    f"{dotted}: secrets are not read from TOML; pass the key through the "
                    "environment (--api-key-env)"
                )
                continue
            if key not in known:
                names = ", ".join(sorted(k for k in known if k != "api_keys"))
                problems.append(f"{dotted}: unknown key (known: {names})")
                continue
            try:
                kwargs[key] = _convert(key, value, base_dir)
            except ValueError as exc:  # Faults names its own keys (sim.faults.x)
                problems.append(str(exc) if key == "faults" else f"{dotted}: {exc}")
        if problems:
            raise ConfigError(problems, source)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(exc.problems, source) from None


def _canonical(name: str) -> str:
    found = lookup(name)
    return found.name if found is not None else name


def _convert(key: str, value: Any, base_dir: Path) -> Any:
    """TOML value -> field value, type-checked (range checks happen in ``_problems``)."""
    if key in ("host", "path", "bad_key_mode", "env", "realm", "app_name", "machine", "git"):
        return _expect(value, str)
    if key in ("auth_mode", "jwt_issuer", "jwt_jwks_url"):
        return _expect(value, str)
    if key in ("jwt_audiences", "jwt_token_uses"):
        return frozenset(_expect_str_list(value))
    if key == "jwt_jwks":
        if not isinstance(value, Mapping):
            raise ValueError("must be a table (a JWKS document with a keys array)")
        return dict(value)
    if key == "stripe_table":
        return _expect(value, str)
    if key in (
        "port",
        "max_pending",
        "frames_per_message",
        "max_message_bytes",
        "max_inbound_bytes",
        "seed",
        "expiries",
        "strikes",
    ):
        return _expect(value, int)
    if key in (
        "accept_query_apikey",
        "echo_query_id",
        "echo_query_label",
        "checkpoint_highwater",
        "conflate",
        "text_frames",
        "generate_all_types",
    ):
        return _expect(value, bool)
    if key in ("heartbeat_interval", "rate", "tick_interval", "warmup"):
        return float(_expect_number(value))
    if key == "checkpoint_interval":
        return None if value in (None, 0) else float(_expect_number(value))
    if key in ("types", "symbols", "stripes"):
        return tuple(_expect_str_list(value))
    if key == "unauthorized_tokens":
        return frozenset(_expect_str_list(value))
    if key == "type_rates":
        if not isinstance(value, Mapping):
            raise ValueError("must be a table of message type = rate")
        return {str(k): float(_expect_number(v)) for k, v in value.items()}
    if key in ("record_dir", "tls_cert", "tls_key"):
        p = Path(os.path.expanduser(_expect(value, str)))
        return p if p.is_absolute() else base_dir / p
    if key == "faults":
        if not isinstance(value, Mapping):
            raise ValueError("must be a table")
        return Faults.from_mapping(value, prefix="sim.faults")
    raise ValueError("not settable from a file")  # pragma: no cover - every field is listed


def _expect(value: Any, typ: type) -> Any:
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
        raise ValueError(f"must be {typ.__name__}, got {type(value).__name__}")
    return value


def _expect_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    return float(value)


def _expect_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be an array of strings")
    return list(value)


def _problems(c: SimConfig) -> list[str]:
    p: list[str] = []

    def need(ok: bool, key: str, text: str) -> None:
        if not ok:
            p.append(f"sim.{key}: {text}")

    need(0 <= c.port <= 65_535, "port", "must be 0..65535")
    need((c.tls_cert is None) == (c.tls_key is None), "tls_key" if c.tls_cert else "tls_cert",
         "tls_cert and tls_key go together")
    need(c.path.startswith("/"), "path", "must start with /")
    need(c.bad_key_mode in BAD_KEY_MODES, "bad_key_mode", f"must be one of {BAD_KEY_MODES}")
    need(c.auth_mode in AUTH_MODES, "auth_mode", f"must be one of {AUTH_MODES}")
    if c.auth_mode in ("jwt", "either"):
        need(c.jwt_issuer is not None, "jwt_issuer", f"required with auth_mode {c.auth_mode!r}")
    for name in ("jwt_issuer", "jwt_jwks_url"):
        url = getattr(c, name)
        need(
            url is None or url.startswith(("https://", "http://")),
            name,
            "must be an http(s):// URL",
        )
    if c.jwt_jwks is not None:
        keys = c.jwt_jwks.get("keys")
        need(isinstance(keys, list) and bool(keys), "jwt_jwks", "must have a non-empty keys array")
    bad_uses = sorted(c.jwt_token_uses - {"access", "id"})
    need(not bad_uses, "jwt_token_uses", f"unknown token_use value(s) {bad_uses}")
    need(
        c.stripe_table in stripe_rules.TABLES, "stripe_table", f"one of {list(stripe_rules.TABLES)}"
    )
    need(c.heartbeat_interval > 0, "heartbeat_interval", "must be > 0")
    need(
        c.checkpoint_interval is None or c.checkpoint_interval > 0,
        "checkpoint_interval",
        "must be > 0 (or absent)",
    )
    need(c.max_pending >= 1, "max_pending", "must be >= 1")
    need(c.frames_per_message >= 1, "frames_per_message", "must be >= 1")
    need(c.max_message_bytes >= 64, "max_message_bytes", "must be >= 64")
    need(c.max_inbound_bytes >= 1024, "max_inbound_bytes", "must be >= 1024")
    need(c.rate >= 0, "rate", "must be >= 0")
    need(0 < c.tick_interval <= 1, "tick_interval", "must be in (0, 1] seconds")
    need(c.warmup > 0, "warmup", "must be > 0")
    need(1 <= c.expiries <= 12, "expiries", "must be 1..12")
    need(0 <= c.strikes <= 50, "strikes", "must be 0..50")
    for name in ("env", "realm", "app_name", "machine", "git"):
        v = getattr(c, name)
        need(
            isinstance(v, str) and v.isascii() and '"' not in v and "\\" not in v,
            name,
            "must be plain ASCII without quotes or backslashes",
        )
    bad_types = [t for t in c.types if lookup(t) is None]
    need(not bad_types, "types", f"unknown message type(s) {bad_types}")
    for t, r in c.type_rates.items():
        need(lookup(t) is not None, f"type_rates.{t}", "unknown message type")
        need(r >= 0, f"type_rates.{t}", "must be >= 0")
    if c.symbols is not None:
        universe = {u.tk for u in DEFAULT_UNIVERSE}
        unknown = [s for s in c.symbols if s not in universe]
        need(not unknown, "symbols", f"not in the simulated universe: {unknown}")
    if c.stripes is not None:
        table = c.stripe_table if c.stripe_table in stripe_rules.TABLES else "2024"
        bad = [s for s in c.stripes if not stripe_rules.is_known(s, table)]
        need(not bad, "stripes", f"unknown stripe code(s) {bad}")
    return p
