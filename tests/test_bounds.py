"""Input bounds (capture.bounds): pure tests on bytes and names."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.bounds import Limits, RemoteProtocolError, check_body, check_type_name
from capture.protocol import ControlParseError, parse_control

LIMITS = Limits()


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return b'{"zz":' + opener * (depth - 1) + closer * (depth - 1) + b"}"


def test_nesting_up_to_the_bound_passes_and_one_more_level_is_refused() -> None:
    check_body(nested(64), LIMITS)
    with pytest.raises(RemoteProtocolError, match=r"deeper than limits.max_depth \(64\)"):
        check_body(nested(65), LIMITS)
    objects = b'{"a":' * 64 + b"1" + b"}" * 64
    check_body(objects, LIMITS)
    with pytest.raises(RemoteProtocolError):
        check_body(b'{"a":' + objects + b"}", LIMITS)


@pytest.mark.parametrize(
    "body",
    [
        nested(20_000),  # segfaulted pyarrow's JSON reader
        nested(600),  # RecursionError in the _extra renderer
        b'{"zz":' + b"[1," * 300_000,  # truncated: never closed
        b'{"zz":' + b"[[]," * 200_000,  # siblings at every level
        b'{"a":[{"b":[{"c":' * 30 + b"1" + b"}]" * 60 + b"}",
    ],
)
def test_deep_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        check_body(body, LIMITS)


@pytest.mark.parametrize(
    "body",
    [
        b'{"text":"' + b"[" * 5000 + b'"}',  # brackets inside a string do not nest
        b'{"a":"\\"' + b"{" * 5000 + b'\\\\"}',  # nor after escaped quotes and backslashes
        b"[]" * 400_000,  # wide, not deep
        b'{"legs":[' + b",".join(b'{"a":{"b":1},"c":"[x]"}' for _ in range(2000)) + b"]}",
        b"[{]}" * 1000,  # not JSON, but not deep either
    ],
)
def test_wide_or_bracket_rich_bodies_pass(body: bytes) -> None:
    check_body(body, LIMITS)


def test_member_count_and_size_are_bounded() -> None:
    many = b"{" + b",".join(b'"k%d":1' % i for i in range(10_001)) + b"}"
    with pytest.raises(RemoteProtocolError, match=r"10001 members, over limits.max_fields"):
        check_body(many, LIMITS)
    check_body(b'{"t":"' + b"::::" * 100_000 + b'"}', LIMITS)  # colons in a string
    small = Limits(max_frame_bytes=1024)
    check_body(b"{" + b" " * 1022 + b"}", small)
    with pytest.raises(RemoteProtocolError, match=r"1025 bytes is over limits\.max_frame_bytes"):
        check_body(b"{" + b" " * 1023 + b"}", small)


@settings(max_examples=300, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(alphabet="[]{}\"\\:,ab"),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids),
        max_leaves=40,
    )
)
def test_the_scan_agrees_with_the_real_depth_of_any_json(value: object) -> None:
    body = json.dumps({"v": value}).encode()
    limits = Limits(max_depth=8)

    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    if depth({"v": value}) > 8:
        with pytest.raises(RemoteProtocolError):
            check_body(body, limits)
    else:
        check_body(body, limits)


@pytest.mark.parametrize(
    "name",
    [
        "../../etc", "Opt/../../x", "..", ".", "Option\x00Nbbo", "O" * 129, "capture_events",
        "Capture_Events", "_quarantine", "_journal", "a\\b", "date=2025-01-01", "x y", "",
        "Opt\u2215x", "\u0130stanbul", "x\n", "x.", "x..", ".x", "-x", "Option\u200b",
        "\uff2fption",
    ],
)
def test_type_names_that_cannot_be_a_table_of_their_own_are_refused(name: str) -> None:
    with pytest.raises(RemoteProtocolError, match="message type"):
        check_type_name(name, LIMITS)


@pytest.mark.parametrize("name", ["OptionNbboQuote", "O" * 128, "NewType2", "a.b", "x-y+z"])
def test_ordinary_type_names_pass(name: str) -> None:
    check_type_name(name, LIMITS)


@pytest.mark.parametrize("seq", ['"--5"', '"\u00b2"', '"9' + "9" * 40 + '"', str(2**80), '"1e3"'])
def test_odd_numbers_in_a_control_frame_are_absent_values_not_exceptions(seq: str) -> None:
    body = b'{"header":{"mTyp":"MLinkHeartbeat"},"message":{"seqNum":%s}}' % seq.encode()
    hb = parse_control("MLinkHeartbeat", body)
    assert hb == type(hb)(seq_num=None, timestamp=None)


def test_every_bad_control_body_raises_the_one_documented_type() -> None:
    for body in [b"{", b"[]", b"\xff", nested(5000), b'"x"']:
        with pytest.raises(RemoteProtocolError) as err:
            parse_control("MLinkStreamCheckPt", body)
        assert isinstance(err.value, ControlParseError)
    ck = parse_control(
        "MLinkStreamCheckPt",
        b'{"message":{"highwaterTs":%d,"numMessagesSent":-%d,"detail":"%s"}}'
        % (2**70, 2**64, b"d" * 5000),
    )
    assert ck.highwater_ts is None and ck.num_messages_sent is None  # beyond int64
    assert ck.detail is not None and ck.detail.endswith("(3000 more characters)")


_json_bytes = st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b"1", b"a"])


@settings(max_examples=400)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(_json_bytes, max_size=400).map(b"".join),
    ),
    st.sampled_from(["MLinkAdmin", "MLinkStreamAck", "MLinkStreamCheckPt", "MLinkHeartbeat",
                     "MLinkDataAck", "MLinkCount"]),
)  # fmt: skip
def test_any_bytes_give_a_verdict_or_the_one_documented_exception(
    body: bytes, mtyp: str
) -> None:
    """Whatever a server puts in a body: the scan passes it or raises RemoteProtocolError, and
    a control parse of what passes returns a value or raises ControlParseError (a subclass)."""
    try:
        check_body(body, LIMITS)
    except RemoteProtocolError:
        return
    try:
        parse_control(mtyp, body)
    except ControlParseError:
        pass


@given(st.text(max_size=300))
def test_any_type_name_gives_a_verdict_or_the_one_documented_exception(name: str) -> None:
    try:
        check_type_name(name, LIMITS)
    except RemoteProtocolError:
        return
    assert "/" not in name and "\x00" not in name and name not in (".", "..")
