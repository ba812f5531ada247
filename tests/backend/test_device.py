"""The net device behind one connection: replies, refusals, the TX sink, fd ownership."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator

import pytest

from tests.backend.helpers import (
    CONFIG,
    OFFER,
    PROTOCOL_OFFER,
    USER_BASE,
    F,
    FakeGuest,
    P,
    RingPlace,
    memfd,
    new_eventfd,
    read_eventfd,
    readable,
    run,
)
from tests.helpers import open_fd_count
from vhostcompat.backend import BackendConfig, NetDevice, UnsupportedRequestError
from vhostcompat.backend.memory import LOG_PAGE_SIZE
from vhostcompat.backend.virtqueue import DescriptorFlags, need_event
from vhostcompat.errors import RemoteProtocolError
from vhostcompat.vhostuser import (
    EMPTY,
    U64,
    FrontendRequest,
    HeaderFlags,
    LogDescription,
    MemoryTable,
    Message,
    Payload,
    RarpMac,
    RemoteMessageError,
    VringFile,
    VringState,
)

R = FrontendRequest
LOG = logging.getLogger("tests.backend.device")
TX = 1  # the TX ring of queue pair 0
# Neither dirty logging nor event indices: every used buffer may notify.
PLAIN_RINGS = OFFER & ~F.VHOST_F_LOG_ALL & ~F.VIRTIO_RING_F_EVENT_IDX


def message(request: R, payload: Payload = EMPTY, fds: tuple[int, ...] = (), *,
            need_reply: bool = False) -> Message:
    flags = HeaderFlags.VERSION_1 | (HeaderFlags.NEED_REPLY if need_reply else 0)
    return Message(request, payload, flags, fds)


def negotiate(device: NetDevice, features: F = OFFER & ~F.VHOST_F_LOG_ALL,
              protocol: P = PROTOCOL_OFFER) -> None:
    """QEMU's opening: protocol features, owner, features."""
    reply = device.handle(message(R.GET_FEATURES))
    assert reply is not None and reply.payload == U64(device.config.features)
    reply = device.handle(message(R.GET_PROTOCOL_FEATURES))
    assert reply is not None and reply.payload == U64(device.config.protocol_features)
    assert device.handle(message(R.SET_PROTOCOL_FEATURES, U64(protocol))) is None
    assert device.handle(message(R.SET_OWNER)) is None
    assert device.handle(message(R.SET_FEATURES, U64(features))) is None


def map_guest(device: NetDevice, guest: FakeGuest) -> None:
    fd = guest.fd_copy()
    table = MemoryTable((guest.region(),))
    reply = device.handle(message(R.SET_MEM_TABLE, table, (fd,), need_reply=True))
    assert reply is not None and reply.payload == U64(0)  # REPLY_ACK success


def start_ring(device: NetDevice, guest: FakeGuest, index: int, place: RingPlace,
               call_fd: int, *, base: int = 0, log: bool = False) -> int:
    """SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE as QEMU sends them; returns the kick fd."""
    device.handle(message(R.SET_VRING_NUM, VringState(index, place.num)))
    device.handle(message(R.SET_VRING_ADDR, guest.address(index, place, log=log)))
    device.handle(message(R.SET_VRING_BASE, VringState(index, base)))
    device.handle(message(R.SET_VRING_CALL, VringFile(index), (os.dup(call_fd),)))
    kick = new_eventfd()
    device.handle(message(R.SET_VRING_KICK, VringFile(index), (os.dup(kick),)))
    device.handle(message(R.SET_VRING_ENABLE, VringState(index, 1)))
    return kick


def kick(fd: int) -> None:
    os.eventfd_write(fd, 1)


