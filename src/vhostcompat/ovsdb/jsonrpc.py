"""JSON-RPC 1.0 framing for OVSDB (RFC 7047 section 4), without I/O.

The server sends JSON objects back to back on the stream, with no delimiter.
:class:`MessageReader` takes bytes as they arrive and returns whole messages;
everything it reads is untrusted:

* a message larger than ``max_bytes`` is refused as soon as it is;
* nesting deeper than ``max_depth`` is refused (an exact count, before the
  JSON parser sees the message, so no ``RecursionError`` either way);
* malformed JSON, NaN/Infinity, or a top-level value that is not an object.

Each refusal raises :class:`FramingError`; the client then closes the
connection (nothing after a bad byte can be trusted to be framed right).

The usual case, one small message, costs one regular-expression pass over
its strings and brackets and one ``json.loads``. Large messages that repeat
byte for byte (the ``get_schema`` answer of every server of one OVS version,
asked with the same id) are parsed once per process: the last few are kept
by content and recognised with one comparison. Messages are therefore shared
and must be treated as read-only.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
CACHE_FROM_BYTES = 4096
CACHE_UP_TO_BYTES = 256 * 1024  # a schema is 17 KB: bound what the cache may hold
CACHE_ENTRIES = 4

# One token per match: a whole (complete) string, a lone quote (a string
# that has not ended yet in this buffer), or a bracket.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|["{}\[\]]', re.DOTALL)
_WHITESPACE = b" \t\r\n"
_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")
_QUOTE = ord('"')


class FramingError(ValueError):
    """The byte stream is not a sequence of acceptable JSON objects."""


def _refuse_constant(name: str) -> Any:
    raise FramingError(f"JSON constant {name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(message: dict[str, Any]) -> bytes:
    return _ENCODER.encode(message).encode()


def encode_json(value: Any) -> bytes:
    """Any JSON value, compact, as :func:`encode` writes it inside a message."""
    return _ENCODER.encode(value).encode()


def _loads(raw: bytes | bytearray) -> Any:
    """JSON of UTF-8 bytes (one decoder for every message: json.loads builds one per call)."""
    return _DECODER.decode(raw.decode("utf-8"))


# Parsed large messages by content, oldest first (see the module docstring).
_CACHE: dict[bytes, dict[str, Any]] = {}


def _remember(raw: bytes, message: dict[str, Any]) -> None:
    _CACHE.pop(raw, None)
    _CACHE[raw] = message
    while len(_CACHE) > CACHE_ENTRIES:
        del _CACHE[next(iter(_CACHE))]


class MessageReader:
    """Splits a byte stream into JSON objects; see the module docstring."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH) -> None:
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the current message already scanned
        self._depth = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Whole messages completed by ``data``, in order; :class:`FramingError` if bad."""
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while True:
            known = self._cached() or self._whole_small_message() if self._depth == 0 else None
            if known is not None:
                messages.append(known)
                if not self._buffer:
                    return messages
                continue
            end = self._scan()
            if end is None:
                if len(self._buffer) > self.max_bytes:
                    raise FramingError(f"message larger than {self.max_bytes} bytes")
                return messages
            if end > self.max_bytes:
                raise FramingError(f"message larger than {self.max_bytes} bytes")
            raw = bytes(self._buffer[:end])
            message = self._parse(raw)
            if CACHE_FROM_BYTES <= end <= CACHE_UP_TO_BYTES:
                _remember(raw, message)
            messages.append(message)
            del self._buffer[:end]
            self._scanned = 0

    def _whole_small_message(self) -> dict[str, Any] | None:
        """The usual case: the buffer is exactly one small object, shallow by count.

        Fewer opening brackets than ``max_depth`` (counted over the raw bytes,
        strings included) bound the depth without a scan; anything else, or
        anything that does not parse in one piece, goes through the scanner.
        """
        buffer = self._buffer
        if (self._depth or len(buffer) >= min(CACHE_FROM_BYTES, self.max_bytes + 1)
                or not buffer.rstrip().endswith(b"}")
                or buffer.count(b"{") + buffer.count(b"[") > self.max_depth):
            return None
        try:
            message = _loads(buffer)
        except (ValueError, FramingError):
            return None  # two messages, an incomplete one, or a bad one: let the scanner say
        if not isinstance(message, dict):
            return None
        buffer.clear()
        return message

    def _cached(self) -> dict[str, Any] | None:
        """A large message seen before, byte for byte, at the start of the buffer."""
        buffer = self._buffer
        if len(buffer) < CACHE_FROM_BYTES:
            return None
        for raw, message in _CACHE.items():
            if buffer[:len(raw)] == raw:
                del buffer[:len(raw)]
                self._scanned = 0
                return message
        return None

    def _scan(self) -> int | None:
        """The end of the first whole message in the buffer, or None if incomplete."""
        buffer = self._buffer
        if self._depth == 0:
            start = self._skip_whitespace()
            if start == len(buffer):
                return None
            if buffer[start] != ord("{"):
                raise FramingError("a message is not a JSON object")
            self._scanned = start
        depth = self._depth
        position = self._scanned
        for match in _TOKEN.finditer(buffer, position):
            first = buffer[match.start()]
            if first == _QUOTE:
                if match.end() - match.start() == 1:
                    # An unterminated string: rescan it when more bytes arrive.
                    self._depth, self._scanned = depth, match.start()
                    return None
                continue
            if first in _OPEN:
                depth += 1
                if depth > self.max_depth:
                    raise FramingError(f"JSON nested deeper than {self.max_depth} levels")
            else:
                depth -= 1
                if depth == 0:
                    self._depth = 0
                    return match.end()
        self._depth, self._scanned = depth, len(buffer)
        return None

    def _skip_whitespace(self) -> int:
        """Drop whitespace between messages; the message now starts at 0."""
        buffer = self._buffer
        index = 0
        while index < len(buffer) and buffer[index] in _WHITESPACE:
            index += 1
        if index:
            del buffer[:index]
        return 0

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            message = _loads(raw)
        except UnicodeDecodeError:
            raise FramingError("a message is not UTF-8") from None
        except json.JSONDecodeError as error:
            raise FramingError(f"malformed JSON ({error.msg} at byte {error.pos})") from None
        if not isinstance(message, dict):
            raise FramingError("a message is not a JSON object")
        return message
