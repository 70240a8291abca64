"""Logging: JSON lines off a TTY, and a registered secret never printed, wherever it hides."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from capture import logs


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield
    structlog.reset_defaults()  # later tests read structlog's default output


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_off_a_tty_with_context_and_no_secret() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", stream=out)
    logs.register_secret("tok-ABCDEF123456")
    log = logs.get_logger(stripe="A")
    log.info("connected", url="wss://x/mlink/jsonf?apikey=tok-ABCDEF123456")
    log.debug("not shown at info")
    try:
        raise RuntimeError("server said: bad key tok-ABCDEF123456")
    except RuntimeError:
        log.exception("failed", nested={"k": ["tok-ABCDEF123456"]})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "connected" and first["stripe"] == "A" and first["level"] == "info"
    assert "tok-ABCDEF123456" not in out.getvalue()
    assert logs.REDACTED in first["url"] and second["nested"] == {"k": [logs.REDACTED]}
    assert "RuntimeError" in second["exception"]


def test_console_on_a_tty_is_readable_and_redacted() -> None:
    out = Tty()
    logs.configure("debug", "auto", stream=out)
    logs.register_secret("pw-0987654321")
    logs.get_logger().warning("retrying", detail="password pw-0987654321 rejected")
    text = out.getvalue()
    assert "retrying" in text and not text.lstrip().startswith("{")
    assert "pw-0987654321" not in text


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        (
            "wss://h/mlink/jsonf?apikey=k-0123456789abcdef&x=1",
            "wss://h/mlink/jsonf?apikey=[redacted]&x=1",
            "k-0123456789abcdef",
        ),
        (
            "wss://user:p%40ss-0123456789@h:443/mlink/jsonf",
            "wss://[redacted]@h:443/mlink/jsonf",
            "p@ss-0123456789",
        ),
        ("ws://k-fedcba987654@h/mlink/jsonf", "ws://[redacted]@h/mlink/jsonf", "k-fedcba987654"),
    ],
)
def test_a_key_in_the_url_is_redacted_and_becomes_a_secret(
    url: str, shown: str, secret: str
) -> None:
    assert logs.redact_url(url) == shown
    assert secret not in logs.redact(f"server said: {secret} is not valid")
    scrub = logs.secret_scrubber()
    assert scrub is not None
    echoed = b'{"detail":"bad key ' + secret.encode() + b'"}'
    masked = scrub(echoed)
    assert isinstance(masked, bytes) and len(masked) == len(echoed)  # frame lengths stay valid
    assert secret.encode() not in masked and b"*" * len(secret) in masked
    assert scrub("text " + secret) == "text " + "*" * len(secret)


def test_a_url_without_secrets_is_unchanged() -> None:
    url = "wss://mlink-live.example.com/mlink/jsonf"
    assert logs.redact_url(url) == url
