"""The Iceberg side: one table per message type (and ``capture_events``) in one namespace.

Tables are created from the first file's Arrow schema, partitioned by ``day(_recv_time)`` (the
UTC day, the local layout's ``date`` with ``output.timezone = "UTC"``) and ``_stripe``. A file
with columns the table lacks (a new dictionary) evolves the table schema (``union_by_name``)
before it is added. Files are registered with ``add_files`` (no rewrite: the uploaded objects are
the table's data files).

Exactly once: every commit's snapshot summary carries ``mlink.hw.<host>.<stripe>`` = the highest
``_seq`` of that stripe this host has in the table. Files of one (table, stripe) are committed in
``_seq`` order and never with a gap, so "is this file in the table?" is ``seq_max <= hw``: that
is what a restart asks after a crash between the catalog commit and anything after it. The
newest snapshot holding the key has it (each host writes only its own keys and carries them
forward in every commit of the table).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.transforms import DayTransform, IdentityTransform

from capture.config import LakeConfig
from capture.credentials import SecretSource
from capture.errors import CatalogError as CatalogError
from capture.errors import CredentialError
from capture.lake.store import s3_credentials

CATALOG_NAME = "mlink"  # the SQL catalog keeps tables per catalog name: readers use it too
HW_PREFIX = "mlink.hw."
COMMIT_ATTEMPTS = 5
TABLE_PROPERTIES = {
    # merge small manifests as part of appends (one manifest per commit otherwise: planning a
    # scan reads them all, and so does every commit's manifest list)
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "50",
    # keep the last 100 metadata JSON files, delete older ones (one per commit otherwise)
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
}


def watermark_key(host_id: str, stripe: str) -> str:
    return f"{HW_PREFIX}{host_id}.{stripe}"


def default_catalog_uri(root: Path) -> str:
    return f"sqlite:///{(root / '_lake' / 'catalog.db').absolute()}"


class LakeTables:
    """Blocking catalog operations (run them in a thread); one instance per daemon process."""

    def __init__(
        self, cfg: LakeConfig, root: Path, environ: Mapping[str, str] | None = None
    ) -> None:
        self.cfg = cfg
        self.root = root
        self._environ = environ
        self._catalog: Catalog | None = None
        self._tables: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._secrets: list[str | None] = []  # redacted from every error's text

    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                self._catalog = self._open_catalog()
            return self._catalog

    def _open_catalog(self) -> Catalog:
        cfg = self.cfg
        try:
            creds = s3_credentials(cfg, self._environ)
            password = self._password()
            rest_auth = self._rest_auth()
        except CredentialError as exc:
            raise CatalogError(str(exc)) from None
        secrets = [password, *rest_auth.values()]
        if "credential" in rest_auth:  # "id:secret": the secret part alone is one too
            secrets.append(rest_auth["credential"].partition(":")[2])
        self._secrets = secrets
        props: dict[str, str] = {
            "warehouse": f"s3://{cfg.bucket}/{cfg.prefix + '/' if cfg.prefix else ''}warehouse",
            "s3.region": cfg.region,
        }
        if cfg.endpoint:
            props["s3.endpoint"] = cfg.endpoint
            props["s3.force-virtual-addressing"] = "false"
        if creds:
            props["s3.access-key-id"] = creds["aws_access_key_id"]
            props["s3.secret-access-key"] = creds["aws_secret_access_key"]
        name = CATALOG_NAME
        try:
            if cfg.catalog == "rest":
                rest = {**props, **self._rest_props(), **rest_auth}
                catalog = load_catalog(name, type="rest", uri=cfg.catalog_uri or "", **rest)
            else:
                uri = cfg.catalog_uri or default_catalog_uri(self.root)
                if uri.startswith("sqlite:///"):
                    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                if password is not None:
                    uri = uri.replace("{password}", password)
                catalog = SqlCatalog(name, uri=uri, **props)
            try:
                catalog.create_namespace(cfg.namespace)
            except NamespaceAlreadyExistsError:
                pass
        except CatalogError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy, HTTP, pyiceberg: one contract
            raise CatalogError(_describe("opening the catalog", exc, *secrets)) from None
        return catalog

    def _error(self, what: str, exc: BaseException) -> CatalogError:
        return CatalogError(_describe(what, exc, *self._secrets))

    def _password(self) -> str | None:
        source = SecretSource("catalog password", self.cfg.catalog_password, self._environ)
        return source.read().value if source.configured else None

    def _rest_auth(self) -> dict[str, str]:
        """pyiceberg's RestCatalog properties for the configured secret: ``credential``
        (OAuth2 client credential) or ``token`` (bearer token); {} for none."""
        cfg = self.cfg
        if cfg.catalog != "rest":
            return {}
        out: dict[str, str] = {}
        for prop, what, ref in (
            ("credential", "REST catalog credential", cfg.catalog_credential),
            ("token", "REST catalog token", cfg.catalog_token),
        ):
            source = SecretSource(what, ref, self._environ)
            if source.configured:
                out[prop] = source.read().value
        return out

    def _rest_props(self) -> dict[str, str]:
        cfg = self.cfg
        props = {
            "warehouse": cfg.catalog_warehouse,
            "oauth2-server-uri": cfg.catalog_oauth2_uri,
            "scope": cfg.catalog_scope,
            "prefix": cfg.catalog_prefix,
        }
        return {k: v for k, v in props.items() if v is not None}

    def table(self, name: str, schema: pa.Schema) -> Any:
        """The table ``name``, created (partitioned) if missing, its schema evolved to hold
        every column of ``schema``. Raises CatalogError."""
        try:
            tbl = self._tables.get(name)
            if tbl is None:
                tbl = self._tables[name] = self._load_or_create(name, schema)
            have = {f.name for f in tbl.schema().fields}
            if any(f.name not in have for f in schema):
                with tbl.update_schema() as update:
                    update.union_by_name(schema)
            return tbl
        except CatalogError:
            raise
        except Exception as exc:  # noqa: BLE001 - one contract for the catalog's failures
            self._tables.pop(name, None)
            raise self._error(f"table {name}", exc) from None

    def _load_or_create(self, name: str, schema: pa.Schema) -> Any:
        catalog = self.catalog()
        ident = (self.cfg.namespace, name)
        try:
            return catalog.load_table(ident)
        except NoSuchTableError:
            pass
        try:
            tx = catalog.create_table_transaction(ident, schema=schema, properties=TABLE_PROPERTIES)
            with tx.update_spec() as spec:
                spec.add_field("_recv_time", DayTransform(), "recv_day")
                spec.add_field("_stripe", IdentityTransform(), "stripe")
            tx.commit_transaction()
        except TableAlreadyExistsError:
            pass  # another host (or process) created it first
        return catalog.load_table(ident)

    def watermarks(self, name: str, stripes: Iterable[str]) -> dict[str, int]:
        """This host's high-water ``_seq`` per stripe in table ``name`` (stripes with none are
        left out); {} when the table does not exist. Raises CatalogError."""
        try:
            tbl = self._tables.get(name)
            if tbl is None:
                try:
                    tbl = self.catalog().load_table((self.cfg.namespace, name))
                except NoSuchTableError:
                    return {}
                self._tables[name] = tbl
            else:
                tbl.refresh()
            return read_watermarks(tbl, self.cfg.host_id, stripes)
        except CatalogError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._tables.pop(name, None)
            raise self._error(f"table {name}", exc) from None

    def commit(
        self, name: str, schema: pa.Schema, uris: list[str], hw: Mapping[str, int]
    ) -> None:
        """One snapshot adding ``uris`` to table ``name`` with this host's watermarks ``hw``
        (every stripe of this process that has any). A conflicting concurrent commit is
        retried after a refresh; if the refreshed table already has ``hw`` (our commit went
        through but its answer was lost), nothing is added twice. Raises CatalogError."""
        props = {watermark_key(self.cfg.host_id, s): str(v) for s, v in sorted(hw.items())}
        for attempt in range(COMMIT_ATTEMPTS):
            tbl = self.table(name, schema)
            try:
                tbl.add_files(uris, snapshot_properties=props, check_duplicate_files=False)
                return
            except CommitFailedException as exc:
                last: Exception = exc
            except Exception as exc:  # noqa: BLE001 - connection lost mid-commit, among others
                last = exc
            self._tables.pop(name, None)
            try:
                have = self.watermarks(name, hw)
            except CatalogError:
                if attempt == COMMIT_ATTEMPTS - 1:
                    break
                continue
            if all(have.get(s, -1) >= v for s, v in hw.items()):
                return  # it was committed after all
        raise self._error(f"committing to {name}", last)


    def data_files(self, name: str) -> tuple[set[str], dict[str, list[tuple[int, int]]]]:
        """The paths of table ``name``'s data files and, per stripe, their ``_seq`` ranges (from
        the manifests' column bounds; no data is read). Raises CatalogError."""
        try:
            tbl = self.catalog().load_table((self.cfg.namespace, name))
            if tbl.current_snapshot() is None:
                return set(), {}
            paths: set[str] = set()
            spans: dict[str, list[tuple[int, int]]] = {}
            for f in tbl.inspect.files().to_pylist():
                paths.add(f["file_path"])
                m = f["readable_metrics"]
                lo, hi = m["_seq"]["lower_bound"], m["_seq"]["upper_bound"]
                spans.setdefault(str(m["_stripe"]["lower_bound"]), []).append((lo, hi))
            return paths, spans
        except Exception as exc:  # noqa: BLE001 - one contract for the catalog's failures
            raise self._error(f"listing the files of {name}", exc) from None

    def expire(self, name: str, older_than_ms: int) -> int:
        """Expire the snapshots of table ``name`` older than ``older_than_ms`` (epoch ms),
        except the current one and, for every watermark key of any host, the newest snapshot
        carrying it (what a restart reads). Returns how many were expired. Raises
        CatalogError."""
        try:
            tbl = self.catalog().load_table((self.cfg.namespace, name))
            doomed = expirable(tbl, older_than_ms)
            if doomed:
                tbl.maintenance.expire_snapshots().by_ids(doomed).commit()
            self._tables.pop(name, None)
            return len(doomed)
        except Exception as exc:  # noqa: BLE001 - one contract for the catalog's failures
            raise self._error(f"expiring snapshots of {name}", exc) from None


    def referenced(self, name: str) -> tuple[set[str], str]:
        """Every file table ``name`` references (data files, manifests and manifest lists of
        every snapshot kept, the current and logged metadata files), and the location of its
        metadata directory. Raises CatalogError."""
        try:
            tbl = self.catalog().load_table((self.cfg.namespace, name))
            refs = {tbl.metadata_location}
            refs |= {entry.metadata_file for entry in tbl.metadata.metadata_log}
            snapshots = tbl.snapshots()
            refs |= {s.manifest_list for s in snapshots}
            if snapshots:
                refs |= set(tbl.inspect.all_manifests().column("path").to_pylist())
                refs |= set(tbl.inspect.all_files().column("file_path").to_pylist())
            return refs, f"{tbl.location().rstrip('/')}/metadata/"
        except Exception as exc:  # noqa: BLE001 - one contract for the catalog's failures
            raise self._error(f"listing what {name} references", exc) from None


