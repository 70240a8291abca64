"""BatchDecoder: samples.jsonf and drift cases, checked on values read back from Parquet."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capture.decode import BatchDecoder, DecodeResult, DriftReport
from capture.schemas import MessageDef, lookup
from capture.schemas.mapping import PARTITION_KEYS

SAMPLES = Path(__file__).parent / "data" / "samples.jsonf"
KEY_PARTS = {
    "TickerKey": ("at", "ts", "tk"),
    "ExpiryKey": ("at", "ts", "tk", "dt"),
    "OptionKey": ("at", "ts", "tk", "dt", "xx", "cp"),
}
PART_TYPES = {
    "at": "Enum",
    "ts": "Enum",
    "tk": "String",
    "dt": "DateKey",
    "xx": "Double",
    "cp": "Enum",
}
HEADER_TYPES = {
    "seqN": "Long",
    "sID": "Long",
    "kLen": "Int",
    "mLen": "Int",
    "sTim": "DateTime",
    "encT": "DateTime",
    "sEnv0": "String",
    "sRlm0": "String",
    "appN": "String",
    "mn": "String",
    "git": "String",
}
RECV_NS = 1_748_875_510_153_104_123


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """``\\r\\nJ`` + 5-digit type + 6-digit length + body, concatenated."""
    frames = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 3] == b"\r\nJ", pos
        number, length = int(data[pos + 3 : pos + 8]), int(data[pos + 8 : pos + 14])
        frames.append((number, data[pos + 14 : pos + 14 + length]))
        pos += 14 + length
    return frames


def decode(
    decoder: BatchDecoder, bodies: Sequence[bytes], numbers: Sequence[int] | None = None
) -> DecodeResult:
    n = len(bodies)
    return decoder.decode(
        bodies,
        type_numbers=list(numbers) if numbers is not None else [0] * n,
        recv_ns=[RECV_NS + i for i in range(n)],
        snapshot=[i % 2 == 0 for i in range(n)],
        seq=[1000 + i for i in range(n)],
        stripe="A",
        session="session-1",
    )


PER_CALL = ["_recv_time", "_recv_time_ns", "_seq", "_snapshot"]  # differ between decode calls


def read_back(batch: pa.RecordBatch, path: Path) -> list[dict[str, Any]]:
    pq.write_table(pa.Table.from_batches([batch]), path)
    table = pq.read_table(path)
    assert table.schema.names == batch.schema.names
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def convert(ftype: str, value: Any) -> Any:
    """What a column of this dictionary type must read back as, for a JSON value."""
    if value is None:
        return None
    if ftype == "DateTime":
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    if ftype == "DateKey":
        return date.fromisoformat(value)
    if ftype in ("Float", "Double"):
        return float(value)
    if ftype == "TimeSpan":  # the raw JSON text of the value (a string is its own text)
        return value if isinstance(value, str) else json.dumps(value)
    return value


def expected_columns(msg: MessageDef, body: dict[str, Any]) -> dict[str, Any]:
    """Column -> expected value, derived from the JSON by the documented naming rules."""
    header, message = body["header"], body["message"]
    out = {f"h_{k}": convert(t, header.get(k)) for k, t in HEADER_TYPES.items()}

    def add(
        target: dict[str, Any], fdef: Any, value: Any, members: Any = (), top: bool = False
    ) -> None:
        if top and fdef.name.casefold() in PARTITION_KEYS:  # the directory's keys: suffixed
            fdef = dataclasses.replace(fdef, name=f"{fdef.name}__2")
        if fdef.ftype in KEY_PARTS:
            for part in KEY_PARTS[fdef.ftype]:
                part_value = value.get(part) if value is not None else None
                target[f"{fdef.name}_{part}"] = convert(PART_TYPES[part], part_value)
        elif fdef.ftype == "Repeater":
            items = None
            if value is not None:
                items = []
                for item in value:
                    converted: dict[str, Any] = {}
                    for member in members:
                        add(converted, member, item.get(member.name))
                    items.append(converted)
            target[fdef.name] = items
        else:
            target[fdef.name] = convert(fdef.ftype, value)

    pkey = message.get("pkey", {})
    for fdef in msg.key_fields:
        add(out, fdef, pkey.get(fdef.name), top=True)
    for fdef in msg.body_fields:
        add(out, fdef, message.get(fdef.name), msg.members(fdef.name), top=True)
    return out


def assert_row_matches(row: dict[str, Any], msg: MessageDef, body: dict[str, Any]) -> None:
    expected = expected_columns(msg, body)
    data_columns = [c for c in row if not c.startswith("_")]
    assert set(expected) == set(data_columns)
    for column, value in expected.items():
        got = row[column]
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(got, float) and math.isnan(got), column
        else:
            assert got == value, (column, got, value)
            assert type(got) is type(value) or value is None, (column, got, value)


# ---------------------------------------------------------------------------------------------


def test_every_sample_frame_round_trips_through_parquet(tmp_path: Path) -> None:
    frames = parse_frames(SAMPLES.read_bytes())
    assert len(frames) == 16
    by_type: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for number, body in frames:
        by_type[json.loads(body)["header"]["mTyp"]].append((number, body))
    assert set(by_type) == {
        "MLinkAdmin",
        "MLinkStreamAck",
        "MLinkStreamCheckPt",
        "OptionNbboQuote",
        "StockBookQuote",
        "StockPrint",
        "OptionPrint",
        "LiveImpliedQuote",
        "LiveSurfaceCurve",
        "MLinkHeartbeat",
    }
    checked = 0
    for msg_type, items in by_type.items():
        msg = lookup(msg_type)
        assert msg is not None
        decoder = BatchDecoder(msg_type)
        bodies = [body for _, body in items]
        result = decode(decoder, bodies, [number for number, _ in items])
        assert result.rejected == []
        assert result.drift == DriftReport(), msg_type  # clean samples: fast path, no drift
        assert result.batch.schema == decoder.schema
        rows = read_back(result.batch, tmp_path / f"{msg_type}.parquet")
        assert len(rows) == len(bodies)
        for i, (row, (number, body)) in enumerate(zip(rows, items, strict=True)):
            assert row["_type_number"] == number == msg.number
            assert row["_stripe"] == "A"
            assert row["_session"] == "session-1"
            assert row["_snapshot"] is (i % 2 == 0)
            assert row["_seq"] == 1000 + i
            assert row["_extra"] is None
            assert_row_matches(row, msg, json.loads(body))
            checked += 1
    assert checked == 16


def test_exact_values_read_back(tmp_path: Path) -> None:
    frames = parse_frames(SAMPLES.read_bytes())
    checkpts = [b for _, b in frames if b'"mTyp":"MLinkStreamCheckPt"' in b]
    nbbo = [b for _, b in frames if b'"mTyp":"OptionNbboQuote"' in b]

    rows = read_back(decode(BatchDecoder("MLinkStreamCheckPt"), checkpts).batch, tmp_path / "c")
    # "2025-06-02 14:45:10.152901" (header sTim of the Begin checkpoint), to the microsecond.
    assert rows[0]["h_sTim"] == datetime(2025, 6, 2, 14, 45, 10, 152901, tzinfo=UTC)
    raw = pq.read_table(tmp_path / "c").column("h_sTim").cast(pa.int64())
    assert raw[0].as_py() == 1_748_875_510_152_901
    assert rows[2]["queryElapsed"] == 0.000512  # Float: the printed number, not float32(x)
    assert rows[2]["waitElapsed"] == -0.000487
    assert rows[2]["tryFwdElapsed"] == 1.9e-05

    assert [r["_recv_time_ns"] for r in rows] == [RECV_NS, RECV_NS + 1, RECV_NS + 2]
    micros = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=RECV_NS // 1000)
    assert [r["_recv_time"] for r in rows] == [micros] * 3  # the same microsecond
    schema = pq.read_table(tmp_path / "c").schema
    assert schema.field("_recv_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("_recv_time_ns").type == pa.int64()

    rows = read_back(decode(BatchDecoder("OptionNbboQuote"), nbbo).batch, tmp_path / "n")
    assert rows[0]["srcTimestamp"] == 1748875509876543211  # Long: never through a double
    assert rows[0]["netTimestamp"] == 1748875509876714511
    assert rows[0]["okey_xx"] == 200.0 and rows[0]["okey_dt"] == date(2025, 6, 20)
    assert rows[0]["bidPrice"] == 5.6 and rows[1]["askPrice"] == 4.0
    assert rows[0]["bidMktType"] is None  # omitted by the server -> null
    assert rows[2]["bidMktType"] == "Regular"
    assert (rows[0]["okey_cp"], rows[1]["okey_cp"]) == ("Call", "Put")


# -- drift --------------------------------------------------------------------------------------


def nbbo_body(**changes: Any) -> bytes:
    """The first sample OptionNbboQuote, with message members replaced/added (None removes)."""
    body = json.loads(
        next(b for _, b in parse_frames(SAMPLES.read_bytes()) if b'"mTyp":"OptionNbboQuote"' in b)
    )
    for key, value in changes.items():
        if value is None:
            body["message"].pop(key, None)
        else:
            body["message"][key] = value
    return json.dumps(body, separators=(",", ":")).encode()


CLEAN = nbbo_body()


def decode_nbbo(
    bodies: Sequence[bytes], tmp_path: Path
) -> tuple[DecodeResult, list[dict[str, Any]]]:
    result = decode(BatchDecoder("OptionNbboQuote"), bodies)
    return result, read_back(result.batch, tmp_path / "drift.parquet")


def test_unknown_fields_stay_on_the_fast_path_and_go_to_extra(tmp_path: Path) -> None:
    drifted = nbbo_body(prcFramework="Equity", srSlope=-0.0012, newCount=7, newFlag=True)
    result, rows = decode_nbbo([CLEAN, drifted] * 20, tmp_path)
    assert result.drift.slow_path_rows == 0
    assert result.drift.unknown_fields == {
        "message.prcFramework",
        "message.srSlope",
        "message.newCount",
        "message.newFlag",
    }
    assert result.drift.mistyped_values == 0
    assert rows[0]["_extra"] is None
    assert json.loads(rows[1]["_extra"]) == {
        "message": {"prcFramework": "Equity", "srSlope": -0.0012, "newCount": 7, "newFlag": True}
    }
    assert rows[1]["bidPrice"] == 5.6 and rows[1]["srcTimestamp"] == 1748875509876543211


def test_unknown_members_of_header_pkey_and_key_objects(tmp_path: Path) -> None:
    body = json.loads(CLEAN)
    body["header"]["newHdr"] = 'quote " and \\ backslash\u0001'
    body["message"]["pkey"]["okey"]["zz"] = 1
    body["message"]["pkey"]["extraKey"] = "x"
    body["top"] = [1, 2]
    raw = json.dumps(body, separators=(",", ":")).encode()
    result, rows = decode_nbbo([CLEAN, raw, CLEAN], tmp_path)
    assert result.drift.unknown_fields == {
        "header.newHdr",
        "message.pkey.okey.zz",
        "message.pkey.extraKey",
        "top",
    }
    assert json.loads(rows[1]["_extra"]) == {
        "header": {"newHdr": 'quote " and \\ backslash\u0001'},
        "message": {"pkey": {"okey": {"zz": 1}, "extraKey": "x"}},
        "top": [1, 2],
    }
    assert rows[1]["okey_tk"] == "AAPL" and rows[1]["okey_cp"] == "Call"
    assert [r["_extra"] for r in (rows[0], rows[2])] == [None, None]


def test_int_arriving_as_fraction_is_kept_in_extra(tmp_path: Path) -> None:
    bodies = [CLEAN] * 30 + [nbbo_body(bidSize=1.5)] + [CLEAN] * 30
    result, rows = decode_nbbo(bodies, tmp_path)
    assert len(rows) == 61
    assert result.drift.mistyped_values == 1
    assert 1 <= result.drift.slow_path_rows <= 4  # isolated, not the whole batch
    bad = rows[30]
    assert bad["bidSize"] is None
    assert json.loads(bad["_extra"]) == {"message": {"bidSize": 1.5}}
    assert bad["askSize"] == 112 and bad["bidPrice"] == 5.6  # the rest of the row is stored
    assert [r["_seq"] for r in rows] == list(range(1000, 1061))  # input order kept
    assert all(r["bidSize"] == 48 and r["_extra"] is None for i, r in enumerate(rows) if i != 30)


def test_string_where_a_number_is_expected(tmp_path: Path) -> None:
    result, rows = decode_nbbo([CLEAN, nbbo_body(bidPrice="5.6"), CLEAN], tmp_path)
    assert result.drift.mistyped_values == 1
    assert rows[1]["bidPrice"] is None
    assert rows[1]["_extra"] == '{"message":{"bidPrice":"5.6"}}'
    assert rows[0]["bidPrice"] == rows[2]["bidPrice"] == 5.6


def test_nan_token() -> None:
    # NaN in a Float field is held as NaN; in an Int field it goes to _extra verbatim.
    nan_float = CLEAN.replace(b'"bidPrice":5.6', b'"bidPrice":NaN')
    nan_int = CLEAN.replace(b'"bidSize":48', b'"bidSize":NaN')
    inf_float = CLEAN.replace(b'"askPrice":5.7', b'"askPrice":-Infinity')
    result = decode(BatchDecoder("OptionNbboQuote"), [nan_float, nan_int, inf_float])
    rows = result.batch.drop_columns(["_recv_time", "_recv_time_ns"]).to_pylist()
    assert math.isnan(rows[0]["bidPrice"]) and rows[0]["_extra"] is None
    assert rows[1]["bidSize"] is None and rows[1]["_extra"] == '{"message":{"bidSize":NaN}}'
    assert rows[2]["askPrice"] == -math.inf
    assert result.drift.mistyped_values == 1


def test_bodies_that_are_not_json_objects_are_rejected(tmp_path: Path) -> None:
    bodies = [CLEAN, b"[1,2]", b"", b"   ", b"{not json", b'"text"', CLEAN, b"null", CLEAN]
    result, rows = decode_nbbo(bodies, tmp_path)
    assert [(i, body) for i, body, _ in result.rejected] == [
        (1, b"[1,2]"),
        (2, b""),
        (3, b"   "),
        (4, b"{not json"),
        (5, b'"text"'),
        (7, b"null"),
    ]
    assert all(reason for _, _, reason in result.rejected)
    assert [r["_seq"] for r in rows] == [1000, 1006, 1008]
    assert [r["_snapshot"] for r in rows] == [True, True, True]
    assert [r["_recv_time_ns"] for r in rows] == [RECV_NS, RECV_NS + 6, RECV_NS + 8]


def test_unknown_message_type_uses_the_generic_schema(tmp_path: Path) -> None:
    body = CLEAN.replace(b'"mTyp":"OptionNbboQuote"', b'"mTyp":"OptionNbboQuote2027"')
    decoder = BatchDecoder("OptionNbboQuote2027")
    assert decoder.schema.names[-3:] == ["_mtyp", "message", "_extra"]
    result = decode(decoder, [body, b"[]"])
    rows = read_back(result.batch, tmp_path / "generic.parquet")
    assert len(rows) == 1 and len(result.rejected) == 1
    assert rows[0]["_mtyp"] == "OptionNbboQuote2027"
    assert rows[0]["h_seqN"] == 88211
    assert rows[0]["h_encT"] == datetime(2025, 6, 2, 14, 45, 10, 153104, tzinfo=UTC)
    # The message object exactly as sent (numbers keep their text: 200, not 200.0).
    original = CLEAN.decode()
    assert rows[0]["message"] == original[original.index('{"pkey"') : -1]
    assert rows[0]["_extra"] is None


def test_message_type_mismatch_is_kept(tmp_path: Path) -> None:
    other = CLEAN.replace(b'"mTyp":"OptionNbboQuote"', b'"mTyp":"OptionNbboQuoteX"')
    _, rows = decode_nbbo([CLEAN, other], tmp_path)
    assert rows[0]["_extra"] is None
    assert json.loads(rows[1]["_extra"]) == {"header": {"mTyp": "OptionNbboQuoteX"}}


def test_invalid_utf8_keeps_the_row_and_the_bytes(tmp_path: Path) -> None:
    broken = CLEAN.replace(b'"tk":"AAPL"', b'"tk":"AA\xffPL"')
    result, rows = decode_nbbo([CLEAN, broken], tmp_path)
    assert result.rejected == []
    assert rows[1]["okey_tk"] is None and rows[1]["okey_xx"] == 200.0
    kept = json.loads(rows[1]["_extra"])["message"]["pkey"]["okey"]["tk"]
    assert kept.encode("utf-8", "surrogateescape") == b"AA\xffPL"


def test_repeated_member_names_are_not_lost(tmp_path: Path) -> None:
    dup = CLEAN.replace(b'"bidSize":48', b'"bidSize":48,"bidSize":49')
    _, rows = decode_nbbo([dup], tmp_path)
    assert rows[0]["bidSize"] == 48
    assert rows[0]["_extra"] == '{"message":{"bidSize":49}}'


def test_whitespace_and_line_breaks_inside_bodies(tmp_path: Path) -> None:
    spaced = b"  " + CLEAN.replace(b',"updateType"', b',\r\n  "updateType"') + b"\n"
    result, rows = decode_nbbo([CLEAN, spaced, CLEAN], tmp_path)
    assert result.rejected == [] and result.drift.slow_path_rows == 0
    assert [r["updateType"] for r in rows] == ["PrcChange"] * 3
    # A line break inside a body that starts with "{", next to a body that fails the read:
    # isolation must still point at the right body.
    broken_line = CLEAN.replace(b',"askPrice"', b',\n"askPrice"')
    bodies = [CLEAN] * 8 + [broken_line] * 3 + [nbbo_body(bidSize=1.5)] + [broken_line, CLEAN]
    result = decode(BatchDecoder("OptionNbboQuote"), bodies)
    rows = result.batch.drop_columns(["_recv_time", "_recv_time_ns"]).to_pylist()
    assert len(rows) == 14 and result.drift.mistyped_values == 1
    assert [r["bidSize"] for r in rows] == [48] * 11 + [None] + [48] * 2
    assert [r["askPrice"] for r in rows] == [5.7] * 14


def test_mixed_batch_order_and_values(tmp_path: Path) -> None:
    variants = [
        CLEAN,
        nbbo_body(bidSize=1.5),
        nbbo_body(prcFramework="X"),
        b"[]",
        nbbo_body(bidExch={"odd": 1}),
        nbbo_body(askMask=-1),  # UInt below zero
        nbbo_body(bidTime=2**31),  # Int overflow
        nbbo_body(srcTimestamp=2**63),  # Long overflow
    ]
    bodies = [variants[i % len(variants)] for i in range(200)]
    result, rows = decode_nbbo(bodies, tmp_path)
    assert len(result.rejected) == 25
    assert [r["_seq"] for r in rows] == [1000 + i for i in range(200) if i % 8 != 3]
    for row in rows:
        kind = (row["_seq"] - 1000) % 8
        extra = json.loads(row["_extra"]) if row["_extra"] else None
        assert row["okey_tk"] == "AAPL" and row["bidPrice"] == 5.6
        if kind == 0:
            assert extra is None and row["bidSize"] == 48
        elif kind == 1:
            assert extra == {"message": {"bidSize": 1.5}} and row["bidSize"] is None
        elif kind == 2:
            assert extra == {"message": {"prcFramework": "X"}}
        elif kind == 4:
            assert extra == {"message": {"bidExch": {"odd": 1}}} and row["bidExch"] is None
        elif kind == 5:
            assert extra == {"message": {"askMask": -1}} and row["askMask"] is None
        elif kind == 6:
            assert extra == {"message": {"bidTime": 2**31}} and row["bidTime"] is None
        else:
            assert extra == {"message": {"srcTimestamp": 2**63}} and row["srcTimestamp"] is None
    assert result.drift.mistyped_values == 5 * 25


def test_unsigned_fields_keep_their_range_in_a_signed_column() -> None:
    """UInt is stored as int64 (no engine-specific unsigned type), yet a value outside the
    dictionary's range still goes to _extra, on the strict path and once the field is loose."""
    decoder = BatchDecoder("OptionNbboQuote")
    assert decoder.schema.field("bidMask").type == pa.int64()
    top, over, under = 2**32 - 1, 2**32, -1
    bodies = [nbbo_body(bidMask=top), nbbo_body(bidMask=over), nbbo_body(bidMask=under)]
    for _ in range(2):  # the second round reads bidMask loosely (learned from the first)
        rows = decode(decoder, bodies).batch.to_pylist()
        assert rows[0]["bidMask"] == top and rows[0]["_extra"] is None
        for row, value in zip(rows[1:], (over, under), strict=True):
            assert row["bidMask"] is None
            assert json.loads(row["_extra"]) == {"message": {"bidMask": value}}
    assert decoder.loose_fields == {"bidMask"}


