"""TOML configuration -> frozen, validated values.

Declarative: every setting is one dataclass field below, which states its default, its type (the
annotation) and its check (:func:`setting`); one generic reader (:class:`_Reader`) walks the
dataclasses, so a default is written once and a new setting is one line.  What involves more than
one field (``backoff_max >= backoff_initial``, the umask of two modes, the lake's host id) is in
:func:`_cross_checks`.

Every problem is reported with the dotted key that has it, all at once (``check-config``), never
as a traceback.  Secrets are never read from the TOML: a secret's key holds a table naming where
it lives, ``api_key = { env = "MLINK_API_KEY" }`` (:class:`capture.credentials.SecretRef`).  Keys
renamed since earlier releases keep working (:data:`ALIASES`); an old and a new key given with
different values is an error naming both.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import typing
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

from capture import bounds
from capture import stripes as stripe_table
from capture.credentials import SOURCES, SecretRef
from capture.errors import ConfigError as ConfigError
from capture.schemas import lookup as lookup_message

DEFAULT_TYPES = ("OptionNbboQuote", "OptionPrint", "StockBookQuote", "StockPrint")
WEBSOCKET_CLIENTS = ("wsproto", "trio-websocket")
"""``source.websocket``: the WebSocket clients of ``capture.transport``, the default first."""

COMPACTION_GRANULARITIES = ("day", "hour")

MAX_CONFIG_CHARS = 1_000_000
"""A configuration file is a few kilobytes; a larger one is refused before it is parsed."""

WEEK_S = 7 * 86_400.0

Check = Callable[[Any], "str | None"]
"""A check of one value: None if it is fine, else the problem (without the key)."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    check: Check | None = None,
    within: tuple[float, float] | None = None,
    unit: str = "",
    path: str | None = None,
    convert: Callable[[Any], Any] | None = None,
    parse: Callable[[Any, _Reader, str], Any] | None = None,
    flatten: str | None = None,
) -> Any:
    """A dataclass field that is a setting: its one default, and how a TOML value is checked.

    ``within``: a number's range (``unit`` in the message); ``check``: any other check of the
    value; ``path``: a path's kind, ``"dir"`` (the daemon creates below it: never the
    filesystem root, never an existing file) or ``"file"`` (the daemon writes it: never an
    existing directory); ``convert``: applied to each element after the checks; ``parse``: reads
    the raw value itself (raising :class:`_Bad`); ``flatten``: a nested table whose keys were
    also accepted flat in the parent with this prefix (``cognito_`` for ``[auth.cognito]``).
    """
    meta = {
        "check": check, "within": within, "unit": unit, "path": path, "convert": convert,
        "parse": parse, "flatten": flatten,
    }  # fmt: skip
    meta = {k: v for k, v in meta.items() if v}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# -- checks --------------------------------------------------------------------------------------


def _within(lo: float, hi: float, unit: str = "") -> Check:
    """A number in [lo, hi]: finite (the reader checks that) and sane, so that an interval of
    1e-9 s cannot spin a loop, nor a typo put a timer off for a century."""
    suffix = f" {unit}" if unit else ""
    return lambda v: (
        None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}{suffix}, got {v:g}"
    )


def _int_range(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:,} and {hi:,}, got {v:,}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _regex(pattern: str, why: str) -> Check:
    return lambda v: None if re.fullmatch(pattern, v) else why


_check_pool_id = _regex(
    r"[a-z]{2}(-[a-z]+)+-\d+_[0-9A-Za-z]+",
    "must be a Cognito user pool id like us-east-1_AbCdEf123",
)
_check_client_id = _regex(r"[\w+]{1,128}", "must be a Cognito app client id (letters and digits)")
_check_region = _regex(r"[a-z]{2}(-[a-z]+)+-\d+", "must be an AWS region like us-east-1")
_check_host_id = _regex(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
    "must be 1-63 letters, digits, '_', '.' or '-' (starting with a letter or digit)",
)
_check_name = _regex(  # one S3 key component and one Iceberg namespace level (no '.')
    r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}",
    "must be 1-63 letters, digits, '_' or '-', starting with a letter or digit",
)
_check_bucket = _regex(
    r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "must be an S3 bucket name (3-63 lower-case letters, digits, '.', '-')",
)


def _check_http_url(v: str) -> str | None:
    return None if v.startswith(("https://", "http://")) else "must start with https://"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _check_prefix(v: str) -> str | None:
    parts = v.split("/")
    if v and not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=-]*", p) for p in parts):
        return "must be path components of letters, digits, '_', '.', '=', '-' joined by '/'"
    return None


def _check_url(v: str) -> str | None:
    if not v.startswith(("ws://", "wss://")):
        return "must start with ws:// or wss://"
    if not v.partition("?")[0].rstrip("/").endswith("/mlink/jsonf"):
        return "must be the JSONFramed endpoint (…/mlink/jsonf)"
    return None


