"""RFC 6238 TOTP: the codes of authenticator apps (RFC 4226 HOTP over 30-second periods).

Cognito's ``SOFTWARE_TOKEN_MFA`` challenge is answered with one (:mod:`capture.cognito`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

TOTP_STEP = 30


def hotp(key: bytes, counter: int, *, digits: int = 6, digest: str = "sha1") -> str:
    """RFC 4226 HOTP value of ``counter``."""
    mac = hmac.new(key, counter.to_bytes(8, "big"), digest).digest()
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFF_FFFF
    return str(value % 10**digits).zfill(digits)


def totp(
    secret_b32: str, at: float, *, digits: int = 6, step: int = TOTP_STEP, digest: str = "sha1"
) -> str:
    """RFC 6238 TOTP code at Unix time ``at`` for a base32 secret (what Cognito's
    AssociateSoftwareToken hands out: case, spaces and missing ``=`` padding are tolerated)."""
    return hotp(base32_key(secret_b32), int(at // step), digits=digits, digest=digest)


def base32_key(text: str) -> bytes:
    """Decode a base32 TOTP secret; ValueError (without the secret) if it is not base32."""
    cleaned = re.sub(r"[\s-]", "", text).upper().rstrip("=")
    try:
        key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("not a base32 TOTP secret") from None
    if not key:
        raise ValueError("empty TOTP secret")
    return key
