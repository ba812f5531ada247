"""The session: what a real start-up negotiates, and every rule it enforces."""

from __future__ import annotations

import re

import pytest

from tests.vhostuser.helpers import close_all, is_open, new_fds
from vhostcompat.errors import LocalProtocolError, RemoteProtocolError
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.vhostuser import (
    EMPTY,
    U64,
    BackendRequest,
    Channel,
    DeviceConfig,
    FdState,
    FrontendRequest,
    HeaderFlags,
    LocalMessageError,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    Message,
    Payload,
    RemoteMessageError,
    ReplyAckPolicy,
    Role,
    Session,
    SessionLimits,
    SessionState,
    SingleMemoryRegion,
    VringAddress,
    VringAddressFlags,
    VringArea,
    VringFile,
    VringState,
    make_ack,
    make_reply,
)

F = FrontendRequest
V = VirtioFeature
P = ProtocolFeature

# What DPDK 22.11's testpmd offers (FIELD-NOTES), and a QEMU-like subset it acks.
DPDK_FEATURES = V(0xD7C66E7CB)
DPDK_PROTOCOL = P(0x10CBF)
QEMU_PROTOCOL = DPDK_PROTOCOL & ~P.INBAND_NOTIFICATIONS
ACKED = V.VIRTIO_F_VERSION_1 | V.VIRTIO_NET_F_MRG_RXBUF | V.VHOST_USER_F_PROTOCOL_FEATURES
NEED_REPLY = HeaderFlags.VERSION_1 | HeaderFlags.NEED_REPLY
GIB = 1 << 30


def request(session: Session, code: FrontendRequest, payload: Payload = EMPTY,
            fds: tuple[int, ...] = (), *, reply: Payload | None = None,
            need_reply: bool = False) -> Message:
    """The front-end sends ``code``; the back-end session answers if a reply is owed."""
    message = Message(code, payload, NEED_REPLY if need_reply else HeaderFlags.VERSION_1, fds)
    session.receive(message)
    if session.reply_expected(message):
        session.send(make_ack(message) if reply is None else make_reply(message, reply))
    assert session.awaiting_reply() is None
    return message


def negotiated(limits: SessionLimits | None = None,
               policy: ReplyAckPolicy = ReplyAckPolicy.WHEN_REQUESTED) -> Session:
    """A back-end session after QEMU's start-up sequence against testpmd."""
    session = Session(Role.BACKEND, limits=limits, reply_ack_policy=policy)
    request(session, F.GET_FEATURES, reply=U64(DPDK_FEATURES))
    request(session, F.GET_PROTOCOL_FEATURES, reply=U64(DPDK_PROTOCOL))
    request(session, F.SET_PROTOCOL_FEATURES, U64(QEMU_PROTOCOL))
    request(session, F.GET_QUEUE_NUM, reply=U64(128))
    request(session, F.SET_OWNER)
    request(session, F.GET_FEATURES, reply=U64(DPDK_FEATURES))
    for ring in (0, 1):
        request(session, F.SET_VRING_CALL, VringFile(ring, invalid_fd=True))
        request(session, F.SET_VRING_ERR, VringFile(ring, invalid_fd=True))
    for ring in (0, 1):
        request(session, F.SET_VRING_ENABLE, VringState(ring, 1))
    return session


def start_rings(session: Session, fds: list[int]) -> None:
    """What follows the guest's DRIVER_OK: features, memory, then each ring."""
    request(session, F.SET_FEATURES, U64(ACKED))
    table = MemoryTable((MemoryRegion(0, GIB, 0x7F00_0000_0000, 0),))
    request(session, F.SET_MEM_TABLE, table, (fds[0],), need_reply=True)
    for ring in (0, 1):
        request(session, F.SET_VRING_NUM, VringState(ring, 256))
        request(session, F.SET_VRING_BASE, VringState(ring, 0))
        base = 0x7F00_0000_0000 + ring * 0x10000
        request(session, F.SET_VRING_ADDR, VringAddress(ring, VringAddressFlags(0), base,
                                                        base + 0x2000, base + 0x1000, 0))
        request(session, F.SET_VRING_KICK, VringFile(ring), (fds[1 + 2 * ring],))
        request(session, F.SET_VRING_CALL, VringFile(ring), (fds[2 + 2 * ring],))


