"""ovsdb.jsonrpc: framing untrusted bytes into JSON objects, with bounds."""

from __future__ import annotations

import json

import pytest

from vhostcompat.ovsdb.jsonrpc import CACHE_FROM_BYTES, FramingError, MessageReader

MESSAGES = [{"id": 1, "result": [{"rows": []}], "error": None},
            {"id": "echo", "method": "echo", "params": ['{["\\"]}', "x\\"]},
            {"id": None, "method": "update", "params": ["m1", {"T": {"a": {"new": {}}}}]}]


def test_messages_split_at_every_byte_come_out_whole() -> None:
    stream = b" ".join(json.dumps(message).encode() for message in MESSAGES) + b"\n"
    for cut in range(1, len(stream)):
        reader = MessageReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == MESSAGES


def test_byte_by_byte_and_all_at_once_agree() -> None:
    stream = b"".join(json.dumps(message).encode() for message in MESSAGES)
    reader = MessageReader()
    collected = [message for byte in stream for message in reader.feed(bytes([byte]))]
    assert collected == MESSAGES == MessageReader().feed(stream)


@pytest.mark.parametrize(("data", "reason"), [
    (b'{"id": 1, "result": nul}', "malformed JSON"),
    (b'{"id": 1]', "malformed JSON"),
    (b'[1, 2]', "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b'{"id": NaN}', "NaN is not allowed"),
    (b'{"id": "\xff"}', "not UTF-8"),
    (b'{"a":' + b"[" * 65 + b"]" * 65 + b"}", "nested deeper than 64"),
])
def test_bad_input_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(FramingError, match=reason):
        MessageReader().feed(data)


def test_depth_bomb_is_refused_before_parsing_even_when_incomplete() -> None:
    with pytest.raises(FramingError, match="nested deeper"):
        MessageReader().feed(b"{" + b'"a":[' * 100_000)


def test_size_is_bounded_even_when_the_message_never_ends() -> None:
    reader = MessageReader(max_bytes=1000)
    reader.feed(b'{"id": "' + b"x" * 900)
    with pytest.raises(FramingError, match="larger than 1000 bytes"):
        reader.feed(b"x" * 200)
    with pytest.raises(FramingError, match="larger than 1000 bytes"):
        MessageReader(max_bytes=1000).feed(json.dumps({"a": "x" * 2000}).encode())


def test_large_repeated_messages_are_parsed_once_and_equal() -> None:
    big = json.dumps({"id": "schema", "result": {"x": "y" * CACHE_FROM_BYTES},
                      "error": None}).encode()
    first, second = MessageReader().feed(big), MessageReader().feed(big[:10])
    assert second == []
    reader = MessageReader()
    again = reader.feed(big + big)
    assert again == first * 2 and again[0] is first[0]
