"""Credentials without a Cognito server: API key sources and rotation, RFC 6238 TOTP, the
``[auth]`` configuration, the simulator's JWT check, and CognitoProvider's reactions to what
Cognito can answer (botocore's Stubber plays Cognito where moto cannot: a refused SRP proof,
throttling, SELECT_MFA_TYPE, ...).  Against moto's real Cognito API: test_auth_cognito.py.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import hmac
import io
import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
import trio
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from memnet import MemoryNet, config, mock_clock, run, wait_for

from capture import logs
from capture.app import Daemon
from capture.auth import (
    ApiKeyProvider,
    CognitoProvider,
    Secret,
    base32_key,
    hotp,
    jwt_claims,
    make_provider,
    totp,
)
from capture.config import AuthConfig, CognitoConfig, Config, ConfigError, read_section
from capture.credentials import SecretRef, SecretSource
from capture.errors import CredentialError, TransportError
from capture.sim.config import SimConfig
from capture.sim.faults import Faults, FaultState
from capture.sim.server import Simulator, verify_jwt

TYPES = ["StockPrint"]


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """The daemon's structlog pipeline (redaction included) into a buffer, at debug level."""
    buf = io.StringIO()
    logs.configure(level="debug", fmt="json", stream=buf)
    yield buf
    structlog.reset_defaults()


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# ---------------------------------------------------------------------------------------------
# API keys: environment, file, systemd credential
# ---------------------------------------------------------------------------------------------


def test_api_key_from_the_environment_in_key_dot_password_form() -> None:
    auth = AuthConfig(api_key=SecretRef(env="K"))
    provider = ApiKeyProvider(auth, {"K": " 1234-5678.s3cr3t-pw \n"})
    secret = provider.bearer()
    assert secret.value == "1234-5678.s3cr3t-pw"  # passed through whole, as the Bearer value
    assert provider.source == "API key from environment variable K"
    assert logs.redact("key=1234-5678.s3cr3t-pw") == "key=[redacted]"


def test_a_missing_key_is_one_clear_error_naming_the_source() -> None:
    with pytest.raises(CredentialError, match=r"^API key from environment variable K is not set"):
        ApiKeyProvider(AuthConfig(api_key=SecretRef(env="K")), {}).bearer()
    with pytest.raises(CredentialError, match=r"CREDENTIALS_DIRECTORY is not set"):
        ApiKeyProvider(AuthConfig(api_key=SecretRef(credential="mlink")), {}).bearer()


