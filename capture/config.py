"""TOML configuration -> frozen, validated values.

Every problem is reported with the dotted key that has it, all at once (``check-config``), and
secrets are never read from the TOML: the file names where a secret lives (environment variable,
file, systemd credential), never the secret itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from capture import bounds
from capture import stripes as stripe_table
from capture.schemas import lookup as lookup_message

T = TypeVar("T")

DEFAULT_TYPES = ("OptionNbboQuote", "OptionPrint", "StockBookQuote", "StockPrint")
WEBSOCKET_CLIENTS = ("wsproto", "trio-websocket")
"""``source.websocket``: the WebSocket clients of ``capture.transport``, the default first."""


MAX_CONFIG_CHARS = 1_000_000
"""A configuration file is a few kilobytes; a larger one is refused before it is parsed."""


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` lists every ``key: problem``."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class SourceConfig:
    url: str
    stripes: tuple[str, ...]
    message_types: tuple[str, ...]
    active_latency: int = 1
    resume: bool = True  # send highwaterTs on reconnect instead of taking a full snapshot
    websocket: str = WEBSOCKET_CLIENTS[0]  # the WebSocket client (transport.py)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: where credentials come from (never the credentials themselves).

    Each secret has three possible sources, the first configured wins: ``*_credential`` (a
    systemd credential name), ``*_file``, ``*_env``.
    """

    method: str = "api_key"  # api_key | cognito
    api_key_env: str | None = "MLINK_API_KEY"
    api_key_file: Path | None = None
    api_key_credential: str | None = None
    # method = "cognito": a JWT from the vendor's AWS Cognito user pool (PROTOCOL.md §2.4)
    cognito_user_pool_id: str | None = None
    cognito_client_id: str | None = None
    cognito_region: str | None = None  # None: the pool id's prefix (us-east-1_abc -> us-east-1)
    cognito_username: str | None = None
    cognito_password_env: str | None = "MLINK_COGNITO_PASSWORD"
    cognito_password_file: Path | None = None
    cognito_password_credential: str | None = None
    cognito_totp_secret_env: str | None = None  # none configured: MFA challenges fail clearly
    cognito_totp_secret_file: Path | None = None
    cognito_totp_secret_credential: str | None = None
    cognito_client_secret_env: str | None = None  # only for app clients that have a secret
    cognito_client_secret_file: Path | None = None
    cognito_client_secret_credential: str | None = None
    cognito_flow: str = "srp"  # srp (USER_SRP_AUTH) | password (USER_PASSWORD_AUTH)
    cognito_token: str = "access"  # which JWT is the Bearer value: access | id
    cognito_refresh_margin: float = 300.0  # refresh this many seconds before `exp`
    cognito_endpoint_url: str | None = None  # None: AWS's regional endpoint


def _check_pool_id(v: str) -> str | None:
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+_[0-9A-Za-z]+", v):
        return "must be a Cognito user pool id like us-east-1_AbCdEf123"
    return None


def _check_client_id(v: str) -> str | None:
    if not re.fullmatch(r"[\w+]{1,128}", v):
        return "must be a Cognito app client id (letters and digits)"
    return None


def _check_region(v: str) -> str | None:
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", v):
        return "must be an AWS region like us-east-1"
    return None


def _check_http_url(v: str) -> str | None:
    return None if v.startswith(("https://", "http://")) else "must start with https://"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


@dataclass(frozen=True, slots=True)
class OutputConfig:
    root: Path
    timezone: str = "UTC"
    rotate_interval: int = 300
    max_file_mb: int = 512
    row_group_rows: int = 131_072
    memory_budget_mb: int = 48  # process-wide data in flight (capture.memory)
    compression: str = "zstd"
    # Permissions of what the daemon creates (data, journal, health file): licensed market
    # data is not world-readable.  Applied as the process's umask (capture.cli).
    file_mode: int = 0o640
    dir_mode: int = 0o750

    @property
    def umask(self) -> int:
        """The umask that creates files with ``file_mode`` and directories with ``dir_mode``
        (a pair the configuration check accepted)."""
        return (0o666 & ~self.file_mode) | (0o777 & ~self.dir_mode)