@dataclasses.dataclass
class Rig:
    """A negotiated device with guest memory mapped; owns the test's own fds."""

    guest: FakeGuest
    device: NetDevice
    fds: list[int] = dataclasses.field(default_factory=list)

    def start_ring(self, index: int, place: RingPlace, *, base: int = 0,
                   log: bool = False) -> tuple[int, int]:
        """Start ring ``index``; returns (call fd, kick fd), closed with the rig."""
        call = new_eventfd()
        self.fds.append(call)
        kick_fd = start_ring(self.device, self.guest, index, place, call, base=base, log=log)
        self.fds.append(kick_fd)
        return call, kick_fd

    def set_log_base(self) -> int:
        """Give the device a 4 KiB dirty log; returns our fd of it."""
        log_fd = memfd(4096)
        self.fds.append(log_fd)
        self.device.handle(message(R.SET_LOG_BASE, LogDescription(4096, 0),
                                   (os.dup(log_fd),)))
        return log_fd


@contextlib.contextmanager
def rig(features: F = OFFER & ~F.VHOST_F_LOG_ALL,
        config: BackendConfig = CONFIG) -> Iterator[Rig]:
    """QEMU's opening and SET_MEM_TABLE done; everything closed afterwards."""
    guest = FakeGuest()
    device = NetDevice(config, LOG)
    negotiate(device, features)
    map_guest(device, guest)
    test_rig = Rig(guest, device)
    try:
        yield test_rig
    finally:
        device.close()
        for fd in test_rig.fds:
            os.close(fd)
        guest.close()


def test_queries_are_answered_and_acks_follow_the_negotiation() -> None:
    async def scenario() -> None:
        device = NetDevice(CONFIG, LOG)
        # Before REPLY_ACK is negotiated, need_reply asks for nothing.
        assert device.handle(message(R.GET_FEATURES, need_reply=True)) is not None
        assert device.handle(message(R.SET_OWNER, need_reply=True)) is None
        device.handle(message(R.GET_PROTOCOL_FEATURES))
        ack = device.handle(message(R.SET_PROTOCOL_FEATURES, U64(P.MQ | P.REPLY_ACK),
                                    need_reply=True))
        assert ack is not None and ack.payload == U64(0) and ack.is_reply
        queues = device.handle(message(R.GET_QUEUE_NUM))
        assert queues is not None and queues.payload == U64(CONFIG.queue_pairs)
        assert device.handle(message(R.SET_OWNER)) is None
        ack = device.handle(message(R.SET_OWNER, need_reply=True))
        assert ack is not None and ack.payload == U64(0)
        device.close()

    run(scenario)


def test_status_rarp_and_log_base_reply() -> None:
    async def scenario() -> None:
        device = NetDevice(CONFIG, LOG)
        negotiate(device)
        assert device.handle(message(R.SET_STATUS, U64(0x0F))) is None
        status = device.handle(message(R.GET_STATUS))
        assert status is not None and status.payload == U64(0x0F)
        device.handle(message(R.SEND_RARP, RarpMac(bytes.fromhex("525400123456"))))
        assert device.rarp_macs == [bytes.fromhex("525400123456")]
        # LOG_SHMFD negotiated: SET_LOG_BASE is always answered, with a u64 0.
        log_fd = memfd(4096)
        reply = device.handle(message(R.SET_LOG_BASE, LogDescription(4096, 0), (log_fd,)))
        assert reply is not None and reply.payload == U64(0)
        assert device.dirty_log is not None and device.dirty_log.size == 4096
        device.close()

    run(scenario)


def test_features_never_offered_are_refused_by_name() -> None:
    async def scenario() -> None:
        device = NetDevice(CONFIG, LOG)
        unoffered = OFFER | F.VIRTIO_RING_F_INDIRECT_DESC
        with pytest.raises(RemoteMessageError, match="VIRTIO_RING_F_INDIRECT_DESC"):
            device.handle(message(R.SET_FEATURES, U64(unoffered)))
        # The connection's session is latched: nothing more is accepted.
        with pytest.raises(RemoteMessageError):
            device.handle(message(R.GET_FEATURES))
        device.close()

    run(scenario)


