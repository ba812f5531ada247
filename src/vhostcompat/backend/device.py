"""The vhost-user net device of one connection: request handlers over the session.

:meth:`NetDevice.handle` takes one decoded front-end request and returns the
reply owed, if any. The order never varies:

1. the session (:mod:`vhostcompat.vhostuser.session`) validates the message
   against the request table and the backend's limits, before anything
   else: direction, protocol feature prerequisites, ring index, fd count
   (already checked by the decoder), features never offered, ring sizes
   beyond the limit, overlapping memory; a refusal raises with the fds
   closed and the session latched broken;
2. the request's handler from :data:`HANDLERS` applies it to the device
   (maps memory, keeps eventfds, answers queries);
3. if the session says a reply is owed, the handler's payload is sent, or a
   REPLY_ACK success (u64 0) when it has none; SET_LOG_BASE's reply under
   LOG_SHMFD is that same u64 0.

Fd ownership: a handler marked ``keeps_fds`` owns the message's fds from
the moment it is called and stores them before anything can fail (kick,
call, err, the back-end channel); for every other handler the dispatcher
closes the fds once the handler returns or fails (mappings hold their own
reference). :meth:`NetDevice.close` releases everything the device
holds: mappings, the dirty log, eventfds.

Requests outside :data:`HANDLERS` (postcopy, IOTLB, inflight, config,
crypto, GPU, shared objects, device state, in-band notifications) raise
:class:`UnsupportedRequestError`: the connection is closed with that reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType

from vhostcompat.backend.config import MAX_MEMORY_SLOTS, BackendConfig
from vhostcompat.backend.memory import DirtyLog, GuestMemory, GuestMemoryError
from vhostcompat.backend.virtqueue import RingError, Virtqueue, eventfd_problem, is_transmit_ring
from vhostcompat.errors import RemoteProtocolError
from vhostcompat.features import ProtocolFeature, VirtioFeature, format_mask
from vhostcompat.transport import Log
from vhostcompat.vhostuser import (
    U64,
    FrontendRequest,
    LogDescription,
    MemoryTable,
    Message,
    Payload,
    RarpMac,
    ReplyAckPolicy,
    Request,
    Role,
    Session,
    SingleMemoryRegion,
    VringFile,
    VringState,
    close_fds,
    make_ack,
    make_reply,
)

_F = FrontendRequest
# virtio-net's MTU range (VIRTIO_NET_F_MTU: 68 is IPv4's minimum).
MIN_MTU = 68
MAX_MTU = 65535


class UnsupportedRequestError(RemoteProtocolError):
    """A valid request the reference backend does not serve."""

    def __init__(self, request: Request) -> None:
        self.request = request
        super().__init__(f"{request.name}: not served by the reference backend")


class DeviceRequestError(RemoteProtocolError):
    """A request the session accepted but the device cannot apply."""

    def __init__(self, request: Request, reason: str) -> None:
        self.request = request
        self.reason = reason
        super().__init__(f"{request.name}: {reason}")


class NetDevice:
    """The device state behind one frontend connection."""

    def __init__(self, config: BackendConfig, log: Log,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.log = log
        offers_protocol = VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES in config.features
        self.session = Session(
            Role.BACKEND, limits=config.session_limits(),
            # The spec's letter: need_reply means something once REPLY_ACK is negotiated.
            reply_ack_policy=ReplyAckPolicy.WHEN_NEGOTIATED,
            offered_features=config.features,
            offered_protocol_features=config.protocol_features if offers_protocol else None)
        self.memory = GuestMemory()
        self.dirty_log: DirtyLog | None = None
        self.queues: dict[int, Virtqueue] = {}
        self.backend_channel_fd: int | None = None
        self.mtu: int | None = None
        self.rarp_macs: list[bytes] = []
        self.reported_bases: dict[int, int] = {}
        self.closed = False
        self._loop = loop or asyncio.get_running_loop()

    # -- the dispatcher ------------------------------------------------------------------

    def handle(self, message: Message) -> Message | None:
        """Validate and apply one request; the reply to send, if one is owed.

        Raises a :class:`~vhostcompat.errors.VhostCompatError` for a request
        refused; the message's fds are closed then, and the caller closes
        the connection.
        """
        self.session.receive(message)
        entry = HANDLERS.get(message.request)
        if entry is None:
            close_fds(message.fds)
            raise UnsupportedRequestError(message.request)
        paused = self._pause_drains()
        try:
            payload = entry.handler(self, message)
        finally:
            # A keeps_fds handler owns the fds from the call on (it stores
            # them first, or closes one it refuses); close() releases them
            # with the device.
            if not entry.keeps_fds:
                close_fds(message.fds)
        self._restart_drains(paused)
        if not self.session.reply_expected(message):
            return None
        reply = make_ack(message) if payload is None else make_reply(message, payload)
        self.session.send(reply)
        return reply

    def close(self) -> None:
        """Release everything: eventfds, mappings, the dirty log, the back-end channel."""
        if self.closed:
            return
        self.closed = True
        for queue in self.queues.values():
            queue.close()
        self.queues.clear()
        self.memory.close()
        self._set_dirty_log(None)
        if self.backend_channel_fd is not None:
            close_fds([self.backend_channel_fd])
            self.backend_channel_fd = None

    # -- helpers ---------------------------------------------------------------------------

    @property
    def acked_features(self) -> VirtioFeature:
        return self.session.acked_features or VirtioFeature(0)

    @property
    def logging_dirty_pages(self) -> bool:
        return self.dirty_log is not None and VirtioFeature.VHOST_F_LOG_ALL in self.acked_features

    def queue(self, index: int) -> Virtqueue:
        queue = self.queues.get(index)
        if queue is None:
            queue = self.queues[index] = Virtqueue(index, self.log)
        return queue

    def _set_dirty_log(self, dirty_log: DirtyLog | None) -> None:
        if self.dirty_log is not None:
            self.dirty_log.close()
        self.dirty_log = dirty_log

    def _processing(self, index: int) -> bool:
        """Whether ring ``index`` is one the sink drains right now."""
        ring = self.session.rings.get(index)
        return (ring is not None and ring.started and ring.enabled and ring.num is not None
                and ring.address is not None and len(self.memory) > 0
                and is_transmit_ring(index) and not self.session.packed_ring)

    def _resume(self, index: int) -> None:
        """Watch the ring's kick fd and drain what is pending, if it is processed now."""
        queue = self.queue(index)
        if not self._processing(index):
            queue.stop()
            return
        queue.watch(self._loop, lambda: self.on_kick(index))
        self._drain(index)

    def on_kick(self, index: int) -> None:
        """The guest notified ring ``index`` (its kick eventfd became readable)."""
        queue = self.queues.get(index)
        if queue is None:
            return
        try:
            queue.consume_kick()
        except RingError as error:
            self.log.error("ring %d stopped: %s", index, error.reason)
            return
        if self._processing(index) and not queue.draining:
            self._drain(index)

    def _drain(self, index: int) -> None:
        """Start draining ring ``index``, one bounded slice now, the rest from the loop."""
        queue = self.queue(index)
        ring = self.session.rings[index]
        queue.start_drain(ring, self.memory,
                          self.dirty_log if self.logging_dirty_pages else None,
                          self.acked_features)
        self._drain_slice(index)

    def _drain_slice(self, index: int) -> None:
        queue = self.queues.get(index)
        if queue is None or self.closed:
            return
        queue.continuation = None
        try:
            finished = queue.drain_slice()
        except RingError as error:
            # The guest's doing, not the frontend's: this ring stops, the others go on.
            self.log.error("ring %d stopped: %s", index, error.reason)
            return
        except Exception:
            queue.stop()
            self.log.exception("ring %d stopped: unexpected failure", index)
            return
        if not finished:
            # Yield: every other connection is served before the next slice.
            queue.continuation = self._loop.call_soon(self._drain_slice, index)

    def _pause_drains(self) -> list[int]:
        """Abandon the drains in progress (a request may change what they read)."""
        paused = [index for index, queue in self.queues.items() if queue.draining]
        for index in paused:
            self.queues[index].cancel_drain()
        return paused

    def _restart_drains(self, paused: list[int]) -> None:
        for index in paused:
            queue = self.queues.get(index)
            if queue is not None and not queue.draining and self._processing(index):
                self._drain(index)

    def _stop_all(self) -> None:
        for queue in self.queues.values():
            queue.stop()


