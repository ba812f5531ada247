"""The codec: round trips of every message, fd attachment, and refusals."""

from __future__ import annotations

import dataclasses
import struct
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vhostuser.helpers import (
    CASES,
    PAYLOADS,
    Case,
    close_all,
    fd_count_for,
    is_open,
    new_fds,
    sample_message,
)
from vhostcompat.errors import LocalProtocolError, RemoteProtocolError
from vhostcompat.vhostuser import (
    BACKEND_SPECS,
    FRONTEND_SPECS,
    U64,
    BackendRequest,
    Channel,
    Decoder,
    FrontendRequest,
    HeaderFlags,
    LocalMessageError,
    MemoryRegion,
    MemoryTable,
    Message,
    RemoteMessageError,
    Role,
    VringFile,
    VringState,
    encode,
    make_ack,
    make_reply,
)

little_endian = pytest.mark.skipif(sys.byteorder != "little",
                                   reason="wire bytes pinned for a little-endian host")


def header(request: int, flags: int, size: int) -> bytes:
    return struct.pack("=III", request, flags, size)


@pytest.fixture
def fd_pool() -> Iterator[tuple[int, ...]]:
    """Eight real fds the tests may attach to messages; all must survive valid decoding."""
    fds = tuple(new_fds(8))
    yield fds
    close_all(fds)


def decoder_for(case: Case) -> Decoder:
    return Decoder(case.channel, sender=case.sender)


# -- the table -------------------------------------------------------------------------

def test_table_covers_every_request_code() -> None:
    assert set(FRONTEND_SPECS) == set(FrontendRequest)
    assert set(BACKEND_SPECS) == set(BackendRequest)
    assert [int(code) for code in FrontendRequest] == list(range(1, 44))
    assert [int(code) for code in BackendRequest] == list(range(1, 9))


@little_endian
def test_header_is_pinned() -> None:
    data, fds = encode(Message(FrontendRequest.GET_FEATURES))
    assert data == bytes.fromhex("01000000" "01000000" "00000000")
    assert fds == ()
    reply = make_reply(Message(FrontendRequest.GET_FEATURES), U64(0x4000_0000))
    assert encode(reply)[0] == bytes.fromhex("01000000" "05000000" "08000000" "0000004000000000")
    need = Message(FrontendRequest.SET_VRING_NUM, VringState(0, 256),
                   HeaderFlags.VERSION_1 | HeaderFlags.NEED_REPLY)
    assert encode(need)[0][:12] == bytes.fromhex("08000000" "09000000" "08000000")


# -- round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_message_of_the_table_round_trips(case: Case, fd_pool: tuple[int, ...]) -> None:
    count = fd_count_for(case.rule, sample_message(case).payload)
    message = sample_message(case, fds=fd_pool[:count])
    data, fds = encode(message)
    decoder = decoder_for(case)
    decoder.feed(data, fds)
    decoded = decoder.next_message()
    assert decoded == message
    assert decoder.next_message() is None
    assert encode(decoded)[0] == data
    assert all(is_open(fd) for fd in fd_pool)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Case, Message]:
    case = draw(st.sampled_from(CASES))
    payload = draw(PAYLOADS[case.rule.payload])
    low, high = case.rule.fds.bounds(payload)
    fds = tuple(range(900, 900 + draw(st.integers(low, high))))
    flags = HeaderFlags.VERSION_1 | (HeaderFlags.REPLY if case.reply else 0)
    if draw(st.booleans()):
        flags |= HeaderFlags.NEED_REPLY
    # Unknown flag bits are carried, not dropped: forwarding must stay byte-exact.
    flags |= HeaderFlags(draw(st.sampled_from([0, 0x10, 0x8000_0000])))
    return case, Message(case.request, payload, flags, fds)


@given(messages(), st.data())
def test_any_message_round_trips_in_any_chunking(drawn: tuple[Case, Message],
                                                 data: st.DataObject) -> None:
    case, message = drawn
    wire, fds = encode(message)
    cut = data.draw(st.integers(1, len(wire)))
    decoder = decoder_for(case)
    decoder.feed(wire[:cut], fds)  # fds come with the first byte, as SCM_RIGHTS delivers them
    decoder.feed(wire[cut:])
    decoded = decoder.next_message()
    assert decoded is not None
    assert encode(decoded)[0] == wire
    ambiguous = case.reply and isinstance(message.payload, MemoryTable) and \
        not message.payload.regions  # 8 bytes: read as the u64 ack, same bytes
    if not ambiguous:
        assert decoded == message


