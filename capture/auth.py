"""Credential providers.  The Bearer token is re-read at every connection attempt, so a rotated
key needs no restart.  Errors name where a secret was looked for, never its value.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from capture.config import AuthConfig
from capture.logs import get_logger, register_secret

log = get_logger(component="auth")


class CredentialError(Exception):
    """No usable credential at the configured source: the stripe backs off (auth_failed)."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that does not print itself."""

    value: str

    def __repr__(self) -> str:
        return "Secret([redacted])"

    __str__ = __repr__


class CredentialProvider(Protocol):
    """Where the Bearer token comes from.  ``bearer()`` may block; the worker calls it in a
    thread at every connection attempt."""

    @property
    def source(self) -> str:
        """Where the secret is read from, for error messages (never the secret itself)."""
        ...

    def bearer(self) -> Secret: ...


class ApiKeyProvider:
    """API key (``KEY`` or ``KEY.PASSWORD``) from a systemd credential, a file or the environment.

    The first configured source wins, in that order.
    """

    def __init__(self, cfg: AuthConfig, environ: Mapping[str, str] | None = None) -> None:
        self._cfg = cfg
        self._environ = environ if environ is not None else os.environ
        self._warned_mode = False

    @property
    def source(self) -> str:
        if self._cfg.api_key_credential:
            return f"systemd credential {self._cfg.api_key_credential!r}"
        if self._cfg.api_key_file:
            return f"file {self._cfg.api_key_file}"
        return f"environment variable {self._cfg.api_key_env}"

    def bearer(self) -> Secret:
        """The current Bearer token (blocking file read: small, local)."""
        if self._cfg.api_key_credential:
            directory = self._environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise CredentialError(
                    f"{self.source}: $CREDENTIALS_DIRECTORY is not set "
                    "(LoadCredential= in the unit file?)"
                )
            return self._from_file(Path(directory) / self._cfg.api_key_credential)
        if self._cfg.api_key_file:
            return self._from_file(self._cfg.api_key_file)
        name = self._cfg.api_key_env or ""
        value = self._environ.get(name, "").strip()
        if not value:
            raise CredentialError(f"{self.source} is not set or empty")
        register_secret(value)
        return Secret(value)

    def _from_file(self, path: Path) -> Secret:
        try:
            st = path.stat()
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialError(f"{self.source}: cannot read ({exc.strerror})") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and not self._warned_mode:
            self._warned_mode = True
            log.warning(
                "credential file is readable by group or others; chmod 600 it",
                source=self.source,
                mode=oct(st.st_mode & 0o777),
            )
        if not text:
            raise CredentialError(f"{self.source} is empty")
        register_secret(text)
        return Secret(text)
