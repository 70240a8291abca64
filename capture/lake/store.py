"""Uploads to S3-compatible storage that never overwrite an object.

Every PUT carries ``If-None-Match: *``: the store refuses it (412 Precondition Failed) when the
key exists. Keys are deterministic (``files.LakeFile.key``), so a 412 on a retry normally means
"our own earlier attempt got there"; it is accepted only if the object is the same file (same
size and the SHA-256 we stored in its metadata), otherwise it is an :class:`ObjectConflict`
(another writer, e.g. a second host wrongly configured with the same host id and stripe).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import boto3  # type: ignore[import-untyped]
import botocore.config  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]

from capture.config import LakeConfig
from capture.credentials import SecretSource
from capture.errors import CredentialError
from capture.errors import ObjectConflict as ObjectConflict
from capture.errors import StoreError as StoreError

SHA256_META = "sha256"  # x-amz-meta-sha256: the object's SHA-256, hex


def key_sources(cfg: LakeConfig, environ: Mapping[str, str] | None) -> tuple[SecretSource, ...]:
    """The access key id and secret access key sources; empty: boto3's own chain."""
    key_id = SecretSource("S3 access key id", cfg.access_key_id, environ)
    secret = SecretSource("S3 secret access key", cfg.secret_access_key, environ)
    return (key_id, secret) if key_id.configured else ()


def s3_credentials(cfg: LakeConfig, environ: Mapping[str, str] | None) -> dict[str, str]:
    """``aws_access_key_id``/``aws_secret_access_key`` read afresh from their sources (empty:
    boto3's chain). Raises capture.auth.CredentialError."""
    sources = key_sources(cfg, environ)
    if not sources:
        return {}
    key_id, secret = (s.read().value for s in sources)
    return {"aws_access_key_id": key_id, "aws_secret_access_key": secret}


class ObjectStore:
    """One bucket; blocking calls (run them in a thread)."""

    def __init__(self, cfg: LakeConfig, environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self._environ = environ
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.cfg.endpoint,
                region_name=self.cfg.region,
                config=botocore.config.Config(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"} if self.cfg.endpoint else None,
                ),
                **s3_credentials(self.cfg, self._environ),
            )
        return self._client

    def put_new(self, key: str, path: Path, *, size: int, sha256: str) -> Literal["put", "there"]:
        """Upload ``path`` to ``key`` unless the key exists. "there": the key already holds this
        very file (a retry). Raises ObjectConflict, StoreError."""
        try:
            with path.open("rb") as body:
                self._call(
                    "PutObject",
                    Bucket=self.cfg.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    IfNoneMatch="*",
                    Metadata={SHA256_META: sha256},
                )
            return "put"
        except _Precondition:
            pass
        head = self._call("HeadObject", Bucket=self.cfg.bucket, Key=key)
        theirs = (head.get("ContentLength"), head.get("Metadata", {}).get(SHA256_META))
        if theirs != (size, sha256):
            raise ObjectConflict(
                f"s3://{self.cfg.bucket}/{key} exists with different content "
                f"(size {theirs[0]}, sha256 {theirs[1]}; ours {size}, {sha256}); not overwritten"
            )
        return "there"

    def list_before(self, prefix: str, before: dt.datetime) -> list[str]:
        """Keys under ``prefix`` last modified before ``before``. Raises StoreError."""
        keys: list[str] = []
        token: str | None = None
        while True:
            page = self._call(
                "ListObjectsV2",
                Bucket=self.cfg.bucket,
                Prefix=prefix,
                **({"ContinuationToken": token} if token else {}),
            )
            keys += [o["Key"] for o in page.get("Contents", []) if o["LastModified"] < before]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys

    def delete(self, keys: list[str]) -> None:
        """Delete ``keys`` (1,000 a request). Raises StoreError."""
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            answer = self._call(
                "DeleteObjects",
                Bucket=self.cfg.bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StoreError(f"S3 DeleteObjects {first.get('Key')}: {first.get('Code')}")

    def create_bucket(self) -> None:
        """Create the bucket (the lake demo's throw-away store). Raises StoreError."""
        self._call("CreateBucket", Bucket=self.cfg.bucket)

    def _call(self, operation: str, **kwargs: Any) -> Any:
        method = {
            "PutObject": "put_object",
            "HeadObject": "head_object",
            "CreateBucket": "create_bucket",
            "ListObjectsV2": "list_objects_v2",
            "DeleteObjects": "delete_objects",
        }[operation]
        try:
            return getattr(self._s3(), method)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.get("Code")
            if operation == "PutObject" and (
                status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict")
            ):
                raise _Precondition from None
            what = kwargs.get("Key", kwargs.get("Prefix"))
            raise StoreError(f"S3 {operation} {what}: {code} ({status})") from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            what = kwargs.get("Key", kwargs.get("Prefix"))
            raise StoreError(f"S3 {operation} {what}: {type(exc).__name__}") from None
        except CredentialError as exc:
            raise StoreError(str(exc)) from None


class _Precondition(Exception):
    """The conditional PUT found the key taken (412), or a concurrent one won (409)."""