def test_decoder_learns_value_drift() -> None:
    """A field whose values outgrow its wire type is read loosely from then on: no slow path."""
    decoder = BatchDecoder("OptionNbboQuote")
    big = nbbo_body(cumBidSize=3_000_000_000)  # Int field above 2**31
    first = decode(decoder, [CLEAN] * 50 + [big] + [CLEAN] * 50)
    assert first.drift.slow_path_rows >= 1
    assert decoder.loose_fields == {"cumBidSize"}
    second = decode(decoder, [big, CLEAN] * 50)
    assert second.drift.slow_path_rows == 0
    assert second.drift.mistyped_values == 50
    rows = second.batch.drop_columns(["_recv_time", "_recv_time_ns"]).to_pylist()
    assert rows[0]["cumBidSize"] is None
    assert rows[0]["_extra"] == '{"message":{"cumBidSize":3000000000}}'
    assert rows[1]["cumBidSize"] == 236 and rows[1]["_extra"] is None
    assert second.batch.schema == decoder.schema


def test_decoder_learns_bad_dates() -> None:
    def with_expiry(value: str) -> bytes:
        body = json.loads(
            next(
                b for _, b in parse_frames(SAMPLES.read_bytes()) if b'"mTyp":"OptionNbboQuote"' in b
            )
        )
        body["message"]["pkey"]["okey"]["dt"] = value
        return json.dumps(body, separators=(",", ":")).encode()

    decoder = BatchDecoder("OptionNbboQuote")
    bad, odd = with_expiry("2025-02-30"), with_expiry("2025-6-20")
    first = decode(decoder, [CLEAN] * 20 + [bad] + [CLEAN] * 20)
    assert first.drift.mistyped_values == 1 and decoder.loose_fields == {"okey_dt"}
    second = decode(decoder, [CLEAN, bad, odd, CLEAN])
    assert second.drift.slow_path_rows == 0 and second.drift.mistyped_values == 2
    rows = second.batch.drop_columns(["_recv_time", "_recv_time_ns"]).to_pylist()
    assert [r["okey_dt"] for r in rows] == [date(2025, 6, 20), None, None, date(2025, 6, 20)]
    assert json.loads(rows[1]["_extra"]) == {"message": {"pkey": {"okey": {"dt": "2025-02-30"}}}}
    assert json.loads(rows[2]["_extra"]) == {"message": {"pkey": {"okey": {"dt": "2025-6-20"}}}}


