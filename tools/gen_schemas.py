#!/usr/bin/env python3
"""Generate ``capture/schemas/mlink_dictionary.json`` from SpiderRock's ``DataDictionaryMLink.csv``.

Usage::

    python tools/gen_schemas.py PATH/TO/DataDictionaryMLink.csv [-o OUTPUT]

The project commits the generated JSON, not the CSV. The output is deterministic: messages sorted
by name, fields in dictionary order (the order carries Repeater membership), one field per line,
so re-running on the same CSV reproduces the committed file byte for byte and a new dictionary
shows up as a readable diff.

The CSV has no message-type numbers. They come from PROTOCOL.md Appendix A, embedded below as
data. The generator refuses to write anything if the CSV and the table disagree (a type without a
number, a number without a type, an mToken mismatch) or if the CSV breaks one of the structural
rules the runtime relies on (see ``_validate``).

Repeater membership: the CSV is flat. A ``Repeater`` row opens a group and every following row of
the same message belongs to it until the next ``Repeater`` row; in the dictionary, repeaters are
always the last rows of a message (checked against the SDK protobuf files, e.g. AccountRouteConfig:
``ClearingFlip`` 130 owns 193, 187..191 and ``ExchControl`` 157 owns 194, 163). Members are
always numbered above their Repeater (checked) and are never key fields (fNum 10..17 only marks
a key outside Repeaters).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "capture" / "schemas" / "mlink_dictionary.json"
FORMAT_VERSION = 1

CSV_COLUMNS = (
    "Message Name",
    "mToken",
    "Field Number (fNum)",
    "Field Name (name)",
    "Field Type (fType)",
    "Enum Set (eSet)",
    "Field Description (desc)",
    "Data Products",
)

FIELD_TYPES = frozenset(
    {
        "Float", "Double", "Int", "UInt", "Long", "Short", "UShort", "Byte", "Enum", "Flag",
        "String", "Text1", "Text2", "DateTime", "DateKey", "TimeSpan", "TickerKey", "ExpiryKey",
        "OptionKey", "Repeater",
    }
)  # fmt: skip
ENUM_TYPES = frozenset({"Enum", "Flag"})
KEY_FNUMS = range(10, 18)  # fNum 10..17 -> the field lives under message.pkey

# PROTOCOL.md Appendix A ("message-type numbers for all SDK-DD message types"), copied verbatim
# and re-wrapped: "mToken: Name=Number, ...", continuation lines indented.
APPENDIX_A = """
ClientControl: AssetAccountControl=1630, BookControl=1635, CustomControl=1640,
    ExpirationControl=1645, FutureControl=1650, IndustryControl=1655, RiskClassControl=1660,
    SectorControl=1665, SymbolControl=1670, AvailableStockLocates=1725,
    ClientStockLocate=1731, StockLocateRequest=1735, StockLocateResponse=1740,
    StockPoolBorrowRate=1745, AccountRouteConfig=1810, AltHedgeTargetMap=1811,
    TradeHedgePolicyConfig=1812, PositionHedgePolicyConfig=1813, AltHedgePolicyMap=1814,
    AltSymbolMap=1815, PositionHedgeTrigger=1816, HedgePolicyAlgoConfig=1817,
    ClientAccntStrategyMap=1830, ClientAccountConfig=1835, StockThreshold=3065,
    UserDividendOverride=3630, UserRateOverride=3635, GlobalRiskControl=4540,
    MarRiskControl=4550, MarRiskControlTkOverride=4551, SpdrRiskControl=4560,
    SpdrRiskCounter=4660, MarRiskCounter=4670, MarRiskComposite=4675
ClientLive: IndexQuote=2675, SyntheticFutureQuote=2695, SyntheticExpiryQuote=2700,
    OpraPrintType=2750, OptionEOP=2760, OptionOpenAuction=2790,
    OptionOpenAuctionSummary=2795, OptionPrint2=2805, OptionPrintSummary=2825,
    SOQConstituentSymbolMap=2830, SOQStrikeRangeUpdate=2835, StockAuctionSummary=2995,
    StockExchImbalance=3015, StockImbalance=3035, OptionSettlementMark=3150,
    NMSCircuitBreaker=4450, ProductPriceBand=4460, ProductTradingStatus=4465,
    ProductTradingStatusV2=4470, StockRegSHOStatus=4475, MarketHoursConfig=4485,
    RFQQuoteBroadcast=6225