def _check_stripes(v: list[Any]) -> str | None:
    if not v:
        return "must name at least one stripe"
    bad = [x for x in v if not isinstance(x, str) or not stripe_table.is_known(x)]
    if bad:
        known = ", ".join(sorted(stripe_table.KNOWN_STRIPES))
        return f"unknown stripe code(s) {bad!r} (known: {known})"
    if len(set(v)) != len(v):
        return "a stripe is listed twice"
    return None


def _check_types(v: list[Any]) -> str | None:
    if not v:
        return "must name at least one message type"
    bad = [x for x in v if not isinstance(x, str) or lookup_message(x) is None]
    if bad:
        return f"unknown message type(s) {bad!r} (not in the MLink data dictionary)"
    if len({x.lower() for x in v}) != len(v):
        return "a message type is listed twice"
    return None


def _canonical_type(name: str) -> str:
    found = lookup_message(name)
    return found.name if found is not None else name


def _check_peers(v: list[Any]) -> str | None:
    if any(not isinstance(p, str) or not p.strip() for p in v):
        return "must be a list of directory paths"
    return None


def _check_address(v: str) -> str | None:
    if v == "localhost":
        return None
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return "must be an IP address (127.0.0.1, ::1, 0.0.0.0 for every interface) or localhost"
    return None


def _check_port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port, 0-65535 (0: any free port)"