def test_byte_by_byte_feeding_of_a_stream(fd_pool: tuple[int, ...]) -> None:
    stream = [
        Message(FrontendRequest.GET_FEATURES),
        Message(FrontendRequest.SET_VRING_CALL, VringFile(0), fds=fd_pool[:1]),
        Message(FrontendRequest.SET_VRING_ENABLE, VringState(0, 1)),
    ]
    decoder = Decoder(Channel.FRONTEND, sender=Role.FRONTEND)
    received: list[Message] = []
    for message in stream:
        data, fds = encode(message)
        decoder.feed(data[:1], fds)
        for byte in data[1:]:
            received.extend(decoder)
            decoder.feed(bytes([byte]))
        received.extend(decoder)
    assert received == stream


def test_proxy_rewrites_a_features_reply_and_keeps_the_rest() -> None:
    request = Message(FrontendRequest.GET_FEATURES)
    reply_bytes, _ = encode(make_reply(request, U64(0x1_7000_0001)))
    decoder = Decoder(Channel.FRONTEND, sender=Role.BACKEND)
    decoder.feed(reply_bytes)
    reply = decoder.next_message()
    assert reply is not None and isinstance(reply.payload, U64)
    rewritten = dataclasses.replace(reply, payload=U64(reply.payload.value & ~0x1000_0000))
    data, _ = encode(rewritten)
    assert data[:12] == reply_bytes[:12]
    assert U64.unpack(data[12:]).value == 0x1_6000_0001


def test_ack_and_reply_helpers() -> None:
    request = Message(FrontendRequest.SET_MEM_TABLE, MemoryTable(()),
                      HeaderFlags.VERSION_1 | HeaderFlags.NEED_REPLY)
    ack = make_ack(request, success=False)
    assert ack.is_reply and not ack.need_reply
    assert ack.payload == U64(1)
    assert ack.sender is Role.BACKEND
    with pytest.raises(LocalMessageError):
        make_reply(ack, U64(0))


# -- fds -------------------------------------------------------------------------------

def test_fds_attach_to_the_last_message_starting_in_their_chunk() -> None:
    fds = new_fds(1)
    first, _ = encode(Message(FrontendRequest.SET_VRING_NUM, VringState(0, 256)))
    second, _ = encode(Message(FrontendRequest.SET_VRING_KICK, VringFile(0), fds=tuple(fds)))
    decoder = Decoder(Channel.FRONTEND, sender=Role.FRONTEND)
    # The tail of the first message and all of the second arrive in one recvmsg.
    decoder.feed(first[:5])
    decoder.feed(first[5:] + second, fds)
    messages = list(decoder)
    assert [message.fds for message in messages] == [(), tuple(fds)]
    close_all(fds)


def test_memory_table_takes_one_fd_per_region() -> None:
    fds = new_fds(2)
    regions = (MemoryRegion(0, 0x1000, 0x10000, 0), MemoryRegion(0x1000, 0x1000, 0x20000, 0))
    data, _ = encode(Message(FrontendRequest.SET_MEM_TABLE, MemoryTable(regions),
                             fds=tuple(fds)))
    decoder = Decoder(Channel.FRONTEND, sender=Role.FRONTEND)
    decoder.feed(data, fds)
    message = decoder.next_message()
    assert message is not None and message.fds == tuple(fds)
    close_all(fds)


def test_close_releases_fds_of_a_message_not_yet_complete() -> None:
    fds = new_fds(1)
    data, _ = encode(Message(FrontendRequest.SET_VRING_CALL, VringFile(0), fds=tuple(fds)))
    decoder = Decoder(Channel.FRONTEND, sender=Role.FRONTEND)
    decoder.feed(data[:4], fds)
    assert decoder.next_message() is None
    decoder.close()
    assert not is_open(fds[0])
    extra = new_fds(1)
    with pytest.raises(LocalProtocolError, match="closed"):
        decoder.feed(b"x", extra)
    assert not is_open(extra[0])


# -- refusals --------------------------------------------------------------------------

def refused(decoder: Decoder, data: bytes, fds: list[int] | None = None,
            eof: bool = False) -> RemoteProtocolError:
    """Feed ``data``; the decoder must refuse it and close every fd given."""
    given_fds = list(fds or [])
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.feed(data, given_fds)
        list(decoder)
        if eof:
            decoder.end_of_stream()
    assert not any(is_open(fd) for fd in given_fds), "a refused message leaked its fds"
    error = caught.value
    # Latched: the same error again, and new fds are closed too.
    late = new_fds(1)
    with pytest.raises(RemoteProtocolError) as again:
        decoder.feed(b"\x00", late)
    assert again.value is error
    assert not is_open(late[0])
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()
    return error


def frontend_decoder() -> Decoder:
    return Decoder(Channel.FRONTEND, sender=Role.FRONTEND)


def test_truncated_header_at_end_of_stream() -> None:
    error = refused(frontend_decoder(), header(1, 1, 0)[:7], eof=True)
    assert "closed in the middle of a message header" in str(error)


