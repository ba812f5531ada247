"""One relay between a fake front-end and a fake back-end, over real sockets and fds."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import mmap
import os
import socket
import struct
from collections.abc import Coroutine
from typing import Any

import pytest

from tests.helpers import open_fd_count, run_bounded
from tests.proxy.fakes import (
    NARROW,
    TESTPMD_PROTOCOL,
    TESTPMD_TSO,
    TSO,
    WAIT,
    F,
    FakeBackend,
    P,
    PeerClosedError,
    eventfd,
    relayed,
)
from vhostcompat.proxy import RELAYABLE_PROTOCOL_FEATURES, RelayOutcome
from vhostcompat.vhostuser import (
    U64,
    BackendRequest,
    FrontendRequest,
    IotlbMessage,
    IotlbPermission,
    IotlbType,
    MemoryRegion,
    MemoryTable,
    Message,
    VringArea,
    VringFile,
    VringState,
    close_fds,
    encode,
    make_ack,
)

pytestmark = pytest.mark.timeout(30)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, 20)


def test_answers_are_the_mode_intersected_with_the_backend() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            features = await link.frontend.value(FrontendRequest.GET_FEATURES)
            protocol = await link.frontend.value(FrontendRequest.GET_PROTOCOL_FEATURES)
            await link.frontend.call(FrontendRequest.SET_PROTOCOL_FEATURES, U64(protocol))
            queues = await link.frontend.value(FrontendRequest.GET_QUEUE_NUM)
        assert features == int(TESTPMD_TSO) & int(NARROW.virtio_features)
        assert not features & int(TSO)
        assert NARROW.protocol_features is not None
        assert protocol == int(TESTPMD_PROTOCOL) & int(NARROW.protocol_features)
        assert queues == 2  # min(back-end 128, max_queue_pairs 2)
        # The back-end was asked exactly once each.
        assert [seen.request for seen in link.backend.received] == [
            FrontendRequest.GET_FEATURES, FrontendRequest.GET_PROTOCOL_FEATURES,
            FrontendRequest.SET_PROTOCOL_FEATURES, FrontendRequest.GET_QUEUE_NUM]

    run(scenario())


def test_a_fewer_queue_backend_is_not_raised_to_the_profile() -> None:
    async def scenario() -> None:
        async with relayed(backend=FakeBackend(queue_num=1)) as link:
            await link.frontend.value(FrontendRequest.GET_FEATURES)
            protocol = await link.frontend.value(FrontendRequest.GET_PROTOCOL_FEATURES)
            await link.frontend.call(FrontendRequest.SET_PROTOCOL_FEATURES, U64(protocol))
            assert await link.frontend.value(FrontendRequest.GET_QUEUE_NUM) == 1

    run(scenario())


def test_set_features_within_the_offer_reaches_the_backend() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            offered = await link.frontend.handshake()
            await link.frontend.start_ring(0)
            await link.frontend.start_ring(1)
            await link.frontend.sync()
            sent = link.backend.requests(FrontendRequest.SET_FEATURES)
            assert [seen.payload for seen in sent] == [U64(int(offered))]
            negotiated = link.relay.frontend_session
            assert negotiated.acked_features == offered
            assert negotiated.started_rings() == (0, 1)
            # The kick and call eventfds crossed with their messages.
            kicks = link.backend.requests(FrontendRequest.SET_VRING_KICK)
            assert [seen.fd_count for seen in kicks] == [1, 1]

    run(scenario())


@pytest.mark.parametrize("extra", [F.VIRTIO_NET_F_HOST_TSO4, F.VIRTIO_RING_F_INDIRECT_DESC,
                                   F(1 << 44)], ids=["tso4", "indirect", "unknown-bit"])
def test_set_features_outside_the_offer_is_refused_and_never_forwarded(
        extra: F, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with relayed() as link:
            offered = F(await link.frontend.value(FrontendRequest.GET_FEATURES))
            link.frontend.session.offered_features = offered | extra  # a lying front-end
            await link.frontend.call(FrontendRequest.SET_FEATURES, U64(int(offered | extra)))
            result = await link.result()
            await link.frontend.wait_closed()
            assert result.outcome is RelayOutcome.REFUSED
            assert link.backend.requests(FrontendRequest.SET_FEATURES) == []
            await asyncio.wait_for(link.backend.closed.wait(), WAIT)
        name = {F.VIRTIO_NET_F_HOST_TSO4: "VIRTIO_NET_F_HOST_TSO4 (bit 11)",
                F.VIRTIO_RING_F_INDIRECT_DESC: "VIRTIO_RING_F_INDIRECT_DESC (bit 28)"}.get(
                    extra, "bit 44")
        assert name in result.detail and "test.narrow" in result.detail
        refusals = [record for record in caplog.records if record.levelno == logging.ERROR]
        assert any(name in record.getMessage() for record in refusals)

    run(scenario())


def test_set_vring_num_above_the_profile_limit_is_refused_naming_it() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            await link.frontend.handshake()
            await link.frontend.call(FrontendRequest.SET_VRING_NUM, VringState(0, 256))
            await link.frontend.call(FrontendRequest.SET_VRING_NUM, VringState(1, 512))
            result = await link.result()
        assert result.outcome is RelayOutcome.REFUSED
        assert "ring size 512 exceeds max_ring_size 256 of mode test.narrow" in result.detail
        sizes = [seen.payload for seen in link.backend.requests(FrontendRequest.SET_VRING_NUM)]
        assert sizes == [VringState(0, 256)]

    run(scenario())


def test_a_ring_beyond_the_profile_queue_pairs_is_refused() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            await link.frontend.handshake()
            await link.frontend.start_ring(3)  # queue pair 1: allowed (2 pairs)
            await link.frontend.call(FrontendRequest.SET_VRING_NUM, VringState(4, 256))
            result = await link.result()
        assert result.outcome is RelayOutcome.REFUSED
        assert "ring 4 is beyond max_queue_pairs 2" in result.detail

    run(scenario())


def test_frontend_closing_after_a_lowered_queue_count_is_a_refusal_naming_the_limit() -> None:
    """QEMU with queues=4 against an answer of 2 closes at once: say which limit."""
    async def scenario() -> None:
        async with relayed() as link:
            await link.frontend.value(FrontendRequest.GET_FEATURES)
            protocol = await link.frontend.value(FrontendRequest.GET_PROTOCOL_FEATURES)
            await link.frontend.call(FrontendRequest.SET_PROTOCOL_FEATURES, U64(protocol))
            assert await link.frontend.value(FrontendRequest.GET_QUEUE_NUM) == 2
            # What QEMU 7.2 does before its second queue pair's init gives up.
            await link.frontend.call(FrontendRequest.SET_OWNER)
            await link.frontend.value(FrontendRequest.GET_FEATURES)
            call = eventfd()
            try:
                await link.frontend.call(FrontendRequest.SET_VRING_CALL, VringFile(0),
                                         fds=[call])
            finally:
                os.close(call)
            link.frontend.close()
            result = await link.result()
        assert result.outcome is RelayOutcome.REFUSED
        assert "max_queue_pairs 2 of mode test.narrow" in result.detail
        assert "back-end offers 128" in result.detail

    run(scenario())


def test_frontend_closing_after_its_features_is_an_ordinary_close() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            await link.frontend.handshake()  # GET_QUEUE_NUM answered 2 of 128, then SET_FEATURES
            link.frontend.close()
            result = await link.result()
        assert result.outcome is RelayOutcome.FRONTEND_CLOSED

    run(scenario())


def test_fds_pass_through_intact() -> None:
    """Guest memory and eventfds reach the back-end as the very same files."""
    async def scenario() -> None:
        backend = FakeBackend(keep_fds=[FrontendRequest.SET_MEM_TABLE,
                                        FrontendRequest.SET_VRING_CALL])
        async with relayed(backend=backend) as link:
            await link.frontend.handshake()
            memory = os.memfd_create("guest", os.MFD_CLOEXEC)
            call = eventfd()
            try:
                os.ftruncate(memory, 0x10_0000)
                os.pwrite(memory, b"guest memory", 0x100)
                await link.frontend.set_mem_table([memory])
                await link.frontend.call(FrontendRequest.SET_VRING_NUM, VringState(0, 256))
                await link.frontend.call(FrontendRequest.SET_VRING_CALL, VringFile(0),
                                         fds=[call])
                await link.frontend.sync()
                (_, (memory_copy,)), (_, (call_copy,)) = backend.kept
                try:
                    with mmap.mmap(memory_copy, 0x10_0000) as mapped:
                        assert mapped[0x100:0x10C] == b"guest memory"
                    os.eventfd_write(call_copy, 7)  # the back-end signals the guest
                    assert os.eventfd_read(call) == 7
                finally:
                    os.close(memory_copy)
                    os.close(call_copy)
            finally:
                os.close(memory)
                os.close(call)

    run(scenario())


def test_backend_channel_is_relayed_with_its_fds() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            await link.frontend.handshake()
            await link.frontend.open_backend_channel()
            assert link.backend.channel is not None
            frontend_channel = link.frontend.channel
            assert frontend_channel is not None

            async def answer_on_channel() -> Message | None:
                request = await frontend_channel.recv_message()
                assert request is not None
                link.frontend.session.receive(request)
                close_fds(request.fds)
                ack = make_ack(request)
                link.frontend.session.send(ack)
                await frontend_channel.send_message(ack)
                return request

            answering = asyncio.create_task(answer_on_channel())
            iotlb = IotlbMessage(0x1000, 0x1000, 0x7F00_0000_1000, IotlbPermission.READ_WRITE,
                                 IotlbType.MISS)
            reply = await link.backend.channel_call(BackendRequest.IOTLB_MSG, iotlb,
                                                    need_reply=True)
            seen = await answering
            assert seen is not None and seen.payload == iotlb
            assert reply is not None and reply.payload == U64(0)

    run(scenario())


@pytest.mark.parametrize("send_fd", [True, False], ids=["backend-send-fd", "no-send-fd"])
def test_fds_on_the_backend_channel_need_backend_send_fd(send_fd: bool) -> None:
    """A host notifier's fd crosses the back-end channel only when BACKEND_SEND_FD is on."""
    async def scenario() -> None:
        assert NARROW.protocol_features is not None
        profile = dataclasses.replace(
            NARROW, protocol_features=NARROW.protocol_features | P.HOST_NOTIFIER)
        protocol = TESTPMD_PROTOCOL if send_fd else TESTPMD_PROTOCOL & ~P.BACKEND_SEND_FD
        async with relayed(profile, FakeBackend(protocol_features=protocol)) as link:
            await link.frontend.handshake()
            await link.frontend.open_backend_channel()
            assert link.backend.channel is not None and link.frontend.channel is not None
            notifier = os.memfd_create("notifier", os.MFD_CLOEXEC)
            try:
                os.pwrite(notifier, b"doorbell", 0)
                # Raw bytes: the fake's own session would refuse the no-send-fd case.
                data, _ = encode(Message(BackendRequest.VRING_HOST_NOTIFIER_MSG,
                                         VringArea(0, False, 0x1000, 0), fds=(notifier,)))
                await link.backend.channel.connection.send(data, [notifier])
                if send_fd:
                    request = await asyncio.wait_for(link.frontend.channel.recv_message(), WAIT)
                    assert request is not None and len(request.fds) == 1
                    try:
                        assert os.pread(request.fds[0], 8, 0) == b"doorbell"
                    finally:
                        close_fds(request.fds)
                else:
                    result = await link.result()
                    assert result.outcome is RelayOutcome.BACKEND_ERROR
                    assert "BACKEND_SEND_FD is not negotiated" in result.detail
            finally:
                os.close(notifier)

    run(scenario())