def _check_tz(v: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown IANA time zone {v!r}"
    return None


def _divides_day(v: int) -> str | None:
    if v < 60 or 86400 % v:
        return "must be at least 60 seconds and divide a day (60, 300, 900, 3600, ...)"
    return None


class _Bad(Exception):
    """One value's problem (without its key)."""


def _mode(default: int, *, owner: int, forbidden: int) -> Callable[[Any, _Reader, str], int]:
    """A permission mode: an octal string ("0640") or a TOML integer (0o640)."""

    def parse(value: Any, _r: _Reader, _key: str) -> int:
        if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
            mode = int(value, 8)
        elif isinstance(value, int) and not isinstance(value, bool):
            mode = value
        else:
            raise _Bad(f'must be an octal mode like "{default:04o}" (or 0o{default:o})')
        if not 0 <= mode <= 0o777:
            raise _Bad(f"{mode:o}: must be permission bits only, at most 0777")
        if mode & owner != owner:
            raise _Bad(f"{mode:04o}: the daemon itself needs at least {owner:04o}")
        if mode & forbidden:
            raise _Bad(f"{mode:04o}: data files are not executable (no x bits)")
        return mode

    return parse


def _per_table_days(value: Any, r: _Reader, key: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, Mapping):
        raise _Bad(f"must be a table, got {_type_name(type(value))}")
    out: list[tuple[str, int]] = []
    for name, days in value.items():
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            r.problem(f"{key}.{name}", "must be a whole number of days >= 0")
        elif name != "capture_events" and lookup_message(name) is None:
            r.problem(f"{key}.{name}", "unknown message type (not in the MLink data dictionary)")
        else:
            out.append((_canonical_type(name), days))
    return tuple(out)


# -- the settings ---------------------------------------------------------------------------------

_TIME = (0.01, WEEK_S)  # seconds: any timer that is not more specific


@dataclass(frozen=True, slots=True)
class SourceConfig:
    url: str = setting(check=_check_url)
    stripes: tuple[str, ...] = setting(check=_check_stripes)
    message_types: tuple[str, ...] = setting(
        DEFAULT_TYPES, check=_check_types, convert=_canonical_type
    )
    active_latency: int = setting(1, within=(1, 60_000))
    resume: bool = True  # send highwaterTs on reconnect instead of taking a full snapshot
    websocket: str = setting(  # the WebSocket client (transport.py)
        WEBSOCKET_CLIENTS[0], check=_one_of(*WEBSOCKET_CLIENTS)
    )


@dataclass(frozen=True, slots=True)
class CognitoConfig:
    """``[auth.cognito]``: a JWT from the vendor's AWS Cognito user pool (PROTOCOL.md §2.4).
    Each key is also accepted flat in ``[auth]`` with a ``cognito_`` prefix (the old form)."""

    user_pool_id: str | None = setting(None, check=_check_pool_id)
    client_id: str | None = setting(None, check=_check_client_id)
    region: str | None = setting(None, check=_check_region)  # None: the pool id's prefix
    username: str | None = setting(None, check=_non_empty)
    password: SecretRef = SecretRef(env="MLINK_COGNITO_PASSWORD")
    totp_secret: SecretRef | None = None  # none configured: MFA challenges fail clearly
    client_secret: SecretRef | None = None  # only for app clients that have a secret
    flow: str = setting("srp", check=_one_of("srp", "password"))  # USER_SRP_AUTH | _PASSWORD_
    token: str = setting("access", check=_one_of("access", "id"))  # the Bearer JWT
    refresh_margin: float = setting(300.0, within=(1, 86_400), unit="seconds")  # before `exp`
    endpoint_url: str | None = setting(None, check=_check_http_url)  # None: AWS's regional one


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: where credentials come from (never the credentials themselves)."""

    method: str = setting("api_key", check=_one_of("api_key", "cognito"))
    api_key: SecretRef = SecretRef(env="MLINK_API_KEY")
    cognito: CognitoConfig = setting(factory=CognitoConfig, flatten="cognito_")


@dataclass(frozen=True, slots=True)
class OutputConfig:
    root: Path = setting(path="dir")
    timezone: str = setting("UTC", check=_check_tz)
    rotate_interval: int = setting(300, check=_divides_day)
    max_file_mb: int = setting(512, within=(1, 2**20))
    row_group_rows: int = setting(131_072, within=(1024, 2**26))
    memory_budget_mb: int = setting(48, within=(16, 2**20))  # data in flight (capture.memory)
    compression: str = setting("zstd", check=_one_of("zstd", "snappy", "gzip", "lz4", "none"))
    # Permissions of what the daemon creates (data, journal, health file): licensed market
    # data is not world-readable.  Applied as the process's umask (capture.cli).
    file_mode: int = setting(0o640, parse=_mode(0o640, owner=0o600, forbidden=0o111))
    dir_mode: int = setting(0o750, parse=_mode(0o750, owner=0o700, forbidden=0))

    @property
    def umask(self) -> int:
        """The umask that creates files with ``file_mode`` and directories with ``dir_mode``
        (a pair the configuration check accepted)."""
        return (0o666 & ~self.file_mode) | (0o777 & ~self.dir_mode)


@dataclass(frozen=True, slots=True)
class JournalConfig:
    enabled: bool = True
    directory: Path | None = setting(None, path="dir")  # default: <output.root>/_journal
    durability_interval: float = setting(1.0, within=(0.01, 3600), unit="seconds")  # fsync
    segment_mb: int = setting(64, within=(1, 4096))
    # keep committed segments this long (for `replay`); 0: delete
    retain_hours: float = setting(0.0, within=(0, 24 * 3650), unit="hours")

    def stripe_dir(self, root: Path, stripe: str) -> Path:
        return (self.directory or root / "_journal") / f"stripe={stripe}"


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    batch_rows: int = setting(4096, within=(1, 2**20))  # frames per type decoded at once
    # seconds a partial batch may wait before it is decoded
    flush_interval: float = setting(0.5, within=(0.01, 3600), unit="seconds")
    queue_batches: int = setting(32, within=(1, 10_000))  # per stripe, reader -> writer


def _seconds(default: float, lo: float = _TIME[0], hi: float = _TIME[1]) -> Any:
    return setting(default, within=(lo, hi), unit="seconds")


@dataclass(frozen=True, slots=True)
class SupervisionConfig:
    backoff_initial: float = _seconds(1.0)
    backoff_max: float = _seconds(60.0)
    backoff_multiplier: float = setting(2.0, within=(1, 100))
    backoff_jitter: float = setting(0.2, within=(0, 1))
    healthy_after: float = _seconds(60.0)  # a connection up this long resets the backoff
    auth_backoff: float = _seconds(900.0)  # wait after the server rejected our credentials
    max_restarts: int = setting(20, within=(1, 10_000))  # restart-intensity limit ...
    restart_window: float = _seconds(600.0)  # ... within this many seconds
    stale_after: float = _seconds(30.0, 0.1, 86_400)  # no frame at all for this long: reconnect
    connect_timeout: float = _seconds(15.0, 0.01, 3600)
    logon_timeout: float = _seconds(10.0, 0.01, 3600)
    shutdown_grace: float = _seconds(20.0, 0.01, 86_400)
    # Stripes are split over this many child processes, one event loop (and GIL) each
    # (capture.groups); 1: every stripe in this process.  More than the stripes: one each.
    processes: int = setting(1, within=(1, 10_000))
    # Fork those processes from one that has imported everything (shared memory, capture.forkserver)
    # rather than exec each; false: exec.
    fork_server: bool = True


@dataclass(frozen=True, slots=True)
class HealthConfig:
    path: Path | None = setting(None, path="file")
    interval: float = _seconds(5.0, 0.01, 3600)
    quiet_after: float = _seconds(30.0)  # connected but no data for this long -> "quiet"


def _default_host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename) or "local"


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """``[capture]``: who captures.  ``host_id`` is this daemon's one host id: written into
    every Parquet footer (redundant capture on two hosts, capture.compact) and, with ``[lake]``,
    into object keys and snapshot summaries (``lake.host_id`` is its old name)."""

    host_id: str = setting(factory=_default_host, check=_check_host_id)


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    """``[compaction]``: ``mlink-capture compact`` (capture.compact)."""

    granularity: str = setting("day", check=_one_of(*COMPACTION_GRANULARITIES))
    min_age: int = setting(3600, within=(0, 366 * 86_400))  # seconds after a day (hour) ends
    row_group_rows: int = setting(1_048_576, within=(1024, 2**30))
    row_group_mb: int = setting(256, within=(1, 2**20))
    target_file_mb: int = setting(512, within=(1, 2**30))
    compression_level: int = setting(6, within=(1, 22))
    max_unit_mb: int = setting(4096, within=(16, 2**30))
    peers: tuple[Path, ...] = setting((), check=_check_peers)  # other hosts' roots, merged in
    # or "instrument" (capture.compact.CompactionSettings.sort)
    sort: str = setting("underlier", check=_one_of("instrument", "underlier"))


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """``[retention]``: whole date partitions older than this many days are removed by
    ``mlink-capture compact`` (capture.retention); 0 keeps forever."""

    days: int = setting(0, within=(0, 36_500))
    # per-table days, overriding ``days``
    tables: tuple[tuple[str, int], ...] = setting((), parse=_per_table_days)
    journal_archive_days: int = setting(0, within=(0, 36_500))

    def days_for(self, table: str) -> int:
        return dict(self.tables).get(table, self.days)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = setting("info", check=_one_of("debug", "info", "warning", "error"))
    # auto: console on a TTY, JSON lines otherwise
    format: str = setting("auto", check=_one_of("auto", "json", "console"))
    # syslog priority "<N>" before each line: auto (when stderr is the journal), always, never
    priority_prefix: str = setting("auto", check=_one_of("auto", "always", "never"))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (capture.metrics); off unless enabled, and on the
    loopback interface unless an address is given."""

    enabled: bool = False
    address: str = setting("127.0.0.1", check=_check_address)
    # 0: any free port (the health file's process.metrics_url says which)
    port: int = setting(9650, check=_check_port)


@dataclass(frozen=True, slots=True)
class LakeConfig:
    """``[lake]``: committed files also go to S3-compatible storage and Apache Iceberg tables
    (capture.lake). Absent section: local files only.  ``host_id`` is ``capture.host_id`` (the
    reader fills it in; ``lake.host_id`` in the TOML is that key's old name)."""

    host_id: str = field(metadata={"derived": True})
    bucket: str = setting(check=_check_bucket)
    endpoint: str | None = setting(None, check=_check_http_url)  # None: AWS's regional endpoint
    region: str = setting("us-east-1", check=_check_region)
    prefix: str = setting("mlink", check=_check_prefix)
    access_key_id: SecretRef | None = None  # none configured: boto3's own chain (IAM role...)
    secret_access_key: SecretRef | None = None
    catalog: str = setting("sql", check=_one_of("sql", "rest"))  # SQLite/PostgreSQL | REST
    # sql: SQLAlchemy URI (default: sqlite under _lake); rest: URL
    catalog_uri: str | None = setting(None, check=_non_empty)
    catalog_password: SecretRef | None = None  # fills {password} in catalog_uri
    # rest: how the daemon authenticates, at most one of: an OAuth2 client credential
    # "client_id:client_secret" (exchanged for a token at the token endpoint), a bearer token
    catalog_credential: SecretRef | None = None
    catalog_token: SecretRef | None = None
    # rest: the warehouse asked of the catalog (its name, or a location); default: the bucket's
    # s3://BUCKET/PREFIX/warehouse
    catalog_warehouse: str | None = setting(None, check=_non_empty)
    # rest: the OAuth2 token endpoint (default: the catalog's /v1/oauth/tokens) and scope
    catalog_oauth2_uri: str | None = setting(None, check=_check_http_url)
    catalog_scope: str | None = setting(None, check=_non_empty)
    # rest: the path prefix after /v1/ (most catalogs send theirs in /v1/config instead)
    catalog_prefix: str | None = setting(None, check=_check_prefix)
    namespace: str = setting("mlink", check=_check_name)
    commit_interval: float = _seconds(60.0, 0.1, 86_400)  # between commits of one table
    delete_local: bool = False  # delete a local file once it is in a committed snapshot
    # held for the lake (files, journal): capture pauses at it; 0: none
    disk_budget_mb: int = setting(0, within=(0, 2**30))
    # expire older snapshots (hourly); 0: never
    snapshot_retention_hours: float = setting(24.0, within=(0, 24 * 3650), unit="hours")
    # delete objects no kept snapshot references, older than this (hourly); 0: never
    orphan_age_hours: float = setting(72.0, within=(0, 24 * 3650), unit="hours")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, base_dir: Path = Path(".")) -> LakeConfig:
        """A ``[lake]`` table on its own (its ``host_id`` included), read as the daemon reads
        it. Raises ConfigError."""
        lake: LakeConfig = read_section("lake", table, base_dir=base_dir)
        return lake


