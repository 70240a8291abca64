"""The MLink control messages the simulator sends, and the logon states MLinkAdmin reports.

Control messages are dictionary types like any other; these are the ones the server itself
speaks (PROTOCOL.md §6): MLinkAdmin, MLinkDataAck, MLinkHeartbeat, MLinkStreamAck and
MLinkStreamCheckPt.  ``CONTROL_TOKENS`` are the tokens of session messages, which cannot be
streamed.
"""

from __future__ import annotations

import enum

from capture.schemas import MessageDef, lookup

__all__ = [
    "ADMIN",
    "CHECKPT",
    "CONTROL_TOKENS",
    "DATA_ACK",
    "HEARTBEAT",
    "STREAM_ACK",
    "AuthState",
]

CONTROL_TOKENS = frozenset({"MLinkWs", "MLinkRest"})


def _msg(name: str) -> MessageDef:
    found = lookup(name)
    if found is None:  # pragma: no cover - the dictionary ships with the package
        raise RuntimeError(f"{name} missing from the data dictionary")
    return found


ADMIN = _msg("MLinkAdmin")
DATA_ACK = _msg("MLinkDataAck")
HEARTBEAT = _msg("MLinkHeartbeat")
STREAM_ACK = _msg("MLinkStreamAck")
CHECKPT = _msg("MLinkStreamCheckPt")


class AuthState(enum.Enum):
    LOGGED_ON = "LoggedOn"
    WAITING = "WaitingLogon"
    FAILED = "LogonFailed"