def test_wrong_fd_count_in_set_mem_table_closes_the_relay_and_its_fds() -> None:
    async def scenario() -> None:
        before = open_fd_count()
        async with relayed() as link:
            await link.frontend.handshake()
            regions = (MemoryRegion(0, 0x1000, 0x7F00_0000_0000, 0),
                       MemoryRegion(0x1000, 0x1000, 0x7F00_0000_1000, 0))
            fds = [os.memfd_create("region", os.MFD_CLOEXEC) for _ in regions]
            try:
                data, _ = encode(Message(FrontendRequest.SET_MEM_TABLE, MemoryTable(regions),
                                         fds=tuple(fds)))
                await link.frontend.link.connection.send(data, fds[:1])  # one fd short
                result = await link.result()
                await link.frontend.wait_closed()
            finally:
                for fd in fds:
                    os.close(fd)
        assert result.outcome is RelayOutcome.FRONTEND_ERROR
        assert "SET_MEM_TABLE" in result.detail and "1 fds received, 2 expected" in result.detail
        assert link.backend.requests(FrontendRequest.SET_MEM_TABLE) == []
        assert open_fd_count() == before

    run(scenario())


@pytest.mark.parametrize("garbage", [
    struct.pack("=III", 99, 1, 0),                   # unknown request
    struct.pack("=III", 1, 0x2, 0),                  # wrong version
    struct.pack("=III", 2, 1, 4) + b"\0" * 4,        # SET_FEATURES with 4 bytes
    struct.pack("=III", 8, 1, 1 << 20),              # a huge size
], ids=["unknown-request", "bad-version", "short-payload", "huge-size"])
def test_garbage_from_the_frontend_ends_only_this_relay(garbage: bytes) -> None:
    async def scenario() -> None:
        async with relayed() as link:
            await link.frontend.link.connection.send(garbage)
            result = await link.result()
            await link.frontend.wait_closed()
        assert result.outcome is RelayOutcome.FRONTEND_ERROR

    run(scenario())