def group_count(processes: int, stripes: int) -> int:
    """Stripe-group processes for ``supervision.processes`` and this many stripes: at most one
    per stripe, at least one (capture.groups)."""
    return max(1, min(processes, stripes))


@dataclass(frozen=True, slots=True)
class Config:
    source: SourceConfig
    auth: AuthConfig
    output: OutputConfig
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    limits: bounds.Limits = field(default_factory=bounds.Limits)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    lake: LakeConfig | None = None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], *, check_paths: bool = False) -> Config:
        p = Path(path)
        try:
            with p.open("rb") as f:  # at most what a configuration can be, whatever the file
                data = f.read(4 * MAX_CONFIG_CHARS + 1)
            if len(data) > 4 * MAX_CONFIG_CHARS:
                why = f"{p}: over {4 * MAX_CONFIG_CHARS:,} bytes; a configuration is a few KB"
                raise ConfigError([why], str(p))
            text = data.decode("utf-8")
        except FileNotFoundError:
            raise ConfigError([f"{p}: file not found"], str(p)) from None
        except IsADirectoryError:
            raise ConfigError([f"{p}: is a directory, not a configuration file"], str(p)) from None
        except OSError as exc:
            raise ConfigError([f"{p}: cannot be read ({exc.strerror})"], str(p)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [f"{p}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"], str(p)
            ) from None
        return cls.from_toml_text(text, p, check_paths=check_paths)

    @classmethod
    def from_toml_text(
        cls, text: str, path: str | os.PathLike[str], *, check_paths: bool = False
    ) -> Config:
        """``text`` as if read from ``path`` (relative paths are relative to its directory)."""
        p = Path(path)
        if len(text) > MAX_CONFIG_CHARS:
            raise ConfigError(
                [f"{p}: {len(text):,} characters; a configuration is at most {MAX_CONFIG_CHARS:,}"],
                str(p),
            )
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not valid TOML: {exc}"], str(p)) from None
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            why = "not valid TOML: arrays or tables nested too deeply"
            raise ConfigError([why], str(p)) from None
        return cls.from_mapping(raw, base_dir=p.parent, source=str(p), check_paths=check_paths)

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        base_dir: Path = Path("."),
        source: str = "configuration",
        check_paths: bool = False,
    ) -> Config:
        r = _Reader(base_dir, check_paths)
        tree = r.normalise(raw)
        sections = [f.name for f in dataclasses.fields(cls)]
        # [demo] is read by `mlink-capture demo` only (simulator knobs); the daemon ignores it,
        # but a secret has no place in it either.
        for key in tree:
            if key not in (*sections, "demo"):
                r.problem(key, f"unknown section (known: {', '.join([*sections, 'demo'])})")
        demo = tree.get("demo")
        for key in demo if isinstance(demo, Mapping) else ():
            if _looks_secret(str(key)):
                r.problem(f"demo.{key}", _SECRET_IN_FILE)
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for name in sections:
            typ, optional = _unwrap(hints[name])
            if optional and name not in tree:
                values[name] = None
                continue
            extra = {"host_id": r.host_id(tree)} if typ is LakeConfig else {}
            values[name] = r.read(typ, tree.get(name, {}), name, extra)
        if all(v is not None for k, v in values.items() if k != "lake"):
            _cross_checks(r, values)
        if r.problems or any(v is None for k, v in values.items() if k != "lake" or k in tree):
            raise ConfigError(r.problems or ["configuration: incomplete"], source)
        return cls(**values)


