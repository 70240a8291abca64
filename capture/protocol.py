"""MLink WebSocket admin messages as values (PROTOCOL.md §2.5, §6).

Pure: builds the client's request bodies and parses the server's control messages.  Data
messages never pass through here; they go to the bulk decoder untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from capture.errors import ControlParseError as ControlParseError
from capture.errors import RemoteProtocolError as RemoteProtocolError

# Every MLinkWs/MLinkRest message is control traffic, not market data (Appendix A, tokens
# MLinkWs and MLinkRest).  Anything else the server sends is data and is captured.
CONTROL_TYPES = frozenset(
    {
        "MLinkAdmin",
        "MLinkDataAck",
        "MLinkHeartbeat",
        "MLinkLogon",
        "MLinkStream",
        "MLinkStreamAck",
        "MLinkStreamCheckPt",
        "MLinkSubscribe",
        "MLinkSubscribeAck",
        "MLinkSubscribeCheckPt",
        "MLinkSignalReady",
        "MLinkCacheRequest",
        "MLinkCount",
        "QueryResult",
    }
)


class AdminVerdict(Enum):
    """What the client does with an MLinkAdmin state (§2.5, [I] client rule)."""

    LOGGED_ON = "logged_on"
    SEND_LOGON = "send_logon"
    GOOD_NIGHT = "good_night"
    AUTH_FAILED = "auth_failed"


_WAITING = frozenset({"waitinglogon", "waitingforlogon"})


@dataclass(frozen=True, slots=True)
class Admin:
    state: str
    detail: str | None

    @property
    def verdict(self) -> AdminVerdict:
        s = self.state.lower()
        if s == "loggedon":
            return AdminVerdict.LOGGED_ON
        if s in _WAITING:
            return AdminVerdict.SEND_LOGON
        if s == "goodnight":
            return AdminVerdict.GOOD_NIGHT
        return AdminVerdict.AUTH_FAILED


@dataclass(frozen=True, slots=True)
class StreamAck:
    msg_name: str | None
    result: str
    detail: str | None
    query_id: int | None

    @property
    def ok(self) -> bool:
        # "Warn" still streams; "None" (absent) is how a server that omits defaults says nothing
        # went wrong.  Every other result is a refusal.
        return self.result in ("OK", "Warn", "None")


@dataclass(frozen=True, slots=True)
class CheckPt:
    state: str
    query_id: int | None
    highwater_ts: int | None
    num_messages_sent: int | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    seq_num: int | None
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class DataAck:
    result: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class OtherControl:
    mtyp: str


Control = Admin | StreamAck | CheckPt | Heartbeat | DataAck | OtherControl


_INT64 = range(-(2**63), 2**63)
_INT_TEXT = re.compile(r"\s*-?[0-9]{1,19}\s*")  # ASCII digits only: "²".isdigit() is true
MAX_TEXT = 2000
"""Characters kept of a text member of a control message (a detail, a state): the rest is
cut, so that a server cannot put a megabyte into every log line and event row."""


def _opt_int(v: Any) -> int | None:
    """An int64 the server sent as a number or (lenient, like the server) as decimal text;
    None for anything else, never an exception."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and _INT_TEXT.fullmatch(v):
        v = int(v)
    return v if isinstance(v, int) and v in _INT64 else None


def _opt_str(v: Any) -> str | None:
    if not isinstance(v, str) or v == "":
        return None
    if len(v) > MAX_TEXT:
        return f"{v[:MAX_TEXT]}... ({len(v) - MAX_TEXT} more characters)"
    return v


def parse_control(mtyp: str, body: bytes) -> Control:
    """Parse a control frame body.  Raises ControlParseError (a RemoteProtocolError) for any
    body that is not a JSON object, and nothing else whatever the body; the caller bounds its
    size and nesting first (:func:`capture.bounds.check_body`)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ControlParseError(f"{mtyp}: body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ControlParseError(f"{mtyp}: body is not a JSON object")
    msg = obj.get("message")
    m: dict[str, Any] = msg if isinstance(msg, dict) else {}
    if mtyp == "MLinkAdmin":
        return Admin(state=_opt_str(m.get("state")) or "None", detail=_opt_str(m.get("detail")))
    if mtyp == "MLinkStreamAck":
        return StreamAck(
            msg_name=_opt_str(m.get("msgName")),
            result=_opt_str(m.get("result")) or "None",
            detail=_opt_str(m.get("detail")),
            query_id=_opt_int(m.get("queryID")),
        )
    if mtyp == "MLinkStreamCheckPt":
        return CheckPt(
            state=_opt_str(m.get("state")) or "None",
            query_id=_opt_int(m.get("queryID")),
            highwater_ts=_opt_int(m.get("highwaterTs")),
            num_messages_sent=_opt_int(m.get("numMessagesSent")),
            detail=_opt_str(m.get("detail")),
        )
    if mtyp == "MLinkHeartbeat":
        return Heartbeat(seq_num=_opt_int(m.get("seqNum")), timestamp=_opt_str(m.get("timestamp")))
    if mtyp == "MLinkDataAck":
        return DataAck(result=_opt_str(m.get("result")) or "None", detail=_opt_str(m.get("detail")))
    return OtherControl(mtyp)


def _utc_text(now_ns: int) -> str:
    t = dt.datetime.fromtimestamp(now_ns // 1_000_000_000, tz=dt.UTC)
    return f"{t:%Y-%m-%d %H:%M:%S}.{(now_ns // 1000) % 1_000_000:06d}"


def _envelope(mtyp: str, message: dict[str, Any], now_ns: int) -> bytes:
    stamp = _utc_text(now_ns)
    return json.dumps(
        {"header": {"mTyp": mtyp, "sTim": stamp, "encT": stamp}, "message": message},
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One MLinkStream subscription (§6.1)."""

    msg_name: str
    query_id: int
    stripe: str | None
    label: str
    active_latency: int = 1  # 0 would wait for MLinkSignalReady: nothing live would arrive
    highwater_ts: int | None = None  # None: full snapshot; -1: live only; T: changes after T
    unsubscribe: bool = False

    def body(self, now_ns: int) -> bytes:
        message: dict[str, Any] = {
            "queryLabel": self.label,
            "queryID": self.query_id,
            "activeLatency": self.active_latency,
            "msgName": self.msg_name,
        }
        if self.stripe is not None:
            message["stripeFilter"] = self.stripe
        if self.highwater_ts is not None:
            message["highwaterTs"] = self.highwater_ts
        if self.unsubscribe:
            message["unsubscribe"] = "Yes"
        return _envelope("MLinkStream", message, now_ns)


def logon_body(token: str, now_ns: int, field: str = "apiKey") -> bytes:
    """In-band MLinkLogon (§2.3), only sent when the server answers WaitingLogon: the token in
    ``apiKey`` (API or session key) or ``jwtToken`` (Cognito JWT)."""
    return _envelope("MLinkLogon", {field: token}, now_ns)


def header_time_ns(text: str) -> int | None:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC, any 0-9 fraction digits, ' ' or 'T') -> ns."""
    try:
        date_part, _, time_part = text.replace("T", " ").partition(" ")
        whole, _, frac = time_part.partition(".")
        base = dt.datetime.fromisoformat(f"{date_part} {whole}").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    if frac and not (frac.isascii() and frac.isdigit()):  # "²" is a digit to isdigit()
        return None
    return int(base.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])
