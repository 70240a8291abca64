"""Secrets: where one lives (:class:`SecretRef`, a configuration value) and reading it
(:class:`SecretSource`).

A secret is never written in the TOML: the configuration names its source, one of

* ``credential``: a systemd credential, ``$CREDENTIALS_DIRECTORY/<name>`` (``LoadCredential=``);
* ``file``: a file, refused if other users may read or write it, a warning if its group may;
* ``env``: an environment variable;

or, from code only (tests, the demo), ``inline``: the value itself, held in a :class:`Secret`.
A source is read afresh at every use, so rotating a secret needs no restart.  Neither a
:class:`Secret` nor a :class:`SecretRef` ever prints the value; every value read is registered
with :func:`capture.logs.register_secret` at once, so that no log line can carry it either.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from capture.errors import CredentialError
from capture.logs import get_logger, register_secret

log = get_logger(component="credentials")

SOURCES = ("credential", "file", "env")
"""The keys of a secret's table in the TOML, in the order of precedence of the old flat keys
(``api_key_credential`` over ``api_key_file`` over ``api_key_env``)."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A string that does not print itself."""

    value: str

    def __repr__(self) -> str:
        return "Secret([redacted])"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where one secret lives: exactly one of ``env``, ``file``, ``credential``, ``inline``.

    ``key`` is the configuration key it was read from (``auth.api_key``), for messages; it does
    not take part in comparisons.  ``repr`` and ``str`` name the source, never a value.
    """

    env: str | None = None
    file: Path | None = None
    credential: str | None = None
    inline: Secret | None = None
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        given = [s for s in (self.env, self.file, self.credential, self.inline) if s is not None]
        if len(given) != 1:
            raise ValueError("a SecretRef names exactly one of env, file, credential, inline")

    @property
    def where(self) -> str:
        if self.credential is not None:
            return f"systemd credential {self.credential!r}"
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"environment variable {self.env}"
        return "a value given in code"

    def __repr__(self) -> str:
        if self.credential is not None:
            return f"SecretRef(credential={self.credential!r})"
        if self.file is not None:
            return f"SecretRef(file={str(self.file)!r})"
        if self.env is not None:
            return f"SecretRef(env={self.env!r})"
        return "SecretRef(inline=[redacted])"

    def __str__(self) -> str:
        return self.where

    def read(self, environ: Mapping[str, str] | None = None, *, what: str = "secret") -> Secret:
        """The secret, read now. Raises :class:`CredentialError` naming the source and the key."""
        return SecretSource(what, self, environ).read()


class SecretSource:
    """One secret of a component (``what``: "API key", "S3 secret access key") at ``ref``,
    read afresh by :meth:`read`; ``ref`` None: not configured.  A group-readable file draws its
    warning once per source."""

    def __init__(
        self, what: str, ref: SecretRef | None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.what = what
        self.ref = ref
        self._environ = environ if environ is not None else os.environ
        self._warned = False
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.ref is not None

    @property
    def where(self) -> str:
        return self.ref.where if self.ref is not None else "nowhere (not configured)"

    @property
    def source(self) -> str:
        return f"{self.what} from {self.where}"

    def _fail(self, why: str) -> CredentialError:
        key = self.ref.key if self.ref is not None else ""
        return CredentialError(f"{self.source}{why}" + (f" (configured by {key})" if key else ""))

    def read(self) -> Secret:
        ref = self.ref
        if ref is None:
            raise self._fail(" is not configured")
        if ref.inline is not None:
            register_secret(ref.inline.value)
            return ref.inline
        if ref.credential is not None:
            directory = self._environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise self._fail(
                    ": $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit file?)"
                )
            return self._from_file(Path(directory) / ref.credential)
        if ref.file is not None:
            return self._from_file(ref.file)
        value = self._environ.get(ref.env or "", "").strip()
        if not value:
            raise self._fail(" is not set or empty")
        register_secret(value)
        return Secret(value)

    def _from_file(self, path: Path) -> Secret:
        try:
            st = path.stat()
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise self._fail(f": cannot read ({why})") from None
        if text:
            register_secret(text)  # before anything below can mention it
        mode = st.st_mode & 0o777
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise self._fail(
                f": refused, other users may read or write it (mode {mode:04o}); chmod 600 it"
            )
        if mode & (stat.S_IRGRP | stat.S_IWGRP):
            with self._lock:
                warn, self._warned = not self._warned, True
            if warn:
                log.warning(
                    "secret file is readable by its group; chmod 600 it unless that is intended",
                    source=self.source,
                    mode=f"{mode:04o}",
                )
        if not text:
            raise self._fail(" is empty")
        return Secret(text)