def test_precedence_is_credential_then_file_then_environment(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write_secret(creds / "mlink", "from-credential")
    key_file = write_secret(tmp_path / "key", "from-file")
    env = {"K": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    # The old flat keys may name several sources; the first of these wins, as it always did.
    both = read_section(
        "auth", {"api_key_env": "K", "api_key_file": str(key_file), "api_key_credential": "mlink"}
    )
    assert ApiKeyProvider(both, env).bearer().value == "from-credential"
    assert ApiKeyProvider(both, env).source == "API key from systemd credential 'mlink'"
    file_env = read_section("auth", {"api_key_env": "K", "api_key_file": str(key_file)})
    assert ApiKeyProvider(file_env, env).bearer().value == "from-file"
    assert ApiKeyProvider(read_section("auth", {"api_key_env": "K"}), env).bearer().value == (
        "from-env"
    )


def test_key_file_permissions_world_refused_group_warned_once(
    tmp_path: Path, log_text: io.StringIO
) -> None:
    key = "0f3c5d2e-world-readable"
    path = write_secret(tmp_path / "key", key, 0o644)
    provider = ApiKeyProvider(AuthConfig(api_key=SecretRef(file=path)))
    with pytest.raises(CredentialError) as info:
        provider.bearer()
    assert "other users may read or write it (mode 0644)" in str(info.value)
    assert str(path) in str(info.value) and key not in str(info.value)

    path.chmod(0o640)
    assert provider.bearer().value == key
    assert provider.bearer().value == key
    warnings = [json.loads(x) for x in log_text.getvalue().splitlines()]
    group = [w for w in warnings if "readable by its group" in w["event"]]
    assert len(group) == 1 and group[0]["mode"] == "0640" and group[0]["level"] == "warning"
    assert key not in log_text.getvalue()


def test_unreadable_or_empty_key_file(tmp_path: Path) -> None:
    missing = ApiKeyProvider(AuthConfig(api_key=SecretRef(file=tmp_path / "nope")))
    with pytest.raises(CredentialError, match=r"nope: cannot read \(No such file"):
        missing.bearer()
    empty = ApiKeyProvider(
        AuthConfig(api_key=SecretRef(file=write_secret(tmp_path / "empty", "")))
    )
    with pytest.raises(CredentialError, match=r"is empty$"):
        empty.bearer()


def test_the_key_is_re_read_at_every_call(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "key", "old-key-1111")
    provider = ApiKeyProvider(AuthConfig(api_key=SecretRef(file=path)))
    assert provider.bearer().value == "old-key-1111"
    write_secret(path, "new-key-2222")
    assert provider.bearer().value == "new-key-2222"


def test_secret_never_prints_its_value() -> None:
    s = Secret("hunter2-hunter2")
    for text in (repr(s), str(s), f"{s}", f"{s!r}", format(s), repr([s]), str({"k": s})):
        assert "hunter2" not in text
    assert repr(s) == "Secret([redacted])"


def test_rotating_the_key_file_needs_no_restart(tmp_path: Path) -> None:
    """The daemon reconnects with the key that is in the file *now*: the simulator switches to
    a new key and the old connection drops; the next connection logs on with the new key."""
    root = tmp_path / "data"
    old, new = "old-key-5b2d0c8e-7f41", "new-key-9e8f7a6b-5c4d"
    key_file = write_secret(tmp_path / "api-key", old)
    sim_cfg = SimConfig(api_keys=frozenset({old}), rate=5, seed=31)
    cfg = config(root, ["A"], TYPES, auth={"api_key_file": str(key_file)})
    seen: dict[str, Any] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        stats = daemon.supervisor.workers["A"].stats
        await wait_for(lambda: stats.state == "streaming" and stats.messages > 0)
        write_secret(key_file, new)  # rotate: the file first, then the server
        sim.cfg = sim.cfg.with_overrides(api_keys=frozenset({new}))
        for conn in list(sim.connections.values()):
            conn.end("key rotated")
        await wait_for(lambda: stats.connects == 2 and stats.state == "streaming")
        before = stats.messages
        await wait_for(lambda: stats.messages > before)
        seen["states"] = stats.state, stats.restarts, len(net.opened_at)

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert seen["states"] == ("streaming", 1, 2)


def test_an_api_key_that_is_a_jwt_passes_a_jwt_checking_simulator(tmp_path: Path) -> None:
    """The simulator in auth_mode "jwt" over the in-memory network, on the mock clock."""
    token = sign({**claims(), "exp": 2_000_000_000})
    sim_cfg = SimConfig(rate=5, seed=32, **jwt_sim_knobs())
    cfg = config(tmp_path / "data", ["A"], TYPES)
    seen: dict[str, Any] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        stats = daemon.supervisor.workers["A"].stats
        await wait_for(lambda: stats.state == "streaming" and stats.messages > 0)
        seen["ok"] = True

    trio.run(functools.partial(run, key=token), sim_cfg, cfg, scenario, clock=mock_clock())
    assert seen["ok"]


# ---------------------------------------------------------------------------------------------
# RFC 4226 / RFC 6238
# ---------------------------------------------------------------------------------------------


def test_hotp_matches_rfc_4226_appendix_d() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314",
                "254676", "287922", "162583", "399871", "520489"]
    assert [hotp(b"12345678901234567890", i) for i in range(10)] == expected


@pytest.mark.parametrize(
    ("digest", "seed", "codes"),
    [
        ("sha1", b"12345678901234567890",
         ["94287082", "07081804", "14050471", "89005924", "69279037", "65353130"]),
        ("sha256", b"12345678901234567890123456789012",
         ["46119246", "68084774", "67062674", "91819424", "90698825", "77737706"]),
        ("sha512", b"1234567890123456789012345678901234567890123456789012345678901234",
         ["90693936", "25091201", "99943326", "93441116", "38618901", "47863826"]),
    ],
)
def test_totp_matches_rfc_6238_appendix_b(digest: str, seed: bytes, codes: list[str]) -> None:
    secret = base64.b32encode(seed).decode()
    times = [59, 1111111109, 1111111111, 1234567890, 2000000000, 20000000000]
    assert [totp(secret, t, digits=8, digest=digest) for t in times] == codes


def test_totp_secret_spelling_is_lenient_but_not_anything_goes() -> None:
    canonical = base64.b32encode(b"12345678901234567890").decode()  # GEZDGNBV...
    spaced = " ".join(canonical[i : i + 4] for i in range(0, len(canonical), 4)).lower()
    assert base32_key(spaced) == b"12345678901234567890"
    assert base32_key("asdfasdfasdf") == base64.b32decode("ASDFASDFASDF====")  # unpadded
    with pytest.raises(ValueError, match="not a base32 TOTP secret") as info:
        base32_key("not*base32!1")
    assert "not*base32" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# [auth] configuration
# ---------------------------------------------------------------------------------------------


def raw_config(**auth: Any) -> dict[str, Any]:
    return {
        "source": {"url": "wss://example.invalid/mlink/jsonf", "stripes": ["A"]},
        "auth": auth,
        "output": {"root": "data"},  # never written
    }


def test_cognito_configuration_is_parsed() -> None:
    cfg = Config.from_mapping(
        raw_config(
            method="cognito",
            cognito_user_pool_id="eu-west-2_AbC123",
            cognito_client_id="1a2b3c4d5e",
            cognito_username="trader1",
            cognito_password_file="secrets/pw",
            cognito_totp_secret_credential="mlink-totp",
            cognito_flow="password",
            cognito_token="id",
            cognito_refresh_margin=120,
            cognito_endpoint_url="http://127.0.0.1:5000",
        ),
        base_dir=Path("/etc/mlink"),
    )
    a = cfg.auth.cognito
    assert cfg.auth.method == "cognito"
    assert (a.user_pool_id, a.username) == ("eu-west-2_AbC123", "trader1")
    assert a.password == SecretRef(file=Path("/etc/mlink/secrets/pw"))  # not the default env
    assert a.totp_secret == SecretRef(credential="mlink-totp") and a.client_secret is None
    assert (a.flow, a.token, a.refresh_margin) == ("password", "id", 120.0)
    provider = make_provider(cfg, {})
    assert isinstance(provider, CognitoProvider)
    assert provider.source == "Cognito user pool eu-west-2_AbC123 user 'trader1'"
    assert isinstance(make_provider(Config.from_mapping(raw_config()), {}), ApiKeyProvider)


def test_every_auth_problem_is_reported_with_its_key_and_no_secret_is_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(
            raw_config(
                method="cognito",
                cognito_user_pool_id="not a pool",
                cognito_region="Mars",
                cognito_password="pw-IN-THE-FILE-1",
                totp_secret="JBSWY3DPEHPK3PXP",
                cognito_client_secret="client-secret-IN-FILE",
                cognito_flow="magic",
                cognito_token="refresh",
                cognito_refresh_margin=0,
                cognito_endpoint_url="ftp://x",
                cognito_colour="blue",
            )
        )
    keys = {p.split(":", 1)[0] for p in info.value.problems}
    assert keys == {
        "auth.cognito_user_pool_id", "auth.cognito_region", "auth.cognito_password",
        "auth.totp_secret", "auth.cognito_client_secret", "auth.cognito_flow",
        "auth.cognito_token", "auth.cognito_refresh_margin", "auth.cognito_endpoint_url",
        "auth.cognito_colour", "auth.cognito_client_id", "auth.cognito_username",
    }
    text = str(info.value)
    for secret in ("pw-IN-THE-FILE-1", "JBSWY3DPEHPK3PXP", "client-secret-IN-FILE"):
        assert secret not in text
    assert "auth.cognito_password: secrets are not read from the TOML; use cognito_password_env" \
        in text


def test_the_shipped_example_configuration_documents_every_auth_option() -> None:
    text = (Path(__file__).parents[1] / "config" / "capture.toml").read_text()
    auth, cognito = text.split("\n[auth]\n", 1)[1].split("\n[", 1)[0].split("# [auth.cognito]\n")
    for name in set(AuthConfig.__dataclass_fields__) - {"cognito"}:
        assert f"\n{name} =" in auth, f"config/capture.toml does not document auth.{name}"
    for name in CognitoConfig.__dataclass_fields__:
        assert f"\n# {name} =" in f"\n{cognito}", f"config/capture.toml lacks auth.cognito.{name}"
    # ... and the commented Cognito table is a valid configuration once uncommented.
    import tomllib

    table = tomllib.loads(auth)
    table["method"] = "cognito"
    table["cognito"] = tomllib.loads(
        "\n".join(ln[2:] for ln in cognito.splitlines() if re.match(r"# [a-z_]+ = ", ln))
    )
    assert Config.from_mapping(raw_config(**table)).auth.cognito.username == "trader1"


def test_only_capture_cognito_and_the_lake_store_import_aws_clients() -> None:
    package = Path(__file__).resolve().parents[1] / "capture"
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        aws = {n for n in names if n.split(".")[0] in ("boto3", "botocore", "pycognito")}
        rel = path.relative_to(package).as_posix()
        allowed = {
            "cognito.py": {"boto3", "botocore", "pycognito"},
            "lake/store.py": {"boto3", "botocore"},
        }
        assert {n.split(".")[0] for n in aws} <= allowed.get(rel, set()), (rel, aws)


# ---------------------------------------------------------------------------------------------
# The simulator's JWT check (RS256, issuer, expiry, token use, app client)
# ---------------------------------------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TestPool1"
CLIENT = "client0123456789"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    pub = key.public_key().public_numbers()
    return {
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
        "n": b64url(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")),
        "e": b64url(pub.e.to_bytes(3, "big")),
    }


JWKS = {"keys": [jwk(RSA_KEY, "k1")]}


def claims(**over: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "token_use": "access", "client_id": CLIENT,
            "username": "trader1", "exp": time.time() + 3600}
    return {**base, **over}


def sign(payload: dict[str, Any], *, kid: str = "k1", alg: str = "RS256",
         key: rsa.RSAPrivateKey = RSA_KEY) -> str:
    head = b64url(json.dumps({"kid": kid, "alg": alg}).encode())
    body = b64url(json.dumps(payload).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url(sig)}"


def jwt_sim_knobs(**over: Any) -> dict[str, Any]:
    return {"auth_mode": "jwt", "jwt_issuer": ISSUER, "jwt_jwks": JWKS,
            "jwt_audiences": frozenset({CLIENT}), **over}


def test_verify_jwt_accepts_the_pools_tokens_and_says_why_it_refuses_others() -> None:
    from capture.sim.server import rsa_public_keys

    keys = rsa_public_keys(JWKS)
    now = time.time()

    def check(token: str, **kw: Any) -> str | None:
        return verify_jwt(token, keys, issuer=ISSUER, audiences=frozenset({CLIENT}),
                          now_s=now, **kw)

    assert check(sign(claims())) is None
    assert check(sign(claims(token_use="id", aud=CLIENT, client_id=None))) is None
    good = sign(claims())
    head, body, sig = good.split(".")
    forged_body = b64url(json.dumps(claims(username="admin")).encode())
    none_head = b64url(json.dumps({"alg": "none", "kid": "k1"}).encode())
    cases = [
        ("bad signature", f"{head}.{forged_body}.{sig}"),  # payload changed after signing
        ("bad signature", sign(claims(), key=OTHER_KEY)),  # right kid, wrong key
        ("signed by an unknown key", sign(claims(), kid="k2")),
        ("algorithm 'none'", f"{none_head}.{body}."),
        ("algorithm 'HS256'", sign(claims(), alg="HS256")),
        ("issued by another user pool", sign(claims(iss=ISSUER + "x"))),
        ("expired", sign(claims(exp=now - 1))),
        ("token_use 'refresh'", sign(claims(token_use="refresh"))),
        ("issued to another app client", sign(claims(client_id="someone-else"))),
        ("not a JWT", "eyJhbGciOi.not-json.x"),
    ]
    for why, token in cases:
        problem = check(token)
        assert problem is not None and problem.startswith(why), (why, problem)
        assert token not in problem


def test_simulator_auth_modes() -> None:
    token = sign(claims())
    faults = FaultState(Faults(), random.Random(0), active=False)
    jwt_only = Simulator(SimConfig(api_keys=frozenset({"K"}), **jwt_sim_knobs()))
    assert jwt_only.key_ok(token, faults)
    assert not jwt_only.key_ok("K", faults)  # API keys are not enough in "jwt" mode
    assert not jwt_only.key_ok(sign(claims(exp=1)), faults)
    either = Simulator(SimConfig(api_keys=frozenset({"K"}), **jwt_sim_knobs(auth_mode="either")))
    assert either.key_ok(token, faults) and either.key_ok("K", faults)
    assert not either.key_ok("other", faults)
    legacy = Simulator(SimConfig(api_keys=frozenset({"K"})))  # default: API keys only
    assert legacy.key_ok("K", faults) and not legacy.key_ok(token, faults)


def test_simulator_jwt_knobs_are_validated_and_settable_from_toml() -> None:
    with pytest.raises(ConfigError) as info:
        SimConfig(auth_mode="jwt")
    assert "sim.jwt_issuer: required with auth_mode 'jwt'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        SimConfig.from_mapping({"auth_mode": "oauth", "jwt_token_uses": ["refresh"],
                                "jwt_jwks_url": "file:///etc/passwd"})
    assert {p.split(":")[0] for p in info.value.problems} == {
        "sim.auth_mode", "sim.jwt_token_uses", "sim.jwt_jwks_url"}
    cfg = SimConfig.from_mapping({
        "auth_mode": "either", "jwt_issuer": ISSUER, "jwt_audiences": [CLIENT],
        "jwt_jwks_url": "http://127.0.0.1:5000/us-east-1_TestPool1/.well-known/jwks.json",
    })
    assert cfg.jwt_audiences == frozenset({CLIENT}) and cfg.auth_mode == "either"


