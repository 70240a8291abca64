"""capture.masking: a secret a server sends back is masked however it is written.

Literal, JSON-escaped (``\\u0041``, ``\\/``, every character escaped), split across two
WebSocket messages, in malformed or unterminated JSON: the bytes that spell it become ``*``,
lengths never change, and everything else stays byte for byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.frames import FrameDecoder, Garbage, encode_frame
from capture.masking import SecretMask

KEY = "k3y/Sec-ret_0123"  # with a slash: JSON may write it "k3y\/Sec..."


def escaped_every_char(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def spellings(key: str) -> list[str]:
    """Ways a JSON string can spell ``key`` (the content between the quotes)."""
    return [
        key,
        key.replace("/", "\\/"),
        escaped_every_char(key),
        escaped_every_char(key).upper().replace("\\U", "\\u"),
        key[:3] + "\\u" + f"{ord(key[3]):04X}" + key[4:],
        "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(key)),
    ]


def unmasked(data: bytes) -> bool:
    """Whether ``data`` still spells the key in some JSON string (escapes resolved)."""
    text = data.decode("utf-8", "replace")
    try:
        return KEY in json.dumps(json.loads(text))[1:-1].replace("\\/", "/") or KEY in text
    except ValueError:
        return KEY in text or KEY in text.encode().decode("unicode_escape", "replace")


@pytest.mark.parametrize("spelled", spellings(KEY))
def test_every_spelling_of_the_key_is_masked_and_lengths_are_kept(spelled: str) -> None:
    mask = SecretMask([KEY])
    body = ('{"header":{"mTyp":"X"},"message":{"note":"bad key ' + spelled + '!","n":1}}').encode()
    masked = mask.body(body)
    assert len(masked) == len(body)
    assert not unmasked(masked)
    parsed = json.loads(masked)  # still valid JSON, every other value untouched
    assert parsed["message"]["n"] == 1 and parsed["message"]["note"].startswith("bad key ")
    assert parsed["message"]["note"].endswith("!")


def test_keys_type_names_and_malformed_bodies_are_masked_too() -> None:
    mask = SecretMask([KEY])
    esc = escaped_every_char(KEY)
    for body in (
        ('{"header":{"mTyp":"' + esc + '"}}').encode(),  # a type name
        ('{"' + esc + '":1}').encode(),  # an object key
        ('{"x":"' + esc).encode(),  # unterminated
        ('{"x":"a\\"' + esc + '"').encode(),  # after an escaped quote
        ('garbage \\q "' + esc + '" \\').encode(),  # not JSON at all
    ):
        masked = mask.body(body)
        assert len(masked) == len(body) and esc.encode() not in masked, masked


def test_what_holds_no_secret_is_returned_as_it_is() -> None:
    mask = SecretMask([KEY])
    for body in (b'{"a":"b"}', b'{"a":"\\u0041\\n\\\\","k":"k3y\\/Sec"}', b"\\", b'"\\'):
        assert mask.body(body) is body
    # Backslashes that close nothing: an escaped quote does not end the string.
    assert mask.body(b'{"a":"\\\\"}') == b'{"a":"\\\\"}'


def test_text_messages_keep_their_utf8_byte_length() -> None:
    key = "clé-sécrète-0123456789"
    mask = SecretMask([key])
    text = '{"d":"' + escaped_every_char(key) + '","é":"ü"}'
    masked = mask.message(text)
    assert isinstance(masked, str) and len(masked.encode()) == len(text.encode())
    assert key not in json.loads(masked)["d"] and json.loads(masked)["é"] == "ü"


def test_short_secrets_are_not_masked() -> None:
    assert SecretMask(["short"]).body(b'{"a":"short"}') == b'{"a":"short"}'


def test_a_key_split_across_two_messages_is_masked_in_the_frame() -> None:
    mask = SecretMask([KEY])
    decoder = FrameDecoder()
    frame = encode_frame(0, b'{"header":{"mTyp":"X"},"message":{"d":"' + KEY.encode() + b'"}}')
    cut = frame.index(KEY.encode()) + 5
    first, second = mask.message(frame[:cut]), mask.message(frame[cut:])
    assert first == frame[:cut] and second == frame[cut:]  # neither message shows the key
    events = decoder.feed_typed(first)
    assert mask.suspect(first, decoder.buffered > 0) is False  # nothing complete yet
    events = decoder.feed_typed(second)
    assert mask.suspect(second, decoder.buffered > 0) is True
    (frame_out,) = mask.frames(events)
    assert not isinstance(frame_out, Garbage)
    mtyp, _, body = frame_out
    assert mtyp is None and KEY.encode() not in body and b"*" * len(KEY) in body


def test_an_escaped_key_cut_by_a_message_boundary_is_masked_in_the_frame() -> None:
    mask = SecretMask([KEY])
    decoder = FrameDecoder()
    esc = escaped_every_char(KEY).encode()
    frame = encode_frame(0, b'{"header":{"mTyp":"X"},"message":{"d":"' + esc + b'"}}')
    cut = frame.index(esc) + 13  # in the middle of an escape
    out = []
    for part in (frame[:cut], frame[cut:]):
        part = mask.message(part)
        events = decoder.feed_typed(part)
        out += mask.frames(events) if mask.suspect(part, decoder.buffered > 0) else events
    (frame_out,) = out
    assert not isinstance(frame_out, Garbage)
    assert not unmasked(frame_out[2]) and esc not in frame_out[2]


def test_ordinary_messages_are_not_checked_frame_by_frame() -> None:
    mask = SecretMask([KEY])
    decoder = FrameDecoder()
    for i in range(3):
        message = encode_frame(0, b'{"header":{"mTyp":"X"},"message":{"n":%d}}' % i)
        decoder.feed_typed(message)
        assert mask.suspect(message, decoder.buffered > 0) is False


def test_hostile_backslash_and_quote_runs_are_scanned_in_one_pass() -> None:
    """Inputs that make a naive string regex quadratic (a million escaped quotes and no
    closing one) are masked, and complete: the scan looks at each byte a bounded number of
    times."""
    mask = SecretMask([KEY])
    for body in (b'"' + b'\\"' * 500_000, b'"\\' * 500_000, b"\\" * 1_000_000 + b'"'):
        assert mask.body(body) is body
    esc = escaped_every_char(KEY).encode()
    big = b'"' + b'\\"' * 200_000 + esc
    assert esc not in mask.body(big)


@given(st.text(max_size=40), st.text(max_size=40), st.integers(0, 5))
def test_any_string_around_an_escaped_key_keeps_its_other_characters(
    before: str, after: str, mode: int
) -> None:
    spelled = spellings(KEY)[mode]
    body = (
        '{"a":' + json.dumps(before)[:-1] + spelled + json.dumps(after)[1:] + ',"z":1}'
    ).encode()
    masked = SecretMask([KEY]).body(body)
    assert len(masked) == len(body)
    value = json.loads(masked)["a"]
    assert KEY not in value and json.loads(masked)["z"] == 1
    assert value.startswith(before) or KEY[:1] in before  # the key may start inside "before"
