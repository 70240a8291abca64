"""Every dictionary type: random valid messages -> JSON as the server writes it -> BatchDecoder ->
Parquet -> read back -> every field equals what was generated."""

from __future__ import annotations

import json
import random
import string
import struct
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_decode import assert_row_matches, decode, read_back

from capture.decode import BatchDecoder
from capture.schemas import FieldDef, MessageDef, registry
from capture.schemas.mapping import INTEGER_RANGES

MESSAGES_PER_TYPE = 6
KEY_PARTS = {
    "TickerKey": ("at", "ts", "tk"),
    "ExpiryKey": ("at", "ts", "tk", "dt"),
    "OptionKey": ("at", "ts", "tk", "dt", "xx", "cp"),
}
TEXT_ALPHABET = string.ascii_letters + string.digits + ' -_.:/"\\\n\t\x01éü中€😀'
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def float32_text_value(x: float) -> float:
    """The float whose shortest repr is the shortest decimal that round-trips through float32,
    i.e. what the server prints for a Float field (e.g. 5.6, not 5.599999904632568)."""
    as_f32: float = struct.unpack("<f", struct.pack("<f", x))[0]
    for digits in range(1, 10):
        value = float(f"{as_f32:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", value))[0] == as_f32:
            return value
    return as_f32


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def number(self) -> float:
        rng = self.rng
        return rng.choice(
            [
                rng.uniform(-1, 1),
                rng.uniform(-1e6, 1e6),
                rng.randint(-1000, 1000),
                10.0 ** rng.randint(-30, 30) * rng.random(),
                0.1,
                4550,
            ]
        )

    def text(self) -> str:
        return "".join(self.rng.choices(TEXT_ALPHABET, k=self.rng.randint(1, 24)))

    def datetime_text(self) -> str:
        micros = self.rng.randint(0, 60 * 365 * 86_400 * 10**6)
        return (EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%d %H:%M:%S.%f")

    def date_text(self) -> str:
        return (date(1990, 1, 1) + timedelta(days=self.rng.randint(0, 20_000))).isoformat()

    def scalar(self, fdef: FieldDef, timespan_as_int: bool) -> Any:
        rng, ftype = self.rng, fdef.ftype
        if ftype in INTEGER_RANGES:
            lo, hi = INTEGER_RANGES[ftype]
            return rng.choice([lo, hi, rng.randint(lo, hi), rng.randint(0, 100)])
        if ftype == "Float":
            return float32_text_value(self.number())
        if ftype == "Double":
            return float(self.number())
        if ftype in ("Enum", "Flag"):
            return rng.choice(fdef.enum_values)
        if ftype in ("String", "Text1", "Text2"):
            return self.text()
        if ftype == "DateTime":
            return self.datetime_text()
        if ftype == "DateKey":
            return self.date_text()
        if ftype == "TimeSpan":  # JSON form unknown: one form per batch, as a server would
            if timespan_as_int:
                return rng.randint(0, 10**15)
            return f"{rng.randint(0, 23):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}.5"
        raise AssertionError(ftype)

    def key(self, ftype: str, complete: bool) -> dict[str, Any]:
        rng = self.rng
        parts = {
            "at": rng.choice(["EQT", "IDX", "FUT", "SYN"]),
            "ts": rng.choice(["NMS", "CBOE", "CME", "SR"]),
            "tk": rng.choice(["AAPL", "SPX", "@CL", "#SPY1234", "BRK.B"]),
            "dt": self.date_text(),
            "xx": rng.choice([200, 197.5, 0.5, 4550, 12.125, 1e-7]),
            "cp": rng.choice(["Call", "Put"]),
        }
        names = KEY_PARTS[ftype]
        keep = names if complete else [p for p in names if rng.random() < 0.8]
        return {p: parts[p] for p in keep}

    def value(self, fdef: FieldDef, complete: bool, timespan_as_int: bool) -> Any:
        if fdef.ftype in KEY_PARTS:
            return self.key(fdef.ftype, complete)
        return self.scalar(fdef, timespan_as_int)

    def fields(
        self, msg: MessageDef, fdefs: tuple[FieldDef, ...], complete: bool, ts_int: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fdef in fdefs:
            if not complete and self.rng.random() < 0.3:
                continue  # omitted (the server leaves out default values)
            if fdef.ftype == "Repeater":
                count = self.rng.randint(1, 3) if complete else self.rng.randint(0, 3)
                members = msg.members(fdef.name)
                out[fdef.name] = [self.fields(msg, members, complete, ts_int) for _ in range(count)]
            else:
                out[fdef.name] = self.value(fdef, complete, ts_int)
        return out

    def body(self, msg: MessageDef, seq: int, complete: bool, ts_int: bool) -> dict[str, Any]:
        header = {
            "mTyp": msg.name,
            "sEnv0": "Saturn",
            "sRlm0": "NMS",
            "sID": self.rng.randint(0, 2**63 - 1),
            "kLen": 0,
            "mLen": 0,
            "seqN": self.rng.choice([seq, 2**63 - 1 - seq]),
            "appN": "MLinkServer.Prod.A.Extern",
            "mn": "SRMOCK-101",
            "sTim": self.datetime_text(),
            "encT": self.datetime_text(),
            "git": "5e0f2c9a71",
        }
        message = self.fields(msg, msg.body_fields, complete, ts_int)
        pkey = self.fields(msg, msg.key_fields, True, ts_int)
        if pkey:
            message = {"pkey": pkey, **message}
        return {"header": header, "message": message}


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("drift", [False, True], ids=["clean", "unknown-field"])
def test_every_type_round_trips(tmp_path: Path, drift: bool) -> None:
    gen = Generator(seed=20250602 + drift)
    assert len(registry()) == 271
    for number, (name, msg) in enumerate(sorted(registry().items())):
        bodies = [
            gen.body(msg, i, complete=i == 0, ts_int=number % 2 == 1)
            for i in range(MESSAGES_PER_TYPE)
        ]
        if drift:  # a field the dictionary does not know, in every other message. One JSON kind
            # per batch (a kind that changes within a batch is the slow path's job), and
            # fractions below 2**53 (a bigger double may be an integer that lost digits: slow).
            kind = number % 4
            for body in bodies[1::2]:
                new = [
                    gen.text(),
                    gen.rng.randint(-(2**63), 2**63 - 1),
                    gen.rng.choice([gen.rng.uniform(-1e9, 1e9), 12, 1e-300]),
                    gen.rng.random() < 0.5,
                ][kind]
                body["message"]["zzDrift"] = new
        decoder = BatchDecoder(name)
        result = decode(decoder, [compact(b) for b in bodies], [msg.number] * len(bodies))
        assert result.rejected == [], name
        assert result.drift.slow_path_rows == 0, name  # valid messages never need the slow path
        assert result.drift.mistyped_values == 0, name
        assert result.drift.unknown_enum_values == frozenset(), name
        assert result.drift.unknown_fields == ({"message.zzDrift"} if drift else set()), name
        rows = read_back(result.batch, tmp_path / f"{name}.parquet")
        assert len(rows) == len(bodies), name
        for i, (row, body) in enumerate(zip(rows, bodies, strict=True)):
            assert row["_type_number"] == msg.number
            assert row["_seq"] == 1000 + i
            extra = body["message"].pop("zzDrift", None)
            if extra is None:
                assert row["_extra"] is None, name
            else:
                assert json.loads(row["_extra"]) == {"message": {"zzDrift": extra}}, name
            try:
                assert_row_matches(row, msg, body)
            except AssertionError as exc:
                raise AssertionError(f"{name} row {i}: {exc}") from exc