# ---------------------------------------------------------------------------------------------
# CognitoProvider against a stubbed Cognito (what moto cannot play)
# ---------------------------------------------------------------------------------------------

POOL = "us-east-1_Stub1"
PASSWORD = "Stub-Passw0rd-not-logged"
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DP"
T0 = 1_700_000_010.0  # 20 s left in its TOTP period


class FakeTime:
    def __init__(self, t: float) -> None:
        self.t = t
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def cognito_cfg(**over: Any) -> AuthConfig:
    base: dict[str, Any] = {
        "method": "cognito", "cognito_user_pool_id": POOL, "cognito_client_id": CLIENT,
        "cognito_username": "trader1", "cognito_password_env": "PW",
    }
    table = {k: v for k, v in {**base, **over}.items() if v is not None}  # None: not given
    auth: AuthConfig = read_section("auth", table)
    return auth


def stubbed(cfg: AuthConfig, env: dict[str, str] | None = None, *, t: FakeTime | None = None,
            failure_ttl: float = 0.0) -> tuple[CognitoProvider, Stubber, FakeTime]:
    client = boto3.client("cognito-idp", region_name="us-east-1",
                          config=BotoConfig(signature_version=UNSIGNED))
    clock = t or FakeTime(T0)
    provider = CognitoProvider(cfg, {"PW": PASSWORD, **(env or {})}, client=client,
                               now=clock.now, sleep=clock.sleep, failure_ttl=failure_ttl)
    stub = Stubber(client)
    stub.activate()
    return provider, stub, clock