@dataclass(frozen=True, slots=True)
class JournalConfig:
    enabled: bool = True
    directory: Path | None = None  # default: <output.root>/_journal
    durability_interval: float = 1.0  # fsync at least this often (seconds)
    segment_mb: int = 64
    retain_hours: float = 0.0  # keep committed segments this long (for `replay`); 0: delete

    def stripe_dir(self, root: Path, stripe: str) -> Path:
        return (self.directory or root / "_journal") / f"stripe={stripe}"


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    batch_rows: int = 4096  # frames per type handed to the decoder at once
    flush_interval: float = 0.5  # seconds a partial batch may wait before it is decoded
    queue_batches: int = 32  # per stripe, between the socket reader and the writer


@dataclass(frozen=True, slots=True)
class SupervisionConfig:
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.2
    healthy_after: float = 60.0  # a connection up this long resets the backoff
    auth_backoff: float = 900.0  # wait after the server rejected our credentials
    max_restarts: int = 20  # restart-intensity limit for a stripe's writer ...
    restart_window: float = 600.0  # ... within this many seconds
    stale_after: float = 30.0  # no frame at all (data or heartbeat) for this long -> reconnect
    connect_timeout: float = 15.0
    logon_timeout: float = 10.0
    shutdown_grace: float = 20.0
    # Stripes are split over this many child processes, one event loop (and GIL) each
    # (capture.groups); 1: every stripe in this process.  More than the stripes: one each.
    processes: int = 1
    # Fork those processes from one that has imported everything (shared memory, capture.forkserver)
    # rather than exec each; false: exec.
    fork_server: bool = True


@dataclass(frozen=True, slots=True)
class HealthConfig:
    path: Path | None = None
    interval: float = 5.0
    quiet_after: float = 30.0  # connected but no data for this long -> "quiet"


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """``[capture]``: who captures (redundant capture on two hosts, capture.compact)."""

    host_id: str = field(default_factory=lambda: _default_host())


def _default_host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename) or "local"


COMPACTION_GRANULARITIES = ("day", "hour")


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    """``[compaction]``: ``mlink-capture compact`` (capture.compact)."""

    granularity: str = "day"
    min_age: int = 3600  # seconds after a day (hour) ends before it is rewritten
    row_group_rows: int = 1_048_576
    row_group_mb: int = 256
    target_file_mb: int = 512
    compression_level: int = 6
    max_unit_mb: int = 4096
    peers: tuple[Path, ...] = ()  # other capture hosts' roots, merged in (A/B)
    sort: str = "underlier"  # or "instrument" (capture.compact.CompactionSettings.sort)


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """``[retention]``: whole date partitions older than this many days are removed by
    ``mlink-capture compact`` (capture.retention); 0 keeps forever."""

    days: int = 0
    tables: tuple[tuple[str, int], ...] = ()  # per-table days, overriding ``days``
    journal_archive_days: int = 0

    def days_for(self, table: str) -> int:
        return dict(self.tables).get(table, self.days)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto: console on a TTY, JSON lines otherwise
    # syslog priority "<N>" before each line: auto (when stderr is the journal), always, never
    priority_prefix: str = "auto"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (capture.metrics); off unless enabled, and on the
    loopback interface unless an address is given."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 9650  # 0: any free port (the health file's process.metrics_url says which)