def read_section(name: str, table: Mapping[str, Any], *, base_dir: Path = Path(".")) -> Any:
    """One section (``"auth"``, ``"lake"``) on its own, read as :meth:`Config.from_mapping` reads
    it, old keys included; the checks across sections are left out. Raises ConfigError."""
    r = _Reader(base_dir, check_paths=False)
    tree = r.normalise({name: table})
    typ, _ = _unwrap(_hints(Config)[name])
    extra = {"host_id": r.host_id(tree)} if typ is LakeConfig else {}
    value = r.read(typ, tree.get(name, {}), name, extra)
    if r.problems or value is None:
        raise ConfigError(r.problems or [f"{name}: incomplete"], f"[{name}]")
    return value


# -- old keys ---------------------------------------------------------------------------------


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a settings dataclass."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _unwrap(typ: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); X -> (X, False)."""
    if isinstance(typ, UnionType) or typing.get_origin(typ) is typing.Union:
        rest = [a for a in typing.get_args(typ) if a is not NoneType]
        if len(rest) == 1:
            return rest[0], True
    return typ, False


def _aliases() -> dict[str, str]:
    """Every old key -> its key now (dotted).  A secret's old flat keys ``X_env``, ``X_file``,
    ``X_credential`` are the fields of its table ``X = { env = ... }``; the old flat Cognito
    keys ``auth.cognito_X`` are ``auth.cognito.X``; ``lake.host_id`` is ``capture.host_id``."""
    out = {"lake.host_id": "capture.host_id"}

    def walk(cls: type, path: str, flat: str) -> None:
        for f in dataclasses.fields(cls):
            typ, _ = _unwrap(_hints(cls)[f.name])
            new, old = f"{path}.{f.name}", f"{flat}{f.name}"
            if old != new:
                out[old] = new
            if typ is SecretRef:
                out.update({f"{old}_{s}": f"{new}.{s}" for s in SOURCES})
            elif dataclasses.is_dataclass(typ) and "flatten" in f.metadata:
                walk(typ, new, f"{path}.{f.metadata['flatten']}")  # type: ignore[arg-type]

    for f in dataclasses.fields(Config):
        typ, _ = _unwrap(_hints(Config)[f.name])
        walk(typ, f.name, f"{f.name}.")
    return out