def test_decoder_learns_kind_drift() -> None:
    """A field that sometimes arrives as a string is pre-screened: only those rows go slow."""
    decoder = BatchDecoder("OptionNbboQuote")
    odd = nbbo_body(bidPrice="n/a")
    decode(decoder, [CLEAN] * 20 + [odd] + [CLEAN] * 20)
    second = decode(decoder, [CLEAN, CLEAN, odd, CLEAN] * 25)
    assert second.drift.slow_path_rows == 25
    rows = second.batch.drop_columns(["_recv_time", "_recv_time_ns"]).to_pylist()
    assert [r["bidPrice"] for r in rows[:4]] == [5.6, 5.6, None, 5.6]
    assert rows[2]["_extra"] == '{"message":{"bidPrice":"n/a"}}'


def test_key_object_sent_as_a_flat_string() -> None:
    flat = CLEAN.replace(
        b'"okey":{"at":"EQT","ts":"NMS","tk":"AAPL","dt":"2025-06-20","xx":200,"cp":"Call"}',
        b'"okey":"AAPL-NMS-EQT-2025-06-20-200-C"',
    )
    assert flat != CLEAN
    decoder = BatchDecoder("OptionNbboQuote")
    decode(decoder, [CLEAN] * 10 + [flat])
    result = decode(decoder, [flat, CLEAN] * 10)
    assert result.drift.slow_path_rows == 10  # pre-screened: no failed read, no bisection
    assert result.drift.mistyped_values == 10
    rows = result.batch.drop_columns(["_recv_time", "_recv_time_ns"]).to_pylist()
    assert rows[0]["okey_tk"] is None and rows[0]["bidSize"] == 48
    assert json.loads(rows[0]["_extra"]) == {
        "message": {"pkey": {"okey": "AAPL-NMS-EQT-2025-06-20-200-C"}}
    }
    assert rows[1]["okey_tk"] == "AAPL" and rows[1]["_extra"] is None