def test_qemu_start_up_sequence_is_accepted() -> None:
    session = negotiated()
    assert session.state is SessionState.ACTIVE
    assert session.offered_features == DPDK_FEATURES
    assert session.protocol_features == QEMU_PROTOCOL
    assert session.reply_ack and session.owner and session.queue_num == 128
    assert session.enabled_rings() == (0, 1)
    assert session.started_rings() == ()
    assert session.rings[0].call is FdState.POLLING


def test_vhost_start_and_stop() -> None:
    session = negotiated()
    fds = new_fds(5)
    start_rings(session, fds)
    assert session.acked_features == ACKED
    assert len(session.memory_regions) == 1
    assert session.started_rings() == (0, 1)
    assert session.rings[1].num == 256 and session.rings[1].kick is FdState.FD
    request(session, F.GET_VRING_BASE, VringState(0, 0), reply=VringState(0, 42))
    assert session.started_rings() == (1,)
    assert session.rings[0].base == 42
    close_all(fds)


def refuse(session: Session, message: Message, fragment: str) -> RemoteProtocolError:
    """The session must refuse ``message``, close its fds and stay broken."""
    with pytest.raises(RemoteMessageError, match=re.escape(fragment)) as caught:
        session.receive(message)
    assert not any(is_open(fd) for fd in message.fds)
    assert session.state is SessionState.BROKEN
    later = Message(F.GET_FEATURES)
    with pytest.raises(RemoteProtocolError) as again:
        session.receive(later)
    assert again.value is caught.value
    with pytest.raises(LocalProtocolError, match="broken"):
        session.send(make_reply(later, U64(0)))
    return caught.value


def test_set_features_with_a_feature_never_offered_is_named() -> None:
    session = negotiated()
    unoffered = ACKED | V.VIRTIO_NET_F_HOST_TSO4 | 1 << 45
    error = refuse(session, Message(F.SET_FEATURES, U64(unoffered)), "did not offer")
    assert "VIRTIO_NET_F_HOST_TSO4|bit 45 (offered 0xd7c66e7cb)" in str(error)
    assert str(error).startswith("SET_FEATURES: ")


def test_set_protocol_features_never_offered() -> None:
    session = Session(Role.BACKEND)
    request(session, F.GET_FEATURES, reply=U64(DPDK_FEATURES))
    request(session, F.GET_PROTOCOL_FEATURES, reply=U64(P.MQ | P.REPLY_ACK))
    error = refuse(session, Message(F.SET_PROTOCOL_FEATURES, U64(P.MQ | P.LOG_SHMFD | 1 << 25)),
                   "did not offer")
    assert "LOG_SHMFD|bit 25" in str(error)


def test_inband_notifications_need_backend_req_and_reply_ack() -> None:
    session = Session(Role.BACKEND, offered_features=DPDK_FEATURES,
                      offered_protocol_features=P.INBAND_NOTIFICATIONS | P.BACKEND_REQ)
    refuse(session, Message(F.SET_PROTOCOL_FEATURES, U64(P.INBAND_NOTIFICATIONS)),
           "needs BACKEND_REQ and REPLY_ACK")


@pytest.mark.parametrize("message", [
    Message(F.SET_VRING_NUM, VringState(4, 256)),
    Message(F.SET_VRING_ENABLE, VringState(0x1000, 1)),
    Message(F.SET_VRING_CALL, VringFile(200, invalid_fd=True)),
    Message(F.GET_VRING_BASE, VringState(7, 0)),
], ids=lambda message: message.request.name)
def test_ring_index_out_of_range(message: Message) -> None:
    session = negotiated(SessionLimits(max_rings=4))
    error = refuse(session, message, "out of range")
    assert "at most 4 rings" in str(error)
    assert error.ring == message.payload.ring_index  # type: ignore[attr-defined]


@pytest.mark.parametrize(("num", "fragment"), [
    (0, "out of range"), (1000, "not a power of two"), (2048, "out of range (1 to 1024)")])
def test_ring_size_rules(num: int, fragment: str) -> None:
    session = negotiated(SessionLimits(max_ring_size=1024))
    refuse(session, Message(F.SET_VRING_NUM, VringState(0, num)), fragment)


