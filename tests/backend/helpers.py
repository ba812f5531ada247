"""Helpers for the reference backend tests: a fake guest, eventfds, a frontend client."""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tests.helpers import run_bounded
from vhostcompat.backend import BackendConfig
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.transport import FdConnection, MessageConnection, connect
from vhostcompat.vhostuser import (
    EMPTY,
    Channel,
    FrontendRequest,
    HeaderFlags,
    MemoryRegion,
    Message,
    Payload,
    Role,
    VringAddress,
    VringAddressFlags,
    close_fds,
)

F = VirtioFeature
P = ProtocolFeature
TIMEOUT = 10.0

# A small offer with the bits the tests exercise; INDIRECT_DESC left out on purpose.
OFFER = (F.VIRTIO_NET_F_CSUM | F.VIRTIO_NET_F_MRG_RXBUF | F.VIRTIO_RING_F_EVENT_IDX
         | F.VHOST_F_LOG_ALL | F.VHOST_USER_F_PROTOCOL_FEATURES | F.VIRTIO_F_VERSION_1)
PROTOCOL_OFFER = P.MQ | P.LOG_SHMFD | P.REPLY_ACK | P.RARP | P.STATUS
CONFIG = BackendConfig.from_options(OFFER, PROTOCOL_OFFER, queue_pairs=1, max_ring_size=256)


def run(scenario: Callable[[], Awaitable[None]], timeout: float = TIMEOUT) -> None:
    """Run an async scenario with a bound on its duration."""
    run_bounded(scenario(), timeout)


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


async def readable(fd: int, timeout: float = TIMEOUT) -> None:
    """Wait (bounded) until ``fd`` is readable, without polling."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)


def read_eventfd(fd: int) -> int:
    return int(struct.unpack("=Q", os.read(fd, 8))[0])


# -- a fake guest: one memfd region holding split rings --------------------------------

GUEST_SIZE = 1 << 20
GUEST_BASE = 0x0           # guest physical address of the region
USER_BASE = 0x7F00_0000_0000  # where the "frontend" has it mapped
_DESCRIPTOR = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED = struct.Struct("<II")


@dataclass(frozen=True)
class RingPlace:
    """Guest physical addresses of one split ring's parts."""

    num: int
    descriptors: int
    available: int
    used: int

    @property
    def used_size(self) -> int:
        return 4 + 8 * self.num + 2


class FakeGuest:
    """Guest RAM in a memfd, mapped here too so tests can play the driver."""

    def __init__(self, size: int = GUEST_SIZE, *, seal: bool = True) -> None:
        self.size = size
        self.fd = memfd(size, "fake-guest", seal=seal)
        self.memory = mmap.mmap(self.fd, size)

    def region(self, size: int | None = None, guest: int = GUEST_BASE, user: int = USER_BASE,
               offset: int = 0) -> MemoryRegion:
        return MemoryRegion(guest, self.size if size is None else size, user, offset)

    def fd_copy(self) -> int:
        """A duplicate of the memfd to send (the sender keeps its own)."""
        return os.dup(self.fd)

    def ring(self, num: int, at: int) -> RingPlace:
        return RingPlace(num, at, at + 16 * num, at + 16 * num + 4096)

    def address(self, index: int, place: RingPlace, log: bool = False) -> VringAddress:
        flags = VringAddressFlags.LOG if log else VringAddressFlags(0)
        return VringAddress(index, flags, USER_BASE + place.descriptors, USER_BASE + place.used,
                            USER_BASE + place.available, place.used)

    def put_descriptor(self, place: RingPlace, index: int, address: int, length: int, *,
                       flags: int = 0, following: int = 0) -> None:
        _DESCRIPTOR.pack_into(self.memory, place.descriptors + 16 * index, address, length,
                              flags, following)

    def make_available(self, place: RingPlace, heads: Sequence[int]) -> None:
        """Append ``heads`` to the available ring and publish the new index."""
        index = self.u16(place.available + 2)
        for head in heads:
            _U16.pack_into(self.memory, place.available + 4 + 2 * (index % place.num), head)
            index = (index + 1) % 65536
        _U16.pack_into(self.memory, place.available + 2, index)

    def set_u16(self, address: int, value: int) -> None:
        _U16.pack_into(self.memory, address, value)

    def u16(self, address: int) -> int:
        return int(_U16.unpack_from(self.memory, address)[0])

    def used_index(self, place: RingPlace) -> int:
        return self.u16(place.used + 2)

    def used_element(self, place: RingPlace, slot: int) -> tuple[int, int]:
        ident, length = _USED.unpack_from(self.memory, place.used + 4 + 8 * slot)
        return int(ident), int(length)

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)


def memfd(size: int, name: str = "test", *, seal: bool = True) -> int:
    """A memfd of ``size`` bytes, sealed against shrinking as QEMU's are (unless told not)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


# -- a frontend client over a real socket -------------------------------------------------

class Frontend:
    """A test frontend: sends what it is told, valid or not, and reads replies."""

    def __init__(self, connection: FdConnection) -> None:
        self.connection = connection
        self.messages = MessageConnection(connection, Channel.FRONTEND, Role.FRONTEND)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], retry_for: float = 0.0) -> Frontend:
        return cls(await connect(path, name="test-frontend", retry_for=retry_for))

    async def send(self, request: FrontendRequest, payload: Payload = EMPTY,
                   fds: Sequence[int] = (), *, need_reply: bool = False) -> None:
        flags = HeaderFlags.VERSION_1 | (HeaderFlags.NEED_REPLY if need_reply else 0)
        await self.messages.send_message(Message(request, payload, flags, tuple(fds)))

    async def ask(self, request: FrontendRequest, payload: Payload = EMPTY,
                  fds: Sequence[int] = (), *, need_reply: bool = False) -> Message:
        """Send a request and return its reply (fds closed)."""
        await self.send(request, payload, fds, need_reply=need_reply)
        reply = await asyncio.wait_for(self.messages.recv_message(), TIMEOUT)
        assert reply is not None, f"the backend closed the connection after {request.name}"
        assert reply.request is request
        close_fds(reply.fds)
        return reply

    async def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        await self.connection.send(data, fds)

    async def closed_by_backend(self, timeout: float = TIMEOUT) -> bool:
        """True once the backend closed the connection (EOF), having sent nothing else."""
        data, fds = await asyncio.wait_for(self.connection.recv(), timeout)
        close_fds(fds)
        return data == b""

    def close(self) -> None:
        self.messages.close()
