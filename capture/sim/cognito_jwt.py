"""Cognito JWT checks (PROTOCOL.md §2.4): RS256 signature, issuer, expiry, token use, client.

The simulator accepts a JWT as credential (``auth_mode`` ``jwt`` or ``either``) when it is
signed by a key of the pool's JWKS document; :func:`verify_jwt` says why not otherwise, without
the token text.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.request
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["fetch_json", "jwt_kid", "looks_like_jwt", "rsa_public_keys", "verify_jwt"]


def looks_like_jwt(cred: str) -> bool:
    """Three base64url parts, the first a JSON object (API keys have at most one dot)."""
    return cred.startswith("eyJ") and cred.count(".") == 2


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_kid(token: str) -> str:
    try:
        header = json.loads(_b64url(token.split(".", 1)[0]))
    except (ValueError, binascii.Error):
        return ""
    return str(header.get("kid", "")) if isinstance(header, dict) else ""


def rsa_public_keys(jwks: Mapping[str, Any]) -> dict[str, rsa.RSAPublicKey]:
    """The RSA signing keys of a JWKS document, by ``kid`` (other keys are ignored)."""
    out: dict[str, rsa.RSAPublicKey] = {}
    keys = jwks.get("keys")
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", "RS256") != "RS256":
            continue
        try:
            n = int.from_bytes(_b64url(str(jwk["n"])), "big")
            e = int.from_bytes(_b64url(str(jwk["e"])), "big")
            out[str(jwk.get("kid", ""))] = rsa.RSAPublicNumbers(e, n).public_key()
        except (KeyError, ValueError, binascii.Error):
            continue
    return out


def verify_jwt(
    token: str,
    keys: Mapping[str, rsa.RSAPublicKey],
    *,
    issuer: str,
    audiences: frozenset[str] = frozenset(),
    token_uses: frozenset[str] = frozenset({"access", "id"}),
    now_s: float,
) -> str | None:
    """None if ``token`` is a valid Cognito JWT of ``issuer``; else why not (no token text).

    Only RS256 is accepted (no ``none``, no HMAC with a public key), with a key of ``keys``.
    """
    try:
        h64, p64, s64 = token.split(".")
        header, claims, signature = json.loads(_b64url(h64)), json.loads(_b64url(p64)), _b64url(s64)
    except (ValueError, binascii.Error):
        return "not a JWT"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "not a JWT"
    if header.get("alg") != "RS256":
        return f"algorithm {str(header.get('alg'))[:10]!r} is not RS256"
    key = keys.get(str(header.get("kid", "")))
    if key is None:
        return "signed by an unknown key (kid not in the pool's JWKS)"
    try:
        key.verify(signature, f"{h64}.{p64}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, UnicodeEncodeError):
        return "bad signature"
    if claims.get("iss") != issuer:
        return "issued by another user pool"
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= now_s:
        return "expired"
    use = claims.get("token_use")
    if use not in token_uses:
        return f"token_use {str(use)[:10]!r} not accepted"
    if audiences:
        client = claims.get("client_id") if use == "access" else claims.get("aud")
        if client not in audiences:
            return "issued to another app client"
    return None


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # http(s) only: checked in config
        return json.loads(response.read())