def test_packed_rings_may_have_any_size() -> None:
    session = Session(Role.BACKEND, offered_features=ACKED | V.VIRTIO_F_RING_PACKED)
    request(session, F.SET_FEATURES, U64(ACKED | V.VIRTIO_F_RING_PACKED))
    request(session, F.SET_VRING_NUM, VringState(0, 1000))
    request(session, F.SET_VRING_BASE, VringState.packed_base(0, 5, True, 5, True))
    assert session.rings[0].num == 1000


def test_split_ring_base_reserved_bits() -> None:
    refuse(negotiated(), Message(F.SET_VRING_BASE, VringState(0, 0x1_0000)), "bits 16-31")


def test_vring_address_alignment_and_flags() -> None:
    address = VringAddress(0, VringAddressFlags(0), 0x1008, 0x3000, 0x2000, 0)
    refuse(negotiated(), Message(F.SET_VRING_ADDR, address), "descriptor ring address 0x1008")
    flagged = VringAddress(0, VringAddressFlags(0x6), 0x1000, 0x3000, 0x2000, 0)
    refuse(negotiated(), Message(F.SET_VRING_ADDR, flagged), "unknown vring address flags")


def mem_table(*regions: MemoryRegion) -> Message:
    return Message(F.SET_MEM_TABLE, MemoryTable(regions), fds=tuple(new_fds(len(regions))))


def test_memory_regions_overlapping_in_guest_space() -> None:
    error = refuse(negotiated(), mem_table(MemoryRegion(0, 2 * GIB, 0x1000_0000, 0),
                                           MemoryRegion(GIB, GIB, 0x9000_0000, 0)), "overlap")
    assert "gpa 0x40000000" in str(error)


@pytest.mark.parametrize(("region", "fragment"), [
    (MemoryRegion(0, 0, 0x1000, 0), "has size 0"),
    (MemoryRegion(0xFFFF_FFFF_FFFF_F000, 0x2000, 0x1000, 0), "guest address"),
    (MemoryRegion(0, 0x2000, 0xFFFF_FFFF_FFFF_F000, 0), "user address"),
    (MemoryRegion(0, 0x2000, 0x1000, 0xFFFF_FFFF_FFFF_F000), "mmap offset"),
])
def test_memory_region_out_of_bounds(region: MemoryRegion, fragment: str) -> None:
    refuse(negotiated(), mem_table(region), fragment)


def test_memory_regions_over_the_limit() -> None:
    session = negotiated(SessionLimits(max_memory_regions=2))
    regions = [MemoryRegion(index * GIB, GIB, 0x1000_0000 * (index + 1), 0) for index in range(3)]
    refuse(session, mem_table(*regions), "3 memory regions (at most 2)")


def test_requests_needing_a_protocol_feature() -> None:
    session = Session(Role.BACKEND)
    request(session, F.GET_FEATURES, reply=U64(DPDK_FEATURES))
    request(session, F.GET_PROTOCOL_FEATURES, reply=U64(DPDK_PROTOCOL))
    request(session, F.SET_PROTOCOL_FEATURES, U64(P.REPLY_ACK))
    refuse(session, Message(F.GET_QUEUE_NUM), "protocol feature MQ is not negotiated")


def test_set_vring_enable_needs_protocol_features_offered() -> None:
    session = Session(Role.BACKEND)
    request(session, F.GET_FEATURES, reply=U64(V.VIRTIO_F_VERSION_1))
    refuse(session, Message(F.SET_VRING_ENABLE, VringState(0, 1)),
           "VHOST_USER_F_PROTOCOL_FEATURES was not offered")


def test_legacy_set_features_enables_every_ring() -> None:
    session = Session(Role.BACKEND)
    request(session, F.GET_FEATURES, reply=U64(V.VIRTIO_F_VERSION_1))
    request(session, F.SET_VRING_NUM, VringState(0, 256))
    request(session, F.SET_FEATURES, U64(V.VIRTIO_F_VERSION_1))
    request(session, F.SET_VRING_NUM, VringState(1, 256))
    assert session.enabled_rings() == (0, 1)