def test_a_truncated_message_from_the_frontend_is_an_error() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            data, _ = encode(Message(FrontendRequest.SET_FEATURES, U64(1)))
            await link.frontend.link.connection.send(data[:15])
            link.frontend.close()  # EOF in the middle of the message
            result = await link.result()
        assert result.outcome is RelayOutcome.FRONTEND_ERROR
        assert "in the middle of SET_FEATURES" in result.detail

    run(scenario())


@pytest.mark.parametrize("garbage", [
    struct.pack("=III", 1, 0x1, 8) + b"\0" * 8,      # a request where a reply is due
    struct.pack("=III", 1, 0x5, 4) + b"\0" * 4,      # GET_FEATURES reply of 4 bytes
    struct.pack("=III", 17, 0x5, 8) + b"\0" * 8,     # a reply nobody asked for
    struct.pack("=II", 1, 0x5),                      # truncated header, then EOF
], ids=["request", "short-reply", "unexpected-reply", "truncated"])
def test_garbage_from_the_backend_closes_the_frontend(garbage: bytes) -> None:
    async def scenario() -> None:
        backend = FakeBackend(silent=[FrontendRequest.GET_FEATURES])
        async with relayed(backend=backend) as link:
            asking = asyncio.create_task(link.frontend.call(FrontendRequest.GET_FEATURES))
            await asyncio.wait_for(link.backend.arrived.wait(), WAIT)
            assert link.backend.link is not None
            backend_side = link.backend.link.connection
            await backend_side.send(garbage)
            if len(garbage) < 12:
                # EOF in the middle of a header (a clean FIN, not a reset).
                with socket.socket(fileno=os.dup(backend_side.fileno())) as duplicate:
                    duplicate.shutdown(socket.SHUT_WR)
            result = await link.result()
            with pytest.raises(PeerClosedError):
                await asking
        assert result.outcome is RelayOutcome.BACKEND_ERROR

    run(scenario())