@dataclass(frozen=True, slots=True)
class LakeConfig:
    """``[lake]``: committed files also go to S3-compatible storage and Apache Iceberg tables
    (capture.lake). Absent section: local files only. Secrets come from ``*_env``, ``*_file`` or
    ``*_credential`` like the API key, never from the TOML."""

    host_id: str
    bucket: str
    endpoint: str | None = None  # None: AWS's regional endpoint
    region: str = "us-east-1"
    prefix: str = "mlink"
    access_key_id_env: str | None = None  # none configured: boto3's own chain (IAM role...)
    access_key_id_file: Path | None = None
    access_key_id_credential: str | None = None
    secret_access_key_env: str | None = None
    secret_access_key_file: Path | None = None
    secret_access_key_credential: str | None = None
    catalog: str = "sql"  # sql (SQLite by default, PostgreSQL by URI) | rest
    catalog_uri: str | None = None  # sql: SQLAlchemy URI (default: sqlite under _lake); rest: URL
    catalog_password_env: str | None = None  # fills {password} in catalog_uri
    catalog_password_file: Path | None = None
    catalog_password_credential: str | None = None
    namespace: str = "mlink"
    commit_interval: float = 60.0  # seconds between commits of one table
    delete_local: bool = False  # delete a local file once it is in a committed snapshot
    disk_budget_mb: int = 0  # local files not yet in the lake; 0: no budget
    snapshot_retention_hours: float = 24.0  # expire older snapshots (hourly); 0: never


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
        r = _Reader(raw, base_dir)
        # [demo] is read by `mlink-capture demo` only (simulator knobs); the daemon ignores it.
        r.known_sections(
            "source",
            "auth",
            "output",
            "journal",
            "pipeline",
            "supervision",
            "health",
            "logging",
            "limits",
            "metrics",
            "capture",
            "compaction",
            "retention",
            "lake",
            "demo",
        )
        r.no_secrets("demo")  # not read here, but a secret has no place in it either

        s = r.section("source", {"url", "stripes", "message_types", "active_latency", "resume",
                                  "websocket"})
        url = r.get(s, "source.url", str, required=True, check=_check_url)
        stripes = tuple(r.get(s, "source.stripes", list, required=True, check=_check_stripes) or ())
        types = tuple(
            r.get(s, "source.message_types", list, default=list(DEFAULT_TYPES), check=_check_types)
            or ()
        )
        source_cfg = SourceConfig(
            url=url or "",
            stripes=tuple(str(x) for x in stripes),
            message_types=tuple(_canonical_type(str(t)) for t in types),
            active_latency=r.get(
                s, "source.active_latency", int, default=1, check=_int_range(1, 60_000)
            ),
            resume=r.get(s, "source.resume", bool, default=True),
            websocket=r.get(
                s, "source.websocket", str, default=WEBSOCKET_CLIENTS[0],
                check=_one_of(*WEBSOCKET_CLIENTS),
            ) or WEBSOCKET_CLIENTS[0],
        )

        # A secret written into the file itself is refused (by its key, never echoing it).
        secret_keys = {
            "api_key": "api_key",
            "password": "api_key",  # KEY.PASSWORD is one secret, read from api_key_*
            "cognito_password": "cognito_password",
            "totp_secret": "cognito_totp_secret",
            "cognito_totp_secret": "cognito_totp_secret",
            "client_secret": "cognito_client_secret",
            "cognito_client_secret": "cognito_client_secret",
        }
        a = r.section("auth", set(AuthConfig.__dataclass_fields__) | set(secret_keys))
        for key, stem in secret_keys.items():
            if key in a:
                r.problem(
                    f"auth.{key}",
                    f"secrets are not read from the TOML; use {stem}_env, {stem}_file or "
                    f"{stem}_credential",
                )

        def a_str(name: str, default: str | None = None, **kw: Any) -> Any:
            return r.get(a, f"auth.{name}", str, default=default, **kw)

        def a_path(name: str) -> Path | None:
            text = a_str(name)
            return r.path(text) if text else None

        method = a_str("method", "api_key", check=_one_of("api_key", "cognito"))
        auth_cfg = AuthConfig(
            method=method,
            api_key_env=a_str("api_key_env", "MLINK_API_KEY"),
            api_key_file=a_path("api_key_file"),
            api_key_credential=a_str("api_key_credential"),
            cognito_user_pool_id=a_str("cognito_user_pool_id", check=_check_pool_id),
            cognito_client_id=a_str("cognito_client_id", check=_check_client_id),
            cognito_region=a_str("cognito_region", check=_check_region),
            cognito_username=a_str("cognito_username", check=_non_empty),
            cognito_password_env=a_str("cognito_password_env", "MLINK_COGNITO_PASSWORD"),
            cognito_password_file=a_path("cognito_password_file"),
            cognito_password_credential=a_str("cognito_password_credential"),
            cognito_totp_secret_env=a_str("cognito_totp_secret_env"),
            cognito_totp_secret_file=a_path("cognito_totp_secret_file"),
            cognito_totp_secret_credential=a_str("cognito_totp_secret_credential"),
            cognito_client_secret_env=a_str("cognito_client_secret_env"),
            cognito_client_secret_file=a_path("cognito_client_secret_file"),
            cognito_client_secret_credential=a_str("cognito_client_secret_credential"),
            cognito_flow=a_str("cognito_flow", "srp", check=_one_of("srp", "password")),
            cognito_token=a_str("cognito_token", "access", check=_one_of("access", "id")),
            cognito_refresh_margin=r.num(
                a, "auth.cognito_refresh_margin", 300.0, _seconds(1, 86_400)
            ),
            cognito_endpoint_url=a_str("cognito_endpoint_url", check=_check_http_url),
        )
        if method == "api_key" and not (
            auth_cfg.api_key_env or auth_cfg.api_key_file or auth_cfg.api_key_credential
        ):
            r.problem("auth.api_key_env", "no API key source (api_key_env, _file or _credential)")
        if method == "cognito":
            for name in ("cognito_user_pool_id", "cognito_client_id", "cognito_username"):
                if name not in a:
                    r.problem(f"auth.{name}", 'required when auth.method = "cognito"')
            if not (
                auth_cfg.cognito_password_env
                or auth_cfg.cognito_password_file
                or auth_cfg.cognito_password_credential
            ):
                r.problem(
                    "auth.cognito_password_env",
                    "no password source (cognito_password_env, _file or _credential)",
                )

        o = r.section(
            "output",
            {
                "root",
                "timezone",
                "rotate_interval",
                "max_file_mb",
                "row_group_rows",
                "memory_budget_mb",
                "compression",
                "file_mode",
                "dir_mode",
            },
        )
        root = r.get(o, "output.root", str, required=True)
        output_cfg = OutputConfig(
            root=r.path(root or "."),
            timezone=r.get(o, "output.timezone", str, default="UTC", check=_check_tz),
            rotate_interval=r.get(
                o, "output.rotate_interval", int, default=300, check=_divides_day
            ),
            max_file_mb=r.get(
                o, "output.max_file_mb", int, default=512, check=_int_range(1, 2**20)
            ),
            row_group_rows=r.get(
                o, "output.row_group_rows", int, default=131_072, check=_int_range(1024, 2**26)
            ),
            memory_budget_mb=r.get(
                o, "output.memory_budget_mb", int, default=48, check=_int_range(16, 2**20)
            ),
            compression=r.get(
                o,
                "output.compression",
                str,
                default="zstd",
                check=_one_of("zstd", "snappy", "gzip", "lz4", "none"),
            ),
        )
        if root:
            _check_not_fs_root(r, "output.root", output_cfg.root)
        file_mode = _mode(r, o, "output.file_mode", 0o640, owner=0o600, forbidden=0o111)
        dir_mode = _mode(r, o, "output.dir_mode", 0o750, owner=0o700, forbidden=0)
        output_cfg = dataclasses.replace(output_cfg, file_mode=file_mode, dir_mode=dir_mode)
        mask = output_cfg.umask
        if (0o666 & ~mask, 0o777 & ~mask) != (file_mode, dir_mode):
            r.problem(
                "output.file_mode",
                f"{file_mode:04o} and output.dir_mode {dir_mode:04o} cannot both hold (one umask "
                "creates both): give directories the same read/write bits plus x, e.g. "
                "0640 and 0750, or 0660 and 0770",
            )
        if check_paths and root:
            _check_writable(r, "output.root", output_cfg.root)

        pl = r.section("pipeline", {"batch_rows", "flush_interval", "queue_batches"})
        pipeline_cfg = PipelineConfig(
            batch_rows=r.get(
                pl, "pipeline.batch_rows", int, default=4096, check=_int_range(1, 2**20)
            ),
            flush_interval=r.num(pl, "pipeline.flush_interval", 0.5, _seconds(0.01, 3600)),
            queue_batches=r.get(
                pl, "pipeline.queue_batches", int, default=32, check=_int_range(1, 10_000)
            ),
        )

        j = r.section(
            "journal",
            {"enabled", "directory", "durability_interval", "segment_mb", "retain_hours"},
        )
        jdir = r.get(j, "journal.directory", str, default=None)
        journal_cfg = JournalConfig(
            enabled=r.get(j, "journal.enabled", bool, default=True),
            directory=r.path(jdir) if jdir else None,
            durability_interval=r.num(j, "journal.durability_interval", 1.0, _seconds(0.01, 3600)),
            segment_mb=r.get(j, "journal.segment_mb", int, default=64, check=_int_range(1, 4096)),
            retain_hours=r.num(j, "journal.retain_hours", 0.0, _within(0, 24 * 3650, "hours")),
        )
        if journal_cfg.directory is not None:
            _check_not_fs_root(r, "journal.directory", journal_cfg.directory)
        if check_paths and journal_cfg.directory is not None:
            _check_writable(r, "journal.directory", journal_cfg.directory)

        sv_keys = {f for f in SupervisionConfig.__dataclass_fields__}
        sv = r.section("supervision", sv_keys)
        defaults = SupervisionConfig()
        sv_values: dict[str, Any] = {}
        for name in sorted(sv_keys):
            default = getattr(defaults, name)
            key = f"supervision.{name}"
            if isinstance(default, bool):
                sv_values[name] = r.get(sv, key, bool, default=default)
            elif isinstance(default, int):
                sv_values[name] = r.get(sv, key, int, default=default, check=_int_range(1, 10_000))
            else:
                sv_values[name] = r.num(sv, key, default, _SUPERVISION_CHECKS.get(name, _TIME))
        supervision_cfg = SupervisionConfig(**sv_values)
        if supervision_cfg.backoff_max < supervision_cfg.backoff_initial:
            r.problem("supervision.backoff_max", "must be >= supervision.backoff_initial")
        groups = group_count(supervision_cfg.processes, len(source_cfg.stripes))
        if groups > 1 and (output_cfg.memory_budget_mb or 0) < 16 * groups:
            r.problem(
                "output.memory_budget_mb",
                f"must be >= 16 per stripe-group process ({16 * groups} for "
                f"supervision.processes = {supervision_cfg.processes})",
            )

        h = r.section("health", {"path", "interval", "quiet_after"})
        hpath = r.get(h, "health.path", str, default=None)
        health_cfg = HealthConfig(
            path=r.path(hpath) if hpath else None,
            interval=r.num(h, "health.interval", 5.0, _seconds(0.01, 3600)),
            quiet_after=r.num(h, "health.quiet_after", 30.0, _seconds(0.01, WEEK_S)),
        )
        if health_cfg.path is not None and health_cfg.path.is_dir():
            r.problem("health.path", f"{health_cfg.path} is a directory; name the file to write")
        if check_paths and health_cfg.path is not None:
            _check_writable(r, "health.path", health_cfg.path.parent)

        lg = r.section("logging", {"level", "format", "priority_prefix"})
        logging_cfg = LoggingConfig(
            level=r.get(
                lg,
                "logging.level",
                str,
                default="info",
                check=_one_of("debug", "info", "warning", "error"),
            ),
            format=r.get(
                lg, "logging.format", str, default="auto", check=_one_of("auto", "json", "console")
            ),
            priority_prefix=r.get(
                lg, "logging.priority_prefix", str, default="auto",
                check=_one_of("auto", "always", "never"),
            ),
        )
        m = r.section("metrics", {"enabled", "address", "port"})
        metrics_cfg = MetricsConfig(
            enabled=r.get(m, "metrics.enabled", bool, default=False),
            address=r.get(m, "metrics.address", str, default="127.0.0.1", check=_check_address),
            port=r.get(m, "metrics.port", int, default=9650, check=_check_port),
        )
        limits_cfg = _read_limits(r)
        capture_cfg, compaction_cfg, retention_cfg = _compaction_sections(r)
        lake_cfg = _lake_config(r, output_cfg) if "lake" in raw else None
        if r.problems:
            raise ConfigError(r.problems, source)
        return cls(
            capture=capture_cfg,
            compaction=compaction_cfg,
            retention=retention_cfg,
            source=source_cfg,
            auth=auth_cfg,
            output=output_cfg,
            pipeline=pipeline_cfg,
            journal=journal_cfg,
            supervision=supervision_cfg,
            health=health_cfg,
            logging=logging_cfg,
            limits=limits_cfg,
            metrics=metrics_cfg,
            lake=lake_cfg,
        )