def test_features_may_only_change_log_all_while_running() -> None:
    session = negotiated()
    fds = new_fds(5)
    start_rings(session, fds)
    request(session, F.SET_FEATURES, U64(ACKED | V.VHOST_F_LOG_ALL), need_reply=True)
    assert session.acked_features == ACKED | V.VHOST_F_LOG_ALL
    refuse(session, Message(F.SET_FEATURES, U64(ACKED & ~V.VIRTIO_NET_F_MRG_RXBUF)),
           "changes VIRTIO_NET_F_MRG_RXBUF while rings")
    close_all(fds)


def test_reply_expected_follows_the_table_and_the_policy() -> None:
    strict = negotiated(policy=ReplyAckPolicy.WHEN_NEGOTIATED)
    plain = Message(F.SET_VRING_NUM, VringState(0, 256))
    acked = Message(F.SET_VRING_NUM, VringState(0, 256), NEED_REPLY)
    assert strict.reply_expected(Message(F.GET_FEATURES))
    assert not strict.reply_expected(plain)
    assert strict.reply_expected(acked)  # REPLY_ACK is part of QEMU_PROTOCOL
    log = Message(F.SET_LOG_BASE, LogDescription(0x1000, 0))
    assert strict.reply_expected(log)  # LOG_SHMFD: always answered

    no_reply_ack = Session(Role.BACKEND, reply_ack_policy=ReplyAckPolicy.WHEN_NEGOTIATED)
    assert not no_reply_ack.reply_expected(acked)
    assert not no_reply_ack.reply_expected(log)
    lenient = Session(Role.BACKEND, reply_ack_policy=ReplyAckPolicy.WHEN_REQUESTED)
    assert lenient.reply_expected(acked)


def test_replies_must_answer_the_owed_request() -> None:
    session = Session(Role.FRONTEND)
    refuse(session, make_reply(Message(F.GET_FEATURES), U64(1)), "expects none")
    session = Session(Role.FRONTEND)
    session.send(Message(F.GET_FEATURES))
    assert session.awaiting_reply() is F.GET_FEATURES
    refuse(session, make_reply(Message(F.GET_PROTOCOL_FEATURES), U64(1)),
           "reply to GET_FEATURES is owed")


def test_get_vring_base_reply_must_name_the_ring_asked_for() -> None:
    session = Session(Role.FRONTEND)
    asked = Message(F.GET_VRING_BASE, VringState(1, 0))
    session.send(asked)
    refuse(session, make_reply(asked, VringState(0, 7)), "asked for ring 1")


def test_frontend_learns_the_offer_from_replies() -> None:
    session = Session(Role.FRONTEND)
    get = Message(F.GET_FEATURES)
    session.send(get)
    session.receive(make_reply(get, U64(DPDK_FEATURES)))
    assert session.offered_features == DPDK_FEATURES
    with pytest.raises(LocalMessageError, match="did not offer"):
        session.send(Message(F.SET_FEATURES, U64(V.VIRTIO_NET_F_HOST_TSO6)))
    # A local refusal changes nothing and does not break the session.
    assert session.state is SessionState.ACTIVE
    session.send(Message(F.SET_FEATURES, U64(ACKED)))
    assert session.acked_features == ACKED


def test_messages_in_the_wrong_direction() -> None:
    refuse(Session(Role.FRONTEND), Message(F.GET_FEATURES), "never sends this request")
    backend = Session(Role.BACKEND)
    with pytest.raises(LocalMessageError, match="never sends this request"):
        backend.send(Message(F.SET_OWNER))


def test_add_and_remove_memory_regions() -> None:
    session = Session(Role.BACKEND, offered_features=DPDK_FEATURES,
                      offered_protocol_features=P.CONFIGURE_MEM_SLOTS | P.REPLY_ACK)
    request(session, F.SET_PROTOCOL_FEATURES, U64(P.CONFIGURE_MEM_SLOTS | P.REPLY_ACK))
    request(session, F.GET_MAX_MEM_SLOTS, reply=U64(2))
    low, high = MemoryRegion(0, GIB, 0x1000_0000, 0), MemoryRegion(GIB, GIB, 0x9000_0000, 0)
    fds = new_fds(2)
    request(session, F.ADD_MEM_REG, SingleMemoryRegion(low), (fds[0],), need_reply=True)
    request(session, F.ADD_MEM_REG, SingleMemoryRegion(high), (fds[1],), need_reply=True)
    assert session.memory_regions == (low, high)
    request(session, F.REM_MEM_REG, SingleMemoryRegion(low), need_reply=True)
    assert list(session.memory_regions) == [high]
    refuse(session, Message(F.REM_MEM_REG, SingleMemoryRegion(low)), "no memory region")
    close_all(fds)