def fake_tokens(exp: float, refresh: bool = True) -> dict[str, Any]:
    jti = str(time.monotonic_ns())
    access = sign(claims(exp=exp, jti=jti))
    id_token = sign(claims(exp=exp, jti=jti, token_use="id", aud=CLIENT))
    result: dict[str, Any] = {"AccessToken": access, "IdToken": id_token,
                              "ExpiresIn": 3600, "TokenType": "Bearer"}
    if refresh:
        result["RefreshToken"] = "refresh-" + "r" * 40
    return {"AuthenticationResult": result}


SRP_CHALLENGE = {
    "ChallengeName": "PASSWORD_VERIFIER",
    "ChallengeParameters": {
        "SALT": "a1b2c3d4", "SRP_B": "1234abcd" * 48, "USER_ID_FOR_SRP": "trader1",
        "SECRET_BLOCK": base64.b64encode(b"secret-block").decode(), "USERNAME": "trader1",
    },
}


def test_a_refused_srp_password_is_one_clear_error_and_is_not_retried_at_once() -> None:
    # moto accepts any SRP proof; real Cognito answers a wrong password like this.
    provider, stub, clock = stubbed(cognito_cfg(), failure_ttl=450)
    stub.add_response("initiate_auth", SRP_CHALLENGE)
    stub.add_client_error("respond_to_auth_challenge", "NotAuthorizedException",
                          "Incorrect username or password.", 400)
    with pytest.raises(CredentialError) as info:
        provider.bearer()
    text = str(info.value)
    assert text == (
        f"Cognito user pool {POOL} user 'trader1': login (USER_SRP_AUTH) refused: "
        "NotAuthorizedException: Incorrect username or password. (check the user name and "
        "the password from environment variable PW)"
    )
    assert PASSWORD not in text and provider.logins == 1
    stub.assert_no_pending_responses()
    # Other stripes asking within failure_ttl get the same answer without another attempt ...
    clock.t += 449
    with pytest.raises(CredentialError, match="Incorrect username or password"):
        provider.bearer()
    assert provider.logins == 1
    # ... and after it, a new attempt is made.
    clock.t += 2
    stub.add_response("initiate_auth", SRP_CHALLENGE)
    stub.add_response("respond_to_auth_challenge", fake_tokens(clock.t + 3600))
    assert provider.bearer().value.startswith("eyJ") and provider.logins == 2