ClientRisk: ClientBeta=1945, AccountRiskRecordV5=4745, CurrencyPositionRecordV5=4750,
    CurrencyTransaction=4755, EquityCorpActionRecordV5=4760, ExpirationRiskRecordV5=4765,
    FuturePositionRecordV5=4775, FutureRiskDetailV5=4780, FutureRiskSummaryV5=4785,
    IndustryRiskRecordV5=4790, OptionCorpActionRecordV5=4795, OptionExAsRecordV5=4800,
    OptionPositionRecordV5=4805, ProductRiskDetailV5=4810, ProductRiskSummaryV5=4815,
    RiskAggGroupStateV5=4820, RiskCubeDetailV5=4825, SodCashRecordV5=4830,
    SodClearingRecordV5=4835, StockPositionRecordV5=4850, SymbolMarginSummaryV5=4855,
    SymbolRiskDetailV5=4860, SymbolRiskSummaryV5=4865, TradeCubeDetailV5=4870
ClientTheo: TheoSurfacePerf=1105, SpdrOptTheoRecord=1950, SpdrTheoExp2PtCurve=1955,
    SpdrTheoExpSurface=1960, OptionTheoVol=5055
ClientTrading: SpdrAwayExecution=1450, SpdrDropExecution=1460, SpdrDropExecutionAck=1465,
    SpdrRiskGroupCancel=1467, SpdrExchRiskDrop=1470, ExternAggGroupReport=2270,
    SpdrRiskExecution=2325, SpdrSweepDetail=2330, SpdrSweepExchDetail=2335,
    ToolCompositeExecution=3480, SpdrAllocationNotice=3695, SpdrAllocationNoticeStatus=3700,
    SpdrAvailExecAllocation=3705, SpdrExecutionAllocation=3710,
    SpdrExecutionAllocationStatus=3715, SpdrOmniOrder=3720, SpdrParentAllocation=3725,
    SpdrParentAllocationStatus=3730, SpdrExchRiskReset=3835, SpdrClientFirmRiskMgmt=3920,
    SpdrExchRiskMgmt=3925, SpdrAccntCancel=3985, SpdrBrokerCancel=3990,
    SpdrMLegBrkrEvent=4025, SpdrMLegBrkrState=4030, SpdrParentBrkrEvent=4065,
    SpdrParentBrkrState=4070, SpdrParentBrokerSummary=4075, SpdrParentCancel=4080,
    SpdrParentExecution=4085, SpdrParentLimit=4090, SpdrParentOrder=4095,
    SpdrParentReport=4100, SpdrReleaseWaitTrigger=4105, SpdrRouteCancel=4110,
    SpdrSecKeyCancel=4115, SpdrStripeTrigger=4135, SpdrUserCancel=4140,
    SpdrParentReviewRequest=4195, SpdrParentReviewResponse=4200, SpdrRiskGroupControl=4570,
    RiskGroupCounter=4655, SpdrHedgePolicyState=5280, AutoHedgeSymbol=5290,
    SpdrAutoHedgeControl=5295, SpdrAutoHedgeState=5300
EqtAnalytics: StockPrintMarkup=3055, StockPrintSet=3060, StockBetaExt=3245,
    TickerAnalytics=3255, StockEarningsCalendar=3620, UserSDivOverride=3640
EqtExchImbalance: StockExchImbalanceV2=3020
EqtMarkData: StockCloseMark=3165, StockOpenMark=3170
EqtMktData: StockBookQuote=3000, StockPrint=3045
EqtSummaryData: StockMinuteBar=1175, StockMarketSummary=3040
EquityDefinition: TickerDefinition=4375, TickerDefinitionExt=4380,
    RegionalUnderlierComposite=4400