def _read_limits(r: _Reader) -> bounds.Limits:
    """``[limits]``: what a server may send (capture.bounds), each within its range."""
    ranges = {
        "max_depth": bounds.DEPTH_RANGE,
        "max_fields": bounds.FIELDS_RANGE,
        "max_frame_bytes": bounds.FRAME_BYTES_RANGE,
        "max_type_name": bounds.TYPE_NAME_RANGE,
        "max_open_types": bounds.OPEN_TYPES_RANGE,
    }
    table = r.section("limits", set(ranges))
    defaults = bounds.Limits()
    values = {
        name: r.get(
            table, f"limits.{name}", int, default=getattr(defaults, name), check=_int_range(lo, hi)
        )
        for name, (lo, hi) in ranges.items()
    }
    return bounds.Limits(**values)


def _compaction_sections(r: _Reader) -> tuple[CaptureConfig, CompactionConfig, RetentionConfig]:
    c = r.section("capture", {"host_id"})
    host = r.get(c, "capture.host_id", str, default=None, check=_check_host_id)
    capture_cfg = CaptureConfig(host_id=host) if host else CaptureConfig()

    d = CompactionConfig()
    k = r.section("compaction", set(CompactionConfig.__dataclass_fields__))

    def k_int(name: str, low: int, high: int | None = None) -> int:
        def check(v: int) -> str | None:
            if v < low or (high is not None and v > high):
                return f"must be between {low} and {high}" if high else f"must be >= {low}"
            return None

        return int(r.get(k, f"compaction.{name}", int, default=getattr(d, name), check=check))

    peers = r.get(k, "compaction.peers", list, default=[], check=_check_peers) or []
    compaction_cfg = CompactionConfig(
        granularity=r.get(
            k, "compaction.granularity", str, default="day",
            check=_one_of(*COMPACTION_GRANULARITIES),
        ) or "day",
        min_age=k_int("min_age", 0),
        row_group_rows=k_int("row_group_rows", 1024),
        row_group_mb=k_int("row_group_mb", 1),
        target_file_mb=k_int("target_file_mb", 1),
        compression_level=k_int("compression_level", 1, 22),
        max_unit_mb=k_int("max_unit_mb", 16),
        peers=tuple(r.path(str(p)) for p in peers),
        sort=r.get(
            k, "compaction.sort", str, default="underlier",
            check=_one_of("instrument", "underlier"),
        ) or "underlier",
    )  # fmt: skip

    t = r.section("retention", {"days", "tables", "journal_archive_days"})
    days = r.get(t, "retention.days", int, default=0, check=_int_range(0, 36_500))
    per_table: list[tuple[str, int]] = []
    tables = r.get(t, "retention.tables", dict, default={})
    for name, value in (tables or {}).items():
        key = f"retention.tables.{name}"
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            r.problem(key, "must be a whole number of days >= 0")
        elif name != "capture_events" and lookup_message(name) is None:
            r.problem(key, "unknown message type (not in the MLink data dictionary)")
        else:
            per_table.append((_canonical_type(name), value))
    retention_cfg = RetentionConfig(
        days=days,
        tables=tuple(per_table),
        journal_archive_days=r.get(
            t, "retention.journal_archive_days", int, default=0, check=_int_range(0, 36_500)
        ),
    )
    return capture_cfg, compaction_cfg, retention_cfg