def test_a_backend_that_never_answers_times_out_naming_the_request(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        backend = FakeBackend(silent=[FrontendRequest.GET_PROTOCOL_FEATURES])
        async with relayed(backend=backend, reply_timeout=0.3) as link:
            await link.frontend.value(FrontendRequest.GET_FEATURES)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(PeerClosedError):
                await link.frontend.call(FrontendRequest.GET_PROTOCOL_FEATURES)
            waited = loop.time() - started
            result = await link.result()
        assert result.outcome is RelayOutcome.BACKEND_TIMEOUT
        assert 0.25 <= waited < 3
        assert "did not answer GET_PROTOCOL_FEATURES within 0.3 s" in result.detail
        errors = [record.getMessage() for record in caplog.records
                  if record.levelno == logging.ERROR]
        assert any("GET_PROTOCOL_FEATURES" in message for message in errors)

    run(scenario())


def test_the_reply_timer_is_the_oldest_owed_replys_own() -> None:
    """One timer serves every owed reply: when it fires, only a reply due by then
    ends the relay; otherwise it waits for the oldest one still owed."""
    async def scenario() -> None:
        async with relayed(reply_timeout=60) as link:
            await link.frontend.value(FrontendRequest.GET_FEATURES)  # the relay runs
            relay = link.relay
            now = asyncio.get_running_loop().time()
            relay._pending.append((FrontendRequest.GET_FEATURES, now + 60))
            relay._check_replies()  # fired early (an earlier request's due time)
            assert not link.task.done() and relay._reply_timer is not None
            relay._pending.appendleft((FrontendRequest.GET_QUEUE_NUM, now - 1))
            relay._check_replies()
            result = await link.result()
        assert result.outcome is RelayOutcome.BACKEND_TIMEOUT
        assert "did not answer GET_QUEUE_NUM within 60 s" in result.detail

    run(scenario())


def test_frontend_disconnect_closes_the_backend_cleanly() -> None:
    async def scenario() -> None:
        async with relayed() as link:
            await link.frontend.handshake()
            link.frontend.close()
            result = await link.result()
            await asyncio.wait_for(link.backend.closed.wait(), WAIT)
        assert result.outcome is RelayOutcome.FRONTEND_CLOSED

    run(scenario())


def test_relayable_protocol_features_leave_out_xen_mmap() -> None:
    assert P.XEN_MMAP not in RELAYABLE_PROTOCOL_FEATURES
    assert P.BACKEND_REQ | P.LOG_SHMFD | P.REPLY_ACK in RELAYABLE_PROTOCOL_FEATURES
