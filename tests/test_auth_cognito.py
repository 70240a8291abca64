"""Cognito login against a real Cognito API: moto's server mode on loopback.

One user pool per test, with an app client and two users: ``trader1`` (password only) and
``trader2`` (password + authenticator-app MFA, enrolled through AssociateSoftwareToken /
VerifySoftwareToken / SetUserMFAPreference).  The daemon's CognitoProvider talks to it over
HTTP exactly as it would to AWS (only ``auth.cognito.endpoint_url`` differs), and the simulator
checks the resulting JWTs against the keys moto publishes at ``/<pool>/.well-known/jwks.json``.

What moto does not do, and how the tests cope (see also test_auth.py, which plays Cognito with
botocore's Stubber where moto cannot):

* it accepts any SRP proof, so a *wrong password* is refused only with
  ``cognito_flow = "password"`` (USER_PASSWORD_AUTH, checked) or for a disabled user;
* it checks TOTP codes only with ``MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP=true``, with no clock
  tolerance, and hands every user the same secret;
* tokens always live 3600 s (the client's validity settings are ignored): expiry is reached by
  moving the provider's clock;
* RevokeToken is not implemented: AdminUserGlobalSignOut revokes the refresh tokens instead.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
import trio
from e2e_util import daemon_config
from memnet import KEY_ENV, MemoryNet, mock_clock, run, wait_for
from memnet import config as memnet_config
from moto.server import ThreadedMotoServer

from capture import logs
from capture.app import Daemon
from capture.auth import TOTP_STEP, CognitoProvider, jwt_claims, totp
from capture.config import AuthConfig, read_section
from capture.errors import CredentialError
from capture.sim.config import SimConfig
from capture.sim.server import Simulator, rsa_public_keys, verify_jwt

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
PASSWORD = "Corr3ct-Horse-Battery!"
ACCOUNT = "123456789012"  # moto's default account
TYPES = ["StockPrint", "OptionNbboQuote"]


# ---------------------------------------------------------------------------------------------
# moto server, pools, users
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_checks_totp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP", "true")


def fresh_totp(secret: str) -> str:
    """A code with time to spare (moto accepts only the current period's code)."""
    if TOTP_STEP - time.time() % TOTP_STEP < 3:
        time.sleep(TOTP_STEP - time.time() % TOTP_STEP + 0.1)
    return totp(secret, time.time())


@dataclass
class Pool:
    url: str
    admin: Any
    pool_id: str
    client_id: str
    totp_secret: str  # trader2's authenticator secret

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{REGION}.amazonaws.com/{self.pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/{self.pool_id}/.well-known/jwks.json"

    def auth(self, username: str = "trader1", **over: Any) -> dict[str, Any]:
        """An [auth] table for this pool."""
        return {
            "method": "cognito",
            "cognito_user_pool_id": self.pool_id,
            "cognito_client_id": self.client_id,
            "cognito_username": username,
            "cognito_endpoint_url": self.url,
            "cognito_password_env": "MLINK_COGNITO_PASSWORD",
            **over,
        }

    def auth_config(self, username: str = "trader1", **over: Any) -> AuthConfig:
        """That table read as the daemon reads it (old flat keys and all)."""
        auth: AuthConfig = read_section("auth", self.auth(username, **over))
        return auth

    def issued_tokens(self) -> set[str]:
        """Every access, ID and refresh token moto issued for this pool."""
        from moto.cognitoidp.models import cognitoidp_backends

        pool = cognitoidp_backends[ACCOUNT][REGION].user_pools[self.pool_id]
        return {*pool.access_tokens, *pool.id_tokens, *pool.refresh_tokens}

    def sim_knobs(self) -> dict[str, Any]:
        return {
            "auth_mode": "jwt",
            "jwt_issuer": self.issuer,
            "jwt_jwks_url": self.jwks_url,
            "jwt_audiences": frozenset({self.client_id}),
        }


@pytest.fixture
def pool(moto_url: str, moto_checks_totp: None) -> Pool:
    admin = boto3.client(
        "cognito-idp", region_name=REGION, endpoint_url=moto_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",  # moto ignores them
    )
    name = f"spiderrock-{uuid.uuid4().hex[:8]}"
    pool_id = admin.create_user_pool(PoolName=name)["UserPool"]["Id"]
    admin.set_user_pool_mfa_config(
        UserPoolId=pool_id,
        SoftwareTokenMfaConfiguration={"Enabled": True},
        MfaConfiguration="OPTIONAL",
    )
    client_id = admin.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName="mlink",
        ExplicitAuthFlows=[
            "ALLOW_USER_SRP_AUTH", "ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH",
        ],
    )["UserPoolClient"]["ClientId"]
    for user in ("trader1", "trader2"):
        admin.admin_create_user(
            UserPoolId=pool_id, Username=user, TemporaryPassword="Tmp-Passw0rd!",
            MessageAction="SUPPRESS",
        )
        admin.admin_set_user_password(
            UserPoolId=pool_id, Username=user, Password=PASSWORD, Permanent=True
        )
    # trader2 enrols an authenticator app, as a person would once in the vendor's web UI.
    login = admin.initiate_auth(
        ClientId=client_id, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "trader2", "PASSWORD": PASSWORD},
    )
    access = login["AuthenticationResult"]["AccessToken"]
    secret = admin.associate_software_token(AccessToken=access)["SecretCode"]
    status = admin.verify_software_token(AccessToken=access, UserCode=fresh_totp(secret))
    assert status["Status"] == "SUCCESS"
    admin.set_user_mfa_preference(
        AccessToken=access, SoftwareTokenMfaSettings={"Enabled": True, "PreferredMfa": True}
    )
    return Pool(moto_url, admin, pool_id, client_id, secret)