# -- handlers: (device, message) -> reply payload or None --------------------------------

def _get_features(device: NetDevice, message: Message) -> Payload:
    return U64(device.config.features)


def _set_features(device: NetDevice, message: Message) -> None:
    acked = device.acked_features
    device.log.info("features acked: %s", format_mask(acked, VirtioFeature))
    for index in list(device.queues):
        device._resume(index)


def _set_owner(device: NetDevice, message: Message) -> None:
    device.log.info("frontend took ownership")


def _reset_owner(device: NetDevice, message: Message) -> None:
    device._stop_all()
    device.log.info("RESET_OWNER: rings stopped")


def _get_protocol_features(device: NetDevice, message: Message) -> Payload:
    return U64(device.config.protocol_features)


def _set_protocol_features(device: NetDevice, message: Message) -> None:
    device.log.info("protocol features acked: %s",
                    format_mask(device.session.protocol_features, ProtocolFeature))


def _get_queue_num(device: NetDevice, message: Message) -> Payload:
    return U64(device.config.queue_pairs)


def _set_mem_table(device: NetDevice, message: Message) -> None:
    table = message.payload
    assert isinstance(table, MemoryTable)  # the decoder's guarantee
    device.memory.set_table(table.regions, message.fds)
    device.log.info("memory table: %d region(s), %d MiB", len(device.memory),
                    device.memory.total_size >> 20)
    for index in list(device.queues):
        device._resume(index)


