"""Admin message values: requests as the vendor examples send them, replies as the server does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capture import protocol
from capture.frames import Frame, FrameDecoder

SAMPLES = (Path(__file__).parent / "data" / "samples.jsonf").read_bytes()


def control_frames() -> list[tuple[str, protocol.Control]]:
    out = []
    for ev in FrameDecoder().feed(SAMPLES):
        assert isinstance(ev, Frame)
        mtyp = json.loads(ev.body)["header"]["mTyp"]
        if mtyp in protocol.CONTROL_TYPES:
            out.append((mtyp, protocol.parse_control(mtyp, ev.body)))
    return out


def test_sample_control_messages_parse_to_what_the_client_acts_on() -> None:
    parsed = control_frames()
    kinds = [type(c).__name__ for _, c in parsed]
    assert kinds == [
        "Admin",
        "StreamAck",
        "CheckPt",
        "CheckPt",
        "CheckPt",
        "Heartbeat",
        "StreamAck",
        "Admin",
    ]
    admin = parsed[0][1]
    assert isinstance(admin, protocol.Admin)
    assert admin.verdict is protocol.AdminVerdict.LOGGED_ON
    ack = parsed[1][1]
    assert isinstance(ack, protocol.StreamAck) and ack.ok and ack.msg_name == "OptionNbboQuote"
    states = [c.state for _, c in parsed if isinstance(c, protocol.CheckPt)]
    assert states == ["Begin", "Active", "Complete"]
    active = parsed[3][1]
    assert isinstance(active, protocol.CheckPt) and active.num_messages_sent == 2
    refused = parsed[6][1]
    assert isinstance(refused, protocol.StreamAck)
    assert not refused.ok and refused.result == "UnkwnMsgType" and refused.detail
    failed = parsed[7][1]
    assert isinstance(failed, protocol.Admin)
    assert failed.verdict is protocol.AdminVerdict.AUTH_FAILED


def test_admin_states_from_every_source_map_to_one_client_rule() -> None:
    def verdict(state: str) -> protocol.AdminVerdict:
        return protocol.Admin(state, None).verdict

    assert verdict("LoggedOn") is protocol.AdminVerdict.LOGGED_ON
    assert verdict("WaitingLogon") is protocol.AdminVerdict.SEND_LOGON
    assert verdict("WaitingForLogon") is protocol.AdminVerdict.SEND_LOGON
    assert verdict("GoodNight") is protocol.AdminVerdict.GOOD_NIGHT
    for bad in ("LogonFailed", "AuthError", "OtherError", "AccountSuspended", "None"):
        assert verdict(bad) is protocol.AdminVerdict.AUTH_FAILED


def test_stream_request_is_the_documented_body() -> None:
    req = protocol.StreamRequest("OptionNbboQuote", 101, "A", "capture-A")
    body = json.loads(req.body(1_748_875_510_101_000_000))
    assert body == {
        "header": {
            "mTyp": "MLinkStream",
            "sTim": "2025-06-02 14:45:10.101000",
            "encT": "2025-06-02 14:45:10.101000",
        },
        "message": {
            "queryLabel": "capture-A",
            "queryID": 101,
            "activeLatency": 1,
            "msgName": "OptionNbboQuote",
            "stripeFilter": "A",
        },
    }
    resumed = protocol.StreamRequest("StockPrint", 7, "M", "x", highwater_ts=-1)
    assert json.loads(resumed.body(0))["message"]["highwaterTs"] == -1


def test_header_times_parse_exactly_to_nanoseconds() -> None:
    assert protocol.header_time_ns("2025-06-02 14:45:10.153104") == 1_748_875_510_153_104_000
    assert protocol.header_time_ns("2025-06-02T14:45:10.1") == 1_748_875_510_100_000_000
    assert protocol.header_time_ns("2025-06-02 14:45:10.123456789") == 1_748_875_510_123_456_789
    assert protocol.header_time_ns("garbage") is None


def test_lenient_parsing_of_ill_typed_fields() -> None:
    ack = protocol.parse_control(
        "MLinkStreamAck", b'{"header":{},"message":{"queryID":"12","result":"OK","detail":""}}'
    )
    assert isinstance(ack, protocol.StreamAck) and ack.query_id == 12 and ack.detail is None


def test_type_numbers_are_cross_checked_against_the_dictionary() -> None:
    from capture.batchwrite import number_mismatches

    # 2785 is OptionNbboQuote today; 2745 is its 2023 number (PROTOCOL.md §9.3); clients send 0.
    assert number_mismatches("OptionNbboQuote", [2785, 2785, 0]) == 0
    assert number_mismatches("OptionNbboQuote", [2785, 2745, 2745]) == 2
    assert number_mismatches("NotInTheDictionary", [1, 2]) == 0


@pytest.mark.parametrize(
    "text", ["2025-06-02 14:45:09.²", "2025-06-02 14:45:09.٣", "2025-06-02 14:45:09.1x", ""]
)
def test_a_header_time_with_odd_digits_is_no_time(text: str) -> None:
    assert protocol.header_time_ns(text) is None