ALIASES: dict[str, str] = _aliases()
"""Old key -> key now, e.g. ``auth.api_key_env`` -> ``auth.api_key.env``,
``auth.cognito_user_pool_id`` -> ``auth.cognito.user_pool_id``, ``lake.host_id`` ->
``capture.host_id``.  Both accepted; both given with different values is an error."""
_OLD_NAME = {new: old for old, new in ALIASES.items()}


# -- the reader -------------------------------------------------------------------------------


class _Reader:
    """Reads the settings' dataclasses from TOML tables; collects problems instead of stopping
    at the first one, each under the key the file used (an old key if it used that)."""

    def __init__(self, base_dir: Path, check_paths: bool) -> None:
        self.base_dir = base_dir
        self.check_paths = check_paths
        self.problems: list[str] = []
        self.origin: dict[str, str] = {}  # key now -> the old key the file wrote it as
        self.synthetic: set[str] = set()  # tables made only of old flat keys

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.name(key)}: {text}")

    def name(self, key: str) -> str:
        """``key`` as the file spells it (or would, for a missing key among old flat ones)."""
        if key in self.origin:
            return self.origin[key]
        if key.rpartition(".")[0] in self.synthetic and key in _OLD_NAME:
            return _OLD_NAME[key]
        return key

    # -- old keys -> keys now

    def normalise(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        tree = _copy(raw, 4)
        for old, new in ALIASES.items():
            found, value = _take(tree, old)
            if not found:
                continue
            there, current = _find(tree, new)
            if there:
                if current != value:
                    self.problems.append(
                        f"{new}: also given as {old} (its old name), with another value; "
                        "give one of the two"
                    )
                continue
            if _put(tree, new, value, self.synthetic):
                self.origin[new] = old
        return tree

    def host_id(self, tree: Mapping[str, Any]) -> str | None:
        capture = tree.get("capture")
        host = capture.get("host_id") if isinstance(capture, Mapping) else None
        if host is None:
            self.problems.append(
                "capture.host_id: required with [lake] (or lake.host_id, its old name): this "
                "host's name in object keys and snapshot summaries"
            )
        elif isinstance(host, str) and (why := _check_name(host)) is not None:
            self.problem("capture.host_id", f"{why} (with [lake]: it is in object keys)")
        return host if isinstance(host, str) else None

    # -- tables

    def read(self, cls: type, table: Any, path: str, extra: Mapping[str, Any] | None = None) -> Any:
        """An instance of the dataclass ``cls`` from ``table``; None if it cannot be built
        (the problems say why)."""
        if not isinstance(table, Mapping):
            self.problem(path, "must be a table")
            return None
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
        for key in table:
            if key in fields:
                continue
            if _looks_secret(str(key)):  # never echo it, never accept it silently either
                self.problem(f"{path}.{key}", _SECRET_IN_FILE)
            else:
                self.problem(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(fields))})")
        values: dict[str, Any] = dict(extra or {})
        complete = all(v is not None for v in values.values())
        for name, f in fields.items():
            key = f"{path}.{name}"
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in table:
                if required:
                    self.problem(key, "required")
                    complete = False
                elif isinstance(f.default, SecretRef):
                    values[name] = dataclasses.replace(f.default, key=key)
                continue
            try:
                values[name] = self.value(_hints(cls)[name], table[name], key, f.metadata)
            except _Bad as bad:
                if str(bad):
                    self.problem(key, str(bad))
                complete = complete and not required
        return cls(**values) if complete else None

    def value(self, annotation: Any, v: Any, key: str, meta: Mapping[str, Any]) -> Any:
        typ, _ = _unwrap(annotation)
        if "parse" in meta:
            return meta["parse"](v, self, key)
        if typ is SecretRef:
            return self.secret(v, key)
        if dataclasses.is_dataclass(typ):
            sub = self.read(typ, v, key)  # type: ignore[arg-type]
            if sub is None:
                raise _Bad("")  # its problems are reported
            return sub
        if typing.get_origin(typ) is tuple:
            if not isinstance(v, list):
                raise _Bad(f"must be an array, got {_type_name(type(v))}")
            self._check(v, meta)
            element = typing.get_args(typ)[0]
            convert = meta.get("convert", lambda x: self.path(x) if element is Path else str(x))
            return tuple(convert(x) for x in v)
        if typ is float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _Bad(f"must be a number, got {_type_name(type(v))}")
            if not math.isfinite(v):
                raise _Bad(f"must be a finite number, got {v}")
            self._check(v, meta)
            return float(v)
        if typ is Path:
            if not isinstance(v, str) or not v:
                raise _Bad(f"must be a path, got {_type_name(type(v)) if v else 'nothing'}")
            if "\0" in v:
                raise _Bad("must not contain a NUL character")
            p = self.path(v)
            try:
                self._check_path(p, meta.get("path"))
            except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
                raise _Bad(f"{p} cannot be checked ({getattr(exc, 'strerror', exc)})") from None
            return p
        if (typ is int and isinstance(v, bool)) or not isinstance(v, typ):
            raise _Bad(f"must be {_type_name(typ)}, got {_type_name(type(v))}")
        self._check(v, meta, integer=typ is int)
        return v

    def _check(self, v: Any, meta: Mapping[str, Any], *, integer: bool = False) -> None:
        if "within" in meta:
            lo, hi = meta["within"]
            check = _int_range(lo, hi) if integer else _within(lo, hi, meta.get("unit", ""))
            if (why := check(v)) is not None:
                raise _Bad(why)
        if "check" in meta and (why := meta["check"](v)) is not None:
            raise _Bad(why)

    def _check_path(self, p: Path, kind: str | None) -> None:
        if kind == "dir":
            if p.resolve() == Path(p.anchor or "/"):
                raise _Bad(f"{p} is the filesystem root; name a directory of its own")
            if p.exists() and not p.is_dir():
                raise _Bad(f"{p} is not a directory")
            if self.check_paths:
                _check_writable(p)
        elif kind == "file":
            if p.is_dir():
                raise _Bad(f"{p} is a directory; name the file to write")
            if self.check_paths:
                _check_writable(p.parent)

    def secret(self, v: Any, key: str) -> SecretRef:
        """A secret's table: exactly one of ``env``, ``file``, ``credential`` (several only
        from the old flat keys, where the first of credential, file, env wins, as it did)."""
        if isinstance(v, str):
            stem = (self.origin.get(key) or _OLD_NAME.get(key) or key).rpartition(".")[2]
            raise _Bad(
                f"secrets are not read from the TOML; use {stem}_env, {stem}_file or "
                f'{stem}_credential, or {key.rpartition(".")[2]} = {{ env = "NAME" }}'
            )
        if not isinstance(v, Mapping):
            raise _Bad(
                f'must be a table naming where the secret lives, like {{ env = "NAME" }}, '
                f"got {_type_name(type(v))}"
            )
        given: dict[str, str] = {}
        for name, text in v.items():
            if name not in SOURCES:
                why = "" if _looks_secret(str(name)) else f" (known: {', '.join(sorted(SOURCES))})"
                self.problem(f"{key}.{name}", f"unknown key{why}; the secret's source goes here")
            elif not isinstance(text, str) or not text.strip():
                self.problem(f"{key}.{name}", "must be a non-empty string")
            else:
                given[name] = text
        if len(given) != len(v):
            raise _Bad("")
        if not given:
            raise _Bad("names no source: give env, file or credential")
        if len(given) > 1 and key not in self.synthetic:
            raise _Bad(f"give one source, not {' and '.join(sorted(given))}")
        source = next(s for s in SOURCES if s in given)  # credential, file, env: the old order
        if source == "file":
            return SecretRef(file=self.path(given["file"]), key=key)
        if source == "credential":
            return SecretRef(credential=given["credential"], key=key)
        return SecretRef(env=given["env"], key=key)

    def path(self, text: str) -> Path:
        p = Path(os.path.expandvars(os.path.expanduser(text)))
        return p if p.is_absolute() else self.base_dir / p