def test_timespan_keeps_the_raw_json_text(tmp_path: Path) -> None:
    frames = parse_frames(SAMPLES.read_bytes())
    curve = json.loads(next(b for _, b in frames if b'"mTyp":"LiveSurfaceCurve"' in b))

    def with_time(value: Any) -> bytes:
        curve["message"]["time"] = value
        return json.dumps(curve, separators=(",", ":")).encode()

    as_string = with_time("00:00:10.5000000")
    as_int = with_time(105000000)
    as_float = with_time(1.0).replace(b'"time":1.0', b'"time":1.50')
    decoder = BatchDecoder("LiveSurfaceCurve")
    # One JSON form per batch (what a server does) stays on the fast path, whichever it is.
    for body, text in ((as_string, "00:00:10.5000000"), (as_int, "105000000")):
        result = decode(decoder, [body, body])
        assert result.drift == DriftReport()
        assert result.batch.column("time").to_pylist() == [text, text]
    # Mixed forms, or a fraction (whose text the reader would not keep), are still exact.
    result = decode(decoder, [as_string, as_float, as_int])
    rows = read_back(result.batch, tmp_path / "ts.parquet")
    assert [r["time"] for r in rows] == ["00:00:10.5000000", "1.50", "105000000"]
    assert all(r["_extra"] is None for r in rows)
    # Neither string nor number: not a TimeSpan the column can hold; kept whole in _extra.
    result = decode(decoder, [with_time({"ticks": 5}), as_string])
    rows = read_back(result.batch, tmp_path / "ts2.parquet")
    assert rows[0]["time"] is None
    assert rows[0]["_extra"] == '{"message":{"time":{"ticks":5}}}'
    assert rows[1]["time"] == "00:00:10.5000000"


