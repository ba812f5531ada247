"""vhost-user messages, the encoder and the decoder (no I/O).

A :class:`Decoder` is fed bytes and the fds that arrived with them (as
``recvmsg`` returns them) and hands out validated :class:`Message` objects;
:func:`encode` turns a message back into bytes plus the fds to send with
them. Nothing here touches a socket, so the same code serves the asyncio
transport, a proxy and the tests.

What the decoder checks before a message leaves it, from the request table
(:mod:`vhostcompat.vhostuser.requests`): header version, the reply bit
against the direction, the request code, the size against the payload type
(before waiting for the payload, so a peer's size never makes us buffer
more than :data:`MAX_PAYLOAD_SIZE`), the payload's own consistency, and the
fd count. A rejected message closes the fds it carried and every fd the
decoder still holds; the decoder is then latched broken and refuses input.

Fds follow SCM_RIGHTS semantics on a stream socket: the kernel delivers fds
with the first byte of the ``sendmsg`` that carried them and a ``recvmsg``
never returns data past such a boundary, so fds fed with a chunk belong to
the last message whose header starts in that chunk.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from vhostcompat.errors import LocalProtocolError, RemoteProtocolError
from vhostcompat.vhostuser.errors import LocalMessageError, PayloadError, RemoteMessageError
from vhostcompat.vhostuser.payloads import EMPTY, MAX_PAYLOAD_SIZE, U64, Payload
from vhostcompat.vhostuser.requests import (
    BACKEND_SPECS,
    FRONTEND_SPECS,
    HEADER_SIZE,
    MAX_FDS,
    VERSION_MASK,
    BackendRequest,
    Channel,
    FdKind,
    FrontendRequest,
    HeaderFlags,
    PayloadRule,
    Request,
    RequestSpec,
    Role,
    spec_for,
)

_HEADER = struct.Struct("=III")
_new = object.__new__
_set = object.__setattr__
_log = logging.getLogger(__name__)
# Plain ints for the per-message flag tests: an IntFlag operation runs
# Python code (and builds a new member) where an int one is a C call, and a
# relayed message has its flags looked at a dozen times.
_REPLY = int(HeaderFlags.REPLY)
_NEED_REPLY = int(HeaderFlags.NEED_REPLY)
_VERSION_1 = int(HeaderFlags.VERSION_1)
_int_and = int.__and__
# The (few) flag words seen, as members: HeaderFlags(raw) is costly too.
_FLAGS: dict[int, HeaderFlags] = {}
# Who sends a request or its reply, by request type and reply bit.
SENDERS = {(FrontendRequest, False): Role.FRONTEND, (FrontendRequest, True): Role.BACKEND,
            (BackendRequest, False): Role.BACKEND, (BackendRequest, True): Role.FRONTEND}


def sender_of(request: Request, reply: bool) -> Role:
    """Who sends ``request`` (``reply=False``) or its reply: the channel's requester,
    or its peer."""
    return SENDERS[type(request), reply]


def header_flags(raw: int) -> HeaderFlags:
    """``HeaderFlags(raw)``, from a cache (a peer may send at most 2**32 words: bounded
    below by keeping only the first few)."""
    flags = _FLAGS.get(raw)
    if flags is None:
        flags = HeaderFlags(raw)
        if len(_FLAGS) < 64:
            _FLAGS[raw] = flags
    return flags


@dataclass(frozen=True, slots=True)
class Message:
    """One vhost-user message: a request or a reply.

    ``fds`` are owned by whoever holds the message: a decoded message hands
    its fds to the caller, who must close them (or pass them on). Use
    ``dataclasses.replace`` to derive a message with another payload.
    """

    request: Request
    payload: Payload = EMPTY
    flags: HeaderFlags = HeaderFlags.VERSION_1
    fds: tuple[int, ...] = ()

    @property
    def is_reply(self) -> bool:
        return bool(_int_and(self.flags, _REPLY))

    @property
    def need_reply(self) -> bool:
        return bool(_int_and(self.flags, _NEED_REPLY))

    @property
    def channel(self) -> Channel:
        return Channel.FRONTEND if type(self.request) is FrontendRequest else Channel.BACKEND

    @property
    def spec(self) -> RequestSpec:
        return spec_for(self.request)

    @property
    def sender(self) -> Role:
        """Who sends this message: the channel's requester, or its peer for a reply."""
        return sender_of(self.request, bool(_int_and(self.flags, _REPLY)))

    def __str__(self) -> str:
        marks = (" reply" if self.is_reply else "") + (" need_reply" if self.need_reply else "")
        fds = f" fds={list(self.fds)}" if self.fds else ""
        return f"{self.request.name}{marks} {self.payload}{fds}"