@pytest.mark.parametrize(("size", "fragment"), [
    (512, "ring size 512 out of range (1 to 256)"),
    (100, "ring size 100 is not a power of two"),
])
def test_ring_sizes_beyond_the_limit_are_refused(size: int, fragment: str) -> None:
    async def scenario() -> None:
        device = NetDevice(CONFIG, LOG)
        with pytest.raises(RemoteMessageError) as caught:
            device.handle(message(R.SET_VRING_NUM, VringState(0, size)))
        assert fragment in str(caught.value) and "ring 0" in str(caught.value)
        device.close()

    run(scenario)


def test_requests_not_served_close_their_fds() -> None:
    async def scenario() -> None:
        device = NetDevice(CONFIG, LOG)
        before = open_fd_count()
        read_end, write_end = os.pipe()
        with pytest.raises(UnsupportedRequestError, match="GPU_SET_SOCKET: not served"):
            device.handle(message(R.GPU_SET_SOCKET, EMPTY, (read_end,)))
        with pytest.raises(OSError):
            os.fstat(read_end)  # closed with the refused message
        os.close(write_end)
        assert open_fd_count() == before
        device.close()

    run(scenario)


def test_the_mtu_is_range_checked() -> None:
    async def scenario() -> None:
        config = BackendConfig.from_options(OFFER, PROTOCOL_OFFER | P.MTU)
        device = NetDevice(config, LOG)
        negotiate(device, protocol=PROTOCOL_OFFER | P.MTU)
        device.handle(message(R.NET_SET_MTU, U64(9000)))
        assert device.mtu == 9000
        with pytest.raises(RemoteProtocolError, match="MTU 70000 out of range"):
            device.handle(message(R.NET_SET_MTU, U64(70000)))
        device.close()

    run(scenario)


def test_an_rx_ring_reports_back_the_base_it_was_given() -> None:
    async def scenario() -> None:
        with rig() as test:
            test.start_ring(0, test.guest.ring(8, 0x10000), base=1234)
            reply = test.device.handle(message(R.GET_VRING_BASE, VringState(0, 0)))
            assert reply is not None and reply.payload == VringState(0, 1234)
            assert test.device.reported_bases == {0: 1234}

    run(scenario)


def test_the_tx_sink_drains_buffers_and_get_vring_base_says_where_it_stopped() -> None:
    async def scenario() -> None:
        with rig(PLAIN_RINGS) as test:
            guest, device = test.guest, test.device
            place = guest.ring(8, 0x10000)
            # A ring that has run before: the driver's indices are near the wrap.
            guest.set_u16(place.available + 2, 65534)
            guest.set_u16(place.used + 2, 65534)
            call, kick_fd = test.start_ring(TX, place, base=65534)
            # Three packets: a single buffer, then a two-descriptor chain.
            guest.put_descriptor(place, 0, 0x40000, 60)
            guest.put_descriptor(place, 1, 0x41000, 12, flags=DescriptorFlags.NEXT,
                                 following=2)
            guest.put_descriptor(place, 2, 0x42000, 1500)
            guest.put_descriptor(place, 3, 0x43000, 64)
            guest.make_available(place, [0, 1, 3])  # from index 65534: wraps past 65535
            kick(kick_fd)
            await readable(call)
            assert read_eventfd(call) >= 1
            assert guest.used_index(place) == 1  # 65534 + 3, modulo 2^16
            slots = [65534 % 8, 65535 % 8, 0]
            assert [guest.used_element(place, slot) for slot in slots] == [
                (0, 0), (1, 0), (3, 0)]
            queue = device.queues[TX]
            assert (queue.buffers, queue.bytes) == (3, 60 + 12 + 1500 + 64)
            reply = device.handle(message(R.GET_VRING_BASE, VringState(TX, 0)))
            assert reply is not None and reply.payload == VringState(TX, 1)
            # Stopped: a new buffer is left alone.
            guest.make_available(place, [0])
            kick(kick_fd)
            device.on_kick(TX)
            assert guest.used_index(place) == 1

    run(scenario)