def test_repeaters_with_key_members(tmp_path: Path) -> None:
    spx = {"at": "EQT", "ts": "NMS", "tk": "SPX", "dt": "2025-06-20"}

    def product(legs: Any) -> bytes:
        body = {
            "header": {"mTyp": "ProductDefinitionV2", "seqN": 1},
            "message": {
                "pkey": {
                    "secKey": {**spx, "xx": 5000, "cp": "Call"},
                    "secType": "Option",
                },
                "Legs": legs,
                "priceRatio": 0.5,
            },
        }
        return json.dumps(body, separators=(",", ":")).encode()

    leg = {
        "legID": "L1",
        "secKey": {**spx, "xx": 5000.5, "cp": "Put"},
        "side": "Buy",
        "ratio": 2,
    }
    bodies = [product([leg, {"legID": "L2"}]), product([]), product(None), product([leg, {"x": 1}])]
    result = decode(BatchDecoder("ProductDefinitionV2"), bodies)
    rows = read_back(result.batch, tmp_path / "legs.parquet")
    first = rows[0]["Legs"][0]
    assert (first["legID"], first["side"], first["ratio"]) == ("L1", "Buy", 2)
    assert (first["secKey_tk"], first["secKey_dt"]) == ("SPX", date(2025, 6, 20))
    assert (first["secKey_xx"], first["secKey_cp"]) == (5000.5, "Put")
    assert rows[0]["Legs"][1]["legID"] == "L2" and rows[0]["Legs"][1]["secKey_tk"] is None
    assert rows[1]["Legs"] == [] and rows[2]["Legs"] is None
    assert rows[0]["secKey_tk"] == "SPX" and rows[0]["secType"] == "Option"
    # An unknown member in an item: the row is stored and the whole array is kept in _extra.
    assert rows[3]["Legs"][0]["legID"] == "L1" and rows[3]["Legs"][1]["legID"] is None
    assert json.loads(rows[3]["_extra"]) == {"message": {"Legs": [leg, {"x": 1}]}}
    assert result.drift.unknown_fields == {"message.Legs[].x"}


