"""JSONFramed codec: pure, synchronous tests on recorded bytes (PROTOCOL.md §4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.frames import (
    HEADER_LEN,
    Frame,
    FrameDecoder,
    FrameDecoderError,
    Garbage,
    encode_client_frame,
    encode_frame,
    peek_mtyp,
)

MAX_BODY = 999_999
SAMPLES = (Path(__file__).parent / "data" / "samples.jsonf").read_bytes()


def frames_of(events: list[Frame | Garbage]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def decode_all(chunks: list[bytes]) -> list[Frame | Garbage]:
    dec = FrameDecoder()
    out: list[Frame | Garbage] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    out.extend(dec.flush())
    return out


def test_samples_decode_by_length_and_agree_with_the_vendor_split_on_crlf() -> None:
    frames = frames_of(decode_all([SAMPLES]))
    # The vendor examples split on CR LF and strip the 12-character "JMMMMMLLLLLL" prefix.
    vendor = [piece[12:] for piece in SAMPLES.split(b"\r\n") if piece]
    assert [f.body for f in frames] == vendor
    assert len(frames) == 16
    for f in frames:
        assert f.proto == b"J"
        header = json.loads(f.body)["header"]
        assert peek_mtyp(f.body) == header["mTyp"]
    assert [f.type_number for f in frames][:4] == [3345, 3381, 3382, 2785]


def test_text_and_binary_messages_decode_identically() -> None:
    assert decode_all([SAMPLES.decode("ascii")]) == decode_all([SAMPLES])  # type: ignore[list-item]


def test_encode_frame_round_trips_and_matches_the_documented_layout() -> None:
    body = b'{"header":{"mTyp":"MLinkHeartbeat"},"message":{"seqNum":1}}'
    wire = encode_frame(3368, body)
    assert wire[:HEADER_LEN] == b"\r\nJ03368" + b"%06d" % len(body)
    assert frames_of(decode_all([wire])) == [Frame(b"J", 3368, body)]


def test_client_frame_is_what_the_vendor_clients_send() -> None:
    # PROTOCOL.md §4.2: the literal MLinkStream example, an 11-digit length and no type number.
    body = (
        b'{"header":{"mTyp":"MLinkStream","sTim":"2025-06-02 14:45:10.101000",'
        b'"encT":"2025-06-02 14:45:10.101000"},"message":{"queryLabel":"capture-A","queryID":101,'
        b'"activeLatency":1,"msgName":"OptionNbboQuote","stripeFilter":"A"}}'
    )
    assert len(body) == 221
    assert encode_client_frame(body) == b"\r\nJ00000000221" + body
    # ... which a server-side decoder reads as type 00000.
    assert frames_of(decode_all([encode_client_frame(body)])) == [Frame(b"J", 0, body)]


def test_garbage_between_frames_is_skipped_counted_and_kept() -> None:
    frames = frames_of(decode_all([SAMPLES]))
    a, b = encode_frame(3368, frames[0].body), encode_frame(2785, frames[3].body)
    dec = FrameDecoder()
    events = dec.feed(a + b"NOT A FRAME\x00\xff" + b)
    assert frames_of(events) == [
        Frame(b"J", 3368, frames[0].body),
        Frame(b"J", 2785, frames[3].body),
    ]
    garbage = [e for e in events if isinstance(e, Garbage)]
    assert [g.data for g in garbage] == [b"NOT A FRAME\x00\xff"]
    assert dec.garbage_events == 1 and dec.garbage_bytes == len(b"NOT A FRAME\x00\xff")


def test_a_frame_whose_length_overstates_its_body_does_not_swallow_the_next_frames() -> None:
    good = [encode_frame(f.type_number, f.body) for f in frames_of(decode_all([SAMPLES]))]
    broken = bytearray(good[3])
    broken[8:14] = b"%06d" % (len(good[3]) - HEADER_LEN + 500)  # claims 500 bytes too many
    stream = good[2] + bytes(broken) + good[4] + good[5]
    events = decode_all([stream])
    assert [f.body for f in frames_of(events)] == [
        frames_of(decode_all([g]))[0].body for g in (good[2], good[4], good[5])
    ]
    garbage = [e for e in events if isinstance(e, Garbage)]
    assert [g.data for g in garbage] == [bytes(broken)]


def test_a_frame_whose_length_understates_its_body_loses_only_itself() -> None:
    good = [encode_frame(f.type_number, f.body) for f in frames_of(decode_all([SAMPLES]))]
    broken = bytearray(good[3])
    broken[8:14] = b"%06d" % 100
    events = decode_all([good[2] + bytes(broken) + good[4]])
    frames = frames_of(events)
    # The short frame decodes to a 100-byte body (which the JSON layer will quarantine); the rest
    # of its bytes are garbage; the following frame is intact.
    assert len(frames) == 3 and frames[1].body == bytes(broken[HEADER_LEN : HEADER_LEN + 100])
    assert frames[2] == frames_of(decode_all([good[4]]))[0]
    assert b"".join(e.data for e in events if isinstance(e, Garbage)) == bytes(
        broken[HEADER_LEN + 100 :]
    )


def test_stray_crlf_is_tolerated_and_a_truncated_tail_is_reported_at_flush() -> None:
    dec = FrameDecoder()
    assert frames_of(dec.feed(SAMPLES + b"\r\n")) == frames_of(decode_all([SAMPLES]))
    assert dec.flush() == []
    dec = FrameDecoder()
    dec.feed(SAMPLES[:-10])
    tail = dec.flush()
    assert (
        len(tail) == 1 and isinstance(tail[0], Garbage) and tail[0].data.startswith(b"\r\nJ03345")
    )


def test_buffer_is_bounded_and_the_bound_cannot_be_set_below_one_frame() -> None:
    with pytest.raises(FrameDecoderError):
        FrameDecoder(max_buffer=1000)
    dec = FrameDecoder()
    for _ in range(50):  # endless garbage never accumulates
        dec.feed(b"x" * 100_000)
        assert dec.buffered <= 2


def test_peek_mtyp_falls_back_to_none_when_unsure() -> None:
    assert peek_mtyp(b'{"header":{"mTyp":"StockPrint","seqN":1},"message":{}}') == "StockPrint"
    assert peek_mtyp(b'{"message":{}}') is None
    assert peek_mtyp(b'{"header":{"mTyp":"Sto\\u0063k"}}') is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_split_of_a_valid_stream_into_messages_decodes_to_the_same_frames(
    data: st.DataObject,
) -> None:
    stream = SAMPLES
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40)))
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    as_text = data.draw(st.booleans())
    fed: list[bytes] = [c.decode("ascii") if as_text else c for c in chunks]  # type: ignore[misc]
    assert decode_all(fed) == decode_all([stream])


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(
        st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20))),
        min_size=1,
        max_size=8,
    ),
    type_numbers=st.lists(st.integers(min_value=0, max_value=99_999), min_size=8, max_size=8),
    data=st.data(),
)
def test_encode_then_decode_is_identity_under_any_split(
    bodies: list[dict[str, object]], type_numbers: list[int], data: st.DataObject
) -> None:
    encoded = [json.dumps({"header": {"mTyp": "X"}, "message": b}).encode() for b in bodies]
    stream = b"".join(encode_frame(n, b) for n, b in zip(type_numbers, encoded, strict=False))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    events = decode_all(chunks)
    assert events == [Frame(b"J", n, b) for n, b in zip(type_numbers, encoded, strict=False)]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_feed_typed_gives_the_frames_of_feed_with_the_peeked_mtyp(data: st.DataObject) -> None:
    """The capture hot path (``feed_typed``) and ``feed`` cut the same stream the same way:
    garbage, a protobuf frame, a header without the usual prefix, splits anywhere."""
    odd = encode_frame(3368, b'{"message":{"x":12},"header":{"mTyp":"MLinkHeartbeat"}}')
    proto = encode_frame(2785, b"\x0a\x03abc", proto=b"P")
    parts = [SAMPLES, b"NOT A FRAME\xff", odd, proto, SAMPLES]
    # The stream ends inside a frame. A truncated frame anywhere else would, by its declared
    # length, take the next frames as its body (both paths agree on that), and the checks below
    # that the protobuf frame is seen would no longer hold.
    stream = b"".join(data.draw(st.permutations(parts))) + SAMPLES[:200]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    plain, typed = FrameDecoder(), FrameDecoder()
    expected: list[object] = []
    got: list[object] = []
    for chunk in chunks:
        for ev in plain.feed(chunk):
            expected.append(
                (peek_mtyp(ev.body), ev.type_number, ev.body) if isinstance(ev, Frame) else ev
            )
        got.extend(typed.feed_typed(chunk))
    assert got == expected
    assert any(isinstance(e, tuple) and e[0] == "MLinkHeartbeat" for e in got)
    assert any(isinstance(e, tuple) and e[0] is None for e in got)  # the protobuf body
    assert (typed.frames, typed.garbage_bytes) == (plain.frames, plain.garbage_bytes)


def _garbage_bytes(events: list[Frame | Garbage]) -> bytes:
    """Skipped bytes but bare CR and LF, which are tolerated between frames: whether one next
    to garbage is reported with it depends on where a feed ends (before and after linear
    buffering alike)."""
    data = b"".join(e.data for e in events if isinstance(e, Garbage))
    return data.replace(b"\r", b"").replace(b"\n", b"")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_split_of_a_hostile_stream_gives_the_frames_and_garbage_of_one_feed(
    data: st.DataObject,
) -> None:
    """The carry-over buffer keeps its scan position between feeds (linear buffering): that
    must not change what comes out, for truncated frames, lengths pointing past a CR LF,
    protobuf frames holding CR LF, bad header digits and a frame cut at the end."""
    good = [b"\r\nJ" + part for part in SAMPLES.split(b"\r\nJ")[1:6]]
    hostile = [
        good[0][:40],  # truncated: the next frame's CR LF is inside its declared body
        b"\r\nJ00012999999{}",  # declares far more than follows
        b"\r\nJ0001x000002{}",  # non-digit in the header
        encode_frame(2785, b"a\r\nJb\r\n", proto=b"P"),  # CR LF inside a protobuf body
        b"\xff\xfe garbage \r",
    ]
    parts = data.draw(st.lists(st.sampled_from(good + hostile), min_size=1, max_size=12))
    stream = b"".join(parts) + data.draw(st.sampled_from([b"", good[1][:30], b"\r", b"\r\n"]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole, split = decode_all([stream]), decode_all(chunks)
    assert frames_of(split) == frames_of(whole)
    assert _garbage_bytes(split) == _garbage_bytes(whole)


def test_a_large_frame_in_small_pieces_comes_out_once_whole() -> None:
    """A 1 MB frame fed 1 KB at a time (the incremental path: only the new bytes are looked
    at; its cost is measured by bench/bench_reader.py): nothing until the last piece."""
    body = b'{"a":"' + b"x" * (MAX_BODY - 8) + b'"}'
    frame = encode_frame(1, body)
    dec = FrameDecoder()
    for i in range(0, len(frame) - 1024, 1024):
        assert dec.feed(frame[i : i + 1024]) == []
        assert dec.buffered == i + 1024
    assert dec.feed(frame[(len(frame) - 1) // 1024 * 1024 :]) == [Frame(b"J", 1, body)]
    assert dec.buffered == 0


def test_the_buffer_bound_message_names_the_value() -> None:
    with pytest.raises(FrameDecoderError, match=r"got 10$"):
        FrameDecoder(max_buffer=10)
