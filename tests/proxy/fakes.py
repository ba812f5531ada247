"""A scriptable vhost-user back-end and front-end for the proxy tests (in-process).

Both are built on the project's own protocol core (sessions decide which
requests are owed a reply), speak over real Unix sockets with real fds, and
record what they saw, so a test can check what crossed the proxy and what
did not. :func:`relayed` joins them through one :class:`Relay` over socket
pairs; the server tests plug them into listening sockets instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Sequence

from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.profiles import CompatProfile
from vhostcompat.proxy import ProxyPolicy, Relay, RelayResult
from vhostcompat.transport import FdConnection, MessageConnection, TransportError
from vhostcompat.vhostuser import (
    EMPTY,
    U64,
    BackendRequest,
    Channel,
    FrontendRequest,
    HeaderFlags,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    Message,
    Payload,
    Request,
    Role,
    Session,
    VringAddress,
    VringAddressFlags,
    VringFile,
    VringState,
    close_fds,
    make_ack,
    make_reply,
)

F = VirtioFeature
P = ProtocolFeature
WAIT = 5.0

# What DPDK 22.11's testpmd offers with tso=1 (FIELD-NOTES): a realistic back-end.
TESTPMD_TSO = F(0xD7C66FFCB)
TESTPMD_PROTOCOL = P(0x10CBF)
TSO = F.VIRTIO_NET_F_HOST_TSO4 | F.VIRTIO_NET_F_HOST_TSO6

# A mode without TSO and without indirect descriptors, 2 queue pairs, rings <= 256.
NARROW = CompatProfile(
    "test.narrow",
    virtio_features=(F.VIRTIO_NET_F_CSUM | F.VIRTIO_NET_F_GUEST_CSUM | F.VIRTIO_NET_F_MRG_RXBUF
                     | F.VIRTIO_NET_F_MQ | F.VHOST_F_LOG_ALL
                     | F.VHOST_USER_F_PROTOCOL_FEATURES | F.VIRTIO_F_VERSION_1),
    protocol_features=(P.MQ | P.LOG_SHMFD | P.RARP | P.REPLY_ACK | P.BACKEND_REQ
                       | P.BACKEND_SEND_FD),
    max_queue_pairs=2,
    max_ring_size=256,
)


def eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)




@dataclasses.dataclass(frozen=True)
class Received:
    """One message a fake saw: what, with how many fds."""

    request: Request
    payload: Payload
    flags: HeaderFlags
    fd_count: int


class FakeBackend:
    """A vhost-user back-end that answers what it owes and records the rest.

    ``silent``: requests it never answers (a hung back-end). ``keep_fds``:
    requests whose fds it keeps in :attr:`kept` for the test (which closes
    them) instead of closing them at once.
    """

    def __init__(self, *, features: VirtioFeature = TESTPMD_TSO,
                 protocol_features: ProtocolFeature = TESTPMD_PROTOCOL, queue_num: int = 128,
                 silent: Sequence[FrontendRequest] = (),
                 keep_fds: Sequence[FrontendRequest] = ()) -> None:
        self.features = features
        self.protocol_features = protocol_features
        self.queue_num = queue_num
        self.silent = frozenset(silent)
        self.keep_fds = frozenset(keep_fds)
        self.received: list[Received] = []
        self.kept: list[tuple[Request, tuple[int, ...]]] = []
        self.connections = 0
        self.open_connections = 0
        self.channel: MessageConnection | None = None
        self.channel_session: Session | None = None
        self.link: MessageConnection | None = None  # the latest connection
        self.arrived = asyncio.Event()
        self.closed = asyncio.Event()

    def requests(self, request: Request) -> list[Received]:
        return [seen for seen in self.received if seen.request is request]

    async def serve(self, connection: FdConnection) -> None:
        """Serve one connection until the peer closes it (a listener handler)."""
        self.connections += 1
        self.open_connections += 1
        self.closed.clear()
        self.arrived.set()
        session = Session(Role.BACKEND)
        link = self.link = MessageConnection(connection, Channel.FRONTEND, Role.BACKEND)
        try:
            while (message := await link.recv_message()) is not None:
                await self._answer(link, session, message)
        finally:
            link.close()
            if self.channel is not None:
                self.channel.close()
                self.channel = None
            self.open_connections -= 1
            self.closed.set()

    async def _answer(self, link: MessageConnection, session: Session, message: Message) -> None:
        self.received.append(Received(message.request, message.payload, message.flags,
                                      len(message.fds)))
        session.receive(message)
        if message.request is FrontendRequest.SET_BACKEND_REQ_FD:
            self.channel = MessageConnection(
                FdConnection(socket.socket(fileno=message.fds[0]), name="fake-channel"),
                Channel.BACKEND, Role.BACKEND)
            self.channel_session = session
        elif message.request in self.keep_fds:
            self.kept.append((message.request, message.fds))
        else:
            close_fds(message.fds)
        if not session.reply_expected(message) or message.request in self.silent:
            if message.request in self.silent and session.reply_expected(message):
                # Forget it: a hung back-end never answers, later requests included.
                self.silent = frozenset(FrontendRequest)
            return
        reply = self._reply_to(message)
        session.send(reply)
        await link.send_message(reply)

    def _reply_to(self, message: Message) -> Message:
        payload = message.payload
        match message.request:
            case FrontendRequest.GET_FEATURES:
                return make_reply(message, U64(int(self.features)))
            case FrontendRequest.GET_PROTOCOL_FEATURES:
                return make_reply(message, U64(int(self.protocol_features)))
            case FrontendRequest.GET_QUEUE_NUM:
                return make_reply(message, U64(self.queue_num))
            case FrontendRequest.GET_STATUS:
                return make_reply(message, U64(0))
            case FrontendRequest.GET_VRING_BASE:
                assert isinstance(payload, VringState)
                return make_reply(message, VringState(payload.index, 0))
            case FrontendRequest.SET_LOG_BASE:
                return make_reply(message, EMPTY)
        return make_ack(message)

    async def channel_call(self, request: BackendRequest, payload: Payload, *,
                           fds: Sequence[int] = (), need_reply: bool = False) -> Message | None:
        """Send a back-end request on the back-end channel; its reply when one is owed."""
        assert self.channel is not None and self.channel_session is not None
        return await send_request(self.channel, self.channel_session,
                          Message(request, payload, _flags(need_reply), tuple(fds)))


class PeerClosedError(Exception):
    """The peer (the proxy) closed the connection while we waited for a reply."""


def _flags(need_reply: bool) -> HeaderFlags:
    return HeaderFlags.VERSION_1 | (HeaderFlags.NEED_REPLY if need_reply else 0)


async def send_request(link: MessageConnection, session: Session,
                       message: Message) -> Message | None:
    """Send a request on ``link`` as ``session`` (its fds stay ours); the reply when one
    is owed. The peer closing before it replies is a :class:`PeerClosedError`."""
    session.send(message)
    await link.send_message(message)
    if not session.reply_expected(message):
        return None
    name = message.request.name
    try:
        reply = await asyncio.wait_for(link.recv_message(), WAIT)
    except TransportError as error:  # closed with our request unread: a reset
        raise PeerClosedError(f"connection lost before the reply to {name}: {error}") from error
    if reply is None:
        raise PeerClosedError(f"connection closed before the reply to {name}")
    session.receive(reply)
    return reply


class FakeFrontend:
    """A vhost-user front-end playing QEMU's start-up sequence."""

    def __init__(self, connection: FdConnection) -> None:
        self.link = MessageConnection(connection, Channel.FRONTEND, Role.FRONTEND)
        self.session = Session(Role.FRONTEND)
        self.channel: MessageConnection | None = None

    def close(self) -> None:
        self.link.close()
        if self.channel is not None:
            self.channel.close()

    async def call(self, request: FrontendRequest, payload: Payload = EMPTY, *,
                   fds: Sequence[int] = (), need_reply: bool = False) -> Message | None:
        """Send a request (its fds stay ours); the reply when one is owed."""
        return await send_request(self.link, self.session,
                          Message(request, payload, _flags(need_reply), tuple(fds)))

    async def sync(self) -> None:
        """A round trip (GET_FEATURES): everything sent before has been handled."""
        await self.call(FrontendRequest.GET_FEATURES)

    async def value(self, request: FrontendRequest) -> int:
        reply = await self.call(request)
        assert reply is not None and isinstance(reply.payload, U64)
        return reply.payload.value

    async def handshake(self, ack: VirtioFeature | None = None) -> VirtioFeature:
        """QEMU's start: features, protocol features, queue count, owner, SET_FEATURES.

        ``ack`` defaults to everything offered; returns what was offered.
        """
        offered = VirtioFeature(await self.value(FrontendRequest.GET_FEATURES))
        if F.VHOST_USER_F_PROTOCOL_FEATURES in offered:
            protocol = await self.value(FrontendRequest.GET_PROTOCOL_FEATURES)
            await self.call(FrontendRequest.SET_PROTOCOL_FEATURES, U64(protocol))
            if P(protocol) & P.MQ:
                await self.value(FrontendRequest.GET_QUEUE_NUM)
        await self.call(FrontendRequest.SET_OWNER)
        chosen = offered if ack is None else ack
        await self.call(FrontendRequest.SET_FEATURES, U64(int(chosen)))
        return offered

    async def start_ring(self, index: int, size: int = 256) -> None:
        """SET_VRING_NUM/BASE/ADDR/KICK/CALL for one ring, kick and call as eventfds."""
        await self.call(FrontendRequest.SET_VRING_NUM, VringState(index, size))
        await self.call(FrontendRequest.SET_VRING_BASE, VringState(index, 0))
        base = 0x10_0000 * (index + 1)
        await self.call(FrontendRequest.SET_VRING_ADDR, VringAddress(
            index, VringAddressFlags(0), base, base + 0x2000, base + 0x1000, 0))
        for request in (FrontendRequest.SET_VRING_KICK, FrontendRequest.SET_VRING_CALL):
            fd = eventfd()
            try:
                await self.call(request, VringFile(index), fds=[fd])
            finally:
                os.close(fd)

    async def set_mem_table(self, fds: Sequence[int], size: int = 0x10_0000) -> None:
        """One region per fd (each ``size`` bytes), need_reply when REPLY_ACK is on."""
        regions = tuple(MemoryRegion(number * size, size, 0x7F00_0000_0000 + number * size, 0)
                        for number in range(len(fds)))
        await self.call(FrontendRequest.SET_MEM_TABLE, MemoryTable(regions), fds=fds,
                        need_reply=self.session.reply_ack)

    async def open_backend_channel(self) -> None:
        """SET_BACKEND_REQ_FD: the proxy's back-end channel is our socket pair's far end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = MessageConnection(FdConnection(ours, name="front-channel"),
                                         Channel.BACKEND, Role.FRONTEND)
        try:
            await self.call(FrontendRequest.SET_BACKEND_REQ_FD, fds=[theirs.fileno()],
                            need_reply=self.session.reply_ack)
        finally:
            theirs.close()

    async def log_base(self, fd: int) -> None:
        await self.call(FrontendRequest.SET_LOG_BASE, LogDescription(0x1000, 0), fds=[fd])

    async def wait_closed(self, timeout: float = WAIT) -> None:
        """Wait (bounded) for the proxy to close our connection."""
        try:
            async with asyncio.timeout(timeout):
                data, fds = await self.link.connection.recv()
        except TransportError:
            return  # closed with data of ours unread: a reset, closed all the same
        close_fds(fds)
        assert data == b"", f"expected the proxy to close, got {data!r}"


@dataclasses.dataclass
class Relayed:
    frontend: FakeFrontend
    backend: FakeBackend
    relay: Relay
    task: asyncio.Task[RelayResult]

    async def result(self, timeout: float = WAIT) -> RelayResult:
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


@contextlib.asynccontextmanager
async def relayed(profile: CompatProfile = NARROW, backend: FakeBackend | None = None, *,
                  reply_timeout: float = WAIT) -> AsyncIterator[Relayed]:
    """A fake front-end and back-end joined by one relay over socket pairs."""
    fake_backend = backend or FakeBackend()
    front_peer, front_proxy = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    back_proxy, back_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = Relay(ProxyPolicy(profile), FdConnection(front_proxy, name="proxy-front"),
                  FdConnection(back_proxy, name="proxy-back"), reply_timeout=reply_timeout)
    serving = asyncio.create_task(fake_backend.serve(FdConnection(back_peer, name="backend")))
    task = asyncio.create_task(relay.run())
    frontend = FakeFrontend(FdConnection(front_peer, name="frontend"))
    try:
        yield Relayed(frontend, fake_backend, relay, task)
    finally:
        frontend.close()
        async with asyncio.timeout(WAIT):
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.gather(serving, return_exceptions=True)