def test_unknown_enum_values_are_stored_and_reported() -> None:
    result = decode(BatchDecoder("OptionNbboQuote"), [CLEAN, nbbo_body(updateType="Brand")])
    assert result.batch.column("updateType").to_pylist() == ["PrcChange", "Brand"]
    assert result.drift.unknown_enum_values == {("updateType", "Brand")}


def test_empty_batch_and_argument_checks() -> None:
    decoder = BatchDecoder("OptionNbboQuote")
    result = decode(decoder, [])
    assert result.batch.num_rows == 0 and result.batch.schema == decoder.schema
    with pytest.raises(ValueError, match="recv_ns"):
        decoder.decode(
            [CLEAN],
            type_numbers=[1],
            recv_ns=[],
            snapshot=[False],
            seq=[1],
            stripe="A",
            session="s",
        )


def test_drift_report_merge() -> None:
    a = DriftReport(frozenset({"x"}), 1, 2, frozenset({("c", "v")}))
    b = DriftReport(frozenset({"y"}), 3, 4)
    assert a.merged(b) == DriftReport(frozenset({"x", "y"}), 4, 6, frozenset({("c", "v")}))
    assert not DriftReport() and a


def test_batches_of_random_good_and_bad_bodies_lose_nothing() -> None:
    """Every body ends up exactly once, in order, as a row or a rejection, and its row equals
    the row of the same body decoded on its own, whatever the batch around it."""
    variants = [CLEAN] * 12 + [
        nbbo_body(bidSize=1.5),
        nbbo_body(prcFramework="X"),
        nbbo_body(bidExch={"o": 1}),
        nbbo_body(askMask=-1),
        nbbo_body(bidPrice="s"),
        nbbo_body(newNum=2**60),
        nbbo_body(newObj={"a": 1}),
        CLEAN.replace(b'"tk":"AAPL"', b'"tk":"A\xffB"'),
        CLEAN.replace(b',"askPrice"', b',\n"askPrice"'),
        CLEAN.replace(b'"dt":"2025-06-20"', b'"dt":"2025-02-30"'),
        CLEAN.replace(b'"mTyp":"OptionNbboQuote"', b'"mTyp":"X"'),
        CLEAN.replace(b"14:45:09.876720", b"14:45:0x.876720"),
        b" " + CLEAN + b" ",
        b'{"header":5}',
        b'{"a":1}{"b":2}',
        b"[]",
        b"",
    ]
    rng = random.Random(5)
    alone: dict[bytes, dict[str, Any] | None] = {}
    for body in variants:
        result = decode(BatchDecoder("OptionNbboQuote"), [body])
        rows = result.batch.drop_columns(PER_CALL).to_pylist()
        alone[body] = rows[0] if rows else None
    decoder = BatchDecoder("OptionNbboQuote")
    for trial in range(40):
        if trial % 10 == 0:
            decoder = BatchDecoder("OptionNbboQuote")  # fresh, and then learning
        bodies = [rng.choice(variants) for _ in range(rng.choice([1, 3, 8, 40, 300]))]
        result = decode(decoder, bodies)
        seqs = result.batch.column("_seq").to_pylist()
        rejected = [1000 + i for i, _, _ in result.rejected]
        assert sorted(seqs + rejected) == [1000 + i for i in range(len(bodies))]
        assert seqs == sorted(seqs)
        rows = result.batch.drop_columns(PER_CALL).to_pylist()
        for seq, row in zip(seqs, rows, strict=True):
            expected = alone[bodies[seq - 1000]]
            assert expected is not None
            same_nan = {k for k, v in row.items() if isinstance(v, float) and math.isnan(v)}
            assert {k: v for k, v in row.items() if k not in same_nan} == {
                k: v for k, v in expected.items() if k not in same_nan
            }
        assert all(alone[bodies[s - 1000]] is None for s in rejected)