def _set_log_base(device: NetDevice, message: Message) -> None:
    description = message.payload
    assert isinstance(description, LogDescription)
    if len(message.fds) != 1:
        raise DeviceRequestError(message.request, "no log fd: only shared-memory dirty "
                                 "logging (LOG_SHMFD) is supported")
    dirty_log = DirtyLog(message.fds[0], description)
    device._set_dirty_log(dirty_log)
    device.log.info("dirty log: %d bytes, covering %d MiB of guest memory",
                    description.mmap_size, dirty_log.covered >> 20)


def _ignore(device: NetDevice, message: Message) -> None:
    """A request the session's bookkeeping covers entirely."""


def _set_vring_base(device: NetDevice, message: Message) -> None:
    state = message.payload
    assert isinstance(state, VringState)
    device.queue(state.index).set_base(state.num)


def _get_vring_base(device: NetDevice, message: Message) -> Payload:
    state = message.payload
    assert isinstance(state, VringState)
    queue = device.queue(state.index)
    queue.stop()
    base = queue.reported_base(device.session.packed_ring)
    device.reported_bases[state.index] = base
    device.log.info("ring %d stopped at available index %d (%d buffers drained)",
                    state.index, base, queue.buffers)
    return VringState(state.index, base)


def _vring_file(message: Message) -> tuple[int, int | None]:
    """The ring index and its eventfd (None: polling); a fd that is not an
    eventfd is closed and refused (the handlers keep fds: it is ours)."""
    file = message.payload
    assert isinstance(file, VringFile)
    if file.invalid_fd:
        return file.index, None
    fd = message.fds[0]
    problem = eventfd_problem(fd)
    if problem is not None:
        close_fds([fd])
        raise DeviceRequestError(message.request, f"ring {file.index}: {problem}")
    return file.index, fd


def _set_vring_kick(device: NetDevice, message: Message) -> None:
    index, fd = _vring_file(message)
    device.queue(index).set_kick(fd)
    device._resume(index)


def _set_vring_call(device: NetDevice, message: Message) -> None:
    index, fd = _vring_file(message)
    device.queue(index).set_call(fd)


def _set_vring_err(device: NetDevice, message: Message) -> None:
    index, fd = _vring_file(message)
    device.queue(index).set_err(fd)


def _set_vring_enable(device: NetDevice, message: Message) -> None:
    state = message.payload
    assert isinstance(state, VringState)
    device._resume(state.index)


def _send_rarp(device: NetDevice, message: Message) -> None:
    rarp = message.payload
    assert isinstance(rarp, RarpMac)
    device.rarp_macs.append(rarp.mac)
    # No network behind this backend: announcing the guest's move is a no-op.
    device.log.info("RARP announcement requested for %s", rarp)


