"""Credential providers: where the ``Authorization: Bearer`` value comes from (PROTOCOL.md §2).

``auth.method`` chooses one (:func:`make_provider`):

* ``api_key`` — :class:`ApiKeyProvider`: ``KEY`` or ``KEY.PASSWORD`` from a systemd credential,
  a file or an environment variable, re-read at every connection attempt, so a rotated key
  needs no restart.
* ``cognito`` — :class:`CognitoProvider`: a JWT from the vendor's AWS Cognito user pool
  (PROTOCOL.md §2.4): SRP login through pycognito, a ``SOFTWARE_TOKEN_MFA`` challenge answered
  with an RFC 6238 code from the configured TOTP secret, the token refreshed ahead of expiry with
  the refresh token, and a full login again when the refresh is refused.

``bearer()`` blocks (file reads; HTTPS to Cognito): the worker calls it in a thread, never on the
event loop.  What it raises decides the worker's reaction:

* :class:`CredentialError` — the credential is missing, unreadable or was refused: the stripe goes
  to ``auth_failed`` and waits ``supervision.auth_backoff`` (no tight loop against the vendor).
* :class:`capture.errors.TransportError` — Cognito could not be reached (network, timeout,
  throttling, HTTP 5xx): an ordinary reconnect with the normal backoff.  The credentials may be
  fine, so this must not look like a rejection.

Messages name where a secret lives (``API key from environment variable MLINK_API_KEY``,
``Cognito user pool us-east-1_abc user 'trader1'``), never a value.  Every secret and every token
is registered with :func:`capture.logs.register_secret` the moment it is read or received.

The Cognito provider lives in :mod:`capture.cognito` (the only module that imports pycognito),
its TOTP codes in :mod:`capture.totp`; both are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from capture.cognito import CognitoProvider as CognitoProvider
from capture.cognito import jwt_claims as jwt_claims
from capture.config import AuthConfig
from capture.credentials import Secret as Secret
from capture.credentials import SecretSource
from capture.errors import CredentialError as CredentialError
from capture.totp import TOTP_STEP as TOTP_STEP
from capture.totp import base32_key as base32_key
from capture.totp import hotp as hotp
from capture.totp import totp as totp

if TYPE_CHECKING:
    from capture.clock import WallClock
    from capture.config import Config


class CredentialProvider(Protocol):
    """Where the Bearer token comes from.  ``bearer()`` may block; the worker calls it in a
    thread at every connection attempt."""

    @property
    def source(self) -> str:
        """Where the secret is read from, for error messages (never the secret itself)."""
        ...

    def bearer(self) -> Secret: ...

    #: The MLinkLogon field the token goes in when the server asks for an in-band logon
    #: (PROTOCOL.md §2.3): ``apiKey`` for keys, ``jwtToken`` for Cognito JWTs.
    logon_field: str

    def invalidate(self) -> None:
        """The server refused the last token: do not hand it out again."""
        ...

    def reload(self) -> None:
        """The operator changed the credentials (SIGHUP): forget everything cached, including
        a remembered failure, so that the next ``bearer()`` reads the sources again."""
        ...


def make_provider(
    cfg: Config, environ: Mapping[str, str] | None = None, *, clock: WallClock | None = None
) -> CredentialProvider:
    """The provider ``auth.method`` asks for; one per daemon, shared by every stripe."""
    if cfg.auth.method == "cognito":
        sup = cfg.supervision
        return CognitoProvider(
            cfg.auth,
            environ,
            timeout=sup.connect_timeout,
            # Stripes retry one by one (auth_backoff with jitter): half the backoff keeps that
            # to one login attempt per backoff period, however many stripes there are.
            failure_ttl=sup.auth_backoff / 2,
            now=(lambda: clock.now_ns() / 1e9) if clock is not None else time.time,
        )
    return ApiKeyProvider(cfg.auth, environ)


class ApiKeyProvider:
    """API key (``KEY`` or ``KEY.PASSWORD``, PROTOCOL.md §2.1) from a systemd credential, a file
    or the environment; the first configured source wins, in that order."""

    logon_field = "apiKey"

    def __init__(self, cfg: AuthConfig, environ: Mapping[str, str] | None = None) -> None:
        self._key = SecretSource("API key", cfg.api_key, environ)

    @property
    def source(self) -> str:
        return self._key.source

    def bearer(self) -> Secret:
        """The current key, read now (a small local read)."""
        return self._key.read()

    def invalidate(self) -> None:
        """Nothing cached: the key is read again at the next connection anyway."""

    def reload(self) -> None:
        """Nothing cached: the key is read again at the next connection anyway."""