class Clock:
    """The provider's wall clock, movable (token expiry) but starting at the real time."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


def provider(pool: Pool, username: str = "trader1", clock: Clock | None = None,
             env: dict[str, str] | None = None, **over: Any) -> CognitoProvider:
    environ = {"MLINK_COGNITO_PASSWORD": PASSWORD, **(env or {})}
    now = clock.now if clock is not None else time.time
    return CognitoProvider(pool.auth_config(username, **over), environ, timeout=5, now=now)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged while the test runs: the daemon's structlog pipeline (at debug, JSON,
    with its redaction) and the standard logging module at DEBUG (botocore, urllib3, ...;
    moto's own server-side loggers excepted: that is the fake AWS, not this process)."""
    buf = io.StringIO()
    logs.configure(level="debug", fmt="json", stream=buf)
    handler = logging.StreamHandler(buf)
    handler.addFilter(lambda r: not r.name.startswith(("moto", "werkzeug")))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old_level)
    structlog.reset_defaults()


def assert_nothing_leaks(secrets: set[str], *texts: str) -> None:
    secrets = {s for s in secrets if s}
    assert len(secrets) >= 3
    for i, text in enumerate(texts):
        for secret in secrets:
            assert secret not in text, f"text #{i} contains a secret ({secret[:6]}...)"


def streaming(health_file: Path) -> bool:
    try:
        doc = json.loads(health_file.read_text())
    except (OSError, ValueError):
        return False
    return {s["state"] for s in doc["stripes"].values()} == {"streaming"}


def process_title() -> str:
    parts = []
    for name in ("cmdline", "comm"):
        path = Path(f"/proc/{os.getpid()}/{name}")
        if path.exists():
            parts.append(path.read_bytes().decode(errors="replace"))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Provider against moto
# ---------------------------------------------------------------------------------------------


def test_srp_login_gives_a_jwt_of_the_pool_signed_by_its_published_keys(pool: Pool) -> None:
    p = provider(pool)
    token = p.bearer()
    claims = jwt_claims(token.value)
    assert claims["iss"] == pool.issuer and claims["token_use"] == "access"
    assert claims["client_id"] == pool.client_id and claims["username"] == "trader1"
    keys = rsa_public_keys(json.loads(_get(pool.jwks_url)))
    problem = verify_jwt(token.value, keys, issuer=pool.issuer,
                         audiences=frozenset({pool.client_id}), now_s=time.time())
    assert problem is None
    assert p.bearer() is token and p.logins == 1  # cached: no second login
    assert p.mfa_answers == 0 and logs.redact(token.value) == "[redacted]"

    id_token = provider(pool, cognito_token="id").bearer()
    assert jwt_claims(id_token.value)["token_use"] == "id"
    assert jwt_claims(id_token.value)["aud"] == pool.client_id


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def test_mfa_challenge_is_answered_with_a_totp_code(pool: Pool, tmp_path: Path) -> None:
    secret_file = tmp_path / "totp"
    secret_file.write_text(pool.totp_secret)
    secret_file.chmod(0o600)
    p = provider(pool, "trader2", cognito_totp_secret_file=str(secret_file))
    token = p.bearer()
    assert jwt_claims(token.value)["username"] == "trader2"
    assert p.mfa_answers == 1 and p.logins == 1