def make_reply(request: Message, payload: Payload, fds: Sequence[int] = ()) -> Message:
    """The reply to ``request`` carrying ``payload``."""
    if request.is_reply:
        raise LocalMessageError("cannot reply to a reply", request=request.request)
    return Message(request.request, payload, HeaderFlags.VERSION_1 | HeaderFlags.REPLY,
                   tuple(fds))


def make_ack(request: Message, success: bool = True) -> Message:
    """The REPLY_ACK acknowledgement of ``request``: u64 0 on success, 1 on failure."""
    return make_reply(request, U64(0 if success else 1))


def rules_for(spec: RequestSpec, reply: bool) -> tuple[PayloadRule, ...]:
    """The payload rules a request (``reply=False``) or its reply may follow."""
    return spec.replies if reply else (spec.payload,)


def _check_fds(fds: Sequence[int]) -> tuple[int, ...]:
    checked = tuple(fds)
    for fd in checked:
        if not isinstance(fd, int) or fd < 0:
            raise LocalProtocolError(f"{fd!r} is not a file descriptor number")
    return checked


def encode(message: Message) -> tuple[bytes, tuple[int, ...]]:
    """The bytes of ``message`` and the fds to send with its first byte.

    Checks the payload type, size and fd count against the request table and
    raises :class:`LocalMessageError` for a message the peer would refuse.
    The fds are not closed (the caller still owns them).
    """
    request = message.request
    if not isinstance(request, FrontendRequest | BackendRequest):
        raise LocalMessageError(f"{request!r} is not a request code")
    if _int_and(message.flags, VERSION_MASK) != _VERSION_1:
        raise LocalMessageError(f"header flags {int(message.flags):#x} lack version 1",
                                request=request)
    payload = message.payload
    rules = rules_for(spec_for(request), message.is_reply)
    rule = next((rule for rule in rules if type(payload) is rule.payload), None)
    if rule is None:
        allowed = ", ".join(rule.payload.__name__ for rule in rules)
        kind = "reply" if message.is_reply else "request"
        raise LocalMessageError(
            f"{type(payload).__name__} payload in a {kind} (expected {allowed})",
            request=request)
    fds = _check_fds(message.fds)
    problem = rule.fds.check(payload, len(fds))
    if problem is None and len(fds) > MAX_FDS:
        problem = f"{len(fds)} fds (at most {MAX_FDS} in one message)"
    if problem is not None:
        raise LocalMessageError(problem, request=request)
    body = payload.pack()
    if not rule.payload.SIZE.allows(len(body)):
        raise LocalMessageError(f"payload of {len(body)} bytes "
                                f"(expected {rule.payload.SIZE.describe()})", request=request)
    return _HEADER.pack(request, message.flags, len(body)) + body, fds


def _rule_for_size(rules: tuple[PayloadRule, ...], size: int) -> PayloadRule | None:
    """The first rule whose payload size allows ``size`` (a plain loop: it runs twice for
    every message)."""
    for rule in rules:
        if rule.payload.SIZE.allows(size):
            return rule
    return None


