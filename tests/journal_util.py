"""A stripe journal written by hand: MLink data frames numbered 0..n-1, one per WebSocket
message, as a crashed run leaves them (every segment sealed, nothing in Parquet yet)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from capture import journal
from capture.frames import encode_frame

MSG_TYPE = "StockPrint"
TYPE_NUMBER = 4050  # not checked against the dictionary: numbers are hints


def sent_text(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 10**9, tz=dt.UTC)
    return f"{t:%Y-%m-%d %H:%M:%S}.{ns % 10**9 // 1000:06d}"


def body(seq: int, base_ns: int, *, extra: str = "") -> bytes:
    """A StockPrint body whose header seqN is ``seq`` and sTim ``base_ns + seq ms``."""
    sent = sent_text(base_ns + seq * 10**6)
    doc = {
        "header": {"mTyp": MSG_TYPE, "sID": 7, "seqN": seq, "sTim": sent, "encT": sent},
        "message": {"pkey": {"ticker": {"tk": "AAPL", "ts": "NMS", "at": "EQT"}}, "prtPrice": seq},
    }
    text = json.dumps(doc, separators=(",", ":"))
    return (text[:-1] + extra + "}").encode() if extra else text.encode()


def write_journal(
    jdir: Path,
    n: int,
    base_ns: int,
    *,
    session: str = "20250602T144500-abcdef",
    segment_bytes: int = 4096,
    marker: int | None = None,
    marker_text: str = "",
    first: int = 0,
) -> None:
    """Frames ``first``..n-1 (0..n-1 by default), one message each, in segments of
    ``segment_bytes``; frame ``marker`` carries ``marker_text`` as an extra field (for fault
    points that look for it)."""
    with journal.JournalWriter(jdir, segment_bytes=segment_bytes) as w:
        w.begin_session(
            session, "A", base_ns, {"url": "ws://test.invalid/", "streams": {MSG_TYPE: 1001}}
        )
        for seq in range(first, n):
            extra = f',"mark":"{marker_text}"' if seq == marker else ""
            frame = encode_frame(TYPE_NUMBER, body(seq, base_ns, extra=extra))
            w.append(base_ns + seq * 10**6, seq, 1, frame)