def test_truncated_payload_at_end_of_stream() -> None:
    error = refused(frontend_decoder(), header(8, 1, 8) + b"\x00\x00", eof=True)
    assert "middle of SET_VRING_NUM" in str(error)


def test_size_larger_than_the_payload_type() -> None:
    error = refused(frontend_decoder(), header(8, 1, 16) + bytes(16))
    assert str(error) == ("SET_VRING_NUM: request payload size 16 does not fit "
                          "VringState (8 bytes)")


def test_huge_size_is_refused_before_any_payload_arrives() -> None:
    decoder = frontend_decoder()
    decoder.feed(header(5, 1, 0xFFFF_FFFF))
    with pytest.raises(RemoteMessageError, match="size 4294967295"):
        decoder.next_message()


def test_unknown_request_is_named() -> None:
    error = refused(frontend_decoder(), header(99, 1, 0))
    assert str(error) == "unknown front-end request 99"
    backend = Decoder(Channel.BACKEND, sender=Role.BACKEND)
    assert str(refused(backend, header(9, 1, 0))) == "unknown back-end request 9"


@pytest.mark.parametrize("flags", [0x0, 0x2, 0x3])
def test_wrong_version_is_refused(flags: int) -> None:
    assert "header version" in str(refused(frontend_decoder(), header(1, flags, 0)))


def test_reply_bit_must_match_the_direction() -> None:
    error = refused(frontend_decoder(), header(1, 0x5, 0))
    assert "only sends requests" in str(error)
    replies = Decoder(Channel.FRONTEND, sender=Role.BACKEND)
    assert "only sends replies" in str(refused(replies, header(1, 0x1, 8) + bytes(8)))


@pytest.mark.parametrize(("payload", "count"), [
    (VringFile(0), 0), (VringFile(0), 2), (VringFile(0, invalid_fd=True), 1)])
def test_wrong_fd_count_closes_the_fds(payload: VringFile, count: int) -> None:
    data = header(FrontendRequest.SET_VRING_CALL, 1, 8) + payload.pack()
    error = refused(frontend_decoder(), data, new_fds(count))
    assert f"{count} fds received" in str(error)
    assert error.request is FrontendRequest.SET_VRING_CALL  # type: ignore[attr-defined]


def test_memory_table_with_fewer_fds_than_regions() -> None:
    table = MemoryTable((MemoryRegion(0, 0x1000, 0, 0), MemoryRegion(0x1000, 0x1000, 0, 0)))
    data = header(FrontendRequest.SET_MEM_TABLE, 1, len(table.pack())) + table.pack()
    assert "1 fds received, 2 expected" in str(refused(frontend_decoder(), data, new_fds(1)))


def test_memory_table_count_disagreeing_with_size() -> None:
    body = struct.pack("=II", 3, 0) + bytes(64)
    error = refused(frontend_decoder(), header(FrontendRequest.SET_MEM_TABLE, 1, len(body)) +
                    body, new_fds(2))
    assert "3 regions is 104 bytes, not 72" in str(error)


def test_reserved_bits_of_a_vring_file_are_refused() -> None:
    data = header(FrontendRequest.SET_VRING_KICK, 1, 8) + struct.pack("=Q", 0x1_0000_0001)
    assert "reserved bits" in str(refused(frontend_decoder(), data, new_fds(1)))


def test_fds_without_bytes_or_without_a_message_start() -> None:
    assert "without any byte" in str(refused(frontend_decoder(), b"", new_fds(1)))
    decoder = frontend_decoder()
    decoder.feed(header(FrontendRequest.SET_VRING_NUM, 1, 8))
    # Fds arriving with payload bytes only: no message starts there.
    assert "start no message" in str(refused(decoder, bytes(8), new_fds(1)))


def test_too_many_fds_for_one_message() -> None:
    data = header(FrontendRequest.SET_VRING_CALL, 1, 8) + VringFile(0).pack()
    assert "at most 8" in str(refused(frontend_decoder(), data, new_fds(9)))


# -- the encoder refuses what a peer would refuse --------------------------------------

@pytest.mark.parametrize(("message", "fragment"), [
    (Message(FrontendRequest.SET_VRING_NUM, U64(1)), "U64 payload in a request"),
    (Message(FrontendRequest.SET_VRING_CALL, VringFile(0)), "0 fds received, 1 expected"),
    (Message(FrontendRequest.GET_FEATURES, flags=HeaderFlags.REPLY), "version 1"),
    (Message(FrontendRequest.GET_FEATURES, U64(1), HeaderFlags.VERSION_1 | HeaderFlags.REPLY,
             fds=(-1,)), "not a file descriptor"),
])
def test_encode_refuses_invalid_messages(message: Message, fragment: str) -> None:
    with pytest.raises(LocalProtocolError, match=fragment):
        encode(message)