def test_a_wrong_totp_secret_is_a_clear_rejection(pool: Pool) -> None:
    wrong = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    p = provider(pool, "trader2", env={"T": wrong}, cognito_totp_secret_env="T")
    with pytest.raises(CredentialError) as info:
        p.bearer()
    text = str(info.value)
    assert text.startswith(f"Cognito user pool {pool.pool_id} user 'trader2': ")
    assert "CodeMismatchException" in text
    assert "check the TOTP secret from environment variable T and the system clock" in text
    assert wrong not in text and PASSWORD not in text


def test_mfa_without_a_configured_totp_secret_says_what_is_missing(pool: Pool) -> None:
    with pytest.raises(CredentialError, match=r"no auth\.cognito\.totp_secret is configured"):
        provider(pool, "trader2").bearer()


def test_the_token_is_refreshed_ahead_of_expiry(pool: Pool) -> None:
    clock = Clock()
    p = provider(pool, clock=clock, cognito_refresh_margin=300)
    first = p.bearer()
    exp = jwt_claims(first.value)["exp"]
    clock.offset = exp - time.time() - 301  # 5 min + 1 s before expiry: still cached
    assert p.bearer() is first and (p.logins, p.refreshes) == (1, 0)
    clock.offset = exp - time.time() - 299  # inside the margin: refreshed
    second = p.bearer()
    assert second != first and (p.logins, p.refreshes) == (1, 1)
    assert jwt_claims(second.value)["exp"] >= exp
    assert logs.redact(second.value) == "[redacted]"


def test_a_revoked_refresh_token_means_a_full_login_again_with_mfa(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, captured: io.StringIO
) -> None:
    # The re-login happens on a clock moved ~55 min ahead, where moto (which checks codes
    # against its own real clock) would refuse any code: code checking is off for this test;
    # the MFA challenge itself still happens and is answered.
    monkeypatch.setenv("MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP", "false")
    clock = Clock()
    p = provider(pool, "trader2", clock=clock, env={"T": pool.totp_secret},
                 cognito_totp_secret_env="T")
    first = p.bearer()
    pool.admin.admin_user_global_sign_out(UserPoolId=pool.pool_id, Username="trader2")
    clock.offset = jwt_claims(first.value)["exp"] - time.time() - 60
    second = p.bearer()
    assert second != first
    assert (p.logins, p.refreshes, p.mfa_answers) == (2, 1, 2)
    events = [json.loads(line) for line in captured.getvalue().splitlines()
              if line.startswith("{")]
    refused = [e for e in events if e["event"] == "token refresh refused; logging in again"]
    assert len(refused) == 1 and "Refresh Token has been revoked" in refused[0]["reason"]
    assert_nothing_leaks(pool.issued_tokens() | {PASSWORD, pool.totp_secret},
                         captured.getvalue())


def test_a_wrong_password_is_refused_clearly(pool: Pool) -> None:
    p = provider(pool, cognito_flow="password", env={"MLINK_COGNITO_PASSWORD": "Wr0ng-pass!"})
    with pytest.raises(CredentialError) as info:
        p.bearer()
    assert str(info.value) == (
        f"Cognito user pool {pool.pool_id} user 'trader1': login (USER_PASSWORD_AUTH) refused: "
        "NotAuthorizedException: Incorrect username or password. (check the user name and the "
        "password from environment variable MLINK_COGNITO_PASSWORD)"
    )


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        ("disable", "NotAuthorizedException", "User is disabled."),
        ("unknown", "UserNotFoundException", ""),
    ],
)
def test_srp_refusals_name_the_source(pool: Pool, setup: str, code: str, message: str) -> None:
    username = "trader1"
    if setup == "disable":
        pool.admin.admin_disable_user(UserPoolId=pool.pool_id, Username=username)
    else:
        username = "nobody"
    with pytest.raises(CredentialError) as info:
        provider(pool, username).bearer()
    text = str(info.value)
    assert text.startswith(
        f"Cognito user pool {pool.pool_id} user {username!r}: login (USER_SRP_AUTH) refused: "
        f"{code}"
    )
    assert message in text and PASSWORD not in text