@pytest.mark.parametrize(
    ("code", "status"),
    [("TooManyRequestsException", 400), ("InternalErrorException", 500), ("Whatever", 503)],
)
def test_throttling_and_server_errors_are_transport_errors(code: str, status: int) -> None:
    provider, stub, _ = stubbed(cognito_cfg(cognito_flow="password"), failure_ttl=450)
    stub.add_client_error("initiate_auth", code, "slow down", status)
    with pytest.raises(TransportError) as info:
        provider.bearer()
    assert not isinstance(info.value, CredentialError)
    assert f"Cognito login (USER_PASSWORD_AUTH) failed: {code} (HTTP {status})" in str(info.value)


def test_an_unreachable_cognito_is_a_transport_error_not_a_rejection() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = cognito_cfg(cognito_endpoint_url=f"http://127.0.0.1:{port}")
    provider = CognitoProvider(cfg, {"PW": PASSWORD}, timeout=2)
    with pytest.raises(TransportError, match=r"cannot reach Cognito for login \(USER_SRP_AUTH\)"):
        provider.bearer()


S1, S2 = "session-1-abcdefghijkl", "session-2-abcdefghijkl"


def test_mfa_select_type_then_totp_code_with_a_client_secret() -> None:
    env = {"TOTP": TOTP_SECRET, "CS": "app-client-secret-xyz"}
    cfg = cognito_cfg(cognito_flow="password", cognito_totp_secret_env="TOTP",
                      cognito_client_secret_env="CS")
    provider, stub, clock = stubbed(cfg, env)
    digest = hmac.new(b"app-client-secret-xyz", f"trader1{CLIENT}".encode(), hashlib.sha256)
    secret_hash = base64.b64encode(digest.digest()).decode()
    stub.add_response(
        "initiate_auth", {"ChallengeName": "SELECT_MFA_TYPE", "Session": S1},
        {"ClientId": CLIENT, "AuthFlow": "USER_PASSWORD_AUTH", "AuthParameters": {
            "USERNAME": "trader1", "PASSWORD": PASSWORD, "SECRET_HASH": secret_hash}},
    )
    stub.add_response(
        "respond_to_auth_challenge",
        {"ChallengeName": "SOFTWARE_TOKEN_MFA", "Session": S2},
        {"ClientId": CLIENT, "ChallengeName": "SELECT_MFA_TYPE", "Session": S1,
         "ChallengeResponses": {"USERNAME": "trader1", "SECRET_HASH": secret_hash,
                                "ANSWER": "SOFTWARE_TOKEN_MFA"}},
    )
    stub.add_response(
        "respond_to_auth_challenge", fake_tokens(T0 + 3600),
        {"ClientId": CLIENT, "ChallengeName": "SOFTWARE_TOKEN_MFA", "Session": S2,
         "ChallengeResponses": {"USERNAME": "trader1", "SECRET_HASH": secret_hash,
                                "SOFTWARE_TOKEN_MFA_CODE": totp(TOTP_SECRET, T0)}},
    )
    token = provider.bearer()
    stub.assert_no_pending_responses()
    assert jwt_claims(token.value)["token_use"] == "access" and provider.mfa_answers == 1
    assert clock.slept == []  # 20 s left in the period: no wait
    for secret in (S2, secret_hash, "app-client-secret-xyz", TOTP_SECRET):
        assert logs.redact(secret) == "[redacted]"


