"""The generated dictionary, the registry API and the table layout."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pytest

from capture import events
from capture.schemas import (
    FieldDef,
    MessageDef,
    arrow_schema,
    by_number,
    lookup,
    registry,
)
from capture.schemas.mapping import (
    DICT_STRING,
    TIMESTAMP_US,
    Leaf,
    RepeaterColumn,
    generic_schema,
    layout,
    reserved_names,
    table_schema,
)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "mlink"
CSV_PATH = SHARED / "DataDictionaryMLink.csv"
PROTOCOL_PATH = SHARED / "PROTOCOL.md"
GENERATED = REPO / "capture" / "schemas" / "mlink_dictionary.json"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_schemas", REPO / "tools" / "gen_schemas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


# -- registry contents -------------------------------------------------------------------------


def test_all_271_types_present() -> None:
    reg = registry()
    assert len(reg) == 271
    assert sum(len(m.fields) for m in reg.values()) == 9519
    assert len({m.number for m in reg.values()}) == 271


@pytest.mark.parametrize(
    ("name", "number", "token"),
    [
        ("OptionNbboQuote", 2785, "OptMktData"),
        ("OptionPrint", 2800, "OptMktData"),
        ("StockBookQuote", 3000, "EqtMktData"),
        ("StockPrint", 3045, "EqtMktData"),
        ("LiveImpliedQuote", 1015, "OptAnalytics"),
        ("LiveSurfaceCurve", 1035, "OptSurface"),
        ("MLinkAdmin", 3345, "MLinkWs"),
        ("MLinkHeartbeat", 3368, "MLinkWs"),
        ("MLinkStream", 3380, "MLinkWs"),
        ("MLinkStreamAck", 3381, "MLinkWs"),
        ("MLinkStreamCheckPt", 3382, "MLinkWs"),
        ("QueryResult", 3445, "MLinkRest"),
        ("TickerDefinitionExt", 4380, "EquityDefinition"),
        ("NationsIndexPrice", 7800, "NationsIndex"),
    ],
)
def test_well_known_numbers(name: str, number: int, token: str) -> None:
    msg = registry()[name]
    assert (msg.number, msg.token) == (number, token)
    assert by_number(number) is msg


def test_numbers_match_protocol_appendix_a() -> None:
    """Every number, parsed independently from PROTOCOL.md, equals the generated one."""
    if not PROTOCOL_PATH.exists():
        pytest.skip(f"{PROTOCOL_PATH} not available")
    appendix = PROTOCOL_PATH.read_text(encoding="utf-8").split("## Appendix A", 1)[1]
    table: dict[str, tuple[int, str]] = {}
    for token, cell in re.findall(r"^\| (\w+) \| (.+) \|$", appendix, flags=re.M):
        for name, number in re.findall(r"(\w+)=(\d+)", cell):
            table[name] = (int(number), token)
    assert {n: (m.number, m.token) for n, m in registry().items()} == table


def test_lookup_and_by_number() -> None:
    assert lookup("optionnbboquote") is registry()["OptionNbboQuote"]
    assert lookup("STOCKBOOKQUOTE") is registry()["StockBookQuote"]
    assert lookup("NoSuchMessage") is None
    assert by_number(2745) is None  # the 2023 number of OptionNbboQuote is not current
    assert by_number(99999) is None


def test_key_fields() -> None:
    nbbo = registry()["OptionNbboQuote"]
    assert [(f.name, f.ftype) for f in nbbo.key_fields] == [("okey", "OptionKey")]
    curve = registry()["LiveSurfaceCurve"]
    assert [f.name for f in curve.key_fields] == ["ekey", "surfaceType"]
    assert "ticker" in [f.name for f in curve.body_fields]
    imbalance = registry()["StockExchImbalanceV2"]
    assert [f.name for f in imbalance.key_fields] == [
        "ticker",
        "auctionTime",
        "auctionType",
        "exchange",
    ]
    fixed_term = registry()["LiveSurfaceFixedTerm"]
    syn_spot = next(f for f in fixed_term.fields if f.name == "synSpot")
    assert syn_spot.fnum == 50 and not syn_spot.is_key


def test_enum_values() -> None:
    nbbo = {f.name: f for f in registry()["OptionNbboQuote"].fields}
    assert "PrcChange" in nbbo["updateType"].enum_values
    assert nbbo["bidMktType"].ftype == "Flag"
    assert nbbo["bidMktType"].enum_values[:3] == ("None", "Rotation", "TradingHalted")
    assert nbbo["bidPrice"].enum_values == ()
    admin = {f.name: f for f in registry()["MLinkAdmin"].fields}
    assert {"LoggedOn", "LogonFailed", "GoodNight"} <= set(admin["state"].enum_values)


def test_repeater_membership() -> None:
    sub = registry()["MLinkSubscribe"]
    assert [(f.name, f.fnum) for f in sub.members("Subscribe")] == [
        ("msgName", 136),
        ("msgPKey", 139),
        ("highwaterTs", 140),
    ]
    assert [f.name for f in sub.members("Unsubscribe")] == ["msgName", "msgPKey"]
    assert [f.name for f in sub.members("View")] == ["msgName", "view"]
    assert [f.name for f in sub.body_fields] == [
        "sessionID",
        "subscribeID",
        "activeLatency",
        "compression",
        "doReset",
        "Subscribe",
        "Unsubscribe",
        "View",
    ]
    # Members follow their Repeater even when numbered out of order (AccountRouteConfig).
    route = registry()["AccountRouteConfig"]
    assert [f.fnum for f in route.members("ClearingFlip")] == [193, 187, 188, 189, 190, 191]
    assert [f.name for f in route.members("ExchControl")] == ["exDest", "disable"]
    # Every member belongs to a Repeater of its own message.
    for msg in registry().values():
        repeaters = {f.name for f in msg.fields if f.ftype == "Repeater"}
        assert {f.repeater for f in msg.fields if f.repeater} <= repeaters
        assert not any(f.is_key for f in msg.fields if f.repeater)


# -- generator ---------------------------------------------------------------------------------


def test_generator_reproduces_committed_json() -> None:
    if not CSV_PATH.exists():
        pytest.skip(f"{CSV_PATH} not available")
    generated = _generator().generate(CSV_PATH.read_bytes())
    assert generated.encode("utf-8") == GENERATED.read_bytes()


def test_generator_cli(tmp_path: Path) -> None:
    if not CSV_PATH.exists():
        pytest.skip(f"{CSV_PATH} not available")
    out = tmp_path / "dictionary.json"
    cmd = [sys.executable, str(REPO / "tools" / "gen_schemas.py"), str(CSV_PATH), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_bytes() == GENERATED.read_bytes()


HEADER = (
    "Message Name,mToken,Field Number (fNum),Field Name (name),Field Type (fType),"
    "Enum Set (eSet),Field Description (desc),Data Products\n"
)


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ("MLinkAdmin,MLinkWs,100,state,Enum,,,\n", "eSet"),
        ('MLinkAdmin,MLinkRest,100,state,Enum,"A,B",,\n', "mToken"),
        ("MLinkAdmin,MLinkWs,100,state,Money,,,\n", "unknown field type"),
        (
            "MLinkAdmin,MLinkWs,100,a,Int,,,\nMLinkHeartbeat,MLinkWs,100,b,Int,,,\n"
            "MLinkAdmin,MLinkWs,103,c,Int,,,\n",
            "not contiguous",
        ),
        ("MLinkAdmin,MLinkWs,100,a,Int,,,\nMLinkAdmin,MLinkWs,100,b,Int,,,\n", "duplicate"),
        ("MLinkAdmin,MLinkWs,100,R,Repeater,,,\nMLinkAdmin,MLinkWs,90,a,Int,,,\n", "below"),
    ],
)
def test_generator_rejects_bad_dictionaries(rows: str, error: str) -> None:
    gen = _generator()
    with pytest.raises(gen.DictionaryError, match=error):
        messages = gen.read_dictionary(csv.reader((HEADER + rows).splitlines()))
        numbers = {m.name: gen.parse_appendix()[m.name] for m in messages}
        gen._validate(messages, numbers)


def test_generator_requires_a_number_for_every_type() -> None:
    gen = _generator()
    rows = HEADER + "Brand,New,100,a,Int,,,\n"
    messages = gen.read_dictionary(csv.reader(rows.splitlines()))
    with pytest.raises(gen.DictionaryError, match="no message-type number"):
        gen._validate(messages, gen.parse_appendix())


# -- table layout --------------------------------------------------------------------------------


METADATA = [
    ("_recv_time", TIMESTAMP_US),
    ("_recv_time_ns", pa.int64()),
    ("_stripe", DICT_STRING),
    ("_session", DICT_STRING),
    ("_snapshot", pa.bool_()),
    ("_seq", pa.int64()),
    ("_type_number", pa.int32()),
    ("h_seqN", pa.int64()),
    ("h_sID", pa.int64()),
    ("h_kLen", pa.int32()),
    ("h_mLen", pa.int32()),
    ("h_sTim", TIMESTAMP_US),
    ("h_encT", TIMESTAMP_US),
    ("h_sEnv0", DICT_STRING),
    ("h_sRlm0", DICT_STRING),
    ("h_appN", DICT_STRING),
    ("h_mn", DICT_STRING),
    ("h_git", DICT_STRING),
]


def test_option_nbbo_quote_schema() -> None:
    schema = arrow_schema("OptionNbboQuote")
    fields = [(f.name, f.type) for f in schema]
    assert fields[: len(METADATA)] == METADATA
    assert fields[len(METADATA) : len(METADATA) + 7] == [
        ("okey_at", DICT_STRING),
        ("okey_ts", DICT_STRING),
        ("okey_tk", pa.utf8()),
        ("okey_dt", pa.date32()),
        ("okey_xx", pa.float64()),
        ("okey_cp", DICT_STRING),
        ("updateType", DICT_STRING),
    ]
    types = dict(fields)
    assert types["bidPrice"] == pa.float64()  # Float
    assert types["bidSize"] == pa.int32()  # Int
    assert types["bidMask"] == pa.int64()  # UInt: no unsigned types in any table
    assert types["srcTimestamp"] == pa.int64()  # Long
    assert types["bidMktType"] == DICT_STRING  # Flag
    assert fields[-1] == ("_extra", pa.utf8())
    assert all(f.nullable for f in schema)
    assert schema is arrow_schema("OptionNbboQuote")  # cached


def test_scalar_types_across_dictionary() -> None:
    expected = {
        "Double": pa.float64(),
        "Short": pa.int16(),
        "UShort": pa.int32(),
        "Byte": pa.int16(),
        "UInt": pa.int64(),
        "Text1": pa.utf8(),
        "Text2": pa.utf8(),
        "String": pa.utf8(),
        "DateTime": TIMESTAMP_US,
        "DateKey": pa.date32(),
        "TimeSpan": pa.utf8(),
    }
    seen = set()
    for msg in registry().values():
        for col in layout(msg).columns:
            if isinstance(col, Leaf) and col.ftype in expected and len(col.path) == 1:
                assert col.type == expected[col.ftype], (msg.name, col.column)
                seen.add(col.ftype)
    assert seen == set(expected)


def test_key_typed_body_fields_and_repeaters() -> None:
    names = arrow_schema("LiveSurfaceCurve").names
    assert names[len(METADATA) : len(METADATA) + 8] == [
        "ekey_at",
        "ekey_ts",
        "ekey_tk",
        "ekey_dt",
        "surfaceType",
        "ticker_at",
        "ticker_ts",
        "ticker_tk",
    ]
    schema = arrow_schema("MLinkSubscribe")
    assert schema.field("Subscribe").type == pa.list_(
        pa.struct([("msgName", pa.utf8()), ("msgPKey", pa.utf8()), ("highwaterTs", pa.int64())])
    )
    legs = arrow_schema("ProductDefinitionV2").field("Legs").type.value_type
    assert [f.name for f in legs] == [
        "legID",
        "secKey_at",
        "secKey_ts",
        "secKey_tk",
        "secKey_dt",
        "secKey_xx",
        "secKey_cp",
        "secType",
        "side",
        "ratio",
        "refDelta",
        "refPrc",
    ]
    assert legs.field("secType").type == DICT_STRING


def test_generic_schema() -> None:
    schema = arrow_schema("SomethingNew")
    assert schema == generic_schema()
    assert [(f.name, f.type) for f in schema][: len(METADATA)] == METADATA
    assert schema.names[len(METADATA) :] == ["_mtyp", "message", "_extra"]


def test_column_names_unique_for_every_type() -> None:
    for name in registry():
        folded = [n.casefold() for n in arrow_schema(name).names]
        assert len(folded) == len(set(folded)), name
        # In today's dictionary only the partition key ``date`` is claimed (by a field named
        # ``date``: tests/test_partition_names.py); no other suffix was needed anywhere.
        assert not any("__" in n for n in arrow_schema(name).names if n != "date__2"), name


def test_name_collisions_get_deterministic_suffixes() -> None:
    def fd(name: str, fnum: int, ftype: str, key: bool = False, rep: str | None = None) -> FieldDef:
        return FieldDef(name, fnum, ftype, (), key, rep)

    msg = MessageDef(
        name="Clash",
        number=1,
        token="Test",
        fields=(
            fd("ticker", 10, "TickerKey", key=True),
            fd("ticker_tk", 100, "String"),  # same as the flattened key part
            fd("TICKER_AT", 101, "Int"),  # differs only in case
            fd("_extra", 102, "String"),  # reserved name
            fd("h_seqN", 103, "Long"),  # reserved name
            fd("ticker_tk__2", 104, "String"),  # what the first clash would be renamed to
            fd("Items", 105, "Repeater"),
            fd("key", 106, "TickerKey", rep="Items"),
            fd("key_at", 107, "String", rep="Items"),
        ),
    )
    names = [c.column for c in layout(msg).columns]
    assert names == [
        "ticker_at",
        "ticker_ts",
        "ticker_tk",
        "ticker_tk__2",
        "TICKER_AT__2",
        "_extra__2",
        "h_seqN__2",
        "ticker_tk__2__2",
        "Items",
    ]
    items = layout(msg).columns[-1]
    assert isinstance(items, RepeaterColumn)
    assert [m.column for m in items.members] == [
        "key_at",
        "key_ts",
        "key_tk",
        "key_at__2",
    ]
    # The JSON paths are untouched by renaming.
    by_column = {c.column: c for c in layout(msg).columns if isinstance(c, Leaf)}
    assert by_column["ticker_tk__2"].path == ("ticker_tk",)
    assert by_column["_extra__2"].path == ("_extra",)
    schema = table_schema(msg)
    assert schema.names[-1] == "_extra"
    assert len(set(schema.names)) == len(schema.names)
    assert set(reserved_names()) <= set(schema.names)


def _leaf_types(dtype: pa.DataType) -> list[pa.DataType]:
    if pa.types.is_list(dtype):
        return _leaf_types(dtype.value_type)
    if pa.types.is_struct(dtype):
        return [t for f in dtype for t in _leaf_types(f.type)]
    return [dtype]


def test_no_table_has_types_an_engine_cannot_read_exactly() -> None:
    """Spark refuses TIMESTAMP(NANOS) and Iceberg v2 has neither ns timestamps nor unsigned
    integers: no column of any table (nested members included) may use them."""
    schemas = [arrow_schema(name) for name in registry()] + [generic_schema(), events.SCHEMA]
    for schema in schemas:
        for f in schema:
            for t in _leaf_types(f.type):
                assert not pa.types.is_unsigned_integer(t), (f.name, t)
                assert not (pa.types.is_timestamp(t) and t.unit != "us"), (f.name, t)
                assert not pa.types.is_dictionary(t) or t.value_type == pa.utf8(), (f.name, t)