def _check_host_id(v: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", v):
        return "must be 1-63 letters, digits, '_', '.' or '-' (starting with a letter or digit)"
    return None


def _check_peers(v: list[Any]) -> str | None:
    if any(not isinstance(p, str) or not p.strip() for p in v):
        return "must be a list of directory paths"
    return None


_LAKE_SECRETS = {
    "access_key_id": "access_key_id",
    "secret_access_key": "secret_access_key",
    "catalog_password": "catalog_password",
    "password": "catalog_password",
}


def _lake_config(r: _Reader, output: OutputConfig) -> LakeConfig:
    k = r.section("lake", set(LakeConfig.__dataclass_fields__) | set(_LAKE_SECRETS))
    for key, stem in _LAKE_SECRETS.items():
        if key in k:
            r.problem(
                f"lake.{key}",
                f"secrets are not read from the TOML; use {stem}_env, {stem}_file or "
                f"{stem}_credential",
            )

    def text(name: str, default: str | None = None, **kw: Any) -> Any:
        return r.get(k, f"lake.{name}", str, default=default, **kw)

    def path(name: str) -> Path | None:
        value = text(name)
        return r.path(value) if value else None

    catalog = text("catalog", "sql", check=_one_of("sql", "rest")) or "sql"
    uri = text("catalog_uri", check=_non_empty)
    if catalog == "rest" and not uri:
        r.problem("lake.catalog_uri", 'required when lake.catalog = "rest"')
    if uri and "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        netloc = uri.split("://", 1)[1].split("/", 1)[0]
        if ":" in netloc.split("@", 1)[0] and "{password}" not in netloc:
            r.problem(
                "lake.catalog_uri",
                "holds a password; write {password} there and use catalog_password_env, "
                "_file or _credential",
            )
    cfg = LakeConfig(
        host_id=text("host_id", required=True, check=_check_name) or "",
        bucket=text("bucket", required=True, check=_check_bucket) or "",
        endpoint=text("endpoint", check=_check_http_url),
        region=text("region", "us-east-1", check=_check_region) or "us-east-1",
        prefix=text("prefix", "mlink", check=_check_prefix) or "",
        access_key_id_env=text("access_key_id_env"),
        access_key_id_file=path("access_key_id_file"),
        access_key_id_credential=text("access_key_id_credential"),
        secret_access_key_env=text("secret_access_key_env"),
        secret_access_key_file=path("secret_access_key_file"),
        secret_access_key_credential=text("secret_access_key_credential"),
        catalog=catalog,
        catalog_uri=uri,
        catalog_password_env=text("catalog_password_env"),
        catalog_password_file=path("catalog_password_file"),
        catalog_password_credential=text("catalog_password_credential"),
        namespace=text("namespace", "mlink", check=_check_name) or "mlink",
        commit_interval=r.num(k, "lake.commit_interval", 60.0, _seconds(0.1, 86_400)),
        delete_local=r.get(k, "lake.delete_local", bool, default=False),
        disk_budget_mb=r.get(k, "lake.disk_budget_mb", int, default=0, check=_int_range(0, 2**30)),
        snapshot_retention_hours=r.num(
            k, "lake.snapshot_retention_hours", 24.0, _within(0, 24 * 3650, "hours")
        ),
    )
    key_id = cfg.access_key_id_env or cfg.access_key_id_file or cfg.access_key_id_credential
    secret = (
        cfg.secret_access_key_env or cfg.secret_access_key_file or cfg.secret_access_key_credential
    )
    if bool(key_id) != bool(secret):
        r.problem(
            "lake.secret_access_key_env" if key_id else "lake.access_key_id_env",
            "configure both the access key id and the secret access key sources, or neither",
        )
    if output.timezone != "UTC":
        r.problem(
            "lake",
            "Iceberg tables are partitioned by the UTC day of _recv_time: output.timezone "
            'must be "UTC" so that no local file spans two partitions',
        )
    return cfg


def _check_name(v: str) -> str | None:
    """A name that is one S3 key component and one Iceberg namespace level (no '.')."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", v):
        return "must be 1-63 letters, digits, '_' or '-', starting with a letter or digit"
    return None


def _check_bucket(v: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v):
        return "must be an S3 bucket name (3-63 lower-case letters, digits, '.', '-')"
    return None


def _check_prefix(v: str) -> str | None:
    parts = v.split("/")
    if v and not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=-]*", p) for p in parts):
        return "must be path components of letters, digits, '_', '.', '=', '-' joined by '/'"
    return None


class _Reader:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, raw: Mapping[str, Any], base_dir: Path) -> None:
        self.raw = raw
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{key}: {text}")

    def known_sections(self, *names: str) -> None:
        for key in self.raw:
            if key not in names:
                self.problem(key, f"unknown section (known: {', '.join(names)})")

    def no_secrets(self, name: str) -> None:
        value = self.raw.get(name, {})
        for key in value if isinstance(value, Mapping) else ():
            if _looks_secret(key):
                self.problem(f"{name}.{key}", _SECRET_IN_FILE)

    def section(self, name: str, keys: set[str]) -> Mapping[str, Any]:
        value = self.raw.get(name, {})
        if not isinstance(value, Mapping):
            self.problem(name, "must be a table")
            return {}
        for key in value:
            if name != "auth" and _looks_secret(key):
                # Never echo the value; never accept it silently as an unknown key either.
                self.problem(f"{name}.{key}", _SECRET_IN_FILE)
            elif key not in keys:
                self.problem(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(keys))})")
        return value

    def get(
        self,
        table: Mapping[str, Any],
        dotted: str,
        typ: type[T],
        *,
        default: Any = None,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        name = dotted.rsplit(".", 1)[1]
        if name not in table:
            if required:
                self.problem(dotted, "required")
            return default  # type: ignore[no-any-return]
        value = table[name]
        if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
            self.problem(dotted, f"must be {_type_name(typ)}, got {_type_name(type(value))}")
            return default  # type: ignore[no-any-return]
        if check is not None and (why := check(value)) is not None:
            self.problem(dotted, why)
            return default  # type: ignore[no-any-return]
        return value

    def num(
        self,
        table: Mapping[str, Any],
        dotted: str,
        default: float,
        check: Callable[[Any], str | None],
    ) -> float:
        name = dotted.rsplit(".", 1)[1]
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(dotted, f"must be a number, got {_type_name(type(value))}")
            return default
        if not math.isfinite(value):
            self.problem(dotted, f"must be a finite number, got {value}")
            return default
        if (why := check(value)) is not None:
            self.problem(dotted, why)
            return default
        return float(value)

    def path(self, text: str) -> Path:
        p = Path(os.path.expandvars(os.path.expanduser(text)))
        return p if p.is_absolute() else self.base_dir / p


def _type_name(t: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "an array",
        dict: "a table",
    }.get(t, t.__name__)


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


def _mode(
    r: _Reader, table: Mapping[str, Any], dotted: str, default: int, *, owner: int, forbidden: int
) -> int:
    """A permission mode: an octal string ("0640") or a TOML integer (0o640)."""
    name = dotted.rsplit(".", 1)[1]
    if name not in table:
        return default
    value = table[name]
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        r.problem(dotted, f'must be an octal mode like "{default:04o}" (or 0o{default:o})')
        return default
    if not 0 <= mode <= 0o777:
        r.problem(dotted, f"{mode:o}: must be permission bits only, at most 0777")
    elif mode & owner != owner:
        r.problem(dotted, f"{mode:04o}: the daemon itself needs at least {owner:04o}")
    elif mode & forbidden:
        r.problem(dotted, f"{mode:04o}: data files are not executable (no x bits)")
    else:
        return mode
    return default


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
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown IANA time zone {v!r}"
    return None


def _divides_day(v: int) -> str | None:
    if v < 60 or 86400 % v:
        return "must be at least 60 seconds and divide a day (60, 300, 900, 3600, ...)"
    return None


def _within(lo: float, hi: float, unit: str = "") -> Callable[[Any], str | None]:
    """A number in [lo, hi]: finite (the reader checks that) and sane, so that an interval of
    1e-9 s cannot spin a loop, nor a typo put a timer off for a century."""
    suffix = f" {unit}" if unit else ""
    return lambda v: (
        None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}{suffix}, got {v:g}"
    )


def _seconds(lo: float, hi: float) -> Callable[[Any], str | None]:
    return _within(lo, hi, "seconds")


def _int_range(lo: int, hi: int) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:,} and {hi:,}, got {v:,}"


WEEK_S = 7 * 86_400.0
_TIME = _seconds(0.01, WEEK_S)
_SUPERVISION_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "backoff_jitter": _within(0, 1),
    "backoff_multiplier": _within(1, 100),
    "stale_after": _seconds(0.1, 86_400),
    "connect_timeout": _seconds(0.01, 3600),
    "logon_timeout": _seconds(0.01, 3600),
    "shutdown_grace": _seconds(0.01, 86_400),
}


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _check_writable(r: _Reader, key: str, path: Path) -> None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        r.problem(key, f"{path} is not under a directory")
    elif not os.access(probe, os.W_OK | os.X_OK):
        r.problem(key, f"{path} is not writable")


def _check_not_fs_root(r: _Reader, key: str, path: Path) -> None:
    """The daemon creates, renames and deletes below these directories: never the whole
    filesystem."""
    if path.resolve() == Path(path.anchor or "/"):
        r.problem(key, f"{path} is the filesystem root; name a directory of its own")


_SECRET_IN_FILE = (
    "secrets are not read from the TOML; name their source in [auth] "
    "(*_env, *_file or *_credential)"
)
_SECRET_WORDS = re.compile(r"(^|_)(api_?key|password|passwd|secret|token)$", re.IGNORECASE)


def _looks_secret(key: str) -> bool:
    """A key that would hold a secret itself (``api_key``, ``password``, ``client_secret``);
    ``api_key_env`` and the like name where a secret lives and are fine."""
    return bool(_SECRET_WORDS.search(key))