def close_fds(fds: Sequence[int]) -> None:
    """Close fds we own. One already closed means an ownership bug elsewhere: log it."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError as error:
            _log.warning("closing fd %d: %s", fd, error.strerror)


@dataclass(slots=True)
class _FdChunk:
    """Fds that arrived with the stream bytes [start, end)."""

    start: int
    end: int
    fds: list[int]


class _Header(NamedTuple):
    """A header that passed its checks, with the payload rule its size selected."""

    request: Request
    flags: HeaderFlags
    size: int
    rule: PayloadRule


@dataclass(frozen=True, slots=True)
class _Decoding:
    """What the decoder needs of one request code on its channel and direction."""

    spec: RequestSpec
    rules: tuple[PayloadRule, ...]
    # Size -> the first rule that allows it, when every rule has exact sizes
    # (nearly all requests: one dict lookup instead of trying each rule).
    by_size: Mapping[int, PayloadRule] | None

    @classmethod
    def of(cls, spec: RequestSpec, reply: bool) -> _Decoding:
        rules = rules_for(spec, reply)
        if not all(rule.payload.SIZE.exact for rule in rules):
            return cls(spec, rules, None)
        by_size: dict[int, PayloadRule] = {}
        for rule in rules:
            for size in sorted(rule.payload.SIZE.exact):
                by_size.setdefault(size, rule)
        return cls(spec, rules, by_size)

    def rule_for(self, size: int) -> PayloadRule | None:
        if self.by_size is not None:
            return self.by_size.get(size)
        return _rule_for_size(self.rules, size)


# Per channel and direction (replies or not): request code -> its decoding.
_DECODINGS: dict[tuple[Channel, bool], Mapping[int, _Decoding]] = {
    (channel, reply): {code: _Decoding.of(spec, reply) for code, spec in (
        FRONTEND_SPECS if channel is Channel.FRONTEND else BACKEND_SPECS).items()}
    for channel in Channel for reply in (False, True)}

# Headers that passed the checks, by their three words, per channel and
# direction: a peer repeats a few dozen; bounded, whatever it sends.
_MAX_HEADERS = 256
_HEADERS: dict[tuple[Channel, bool], dict[tuple[int, int, int], _Header]] = {
    key: {} for key in _DECODINGS}


class Decoder:
    """Turns a byte stream plus received fds into validated messages.

    ``Decoder(Channel.FRONTEND, sender=Role.FRONTEND)`` decodes the requests a
    front-end sends on the main socket; ``sender=Role.BACKEND`` decodes the
    back-end's replies there (a reply's payload type comes from its request's
    table entry). ``Channel.BACKEND`` is the back-end channel.

    Feed with :meth:`feed`, then call :meth:`next_message` until it returns
    None (more bytes needed), or iterate. Call :meth:`end_of_stream` at EOF:
    a message cut short is an error. :meth:`close` releases held fds.
    """

    def __init__(self, channel: Channel, sender: Role) -> None:
        self.channel = channel
        self.sender = sender
        # Replies flow from the peer of the channel's requester.
        self.replies = sender is not channel.requester
        self._decodings = _DECODINGS[channel, self.replies]
        self._headers = _HEADERS[channel, self.replies]
        self._buffer = bytearray()
        self._offset = 0  # stream position of self._buffer[0]
        self._chunks: deque[_FdChunk] = deque()
        self._header: _Header | None = None
        self._error: RemoteProtocolError | None = None
        self._closed = False
        self.last_wire = b""
        """The bytes (header and payload) of the last message returned."""

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error that latched this decoder broken, if any."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message."""
        return len(self._buffer)

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Add received bytes and the fds that came with them.

        The decoder owns ``fds`` from now on: they go out in a message or get
        closed. A broken or closed decoder closes them and raises.
        """
        checked = _check_fds(fds) if fds else ()
        if self._error is not None:
            close_fds(checked)
            raise self._error
        if self._closed:
            close_fds(checked)
            raise LocalProtocolError("decoder is closed")
        if checked:
            if not data:
                close_fds(checked)
                self._fail(RemoteMessageError("fds received without any byte"))
            end = self._offset + len(self._buffer)
            self._chunks.append(_FdChunk(end, end + len(data), list(checked)))
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, or None when more bytes are needed."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        available = len(buffer)
        header = self._header
        if header is None:
            if available < HEADER_SIZE:
                return None
            # A header seen before passes the same checks: look it up whole.
            header = self._headers.get(_HEADER.unpack_from(buffer)) or self._parse_header()
        request, flags, size, rule = header
        end = HEADER_SIZE + size
        if available < end:
            self._header = header
            return None
        # Most chunks hold exactly one message.
        wire = bytes(buffer) if available == end else bytes(memoryview(buffer)[:end])
        fds = self._claim_fds(self._offset, self._offset + end, request) if self._chunks \
            else ()
        try:
            payload = rule.payload.unpack_body(wire[HEADER_SIZE:])
            problem = rule.fds.check(payload, len(fds)) if fds or \
                rule.fds.kind is not FdKind.NONE else None
        except PayloadError as error:
            close_fds(fds)
            self._fail(RemoteMessageError(str(error), request=request))
        if problem is not None:
            close_fds(fds)
            self._fail(RemoteMessageError(problem, request=request))
        if available == end:
            buffer.clear()
        else:
            del buffer[:end]
        self._offset += end
        self._header = None
        self.last_wire = wire
        # Message(...) without its (generated) constructor: one function fewer
        # per message (see payloads' _new); the fields are the checked ones.
        message = _new(Message)
        _set(message, "request", request)
        _set(message, "payload", payload)
        _set(message, "flags", flags)
        _set(message, "fds", fds)
        return message

    def __iter__(self) -> Iterator[Message]:
        while (message := self.next_message()) is not None:
            yield message

    def end_of_stream(self) -> None:
        """The peer closed the stream: refuse a message cut short."""
        if self._error is not None:
            raise self._error
        if self._buffer or self._chunks:
            what = self._header.request.name if self._header else "a message header"
            self._fail(RemoteMessageError(
                f"connection closed in the middle of {what} ({len(self._buffer)} bytes "
                "buffered)"))

    def close(self) -> None:
        """Close every fd still held; further input is refused."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        while self._chunks:
            close_fds(self._chunks.popleft().fds)
        self._buffer.clear()

    def _fail(self, error: RemoteProtocolError) -> NoReturn:
        self._error = error
        self._release()
        raise error

    def _parse_header(self) -> _Header:
        """Check the buffered header (the first time these three words are seen)."""
        words = _HEADER.unpack_from(self._buffer)
        code, raw_flags, size = words
        if raw_flags & VERSION_MASK != _VERSION_1:
            self._fail(RemoteMessageError(
                f"header version {raw_flags & VERSION_MASK} (flags {raw_flags:#x}), "
                "expected 1"))
        decoding = self._decodings.get(code)
        if decoding is None:
            kind = "front-end" if self.channel is Channel.FRONTEND else "back-end"
            self._fail(RemoteMessageError(f"unknown {kind} request {code}"))
        spec = decoding.spec
        if bool(raw_flags & _REPLY) != self.replies:
            expected = "replies" if self.replies else "requests"
            self._fail(RemoteMessageError(
                f"the {self.sender.value} only sends {expected} on the "
                f"{self.channel.value} socket (flags {raw_flags:#x})", request=spec.request))
        rule = decoding.rule_for(size) if size <= MAX_PAYLOAD_SIZE else None
        if rule is None:
            expected = " or ".join(
                f"{rule.payload.__name__} ({rule.payload.SIZE.describe()})"
                for rule in decoding.rules)
            kind = "reply" if self.replies else "request"
            self._fail(RemoteMessageError(
                f"{kind} payload size {size} does not fit {expected}", request=spec.request))
        header = _Header(spec.request, header_flags(raw_flags), size, rule)
        if len(self._headers) < _MAX_HEADERS:
            self._headers[words] = header
        return header

    def _claim_fds(self, start: int, end: int, request: Request) -> tuple[int, ...]:
        """The fds of the message occupying stream bytes [start, end)."""
        claimed: list[int] = []
        chunks = self._chunks
        while chunks:
            chunk = chunks[0]
            if chunk.start <= start < chunk.end:
                if end < chunk.end:
                    break  # a later header starts in this chunk: the fds are its
                claimed.extend(chunk.fds)
                chunks.popleft()
            elif (start < chunk.start < end and chunk.end <= end) or chunk.end <= start:
                # Fds that came with bytes where no message starts: not how
                # SCM_RIGHTS delivers them from any sender we know.
                close_fds(claimed)
                self._fail(RemoteMessageError(
                    "fds received with bytes that start no message", request=request))
            else:
                break
        if len(claimed) > MAX_FDS:
            close_fds(claimed)
            self._fail(RemoteMessageError(
                f"{len(claimed)} fds (at most {MAX_FDS} in one message)", request=request))
        return tuple(claimed)
