"""A JWT from the vendor's AWS Cognito user pool (PROTOCOL.md §2.4): ``auth.method = "cognito"``.

SRP login through pycognito, a ``SOFTWARE_TOKEN_MFA`` challenge answered with an RFC 6238 code
from the configured TOTP secret (:mod:`capture.totp`), the token refreshed ahead of expiry with
the refresh token, and a full login again when the refresh is refused.  What ``bearer()`` raises,
and what the worker does then, is described in :mod:`capture.auth`.

This is the only module that imports pycognito (and boto3/botocore, which it drives; the lake's
S3 client, capture.lake.store, is the only other).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

from capture.config import AuthConfig
from capture.credentials import Secret, SecretSource
from capture.errors import CredentialError, TransportError
from capture.logs import get_logger, redact, register_secret
from capture.totp import TOTP_STEP, totp

log = get_logger(component="auth")

# Cognito answers that mean "try again later", not "your credentials are wrong".
_TRANSIENT_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "InternalErrorException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_TOTP_EDGE_S = 2.0  # never send a code in the last seconds of its period
_MAX_CHALLENGES = 4


class _Unreachable(Exception):
    """Cognito did not answer usefully (network, timeout, throttling, 5xx)."""


def _transport_error(message: str) -> Exception:
    return TransportError(message)


class CognitoProvider:
    """A JWT from an AWS Cognito user pool, cached and refreshed ahead of expiry.

    * Login: SRP (``USER_SRP_AUTH``, pycognito's ``AWSSRP``; the password never leaves the host)
      or, with ``auth.cognito.flow = "password"``, ``USER_PASSWORD_AUTH``.
    * ``SOFTWARE_TOKEN_MFA`` (and ``SELECT_MFA_TYPE``) answered with a TOTP code from the
      configured secret; a code is never sent in the last seconds of its period nor twice.
    * The token is refreshed with ``REFRESH_TOKEN_AUTH`` once ``exp - auth.cognito.refresh_margin``
      has passed (or half its lifetime, if that is shorter); a refused refresh means a full
      login, an unreachable Cognito keeps the cached token while it is still valid.
    * A refusal is remembered for ``failure_ttl`` seconds: stripes retrying in the meantime get
      the same error without another login attempt (no account lockout by many stripes).

    Password, TOTP secret and client secret are read from their sources at every login.
    Thread-safe: one login at a time, shared by every stripe.
    """

    logon_field = "jwtToken"

    def __init__(
        self,
        cfg: AuthConfig,
        environ: Mapping[str, str] | None = None,
        *,
        timeout: float = 15.0,
        failure_ttl: float = 0.0,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        client: Any = None,
    ) -> None:
        c = cfg.cognito
        if not (c.user_pool_id and c.client_id and c.username):
            raise ValueError(
                "CognitoProvider needs auth.cognito.user_pool_id, client_id and username"
            )
        self._cfg = c
        self._pool_id = c.user_pool_id
        self._client_id = c.client_id
        self._username = c.username
        self._region = c.region or self._pool_id.split("_", 1)[0]
        self._password = SecretSource("password", c.password, environ)
        self._totp = SecretSource("TOTP secret", c.totp_secret, environ)
        self._client_secret = SecretSource("app client secret", c.client_secret, environ)
        self._timeout = timeout
        self._failure_ttl = failure_ttl
        self._now = now
        self._sleep = sleep
        self._client = client
        self._lock = threading.Lock()
        self._token: Secret | None = None
        self._refresh_token: Secret | None = None
        self._internal_username = self._username
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._failure: str | None = None
        self._failure_until = 0.0
        self._reload_requested = False  # set by reload(), acted on by the next bearer()
        self._last_totp_step: int | None = None
        self.logins = 0
        """Login attempts sent to Cognito (successful or not)."""
        self.refreshes = 0
        """Refresh attempts sent to Cognito."""
        self.mfa_answers = 0
        """TOTP codes sent."""
        # botocore logs whole requests (PASSWORD, SRP values, tokens) at DEBUG: whatever else
        # configures the standard logging module, those lines are never emitted.
        for name in ("botocore", "boto3"):
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.INFO:
                logger.setLevel(logging.INFO)

    @property
    def source(self) -> str:
        return f"Cognito user pool {self._pool_id} user {self._username!r}"

    def __repr__(self) -> str:
        return f"CognitoProvider({self.source})"

    def invalidate(self) -> None:
        """MLink refused the token: the next ``bearer()`` refreshes or logs in again."""
        with self._lock:
            self._token = None

    def reload(self) -> None:
        """SIGHUP: the next ``bearer()`` logs in afresh, reading the password (and TOTP and
        client secrets) again, even within the pause after a refused login.  Never blocks:
        called on the event loop while a login may hold the lock in a thread."""
        self._reload_requested = True

    # -- the one public operation -----------------------------------------------------------

    def bearer(self) -> Secret:
        """A valid JWT: cached, refreshed, or from a new login (blocking, thread-safe)."""
        with self._lock:
            if self._reload_requested:
                self._reload_requested = False
                self._forget()
                self._failure, self._failure_until = None, 0.0
            now = self._now()
            if self._failure is not None and now < self._failure_until:
                raise CredentialError(self._failure)
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                return self._renew(now)
            except CredentialError as exc:
                self._forget()
                self._failure, self._failure_until = str(exc), now + self._failure_ttl
                raise
            except _Unreachable as exc:
                raise _transport_error(str(exc)) from None

    def _renew(self, now: float) -> Secret:
        if self._token is not None and self._refresh_token is not None:
            try:
                return self._refresh(now)
            except CredentialError as exc:
                log.info("token refresh refused; logging in again", reason=str(exc))
            except _Unreachable as exc:
                if now < self._expires_at - 30:
                    log.warning(
                        "cannot refresh the Cognito token; using it until it expires",
                        source=self.source,
                        error=str(exc),
                        expires_in=round(self._expires_at - now),
                    )
                    return self._token
                raise
        return self._login()

    def _forget(self) -> None:
        self._token = self._refresh_token = None
        self._expires_at = self._refresh_at = 0.0

    # -- Cognito calls --------------------------------------------------------------------------

    def _boto(self) -> Any:
        if self._client is None:
            import boto3  # type: ignore[import-untyped]
            from botocore import UNSIGNED  # type: ignore[import-untyped]
            from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

            # The user-pool calls are unauthenticated: UNSIGNED keeps boto3 away from AWS
            # credentials (environment, ~/.aws, instance metadata) altogether.
            self._client = boto3.client(
                "cognito-idp",
                region_name=self._region,
                endpoint_url=self._cfg.endpoint_url,
                config=BotoConfig(
                    signature_version=UNSIGNED,
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                    retries={"mode": "standard", "total_max_attempts": 2},
                ),
            )
        return self._client

    @contextmanager
    def _calling(self, operation: str) -> Iterator[None]:
        """Turn what boto3/pycognito raise into CredentialError or _Unreachable."""
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
            HTTPClientError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from pycognito.exceptions import (
            ForceChangePasswordException,
            SMSMFAChallengeException,
        )

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "error"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = redact(str(error.get("Message", "")))[:200]
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                raise _Unreachable(
                    f"{self.source}: Cognito {operation} failed: {code} (HTTP {status})"
                ) from None
            raise CredentialError(
                f"{self.source}: {operation} refused: {code}: {message}{self._hint(code)}"
            ) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise _Unreachable(
                f"{self.source}: cannot reach Cognito for {operation} ({type(exc).__name__})"
            ) from None
        except BotoCoreError as exc:
            raise CredentialError(
                f"{self.source}: {operation}: {type(exc).__name__}: {redact(str(exc))[:200]}"
            ) from None
        except ForceChangePasswordException:
            self._unsupported("NEW_PASSWORD_REQUIRED")
        except SMSMFAChallengeException:
            self._unsupported("SMS_MFA")
        except NotImplementedError as exc:  # pycognito: a challenge it does not handle
            match = re.search(r"The (\w+) challenge", str(exc))
            self._unsupported(match.group(1) if match else "an unknown challenge")

    def _hint(self, code: str) -> str:
        if code == "NotAuthorizedException":
            return f" (check the user name and the {self._password.source})"
        if code in ("CodeMismatchException", "ExpiredCodeException"):
            return f" (check the {self._totp.source} and the system clock)"
        if code == "UserNotFoundException":
            return " (no such user in the pool)"
        if code == "ResourceNotFoundException":
            return " (check auth.cognito.user_pool_id and client_id)"
        if code == "PasswordResetRequiredException":
            return " (the password must be reset first)"
        return ""

    def _unsupported(self, challenge: str) -> NoReturn:
        why = {
            "NEW_PASSWORD_REQUIRED": "the user must set a new password first; "
            "log in once interactively",
            "SMS_MFA": "SMS codes cannot be answered unattended; switch the user to "
            "authenticator-app (TOTP) MFA",
            "MFA_SETUP": "the user has no authenticator app enrolled yet; enrol one and "
            "configure its secret in auth.cognito.totp_secret",
        }.get(challenge, "this daemon cannot answer it unattended")
        raise CredentialError(f"{self.source}: Cognito asks for {challenge}: {why}")

    def _secret_hash(self, username: str, client_secret: Secret | None) -> dict[str, str]:
        if client_secret is None:
            return {}
        from pycognito.aws_srp import AWSSRP

        value = str(AWSSRP.get_secret_hash(username, self._client_id, client_secret.value))
        register_secret(value)
        return {"SECRET_HASH": value}

    def _read(self, source: SecretSource) -> Secret:
        try:
            return source.read()
        except CredentialError as exc:
            raise CredentialError(f"{self.source}: {exc}") from None

    def _login(self) -> Secret:
        password = self._read(self._password)
        client_secret = self._read(self._client_secret) if self._client_secret.configured else None
        client = self._boto()
        self.logins += 1
        flow = self._cfg.flow
        response: dict[str, Any]
        if flow == "password":
            with self._calling("login (USER_PASSWORD_AUTH)"):
                response = client.initiate_auth(
                    ClientId=self._client_id,
                    AuthFlow="USER_PASSWORD_AUTH",
                    AuthParameters={
                        "USERNAME": self._username,
                        "PASSWORD": password.value,
                        **self._secret_hash(self._username, client_secret),
                    },
                )
        else:
            from pycognito.aws_srp import AWSSRP
            from pycognito.exceptions import SoftwareTokenMFAChallengeException

            self._secret_hash(self._username, client_secret)  # registers what AWSSRP will send
            srp = AWSSRP(
                username=self._username,
                password=password.value,
                pool_id=self._pool_id,
                client_id=self._client_id,
                client=client,
                client_secret=client_secret.value if client_secret is not None else None,
            )
            try:
                with self._calling("login (USER_SRP_AUTH)"):
                    response = srp.authenticate_user()
            except SoftwareTokenMFAChallengeException as challenge:
                response = challenge.get_tokens()
        response = self._answer_challenges(response, client, client_secret)
        token = self._store(response, self._now())
        log.info(
            "logged in to Cognito",
            source=self.source,
            flow=flow,
            token=self._cfg.token,
            expires_in=round(self._expires_at - self._now()),
        )
        return token

    def _answer_challenges(
        self, response: dict[str, Any], client: Any, client_secret: Secret | None
    ) -> dict[str, Any]:
        for _ in range(_MAX_CHALLENGES):
            if "AuthenticationResult" in response:
                return response
            name = str(response.get("ChallengeName") or "")
            session = response.get("Session")
            if isinstance(session, str):
                register_secret(session)
            params = response.get("ChallengeParameters") or {}
            user = str(params.get("USER_ID_FOR_SRP") or params.get("USERNAME") or self._username)
            answers = {"USERNAME": user, **self._secret_hash(user, client_secret)}
            if name == "SELECT_MFA_TYPE" and self._totp.configured:
                answers["ANSWER"] = "SOFTWARE_TOKEN_MFA"
            elif name == "SOFTWARE_TOKEN_MFA":
                if not self._totp.configured:
                    raise CredentialError(
                        f"{self.source}: Cognito asks for a TOTP code (SOFTWARE_TOKEN_MFA) but "
                        "no auth.cognito.totp_secret is configured"
                    )
                answers["SOFTWARE_TOKEN_MFA_CODE"] = self._totp_code()
                self.mfa_answers += 1
            else:
                self._unsupported(name or "an unknown challenge")
            with self._calling(f"{name} challenge"):
                response = client.respond_to_auth_challenge(
                    ClientId=self._client_id,
                    ChallengeName=name,
                    Session=session,
                    ChallengeResponses=answers,
                )
        raise CredentialError(f"{self.source}: Cognito kept asking for more challenges")

    def _totp_code(self) -> str:
        secret = self._read(self._totp)
        now = self._now()
        step = int(now // TOTP_STEP)
        left = TOTP_STEP - now % TOTP_STEP
        if step == self._last_totp_step or left < _TOTP_EDGE_S:
            # A code near the end of its period may expire in flight; one already used may be
            # refused as a replay.  Wait for the next period.
            log.debug("waiting for the next TOTP period", seconds=round(left, 2))
            self._sleep(left + 0.05)
            now = max(self._now(), (step + 1) * TOTP_STEP)
            step = int(now // TOTP_STEP)
        self._last_totp_step = step
        try:
            return totp(secret.value, now)
        except ValueError as exc:
            raise CredentialError(f"{self.source}: {self._totp.source}: {exc}") from None

    def _refresh(self, now: float) -> Secret:
        assert self._refresh_token is not None
        client_secret = self._read(self._client_secret) if self._client_secret.configured else None
        client = self._boto()
        self.refreshes += 1
        with self._calling("token refresh (REFRESH_TOKEN_AUTH)"):
            response = client.initiate_auth(
                ClientId=self._client_id,
                AuthFlow="REFRESH_TOKEN_AUTH",
                AuthParameters={
                    "REFRESH_TOKEN": self._refresh_token.value,
                    **self._secret_hash(self._internal_username, client_secret),
                },
            )
        if "AuthenticationResult" not in response:
            raise CredentialError(f"{self.source}: token refresh returned no tokens")
        token = self._store(response, self._now())
        log.info(
            "refreshed the Cognito token",
            source=self.source,
            expires_in=round(self._expires_at - self._now()),
        )
        return token

    def _store(self, response: Mapping[str, Any], now: float) -> Secret:
        result = response.get("AuthenticationResult") or {}
        tokens = {k: result.get(k) for k in ("AccessToken", "IdToken", "RefreshToken")}
        for value in tokens.values():
            if isinstance(value, str) and value:
                register_secret(value)
        wanted = "AccessToken" if self._cfg.token == "access" else "IdToken"
        token = tokens[wanted]
        if not isinstance(token, str) or not token:
            raise CredentialError(f"{self.source}: Cognito returned no {wanted}")
        claims = jwt_claims(token)
        exp = claims.get("exp")
        expires_in = result.get("ExpiresIn")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires_at = float(exp)
        else:
            expires_at = now + (float(expires_in) if isinstance(expires_in, int) else 3600.0)
        access_claims = jwt_claims(str(tokens["AccessToken"] or ""))
        internal = access_claims.get("username") or claims.get("cognito:username")
        if isinstance(internal, str) and internal:
            self._internal_username = internal
        lifetime = max(0.0, expires_at - now)
        self._token = Secret(token)
        if isinstance(tokens["RefreshToken"], str) and tokens["RefreshToken"]:
            self._refresh_token = Secret(tokens["RefreshToken"])
        self._expires_at = expires_at
        self._refresh_at = expires_at - min(self._cfg.refresh_margin, lifetime / 2)
        self._failure = None
        return self._token


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, *not verified* (only to learn ``exp``; the server verifies)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        data = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(data)
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}