def test_stripes_asking_at_once_share_one_login(pool: Pool) -> None:
    p = provider(pool, "trader2", env={"T": pool.totp_secret}, cognito_totp_secret_env="T")

    async def main() -> list[str]:
        out: list[str] = []

        async def one() -> None:
            out.append((await trio.to_thread.run_sync(p.bearer)).value)

        async with trio.open_nursery() as nursery:
            for _ in range(11):
                nursery.start_soon(one)
        return out

    tokens = trio.run(main)
    assert len(set(tokens)) == 1 and p.logins == 1 and p.mfa_answers == 1


# ---------------------------------------------------------------------------------------------
# Daemon + simulator + Cognito, end to end
# ---------------------------------------------------------------------------------------------


def test_daemon_captures_with_a_cognito_jwt_and_no_secret_leaks(
    pool: Pool, tmp_path: Path, captured: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real loopback and clock: trader2 (MFA) logs in through SRP, the simulator accepts only
    JWTs of this pool (signature checked against moto's JWKS), data lands in Parquet; then the
    logs, the health file, the process title and every error text are searched for the
    password, the TOTP secret and every token moto issued."""
    root = tmp_path / "data"
    totp_file = tmp_path / "creds" / "totp"
    totp_file.parent.mkdir()
    totp_file.write_text(pool.totp_secret + "\n")
    totp_file.chmod(0o600)
    auth = pool.auth("trader2", cognito_totp_secret_file=str(totp_file))
    sim_cfg = SimConfig(rate=40, seed=41, heartbeat_interval=0.5, **pool.sim_knobs())
    seen: dict[str, Any] = {}

    async def main() -> None:
        sim = Simulator(sim_cfg)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.run)
            cfg = daemon_config(root, port, ["A", "S"], TYPES, auth=auth)
            daemon = Daemon(cfg, environ={"MLINK_COGNITO_PASSWORD": PASSWORD},
                            install_signals=False)
            done = trio.Event()

            async def run_daemon() -> None:
                seen["code"] = await daemon.run()
                done.set()

            nursery.start_soon(run_daemon)
            workers = daemon.supervisor.workers.values()
            with trio.fail_after(30):
                while not all(w.stats.rows_written > 0 for w in workers):  # noqa: ASYNC110
                    await trio.sleep(0.1)
                while not streaming(root / "health.json"):  # noqa: ASYNC110 - another task writes it
                    await trio.sleep(0.1)
            seen["health"] = json.loads((root / "health.json").read_text())
            seen["title"] = process_title()
            seen["logins"] = next(iter(workers)).credentials
            daemon.stop()
            with trio.fail_after(30):
                await done.wait()
            nursery.cancel_scope.cancel()
        seen["sim_errors"] = sim.errors

    trio.run(main)
    assert seen["code"] == 0 and seen["sim_errors"] == []
    assert {s["state"] for s in seen["health"]["stripes"].values()} == {"streaming"}
    credentials = seen["logins"]
    assert isinstance(credentials, CognitoProvider)
    assert (credentials.logins, credentials.mfa_answers) == (1, 1)  # shared by both stripes
    out = capsys.readouterr()
    log_text = captured.getvalue()
    assert "logged in to Cognito" in log_text and "sim.jwks_loaded" in log_text
    assert_nothing_leaks(
        pool.issued_tokens() | {PASSWORD, pool.totp_secret},
        log_text, out.out, out.err, json.dumps(seen["health"]), seen["title"],
        (root / "health.json").read_text(),
    )


def test_wrong_password_means_auth_failed_and_one_login_per_auth_backoff(
    pool: Pool, tmp_path: Path, captured: io.StringIO
) -> None:
    """Mock clock and in-memory network to the simulator; real HTTP to moto.  Two stripes share
    one provider: one login attempt at start, one after auth_backoff, none in between, no
    connection to the MLink server at all, and the health file says why."""
    root = tmp_path / "data"
    wrong = "Wr0ng-but-secret-pw!"
    auth = pool.auth(cognito_flow="password", cognito_password_env=KEY_ENV)
    # Health every 5 s, not every 1 s: over 1,000 s of mock time the writes were most of the CPU.
    cfg = memnet_config(root, ["A", "S"], TYPES, auth=auth, health={"interval": 5.0},
                        supervision={"auth_backoff": 900.0, "backoff_jitter": 0.0})
    sim_cfg = SimConfig(rate=0, tick_interval=1.0, seed=42, **pool.sim_knobs())  # no market
    seen: dict[str, Any] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        workers = daemon.supervisor.workers
        credentials = workers["A"].credentials
        assert isinstance(credentials, CognitoProvider)
        await wait_for(lambda: all(w.stats.state == "auth_failed" for w in workers.values()))
        await trio.sleep(6)  # a health file written after both failed
        seen["first"] = credentials.logins, json.loads((root / "health.json").read_text())
        await trio.sleep(796)
        seen["quiet"] = credentials.logins
        await trio.sleep(200)  # past auth_backoff: the stripes try again, one login between them
        seen["again"] = credentials.logins, [w.stats.state for w in workers.values()]
        seen["opened"] = list(net.opened_at)

    trio.run(functools.partial(run, key=wrong), sim_cfg, cfg, scenario, clock=mock_clock())
    logins, health = seen["first"]
    assert logins == 1 and seen["quiet"] == 1
    assert seen["again"] == (2, ["auth_failed", "auth_failed"])
    assert seen["opened"] == []  # never bothered the MLink server with a bad login
    assert health["healthy"] is False
    for stripe in health["stripes"].values():
        assert stripe["state"] == "auth_failed"
        assert stripe["last_error"].startswith(f"Cognito user pool {pool.pool_id} user 'trader1'")
        assert "Incorrect username or password" in stripe["last_error"]
    log_text = captured.getvalue()
    failures = [json.loads(x) for x in log_text.splitlines()
                if '"authentication failed; backing off"' in x]
    assert len(failures) == 4  # 2 stripes x 2 rounds: one clear error each time
    assert_nothing_leaks({wrong, PASSWORD, pool.totp_secret, *pool.issued_tokens()},
                         log_text, json.dumps(health), (root / "health.json").read_text())


def test_sighup_logs_in_again_at_once_after_the_password_is_fixed(
    pool: Pool, tmp_path: Path, captured: io.StringIO
) -> None:
    """The operator fixes the password and reloads (SIGHUP: Daemon.reload): the provider
    forgets the refused login it would otherwise repeat only after auth_backoff, the stripes
    waiting out that backoff connect now, and stream."""
    root = tmp_path / "data"
    auth = pool.auth(cognito_flow="password", cognito_password_env=KEY_ENV)
    cfg = memnet_config(root, ["A", "S"], TYPES, auth=auth,
                        supervision={"auth_backoff": 900.0, "backoff_jitter": 0.0})
    sim_cfg = SimConfig(rate=20, tick_interval=0.1, seed=42, **pool.sim_knobs())
    seen: dict[str, Any] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        workers = daemon.supervisor.workers
        credentials = workers["A"].credentials
        assert isinstance(credentials, CognitoProvider)
        await wait_for(lambda: all(w.stats.state == "auth_failed" for w in workers.values()))
        await trio.sleep(60)
        assert daemon.environ is not None
        daemon.environ[KEY_ENV] = PASSWORD  # the operator fixed it
        daemon.reload()
        fixed_at = trio.current_time()
        done = await wait_for(
            lambda: all(w.stats.state == "streaming" for w in workers.values())
        )
        seen["after"] = done - fixed_at
        seen["logins"] = credentials.logins
        seen["rows"] = [w.stats.messages for w in workers.values()]

    trio.run(functools.partial(run, key="Wr0ng-but-secret-pw!"), sim_cfg, cfg, scenario,
             clock=mock_clock())  # fmt: skip
    assert seen["after"] < 30  # not the 900 s backoff
    assert seen["logins"] == 2  # the refused one, then one for both stripes
    assert all(n > 0 for n in seen["rows"])
    assert '"credentials reloaded (SIGHUP); connecting now"' in captured.getvalue()


def test_reload_never_waits_for_a_login_in_progress(pool: Pool) -> None:
    """SIGHUP runs on the event loop; a login to Cognito may hold the provider's lock in a
    thread for seconds. reload() must return at once, and take effect at the next bearer()."""
    import threading

    prov = provider(pool)
    first = prov.bearer()
    holding = threading.Event()
    release = threading.Event()

    def slow_login() -> None:
        with prov._lock:  # what a login in progress does
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=slow_login)
    thread.start()
    assert holding.wait(5)
    started = time.monotonic()
    prov.reload()
    assert time.monotonic() - started < 0.1
    release.set()
    thread.join()
    logins = prov.logins
    second = prov.bearer()  # a fresh login, not the cached token
    assert prov.logins == logins + 1 and second.value != first.value