def test_used_ring_writes_are_logged_while_log_all_is_acked() -> None:
    async def scenario() -> None:
        with rig(OFFER & ~F.VIRTIO_RING_F_EVENT_IDX) as test:
            log_fd = test.set_log_base()
            place = test.guest.ring(8, 0x20000)
            call, kick_fd = test.start_ring(TX, place, log=True)
            test.guest.put_descriptor(place, 0, 0x50000, 100)
            test.guest.make_available(place, [0])
            kick(kick_fd)
            await readable(call)
            dirty_log = test.device.dirty_log
            assert dirty_log is not None
            assert dirty_log.is_marked(place.used - place.used % LOG_PAGE_SIZE)
            with open(f"/proc/self/fd/{log_fd}", "rb") as shared:
                bitmap = shared.read()
            page = place.used // LOG_PAGE_SIZE
            assert bitmap[page // 8] >> (page % 8) & 1
            # Only the used ring's page: the sink writes nothing else.
            assert sum(bin(byte).count("1") for byte in bitmap) == 1

    run(scenario)


def test_nothing_is_logged_without_log_all() -> None:
    async def scenario() -> None:
        with rig(PLAIN_RINGS) as test:
            test.set_log_base()
            place = test.guest.ring(8, 0x20000)
            call, kick_fd = test.start_ring(TX, place)
            test.guest.put_descriptor(place, 0, 0x50000, 100)
            test.guest.make_available(place, [0])
            kick(kick_fd)
            await readable(call)
            dirty_log = test.device.dirty_log
            assert dirty_log is not None and dirty_log.pages_marked == 0

    run(scenario)


def test_event_index_suppresses_notifications_the_driver_did_not_ask_for() -> None:
    assert need_event(0, 1, 0)            # crossed the driver's event index
    assert not need_event(5, 3, 2)        # not there yet
    assert need_event(65535, 0, 65534)    # across the wrap

    async def scenario() -> None:
        with rig() as test:  # EVENT_IDX acked
            guest, device = test.guest, test.device
            place = guest.ring(8, 0x10000)
            call, _ = test.start_ring(TX, place)
            used_event = place.available + 4 + 2 * place.num
            guest.set_u16(used_event, 5)  # notify me once the 6th buffer is used
            guest.put_descriptor(place, 0, 0x40000, 10)
            guest.make_available(place, [0, 0])
            device.on_kick(TX)
            assert guest.used_index(place) == 2 and device.queues[TX].notifications == 0
            # The device asks to be kicked at the next available index.
            assert guest.u16(place.used + 4 + 8 * place.num) == 2
            guest.make_available(place, [0, 0, 0, 0])
            device.on_kick(TX)
            assert guest.used_index(place) == 6 and device.queues[TX].notifications == 1
            assert read_eventfd(call) == 1

    run(scenario)


def test_no_interrupt_suppresses_notifications_without_event_index() -> None:
    async def scenario() -> None:
        with rig(PLAIN_RINGS) as test:
            guest, device = test.guest, test.device
            place = guest.ring(8, 0x10000)
            test.start_ring(TX, place)
            guest.put_descriptor(place, 0, 0x40000, 10)
            guest.set_u16(place.available, 1)  # VRING_AVAIL_F_NO_INTERRUPT
            guest.make_available(place, [0])
            device.on_kick(TX)
            assert guest.used_index(place) == 1 and device.queues[TX].notifications == 0
            guest.set_u16(place.available, 0)
            guest.make_available(place, [0])
            device.on_kick(TX)
            assert guest.used_index(place) == 2 and device.queues[TX].notifications == 1

    run(scenario)


@pytest.mark.parametrize(("setup", "fragment"), [
    ("head out of range", "head descriptor 9 out of range"),
    ("loop", "loops"),
    ("buffer outside memory", "not inside one guest memory region"),
    ("indirect not negotiated", "indirect table not allowed"),
    ("avail index too far", "more than the ring's 8"),
])
def test_bad_rings_stop_that_ring_only(caplog: pytest.LogCaptureFixture, setup: str,
                                       fragment: str) -> None:
    async def scenario() -> None:
        with rig(OFFER & ~F.VIRTIO_RING_F_EVENT_IDX) as test:
            guest, device = test.guest, test.device
            place = guest.ring(8, 0x10000)
            test.start_ring(TX, place)
            heads = [0]
            if setup == "head out of range":
                heads = [9]
            elif setup == "loop":
                guest.put_descriptor(place, 0, 0x40000, 10, flags=DescriptorFlags.NEXT,
                                     following=1)
                guest.put_descriptor(place, 1, 0x40000, 10, flags=DescriptorFlags.NEXT,
                                     following=0)
            elif setup == "buffer outside memory":
                guest.put_descriptor(place, 0, guest.size - 4, 10)
            elif setup == "indirect not negotiated":
                guest.put_descriptor(place, 0, 0x40000, 32, flags=DescriptorFlags.INDIRECT)
            else:
                guest.set_u16(place.available + 2, 9)
                heads = []
            guest.make_available(place, heads)
            with caplog.at_level(logging.ERROR, logger=LOG.name):
                device.on_kick(TX)
            errors = [record.getMessage() for record in caplog.records
                      if record.levelno == logging.ERROR]
            assert len(errors) == 1 and fragment in errors[0]
            assert "ring 1 stopped" in errors[0]
            assert guest.used_index(place) == 0
            # The connection itself goes on.
            assert device.handle(message(R.GET_FEATURES)) is not None

    run(scenario)


def test_indirect_tables_are_followed_within_bounds() -> None:
    async def scenario() -> None:
        config = BackendConfig.from_options(OFFER | F.VIRTIO_RING_F_INDIRECT_DESC,
                                            PROTOCOL_OFFER)
        acked = (F.VIRTIO_RING_F_INDIRECT_DESC | F.VIRTIO_F_VERSION_1
                 | F.VHOST_USER_F_PROTOCOL_FEATURES)
        with rig(acked, config) as test:
            guest = test.guest
            place = guest.ring(8, 0x10000)
            test.start_ring(TX, place)
            table = RingPlace(2, 0x30000, 0, 0)
            guest.put_descriptor(table, 0, 0x40000, 14, flags=DescriptorFlags.NEXT,
                                 following=1)
            guest.put_descriptor(table, 1, 0x41000, 100)
            guest.put_descriptor(place, 0, 0x30000, 32, flags=DescriptorFlags.INDIRECT)
            guest.make_available(place, [0])
            test.device.on_kick(TX)
            assert guest.used_index(place) == 1
            assert test.device.queues[TX].bytes == 114

    run(scenario)


def test_close_releases_every_fd_the_device_holds() -> None:
    async def scenario() -> None:
        guest = FakeGuest()
        before = open_fd_count()
        device = NetDevice(CONFIG, LOG)
        negotiate(device)
        map_guest(device, guest)
        device.handle(message(R.SET_LOG_BASE, LogDescription(4096, 0), (memfd(4096),)))
        call = new_eventfd()
        kick_fd = start_ring(device, guest, 0, guest.ring(8, 0x10000), call)
        device.handle(message(R.SET_VRING_ERR, VringFile(0), (new_eventfd(),)))
        assert open_fd_count() > before + 2  # the device holds kick, call, err
        device.close()
        for fd in (call, kick_fd):
            os.close(fd)
        assert open_fd_count() == before
        assert len(device.memory) == 0 and device.dirty_log is None
        guest.close()

    run(scenario)


def test_a_user_address_outside_memory_is_refused_when_the_ring_starts() -> None:
    async def scenario() -> None:
        with rig() as test:
            size = test.guest.size
            test.start_ring(TX, RingPlace(8, size, size + 128, size + 4096))
            queue = test.device.queues[TX]
            assert queue.broken is not None
            assert "frontend's address space" in queue.broken.reason
            assert f"{USER_BASE + size:#x}" in str(queue.broken)

    run(scenario)