def test_a_totp_code_is_never_sent_at_the_end_of_its_period_nor_twice() -> None:
    cfg = cognito_cfg(cognito_flow="password", cognito_totp_secret_env="TOTP")
    late = FakeTime(1_700_000_039.5)  # 0.5 s left
    provider, stub, clock = stubbed(cfg, {"TOTP": TOTP_SECRET}, t=late)

    def login(expected_code: str, exp: float) -> None:
        stub.add_response(
            "initiate_auth", {"ChallengeName": "SOFTWARE_TOKEN_MFA", "Session": "s" * 20}
        )
        stub.add_response(
            "respond_to_auth_challenge", fake_tokens(exp),
            {"ClientId": CLIENT, "ChallengeName": "SOFTWARE_TOKEN_MFA", "Session": "s" * 20,
             "ChallengeResponses": {"USERNAME": "trader1",
                                    "SOFTWARE_TOKEN_MFA_CODE": expected_code}},
        )

    login(totp(TOTP_SECRET, 1_700_000_040), 1_700_000_060)  # the next period's code
    provider.bearer()
    assert clock.slept == [pytest.approx(0.55)]
    # The token is short-lived; a refresh is refused; the re-login in the same TOTP period
    # waits for the next code instead of replaying the used one.
    clock.t = 1_700_000_051.0
    stub.add_client_error("initiate_auth", "NotAuthorizedException", "Refresh Token has expired")
    login(totp(TOTP_SECRET, 1_700_000_070), 1_700_003_700)
    provider.bearer()
    stub.assert_no_pending_responses()
    assert clock.slept[1] == pytest.approx(19.05) and provider.mfa_answers == 2