def _net_set_mtu(device: NetDevice, message: Message) -> None:
    value = message.payload
    assert isinstance(value, U64)
    if not MIN_MTU <= value.value <= MAX_MTU:
        raise DeviceRequestError(message.request,
                                 f"MTU {value.value} out of range ({MIN_MTU} to {MAX_MTU})")
    device.mtu = value.value
    device.log.info("MTU set to %d", value.value)


def _set_backend_req_fd(device: NetDevice, message: Message) -> None:
    # Kept open for the connection's life: this backend never sends back-end requests.
    if device.backend_channel_fd is not None:
        close_fds([device.backend_channel_fd])
    device.backend_channel_fd = message.fds[0]


def _set_status(device: NetDevice, message: Message) -> None:
    device.log.info("device status %#x", device.session.status or 0)


def _get_status(device: NetDevice, message: Message) -> Payload:
    return U64(device.session.status or 0)


def _reset_device(device: NetDevice, message: Message) -> None:
    for queue in device.queues.values():
        queue.close()
    device.queues.clear()
    device.memory.close()
    device._set_dirty_log(None)
    device.log.info("device reset")


def _get_max_mem_slots(device: NetDevice, message: Message) -> Payload:
    return U64(MAX_MEMORY_SLOTS)


def _add_mem_reg(device: NetDevice, message: Message) -> None:
    single = message.payload
    assert isinstance(single, SingleMemoryRegion)
    device.memory.add(single.region, message.fds[0])
    device.log.info("memory region added: %s", single.region)
    for index in list(device.queues):
        device._resume(index)


def _rem_mem_reg(device: NetDevice, message: Message) -> None:
    single = message.payload
    assert isinstance(single, SingleMemoryRegion)
    try:
        device.memory.remove(single.region)
    except GuestMemoryError as error:
        raise DeviceRequestError(message.request, error.reason) from None
    device.log.info("memory region removed: %s", single.region)


@dataclasses.dataclass(frozen=True)
class Handler:
    """One request's handler and whether it keeps the message's fds."""

    handler: Callable[[NetDevice, Message], Payload | None]
    keeps_fds: bool = False


HANDLERS: Mapping[Request, Handler] = MappingProxyType({
    _F.GET_FEATURES: Handler(_get_features),
    _F.SET_FEATURES: Handler(_set_features),
    _F.SET_OWNER: Handler(_set_owner),
    _F.RESET_OWNER: Handler(_reset_owner),
    _F.SET_MEM_TABLE: Handler(_set_mem_table),
    _F.SET_LOG_BASE: Handler(_set_log_base),
    # Deprecated and unused by QEMU; the fd is closed.
    _F.SET_LOG_FD: Handler(_ignore),
    _F.SET_VRING_NUM: Handler(_ignore),
    _F.SET_VRING_ADDR: Handler(_ignore),
    _F.SET_VRING_BASE: Handler(_set_vring_base),
    _F.GET_VRING_BASE: Handler(_get_vring_base),
    _F.SET_VRING_KICK: Handler(_set_vring_kick, keeps_fds=True),
    _F.SET_VRING_CALL: Handler(_set_vring_call, keeps_fds=True),
    _F.SET_VRING_ERR: Handler(_set_vring_err, keeps_fds=True),
    _F.GET_PROTOCOL_FEATURES: Handler(_get_protocol_features),
    _F.SET_PROTOCOL_FEATURES: Handler(_set_protocol_features),
    _F.GET_QUEUE_NUM: Handler(_get_queue_num),
    _F.SET_VRING_ENABLE: Handler(_set_vring_enable),
    _F.SEND_RARP: Handler(_send_rarp),
    _F.NET_SET_MTU: Handler(_net_set_mtu),
    _F.SET_BACKEND_REQ_FD: Handler(_set_backend_req_fd, keeps_fds=True),
    _F.SET_VRING_ENDIAN: Handler(_ignore),
    _F.SET_STATUS: Handler(_set_status),
    _F.GET_STATUS: Handler(_get_status),
    _F.RESET_DEVICE: Handler(_reset_device),
    _F.GET_MAX_MEM_SLOTS: Handler(_get_max_mem_slots),
    _F.ADD_MEM_REG: Handler(_add_mem_reg),
    _F.REM_MEM_REG: Handler(_rem_mem_reg),
})