def _copy(raw: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """Tables (to ``depth`` levels) copied into dicts that the alias pass may change."""
    return {
        k: _copy(v, depth - 1) if depth > 1 and isinstance(v, Mapping) else v
        for k, v in raw.items()
    }


def _find(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _take(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    parent, _, last = dotted.rpartition(".")
    there, table = _find(tree, parent)
    if not there or not isinstance(table, dict) or last not in table:
        return False, None
    return True, table.pop(last)


def _put(tree: dict[str, Any], dotted: str, value: Any, made: set[str]) -> bool:
    """Set ``dotted`` (creating the tables on the way, recorded in ``made``); False if a
    non-table is in the way (that value has its own problem)."""
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            node[part] = {}
            made.add(".".join(parts[: i + 1]))
        if not isinstance(node[part], dict):
            return False
        node = node[part]
    node[parts[-1]] = value
    return True


def _type_name(t: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "an array",
        dict: "a table",
    }.get(t, t.__name__)


def _check_writable(path: Path) -> None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise _Bad(f"{path} is not under a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise _Bad(f"{path} is not writable")


# -- what involves more than one setting --------------------------------------------------------


def _cross_checks(r: _Reader, c: Mapping[str, Any]) -> None:
    for key, why in _cross_problems(r, c):
        r.problem(key, why)


def _cross_problems(r: _Reader, c: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    auth: AuthConfig = c["auth"]
    if auth.method == "cognito":
        for name in ("user_pool_id", "client_id", "username"):
            if getattr(auth.cognito, name) is None:
                yield f"auth.cognito.{name}", 'required when auth.method = "cognito"'
    output: OutputConfig = c["output"]
    mask = output.umask
    if (0o666 & ~mask, 0o777 & ~mask) != (output.file_mode, output.dir_mode):
        yield (
            "output.file_mode",
            f"{output.file_mode:04o} and output.dir_mode {output.dir_mode:04o} cannot both hold "
            "(one umask creates both): give directories the same read/write bits plus x, e.g. "
            "0640 and 0750, or 0660 and 0770",
        )
    sup: SupervisionConfig = c["supervision"]
    if sup.backoff_max < sup.backoff_initial:
        yield "supervision.backoff_max", "must be >= supervision.backoff_initial"
    groups = group_count(sup.processes, len(c["source"].stripes))
    if groups > 1 and output.memory_budget_mb < 16 * groups:
        yield (
            "output.memory_budget_mb",
            f"must be >= 16 per stripe-group process ({16 * groups} for "
            f"supervision.processes = {sup.processes})",
        )
    lake: LakeConfig | None = c["lake"]
    if lake is not None:
        yield from _lake_problems(r, lake, output)


REST_ONLY = (
    "catalog_credential", "catalog_token", "catalog_warehouse", "catalog_oauth2_uri",
    "catalog_scope", "catalog_prefix",
)  # fmt: skip
"""``[lake]`` keys that only a REST catalog reads."""


def _lake_problems(r: _Reader, lake: LakeConfig, output: OutputConfig) -> Iterator[tuple[str, str]]:
    if lake.catalog == "rest" and not lake.catalog_uri:
        yield "lake.catalog_uri", 'required when lake.catalog = "rest"'
    if lake.catalog != "rest":
        for name in REST_ONLY:
            if getattr(lake, name) is not None:
                yield f"lake.{name}", 'only with lake.catalog = "rest"'
    elif lake.catalog_credential is not None and lake.catalog_token is not None:
        yield (
            "lake.catalog_token",
            "configure lake.catalog_credential (an OAuth2 client credential) or "
            "lake.catalog_token (a bearer token), not both",
        )
    uri = lake.catalog_uri or ""
    if "://" in uri and "@" in (netloc := uri.split("://", 1)[1].split("/", 1)[0]):
        if ":" in netloc.split("@", 1)[0] and "{password}" not in netloc:
            yield (
                "lake.catalog_uri",
                "holds a password; write {password} there and name its source in "
                'lake.catalog_password = { env = "NAME" } (or catalog_password_env, _file, '
                "_credential)",
            )
    if (lake.access_key_id is None) != (lake.secret_access_key is None):
        given, missing = (
            ("access_key_id", "secret_access_key")
            if lake.access_key_id is not None
            else ("secret_access_key", "access_key_id")
        )
        flat = f"lake.{given}" in r.synthetic  # the file used the old flat keys
        written = [r.origin[k] for s in SOURCES if (k := f"lake.{given}.{s}") in r.origin]
        yield (
            f"lake.{missing}_env" if flat else f"lake.{missing}",
            f"configure both lake.access_key_id and lake.secret_access_key, or neither "
            f"({', '.join(written) or f'lake.{given}'} is configured)",
        )
    if output.timezone != "UTC":
        yield (
            "lake",
            "Iceberg tables are partitioned by the UTC day of _recv_time: output.timezone "
            'must be "UTC" so that no local file spans two partitions',
        )


_SECRET_IN_FILE = (
    "secrets are not read from the TOML; name their source in [auth] "
    '(api_key = { env = "NAME" }, or file, credential)'
)
_SECRET_WORDS = re.compile(r"(^|_)(api_?key|password|passwd|secret|token)$", re.IGNORECASE)


def _looks_secret(key: str) -> bool:
    """A key that would hold a secret itself (``api_key``, ``password``, ``client_secret``);
    ``api_key_env`` and the like name where a secret lives and are fine."""
    return bool(_SECRET_WORDS.search(key))