FutAnalytics: FuturePrintMarkup=2605, FuturePrintSet=2610
FutMarkData: FutureCloseMark=3120, FutureOpenMark=3125, FutureSettlementMark=3130
FutMktData: FutureBookQuote=2580, FuturePrint=2595
FutProbModel: FuturePrintProbability=4255, FutureQuoteProbability=4260
FutSummaryData: FutureMinuteBar=1160, FutureMarketSummary=2590
FutureDefinition: CCodeDefinition=4335, ProductDefinitionV2=4360
FxMktData: CurrencyConversion=2540
GlobalDefinition: GlobalDividends=3590, GlobalRates=3595
MLinkRest: FieldDesc=3325, MLinkCount=3360, MsgDesc=3415, MsgExpiryKey=3420,
    MsgOptionKey=3430, MsgTickerKey=3435, PostAck=3440, QueryResult=3445,
    AggregateNumeric=3450, AggregateString=3455, AggregateCount=3456, BucketRange=3460,
    UserMetaData=3470, UserApiKey=3476
MLinkWs: MLinkAdmin=3345, MLinkDataAck=3365, MLinkHeartbeat=3368, MLinkLogon=3370,
    MLinkStream=3380, MLinkStreamAck=3381, MLinkStreamCheckPt=3382, MLinkSubscribe=3386,
    MLinkSubscribeAck=3387, MLinkSubscribeCheckPt=3388, MLinkSignalReady=3410
NationsIndex: NationsIndexPrice=7800
OptAnalytics: LiveImpliedQuote=1015, LiveImpliedQuoteDisp=1017, LiveImpliedQuoteAdj=1020,
    OptionRiskFactor=1095, LiveRevConQuote=1125, OptionPrintSet=2815, StockBeta=3240
OptExchAuction: SpdrAuctionState=2525
OptMarkData: OptionCloseMark=3140, OptionOpenMark=3145, OptionOpenInterest=3230
OptMktData: OptionNbboQuote=2785, OptionPrint=2800, OptionFlexEvent=2845
OptProbModel: OptionPrintProbability=4265, OptionQuoteProbability=4270
OptSummaryData: OptionMarketSummary=2780
OptSurface: LiveAtmVol=1010, LiveSurfaceAtm=1030, LiveSurfaceCurve=1035,
    LiveSurfaceFixedGrid=1040, LiveSurfaceFixedTerm=1045, HistoricalVolatilities=3225,
    OptionAtmMinuteBarData=6820
OptionDefinition: OptExpiryDefinition=4355, RootDefinition=4365,
    RegionalOptionComposite=4405, RegionalInstrumentId=4410
RiskCalc: GetOptionPrice=3335, GetOptionVolatility=3340, GetOptionBasket=3485,
    OptionItemDef=3486, OptionItemCalc=3487
SRATS: UserAuctionFilter=1915, UserAuctionTickerFilter=1916, AuctionState=2464,
    AuctionNotice=2465, AuctionNoticeRC=2466, AuctionNoticeSN=2467, AuctionNoticeBX=2468,
    NoticeResponse=2470, NoticeExecReport=2475, NoticeCancel=2480, AuctionPrint=2485,
    AuctionPrintRC=2486, AuctionPrintSN=2487, AuctionPrintBX=2488,
    AutoResponderVegaDir=2495, AutoResponderRC=2496, AutoResponderSN=2497,
    AutoResponderBX=2498, ResponderMarkupVegaDir=2500, ResponderMarkupRC=2501,
    ResponderMarkupSN=2502, ResponderMarkupBX=2503
SRMLinkAnalytics: LiveIVarSwapFixedTerm=1025, LiveSurfacePerf=1055, OptionLookback=1090,
    LiveBasisCurve=1131, LiveExpirySurface=1132, LiveExpiryAtm=1134, StockBorrowRate=1730,
    OptionPrintSetSummary=2820, SyntheticExpiryCloseMark=3175, SyntheticExpiryOpenMark=3180,
    OptionOpenVega=3235, StockDetail=3250, IndustryDefinition=4350, SpanRiskCalculator=5060,
    VolTimeCalculator=5065
