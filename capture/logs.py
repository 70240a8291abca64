"""structlog configuration: the one place logging is set up.

JSON lines when stderr is not a TTY (journald, Docker), a readable console renderer on a TTY.
Every secret the process learns is registered with :func:`register_secret` and scrubbed from
every event, whatever key or nested text it hides in.

Under systemd, stderr is a stream to the journal and each line may start with its syslog
priority, ``<N>`` (sd-daemon(3): journald strips it and files the line at that priority, so
``journalctl -p warning`` finds warnings).  ``logging.priority_prefix = "auto"`` adds it when
stderr is the journal's stream: ``$JOURNAL_STREAM`` names the device and inode systemd
connected, and only if stderr is still that file (not redirected by a wrapper) is it the
journal (systemd.exec(5)).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import structlog

_secrets: set[str] = set()
_lock = threading.Lock()
REDACTED = "[redacted]"


def register_secret(value: str) -> None:
    """Never print ``value`` (nor any text containing it) in a log line."""
    if len(value) >= 4:  # shorter strings would redact ordinary words
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


_URL_SECRET_PARAMS = frozenset(
    {"apikey", "api_key", "key", "token", "access_token", "jwt", "jwttoken", "password",
     "secret", "auth"}
)


def redact_url(url: str) -> str:
    """``url`` as it may be logged or stored: user information (``user:key@``) and the values
    of secret-looking query parameters (``?apikey=``) become ``[redacted]``.  The values taken
    out are registered as secrets, so they are scrubbed wherever else they turn up (a server
    echoing them, an error message quoting the URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        secret = password if colon else user  # user:key@, or key@
        register_secret(unquote(secret))
        register_secret(secret)
        netloc = f"{REDACTED}@{host}"
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in _URL_SECRET_PARAMS and value:
            register_secret(value)
            value = REDACTED
        query.append(f"{quote(name, safe='')}={quote(value, safe='[]')}")
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(query), parts.fragment))


def registered_secrets() -> frozenset[str]:
    """Every secret registered so far (capture.masking masks them in what a server sends)."""
    with _lock:
        return frozenset(_secrets)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    for key, value in list(event.items()):
        event[key] = _scrub(value)
    return event


def _redact_rendered(_: Any, __: str, event: Any) -> Any:
    # Exceptions are rendered to text after the event processors ran: scrub the final line too.
    return redact(event) if isinstance(event, str) and _secrets else event


# syslog priorities (sd-daemon(3)) of structlog's method names.
PRIORITIES = {
    "debug": 7, "info": 6, "msg": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
    "critical": 2, "fatal": 2,
}  # fmt: skip


def is_journal_stream(stream: Any, environ: Mapping[str, str] | None = None) -> bool:
    """True if ``stream`` is the journal's stream systemd connected (``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of that file, and the stream is still that file)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        expected = (int(dev), int(ino))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset or malformed; no real file
        return False
    return (st.st_dev, st.st_ino) == expected


def _priority_prefix(_: Any, method_name: str, event: Any) -> Any:
    """``<N>`` before every line of the rendered event (a traceback has several)."""
    if not isinstance(event, str):
        return event
    prefix = f"<{PRIORITIES.get(method_name, 6)}>"
    return "\n".join(prefix + line for line in event.split("\n"))


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: Any = None,
    priority_prefix: str = "auto",
    environ: Mapping[str, str] | None = None,
) -> None:
    """Set up logging to ``stream`` (stderr).  ``priority_prefix``: "always", "never" or
    "auto" (when the stream is the journal's: :func:`is_journal_stream`)."""
    out = stream if stream is not None else sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    prefixed = priority_prefix == "always" or (
        priority_prefix == "auto" and is_journal_stream(out, environ)
    )
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if as_json else _noop,
            _redact_processor,
            renderer,
            _redact_rendered,
            *([_priority_prefix] if prefixed else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write per line (print() makes two: the text, then the newline), so that the
        # lines of stripe-group processes sharing stderr (capture.groups) never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _noop(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)
