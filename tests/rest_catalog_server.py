"""A small Iceberg REST catalog for the tests, over real HTTP on loopback.

No Iceberg REST server can run here (the reference ones are Java or Rust, out of reach of CI), so
this one speaks the REST protocol (Apache Iceberg's ``rest-catalog-open-api.yaml``: the paths,
JSON bodies, status codes and error bodies pyiceberg's ``RestCatalog`` uses) and hands every
catalog operation to pyiceberg's own ``SqlCatalog`` on SQLite: requests are parsed with
pyiceberg's request models (``CreateTableRequest``, ``CommitTableRequest``), commits are
``SqlCatalog.commit_table`` (requirements checked, updates applied, metadata written, the pointer
swapped), answers are pyiceberg's response models. What is ours is the routing, authentication
and the mapping of exceptions to status codes.

Authentication: every request but the token endpoint needs ``Authorization: Bearer <token>``;
``POST /v1/oauth/tokens`` exchanges the client credential (``client_credentials`` grant, form
encoded) for that token. ``GET /v1/config`` refuses any ``warehouse`` but its own; the path
prefix is announced in the config's ``overrides`` (as Polaris and Lakekeeper do) unless
``announce_prefix`` is false (the client must then be configured with it).

Catalog operations run one at a time (a lock): the SQL catalog's optimistic commit still
decides conflicts between clients, which each load, change and commit with requirements.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pyiceberg.catalog.rest import CreateTableRequest, TableResponse
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
from pyiceberg.table import CommitTableRequest
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER

NS_SEP = "\x1f"  # the spec's default namespace separator (percent-encoded in paths: %1F)
ENDPOINTS = [
    "GET /v1/{prefix}/namespaces",
    "POST /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}",
    "HEAD /v1/{prefix}/namespaces/{namespace}",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "POST /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}",
]
"""What this server implements (sent in ``/v1/config``: pyiceberg refuses to call any other)."""


class HttpError(Exception):
    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.code, self.kind = code, kind


class _Named:
    """What ``SqlCatalog.commit_table`` needs of the table it is given: its identifier."""

    def __init__(self, ident: tuple[str, ...]) -> None:
        self._ident = ident

    def name(self) -> tuple[str, ...]:
        return self._ident


class RestCatalogServer:
    """``start()`` -> base URL (``http://127.0.0.1:PORT``); ``stop()``. ``requests`` lists the
    ``(method, path)`` of every request served, ``refused`` counts those refused for want of a
    valid bearer token or credential."""

    def __init__(
        self,
        db: Path,
        warehouse_location: str,
        *,
        client_id: str,
        client_secret: str,
        token: str,
        warehouse: str = "lake",
        prefix: str = "wh1",
        announce_prefix: bool = True,
        fileio: dict[str, str] | None = None,
    ) -> None:
        self.catalog = SqlCatalog(
            "rest-backing", uri=f"sqlite:///{db}", warehouse=warehouse_location, **(fileio or {})
        )
        self.client_id, self.client_secret, self.token = client_id, client_secret, token
        self.warehouse, self.prefix, self.announce_prefix = warehouse, prefix, announce_prefix
        self.requests: list[tuple[str, str]] = []
        self.refused = 0
        #: A hostile server: when set, every answer but the token endpoint's is (status, raw
        #: body) from this function of (method, path) instead of the catalog's.
        self.sabotage: Callable[[str, str], tuple[int, bytes]] | None = None
        self.url = ""
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # (stop() waits for the serving loop to look at its flag: every 0.05 s, not 0.5 s)
        serve = partial(self._httpd.serve_forever, poll_interval=0.05)
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self.catalog.engine.dispose()

    # -- routing

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any,
               body: bytes) -> tuple[int, Any]:  # fmt: skip
        with self._lock:
            self.requests.append((method, path))
        if method == "POST" and path == "/v1/oauth/tokens":
            return self._token(body)
        if headers.get("Authorization") != f"Bearer {self.token}":
            with self._lock:
                self.refused += 1
            raise HttpError(401, "NotAuthorizedException", "a valid bearer token is required")
        if method == "GET" and path == "/v1/config":
            return self._config(query)
        rest = path.removeprefix("/v1/")
        if self.prefix:
            if not rest.startswith(self.prefix + "/"):
                raise HttpError(404, "NoSuchWarehouseException", "unknown path prefix")
            rest = rest.removeprefix(self.prefix + "/")
        with self._lock:
            return self._route(method, rest, body)

    def _route(self, method: str, rest: str, body: bytes) -> tuple[int, Any]:
        routes: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
            ("GET", r"namespaces", self._list_namespaces),
            ("POST", r"namespaces", self._create_namespace),
            ("GET", r"namespaces/([^/]+)", self._load_namespace),
            ("HEAD", r"namespaces/([^/]+)", self._load_namespace),
            ("GET", r"namespaces/([^/]+)/tables", self._list_tables),
            ("POST", r"namespaces/([^/]+)/tables", self._create_table),
            ("GET", r"namespaces/([^/]+)/tables/([^/]+)", self._load_table),
            ("HEAD", r"namespaces/([^/]+)/tables/([^/]+)", self._load_table),
            ("POST", r"namespaces/([^/]+)/tables/([^/]+)", self._commit),
        ]
        for verb, pattern, fn in routes:
            m = re.fullmatch(pattern, rest)
            if m and verb == method:
                args = [unquote(g) for g in m.groups()]
                return fn(*args, body) if method == "POST" else fn(*args)
        raise HttpError(400, "BadRequestException", f"no route for {method} {rest}")

    # -- endpoints

    def _token(self, body: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id, self.client_secret,
        ):  # fmt: skip
            with self._lock:
                self.refused += 1
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        return 200, {
            "access_token": self.token,
            "token_type": "bearer",
            "expires_in": 3600,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }

    def _config(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        asked = query.get("warehouse", [self.warehouse])[0]
        if asked != self.warehouse:
            raise HttpError(400, "BadRequestException", "no such warehouse")
        overrides = {"prefix": self.prefix} if self.prefix and self.announce_prefix else {}
        return 200, {"defaults": {}, "overrides": overrides, "endpoints": ENDPOINTS}

    def _list_namespaces(self) -> tuple[int, Any]:
        return 200, {"namespaces": [list(ns) for ns in self.catalog.list_namespaces()]}

    def _create_namespace(self, body: bytes) -> tuple[int, Any]:
        req = json.loads(body)
        ns = tuple(req["namespace"])
        self.catalog.create_namespace(ns, req.get("properties") or {})
        return 200, {"namespace": list(ns), "properties": req.get("properties") or {}}

    def _load_namespace(self, ns: str) -> tuple[int, Any]:
        props = self.catalog.load_namespace_properties(tuple(ns.split(NS_SEP)))
        return 200, {"namespace": ns.split(NS_SEP), "properties": props}

    def _list_tables(self, ns: str) -> tuple[int, Any]:
        idents = self.catalog.list_tables(tuple(ns.split(NS_SEP)))
        return 200, {"identifiers": [{"namespace": list(i[:-1]), "name": i[-1]} for i in idents]}

    def _create_table(self, ns: str, body: bytes) -> tuple[int, Any]:
        data = json.loads(body)
        for optional in ("location", "partition-spec", "write-order"):  # optional in the spec;
            data.setdefault(optional, None)  # pyiceberg's model requires them (it sends them)
        req = CreateTableRequest.model_validate(data)
        ident = (*ns.split(NS_SEP), req.name)
        if not self.catalog.namespace_exists(ident[:-1]):
            raise NoSuchNamespaceError(f"namespace {ns} does not exist")
        if self.catalog.table_exists(ident):
            raise TableAlreadyExistsError(f"table {'.'.join(ident)} already exists")
        kw: dict[str, Any] = {
            "schema": req.table_schema,
            "location": req.location,
            "partition_spec": req.partition_spec or UNPARTITIONED_PARTITION_SPEC,
            "sort_order": req.write_order or UNSORTED_SORT_ORDER,
            "properties": req.properties,
        }
        if req.stage_create:  # metadata to start from, nothing written: the commit creates it
            staged = self.catalog._create_staged_table(ident, **kw)
            return 200, TableResponse(metadata_location=None, metadata=staged.metadata)
        tbl = self.catalog.create_table(ident, **kw)
        return 200, TableResponse(metadata_location=tbl.metadata_location, metadata=tbl.metadata)

    def _load_table(self, ns: str, name: str) -> tuple[int, Any]:
        tbl = self.catalog.load_table((*ns.split(NS_SEP), name))
        return 200, TableResponse(metadata_location=tbl.metadata_location, metadata=tbl.metadata)

    def _commit(self, ns: str, name: str, body: bytes) -> tuple[int, Any]:
        req = CommitTableRequest.model_validate_json(body)
        ident = (*ns.split(NS_SEP), name)
        try:
            done = self.catalog.commit_table(_Named(ident), req.requirements, req.updates)  # type: ignore[arg-type]
        except TableAlreadyExistsError as exc:  # a create lost a race: a conflict
            raise CommitFailedException(str(exc)) from None
        return 200, done


ERRORS: list[tuple[type[Exception], int, str]] = [
    (NoSuchTableError, 404, "NoSuchTableException"),
    (NoSuchNamespaceError, 404, "NoSuchNamespaceException"),
    (TableAlreadyExistsError, 409, "AlreadyExistsException"),
    (NamespaceAlreadyExistsError, 409, "AlreadyExistsException"),
    (CommitFailedException, 409, "CommitFailedException"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' sessions use it
    server_owner: RestCatalogServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sabotage = self.server_owner.sabotage
        if sabotage is not None and url.path != "/v1/oauth/tokens":
            status, raw = sabotage(self.command, url.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)
            return
        try:
            code, payload = self.server_owner.handle(
                self.command, url.path, parse_qs(url.query), self.headers, body
            )
        except HttpError as exc:
            code, payload = exc.code, _error(exc.code, exc.kind, str(exc))
        except Exception as exc:  # noqa: BLE001 - the catalog's exceptions, as the spec maps them
            for typ, status, kind in ERRORS:
                if isinstance(exc, typ):
                    code, payload = status, _error(status, kind, str(exc))
                    break
            else:
                code, payload = 500, _error(500, type(exc).__name__, str(exc))
        if self.command == "HEAD":
            self.send_response(204 if code == 200 else code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = (
            payload.model_dump_json().encode()
            if hasattr(payload, "model_dump_json")
            else json.dumps(payload).encode()
        )
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_DELETE = _serve


def _error(code: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}
