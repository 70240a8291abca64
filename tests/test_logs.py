"""Logging: JSON lines off a TTY, and a registered secret never printed, wherever it hides."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import structlog
import test_process

from capture import logs
from capture.masking import SecretMask

simulator = test_process.simulator  # the simulator in its own process, as in test_process


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
    mask = SecretMask.current()
    assert mask is not None
    echoed = b'{"detail":"bad key ' + secret.encode() + b'"}'
    masked = mask.message(echoed)
    assert isinstance(masked, bytes) and len(masked) == len(echoed)  # frame lengths stay valid
    assert secret.encode() not in masked and b"*" * len(secret) in masked
    assert mask.message("text " + secret) == "text " + "*" * len(secret)


def test_a_non_ascii_secret_is_masked_in_text_and_binary_messages_keeping_byte_lengths() -> None:
    secret = "clé-sécrète-0123456789"
    logs.register_secret(secret)
    mask = SecretMask.current()
    assert mask is not None
    text = '{"detail":"bad key ' + secret + '"}'
    masked = mask.message(text)
    assert isinstance(masked, str) and secret not in masked
    assert len(masked.encode("utf-8")) == len(text.encode("utf-8"))  # frame lengths stay valid
    raw = text.encode("utf-8")
    masked_raw = mask.message(raw)
    assert isinstance(masked_raw, bytes) and secret.encode("utf-8") not in masked_raw
    assert len(masked_raw) == len(raw)


def test_a_url_without_secrets_is_unchanged() -> None:
    url = "wss://mlink-live.example.com/mlink/jsonf"
    assert logs.redact_url(url) == url


def _journal_env(path: Path) -> dict[str, str]:
    st = path.stat()
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_priority_prefix_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """As systemd connects it: JOURNAL_STREAM names the file stderr is; every line starts with
    its syslog priority (sd-daemon(3)), a traceback's lines too."""
    path = tmp_path / "journal"
    with path.open("w") as out:
        logs.configure("debug", "auto", stream=out, environ=_journal_env(path))
        log = logs.get_logger()
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("x")
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    got = [(line[:3], json.loads(line[3:])["event"]) for line in lines[:5]]
    assert got == [(b"<7>", "d"), (b"<6>", "i"), (b"<4>", "w"), (b"<3>", "e"), (b"<2>", "c")]
    assert lines[5].startswith(b"<3>{") and b"boom" in lines[5]  # JSON: the traceback inline
    assert len(lines) == 7


def test_console_format_prefixes_every_line_of_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as out:
        logs.configure("info", "console", stream=out, priority_prefix="always")
        try:
            raise ValueError("boom")
        except ValueError:
            logs.get_logger().exception("failed")
    lines = path.read_text().rstrip("\n").split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines), lines


@pytest.mark.parametrize(
    "value",
    ["", "abc", "1:", ":1", "1:2:3", "-1:-1", "99999999999999999999999:1", "0:0"],
)
def test_no_prefix_unless_stderr_is_that_journal_stream(tmp_path: Path, value: str) -> None:
    path = tmp_path / "log"
    other = tmp_path / "other"
    other.write_text("")
    for env in ({"JOURNAL_STREAM": value}, _journal_env(other), {}):
        with path.open("w") as out:
            logs.configure("info", "json", stream=out, environ=env)
            logs.get_logger().warning("w")
        assert path.read_bytes().startswith(b'{"event": "w"'), env
    out = io.StringIO()  # no file behind it at all
    logs.configure("info", "json", stream=out, environ=_journal_env(other))
    logs.get_logger().warning("w")
    assert out.getvalue().startswith("{")


def test_never_means_never(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as out:
        logs.configure("info", "json", stream=out, priority_prefix="never",
                       environ=_journal_env(path))  # fmt: skip
        logs.get_logger().error("e")
    assert path.read_bytes().startswith(b"{")


@pytest.mark.e2e
def test_the_daemon_under_systemd_writes_priorities(
    tmp_path: Path, simulator: tuple[int, Path]
) -> None:
    """The real daemon with stderr connected as systemd connects it (JOURNAL_STREAM names the
    file), given a wrong key: the auth failure is an error, the reconnect a warning, the start
    info; bytes as journald reads them. Stripe-group processes share that stderr."""
    port, _ = simulator
    cfg = test_process.write_config(tmp_path, port, processes=2)
    (tmp_path / "key").write_text("not-the-key\n")
    stderr = tmp_path / "stderr"
    health_file = tmp_path / "run" / "health.json"
    with stderr.open("wb") as err:
        env = {**os.environ, **_journal_env(stderr)}
        daemon = subprocess.Popen(
            [str(test_process.BIN), "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
        try:

            def refused() -> bool:
                if not health_file.exists():
                    return False
                doc = json.loads(health_file.read_text())
                return all(s["state"] == "auth_failed" for s in doc["stripes"].values())

            test_process._wait(refused, 30, "both stripes auth_failed")
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=40) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    lines = stderr.read_bytes().decode().splitlines()
    assert lines
    by_event: dict[str, set[str]] = {}
    for line in lines:
        assert line[:3] in ("<6>", "<4>", "<3>", "<2>") and line[3] == "{", line
        by_event.setdefault(json.loads(line[3:])["event"], set()).add(line[:3])
    assert by_event["starting stripe groups"] == {"<6>"}
    assert by_event["authentication failed; backing off"] == {"<3>"}
    assert by_event["disconnected; reconnecting"] == {"<4>"}
    assert "<6>" in by_event["starting"]  # from a stripe-group process, same stream
