"""QEMU's vhost-user conversation, scripted: to warm a proxy up, and to benchmark its relay.

A freshly started Python process runs every code path slowly the first
times (the interpreter specialises a function after it ran a few times;
first calls import, allocate and fill caches). A proxy process sees each
request only a few times per VM start: measured through real QEMU, the
relay's first messages cost 3 to 5 times what they cost warm, and the
destination's proxy meets the device start (memory table, rings) for the
first time in the middle of a migration's downtime. :func:`warm_up` plays
the conversation a few times through a real :class:`~vhostcompat.proxy.Relay`
in the interface's own mode, to the reference back-end's device, over
socket pairs, before the proxy listens: the first QEMU then meets a warm
relay.

:class:`ScriptedFrontend` is QEMU 7.2's side of that conversation for one
queue pair (the sequence seen on the wire, FIELD-NOTES): the netdev's
start-up, the device start after the guest's DRIVER_OK, and the device stop
of a migration. It acks exactly what it was offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence

from vhostcompat.backend import BackendConfig, NetDevice
from vhostcompat.errors import VhostCompatError
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.proxy.policy import ProxyPolicy
from vhostcompat.proxy.relay import Relay
from vhostcompat.proxy.timings import RelayTimings
from vhostcompat.transport import FdConnection, MessageConnection
from vhostcompat.vhostuser import (
    U64,
    Channel,
    FrontendRequest,
    HeaderFlags,
    MemoryRegion,
    MemoryTable,
    Message,
    Payload,
    Role,
    VringAddress,
    VringAddressFlags,
    VringFile,
    VringState,
    close_fds,
)

_log = logging.getLogger(__name__)
# The scripted device's own lines (features acked, rings...) are noise.
_device_log = logging.getLogger(f"{__name__}.device")
_device_log.setLevel(logging.CRITICAL)
R = FrontendRequest
GUEST_SIZE = 1 << 20
USER_BASE = 0x7F00_0000_0000
WARM_UP_ROUNDS = 10
WARM_UP_TIMEOUT = 5.0
# What QEMU 7.2 acks of the protocol features it is offered.
QEMU_PROTOCOL = (ProtocolFeature.MQ | ProtocolFeature.LOG_SHMFD | ProtocolFeature.STATUS
                 | ProtocolFeature.RARP)


def guest_memory(size: int = GUEST_SIZE) -> int:
    """A memfd sealed as QEMU's memory-backend-memfd is (the caller closes it)."""
    fd = os.memfd_create("vhostcompat-scripted-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    except OSError:
        os.close(fd)
        raise
    return fd


class ScriptedFrontend:
    """QEMU 7.2's messages for one queue pair, over ``link``; guest memory ``memory_fd``."""

    def __init__(self, link: MessageConnection, memory_fd: int, ring_size: int = 256) -> None:
        self.link = link
        self.memory_fd = memory_fd
        self.ring_size = ring_size

    async def send(self, request: R, payload: Payload | None = None,
                   fds: Sequence[int] = ()) -> None:
        message = Message(request, fds=tuple(fds)) if payload is None else \
            Message(request, payload, HeaderFlags.VERSION_1, tuple(fds))
        await self.link.send_message(message)

    async def ask(self, request: R, payload: Payload | None = None) -> int:
        """Send a request and wait for its reply; the reply's u64 (0 if none)."""
        await self.send(request, payload)
        reply = await self.link.recv_message()
        if reply is None:
            raise ScriptError(f"the peer closed the connection after {request.name}")
        close_fds(reply.fds)
        return reply.payload.value if isinstance(reply.payload, U64) else 0

    async def start_up_and_stop(self) -> None:
        """The netdev's start-up, the device start, then the device stop."""
        features = VirtioFeature(await self.ask(R.GET_FEATURES))
        protocol = ProtocolFeature(0)
        if VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES in features:
            protocol = ProtocolFeature(await self.ask(R.GET_PROTOCOL_FEATURES)) & QEMU_PROTOCOL
            await self.send(R.SET_PROTOCOL_FEATURES, U64(int(protocol)))
            if ProtocolFeature.MQ in protocol:
                await self.ask(R.GET_QUEUE_NUM)
        await self.send(R.SET_OWNER)
        await self.ask(R.GET_FEATURES)
        eventfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(6)]
        try:
            await self._device(features, protocol, eventfds)
        finally:
            for fd in eventfds:
                os.close(fd)

    async def _device(self, features: VirtioFeature, protocol: ProtocolFeature,
                      eventfds: Sequence[int]) -> None:
        with_protocol = VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES in features
        for ring in (0, 1):
            await self.send(R.SET_VRING_CALL, VringFile(ring), [eventfds[ring]])
            await self.send(R.SET_VRING_ERR, VringFile(ring), [eventfds[2 + ring]])
        if with_protocol:
            for ring in (0, 1):
                await self.send(R.SET_VRING_ENABLE, VringState(ring, 1))
        # The guest driver's DRIVER_OK: the device starts.
        await self.send(R.SET_FEATURES, U64(int(features & ~VirtioFeature.VHOST_F_LOG_ALL)))
        await self.send(R.SET_MEM_TABLE, MemoryTable((MemoryRegion(
            0, GUEST_SIZE, USER_BASE, 0),)), [self.memory_fd])
        for ring in (0, 1):
            base = 0x10000 * (ring + 1)
            await self.send(R.SET_VRING_NUM, VringState(ring, self.ring_size))
            await self.send(R.SET_VRING_BASE, VringState(ring, 0))
            await self.send(R.SET_VRING_ADDR, VringAddress(
                ring, VringAddressFlags(0), USER_BASE + base, USER_BASE + base + 0x8000,
                USER_BASE + base + 0x4000, base + 0x8000))
            await self.send(R.SET_VRING_KICK, VringFile(ring), [eventfds[4 + ring]])
            await self.send(R.SET_VRING_CALL, VringFile(ring), [eventfds[ring]])
        if ProtocolFeature.STATUS in protocol:
            status = await self.ask(R.GET_STATUS)
            await self.send(R.SET_STATUS, U64(status | 0xF))
        # A migration's device stop.
        for ring in (0, 1):
            await self.ask(R.GET_VRING_BASE, VringState(ring, 0))