def expirable(tbl: Any, older_than_ms: int) -> list[int]:
    """Snapshot ids that may go: older than the limit, not the current one, not the newest
    carrier of any ``mlink.hw.*`` key."""
    snaps = sorted(tbl.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    keep: set[int] = set()
    current = tbl.current_snapshot()
    if current is not None:
        keep.add(current.snapshot_id)
    seen: set[str] = set()
    for snap in snaps:
        props = snap.summary.additional_properties if snap.summary is not None else {}
        keys = {k for k in props if k.startswith(HW_PREFIX)}
        if keys - seen:
            keep.add(snap.snapshot_id)
            seen |= keys
    return [
        s.snapshot_id for s in snaps if s.timestamp_ms < older_than_ms and s.snapshot_id not in keep
    ]


def read_watermarks(tbl: Any, host_id: str, stripes: Iterable[str]) -> dict[str, int]:
    wanted = {watermark_key(host_id, s): s for s in stripes}
    found: dict[str, int] = {}
    for snap in sorted(tbl.snapshots(), key=lambda s: s.timestamp_ms, reverse=True):
        summary = snap.summary
        if summary is None:
            continue
        for key, stripe in wanted.items():
            if stripe not in found and (value := summary[key]) is not None:
                found[stripe] = int(value)
        if len(found) == len(wanted):
            break
    return found


def _describe(what: str, exc: BaseException, *secrets: str | None) -> str:
    text = f"{what}: {type(exc).__name__}: {exc}"
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text[:500]