@pytest.mark.parametrize(
    ("challenge", "totp_env", "says"),
    [
        ("SOFTWARE_TOKEN_MFA", None, "no auth.cognito.totp_secret is configured"),
        ("NEW_PASSWORD_REQUIRED", "TOTP", "the user must set a new password first"),
        ("SMS_MFA", "TOTP", "SMS codes cannot be answered unattended"),
        ("MFA_SETUP", "TOTP", "no authenticator app enrolled"),
        ("CUSTOM_CHALLENGE", "TOTP", "cannot answer it unattended"),
    ],
)
def test_challenges_that_cannot_be_answered_unattended(
    challenge: str, totp_env: str | None, says: str
) -> None:
    cfg = cognito_cfg(cognito_flow="password", cognito_totp_secret_env=totp_env)
    provider, stub, _ = stubbed(cfg, {"TOTP": TOTP_SECRET})
    stub.add_response("initiate_auth", {"ChallengeName": challenge, "Session": "s" * 20})
    with pytest.raises(CredentialError, match=says) as info:
        provider.bearer()
    assert str(info.value).startswith(f"Cognito user pool {POOL} user 'trader1': ")


def test_srp_challenges_raised_by_pycognito_are_mapped_too() -> None:
    provider, stub, _ = stubbed(cognito_cfg())
    stub.add_response("initiate_auth", SRP_CHALLENGE)
    stub.add_response("respond_to_auth_challenge",
                      {"ChallengeName": "NEW_PASSWORD_REQUIRED", "Session": "s" * 20})
    with pytest.raises(CredentialError, match="NEW_PASSWORD_REQUIRED: the user must set"):
        provider.bearer()


def test_id_token_choice_and_refresh_when_cognito_is_briefly_unreachable() -> None:
    provider, stub, clock = stubbed(cognito_cfg(cognito_flow="password", cognito_token="id"))
    first = fake_tokens(T0 + 3600)
    stub.add_response("initiate_auth", first)
    token = provider.bearer()
    assert token.value == first["AuthenticationResult"]["IdToken"]
    # In the refresh window, Cognito is throttling: the cached token (valid 4 more minutes)
    # is used, and the next call tries again.
    clock.t = T0 + 3600 - 240
    stub.add_client_error("initiate_auth", "TooManyRequestsException", "slow down", 400)
    assert provider.bearer() == token
    stub.add_response("initiate_auth", fake_tokens(T0 + 7200, refresh=False))
    assert provider.bearer() != token and provider.refreshes == 2
    stub.assert_no_pending_responses()


def test_secret_sources_name_themselves(tmp_path: Path) -> None:
    src = SecretSource("TOTP secret", SecretRef(file=tmp_path / "t"), environ={})
    assert src.source == f"TOTP secret from file {tmp_path / 't'}"
    assert not SecretSource("x", None).configured