class ScriptError(VhostCompatError):
    """The scripted conversation did not go as QEMU's would."""


async def _serve_device(link: MessageConnection, device: NetDevice) -> None:
    while (message := await link.recv_message()) is not None:
        reply = device.handle(message)
        if reply is not None:
            await link.send_message(reply)


async def converse_once(policy: ProxyPolicy, memory_fd: int,
                        timings: RelayTimings | None = None) -> None:
    """One scripted front-end through one relay in ``policy`` to one reference device."""
    front_ours, front_relay = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    back_relay, back_ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = Relay(policy, FdConnection(front_relay, name="warm-front"),
                  FdConnection(back_relay, name="warm-back"), name="warm-up",
                  timings=timings if timings is not None else RelayTimings())
    frontend = MessageConnection(FdConnection(front_ours, name="warm-qemu"), Channel.FRONTEND,
                                 Role.FRONTEND)
    backend = MessageConnection(FdConnection(back_ours, name="warm-device"), Channel.FRONTEND,
                                Role.BACKEND)
    device = NetDevice(BackendConfig.from_profile(policy.profile), _device_log)
    relaying = asyncio.create_task(relay.run())
    serving = asyncio.create_task(_serve_device(backend, device))
    try:
        ring_size = min(256, policy.profile.max_ring_size or 256)
        await ScriptedFrontend(frontend, memory_fd, ring_size).start_up_and_stop()
    finally:
        frontend.close()
        await asyncio.gather(relaying, return_exceptions=True)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        device.close()
        backend.close()


async def warm_up(policy: ProxyPolicy, rounds: int = WARM_UP_ROUNDS) -> bool:
    """Play the conversation ``rounds`` times, bounded; False (and why, at DEBUG) if a
    mode or a machine made it fail: warming is an optimisation, never a reason to stop."""
    memory_fd = guest_memory()
    started = time.monotonic()
    try:
        with _quiet("vhostcompat.proxy.relay", "vhostcompat.transport"):
            async with asyncio.timeout(WARM_UP_TIMEOUT):
                for _ in range(rounds):
                    await converse_once(policy, memory_fd)
    except (VhostCompatError, OSError, TimeoutError) as error:
        _log.debug("warming the relay up stopped: %s", error)
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(memory_fd)
    _log.debug("relay warmed up: %d scripted conversations in %.0f ms", rounds,
               (time.monotonic() - started) * 1e3)
    return True


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The scripted conversation's offers, warnings and -vv lines are not the real
    QEMU's: keep those loggers to errors meanwhile."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