SpreadDefinition: SpreadDefinition=4390, SpreadExchDefinition=4395
SpreadExchData: SpreadExchOrder=2915
SpreadMktData: SpreadBookMarkup=2895, SpreadBookQuote=2900, SpreadMarketSummary=2925,
    SpreadPrint=2930, SpreadCloseMark=3155, SpreadOpenMark=3160
StkProbModel: StockPrintProbability=4275, StockQuoteProbability=4280
WSHCorporateEvent: WshFutureQuarters=7600
"""


@dataclass
class _Field:
    name: str
    fnum: int
    ftype: str
    enum_values: tuple[str, ...]
    is_key: bool
    repeater: str | None


@dataclass
class _Message:
    name: str
    token: str
    fields: list[_Field] = field(default_factory=list)


class DictionaryError(ValueError):
    """The CSV (or the embedded number table) breaks an assumption the runtime relies on."""


def parse_appendix(text: str = APPENDIX_A) -> dict[str, tuple[int, str]]:
    """Return ``{message name: (number, mToken)}`` from the embedded Appendix A table."""
    out: dict[str, tuple[int, str]] = {}
    token: str | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        line = raw
        if not raw[0].isspace():
            token, sep, line = raw.partition(":")
            if not sep:
                raise DictionaryError(f"Appendix A: no 'mToken:' prefix in {raw!r}")
        if token is None:
            raise DictionaryError("Appendix A: continuation line before the first mToken")
        for item in filter(None, (part.strip() for part in line.split(","))):
            match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_]*)=(\d+)", item)
            if match is None:
                raise DictionaryError(f"Appendix A: bad entry {item!r}")
            name, number = match.group(1), int(match.group(2))
            if name in out:
                raise DictionaryError(f"Appendix A: {name} listed twice")
            out[name] = (number, token)
    numbers = [number for number, _ in out.values()]
    if len(set(numbers)) != len(numbers):
        raise DictionaryError("Appendix A: a message-type number is used twice")
    return out


def read_dictionary(rows: Iterable[Sequence[str]]) -> list[_Message]:
    """Group CSV rows (header included) into messages and assign Repeater membership."""
    it = iter(rows)
    header = tuple(next(it, ()))
    if header != CSV_COLUMNS:
        raise DictionaryError(f"unexpected CSV header {header!r}")
    messages: dict[str, _Message] = {}
    previous: str | None = None
    repeater: str | None = None
    for lineno, row in enumerate(it, start=2):
        if len(row) != len(CSV_COLUMNS):
            raise DictionaryError(f"line {lineno}: {len(row)} columns, want {len(CSV_COLUMNS)}")
        name, token, fnum_text, fname, ftype, eset = (cell.strip() for cell in row[:6])
        if name != previous:
            if name in messages:
                raise DictionaryError(f"line {lineno}: rows of {name} are not contiguous")
            messages[name] = _Message(name=name, token=token)
            previous, repeater = name, None
        msg = messages[name]
        if token != msg.token:
            raise DictionaryError(f"line {lineno}: {name} has mTokens {msg.token} and {token}")
        if ftype not in FIELD_TYPES:
            raise DictionaryError(f"line {lineno}: unknown field type {ftype!r}")
        if not fnum_text.isdigit():
            raise DictionaryError(f"line {lineno}: bad field number {fnum_text!r}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", fname):
            raise DictionaryError(f"line {lineno}: bad field name {fname!r}")
        enum_values = tuple(v.strip() for v in eset.split(",")) if eset else ()
        if (ftype in ENUM_TYPES) != bool(enum_values):
            raise DictionaryError(f"line {lineno}: {name}.{fname} {ftype} with eSet {eset!r}")
        fnum = int(fnum_text)
        if ftype == "Repeater":
            msg.fields.append(_Field(fname, fnum, ftype, (), False, None))
            repeater = fname
            continue
        msg.fields.append(
            _Field(
                name=fname,
                fnum=fnum,
                ftype=ftype,
                enum_values=enum_values,
                is_key=repeater is None and fnum in KEY_FNUMS,
                repeater=repeater,
            )
        )
    return list(messages.values())


def _validate(messages: list[_Message], numbers: dict[str, tuple[int, str]]) -> None:
    names = {m.name for m in messages}
    if missing := sorted(names - numbers.keys()):
        raise DictionaryError(f"no message-type number for {missing}")
    if extra := sorted(numbers.keys() - names):
        raise DictionaryError(f"Appendix A lists types absent from the CSV: {extra}")
    for msg in messages:
        _, token = numbers[msg.name]
        if token != msg.token:
            raise DictionaryError(f"{msg.name}: mToken {msg.token} in CSV, {token} in Appendix A")
        fnums = [f.fnum for f in msg.fields]
        if len(set(fnums)) != len(fnums):
            raise DictionaryError(f"{msg.name}: duplicate field numbers")
        top = [f.name for f in msg.fields if f.repeater is None]
        if len(set(top)) != len(top):
            raise DictionaryError(f"{msg.name}: duplicate top-level field names")
        groups: dict[str, list[_Field]] = {}
        for f in msg.fields:
            if f.ftype == "Repeater":
                groups[f.name] = []
            elif f.repeater is not None:
                groups[f.repeater].append(f)
        for rep_name, members in groups.items():
            rep_fnum = next(f.fnum for f in msg.fields if f.name == rep_name and f.repeater is None)
            if not members:
                raise DictionaryError(f"{msg.name}.{rep_name}: Repeater without members")
            if any(m.fnum < rep_fnum for m in members):
                raise DictionaryError(f"{msg.name}.{rep_name}: member numbered below its Repeater")
            member_names = [m.name for m in members]
            if len(set(member_names)) != len(member_names):
                raise DictionaryError(f"{msg.name}.{rep_name}: duplicate member names")


def render(messages: list[_Message], numbers: dict[str, tuple[int, str]], csv_sha256: str) -> str:
    """Serialise to the committed JSON text: stable key order, one field per line."""
    source = {
        "file": "DataDictionaryMLink.csv",
        "sha256": csv_sha256,
        "messages": len(messages),
        "fields": sum(len(m.fields) for m in messages),
        "numbers": "PROTOCOL.md Appendix A",
    }
    lines = ["{", f'  "format": {FORMAT_VERSION},', f'  "source": {json.dumps(source)},']
    lines.append('  "messages": {')
    ordered = sorted(messages, key=lambda m: m.name)
    for i, msg in enumerate(ordered):
        head = {"number": numbers[msg.name][0], "token": msg.token}
        lines.append(f"    {json.dumps(msg.name)}: {{")
        lines.append(f"      {json.dumps(head)[1:-1]},")
        lines.append('      "fields": [')
        for j, f in enumerate(msg.fields):
            entry: dict[str, object] = {"name": f.name, "fnum": f.fnum, "type": f.ftype}
            if f.is_key:
                entry["key"] = True
            if f.repeater is not None:
                entry["repeater"] = f.repeater
            if f.enum_values:
                entry["enum"] = list(f.enum_values)
            sep = "," if j < len(msg.fields) - 1 else ""
            lines.append(f"        {json.dumps(entry)}{sep}")
        lines.append("      ]")
        lines.append("    }" + ("," if i < len(ordered) - 1 else ""))
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def generate(csv_bytes: bytes) -> str:
    """CSV file content -> JSON text. Pure function; raises DictionaryError on bad input."""
    text = csv_bytes.decode("utf-8")
    messages = read_dictionary(csv.reader(io.StringIO(text, newline="")))
    numbers = parse_appendix()
    _validate(messages, numbers)
    return render(messages, numbers, hashlib.sha256(csv_bytes).hexdigest())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("csv", type=Path, help="path to DataDictionaryMLink.csv")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    try:
        out = generate(args.csv.read_bytes())
    except DictionaryError as exc:
        print(f"gen_schemas: {exc}", file=sys.stderr)
        return 1
    args.output.write_bytes(out.encode("utf-8"))
    print(f"gen_schemas: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