def test_memory_slots_full() -> None:
    session = Session(Role.BACKEND, offered_features=DPDK_FEATURES,
                      offered_protocol_features=P.CONFIGURE_MEM_SLOTS,
                      limits=SessionLimits(max_memory_slots=1))
    request(session, F.SET_PROTOCOL_FEATURES, U64(P.CONFIGURE_MEM_SLOTS))
    fds = new_fds(1)
    request(session, F.ADD_MEM_REG, SingleMemoryRegion(MemoryRegion(0, GIB, 0, 0)), (fds[0],))
    extra = SingleMemoryRegion(MemoryRegion(GIB, GIB, GIB, 0))
    refuse(session, Message(F.ADD_MEM_REG, extra, fds=tuple(new_fds(1))), "slots full")
    close_all(fds)


def test_config_space_bounds() -> None:
    session = Session(Role.BACKEND, offered_features=DPDK_FEATURES,
                      offered_protocol_features=P.CONFIG)
    request(session, F.SET_PROTOCOL_FEATURES, U64(P.CONFIG))
    request(session, F.SET_CONFIG, DeviceConfig(0, DeviceConfig.WRITABLE, bytes(6)))
    refuse(session, Message(F.SET_CONFIG, DeviceConfig(250, 0, bytes(8))), "exceeds 256")


def test_backend_channel_needs_backend_req_and_send_fd() -> None:
    session = Session(Role.BACKEND, offered_features=DPDK_FEATURES,
                      offered_protocol_features=DPDK_PROTOCOL)
    request(session, F.SET_PROTOCOL_FEATURES, U64(QEMU_PROTOCOL & ~P.BACKEND_SEND_FD))
    channel_fd = new_fds(1)
    request(session, F.SET_BACKEND_REQ_FD, fds=tuple(channel_fd), need_reply=True)
    close_all(channel_fd)  # accepted: the fd is ours to keep or close
    assert session.backend_channel
    # Our own back-end request on the channel set up above (INBAND is not negotiated).
    with pytest.raises(LocalMessageError, match="INBAND_NOTIFICATIONS"):
        session.send(Message(BackendRequest.VRING_CALL, VringState(0, 0)))
    notifier = Message(BackendRequest.VRING_HOST_NOTIFIER_MSG, VringArea(0, False, 0x1000, 0),
                       HeaderFlags.VERSION_1, (5,))
    with pytest.raises(LocalMessageError, match="BACKEND_SEND_FD"):
        session.send(notifier)
    no_channel = Session(Role.FRONTEND)
    refuse(no_channel, Message(BackendRequest.CONFIG_CHANGE_MSG), "BACKEND_REQ")
    assert session.awaiting_reply(Channel.BACKEND) is None


def test_backend_requests_never_run_the_frontend_rules_of_their_code() -> None:
    """Request codes are per channel: back-end request 2 (CONFIG_CHANGE_MSG) is no
    SET_FEATURES, 4 (VRING_CALL) no RESET_OWNER (IntEnum members of both compare
    equal as ints)."""
    protocol = P.BACKEND_REQ | P.CONFIG | P.REPLY_ACK | P.INBAND_NOTIFICATIONS
    session = Session(Role.FRONTEND, offered_features=DPDK_FEATURES,
                      offered_protocol_features=protocol)
    session.send(Message(F.SET_PROTOCOL_FEATURES, U64(protocol)))
    session.send(Message(F.SET_OWNER))
    session.receive(Message(BackendRequest.CONFIG_CHANGE_MSG))
    session.receive(Message(BackendRequest.VRING_CALL, VringState(0, 0)))
    assert session.owner and session.state is SessionState.ACTIVE


def test_reserved_num_must_be_zero() -> None:
    refuse(negotiated(), Message(F.GET_VRING_BASE, VringState(0, 3)), "reserved num")
