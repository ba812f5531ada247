"""Hostile peers against the shipped commands, run as real child processes.

``vhostcompat backend`` and ``vhostcompat proxy`` run exactly as deployed
(:mod:`vhostcompat.lab.commands`); the peers are written here, in Python,
and send what an attacker with access to a socket could send. After each
attack the child must still be running and serving another connection, and
its fds and memory (read from ``/proc/PID``) must come back to where they
were.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from tests.backend.helpers import TIMEOUT, FakeGuest, Frontend, RingPlace, new_eventfd
from vhostcompat.features import ProtocolFeature
from vhostcompat.lab.commands import (
    ProxyConfig,
    ProxyMode,
    RunningProxy,
    RunningReferenceBackend,
    run_proxy,
    run_reference_backend,
)
from vhostcompat.lab.process import ChildProcess, wait_until
from vhostcompat.transport import TransportError
from vhostcompat.vhostuser import (
    U64,
    FrontendRequest,
    MemoryTable,
    VringFile,
    VringState,
)

R = FrontendRequest
# Cut stalled peers off fast, so that tests stay short.
STALL_OPTIONS = ("--handshake-timeout", "1", "--message-timeout", "1")
FEATURES = "VIRTIO_F_VERSION_1,VHOST_USER_F_PROTOCOL_FEATURES,VIRTIO_NET_F_MQ"
BACKEND_OPTIONS = ("--features", FEATURES, "--protocol-features", "MQ,REPLY_ACK",
                   "--queues", "2", *STALL_OPTIONS)
VERSION_1 = 1 << 32
TX = 1  # the first queue pair's TX ring: the one the reference back-end drains
_DESCRIPTOR = struct.Struct("<QIHH")
NEXT = 1


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextlib.asynccontextmanager
async def reference_backend(run_dir: Path, options: Sequence[str] = BACKEND_OPTIONS,
                  name: str = "backend") -> AsyncIterator[RunningReferenceBackend]:
    """``vhostcompat backend`` with ``options`` (default: a small offer, short stalls)."""
    async with run_reference_backend(run_dir, name, options) as running:
        yield running


async def served(path: Path, process: ChildProcess) -> int:
    """Ask GET_FEATURES on a fresh connection; the answer (the peer still serves)."""
    process.ensure_running("serving another connection")
    # Retried while the listener's backlog is full of attackers.
    frontend = await Frontend.open(path, retry_for=TIMEOUT)
    try:
        reply = await frontend.ask(R.GET_FEATURES)
    finally:
        frontend.close()
    assert isinstance(reply.payload, U64)
    return reply.payload.value


async def settle(pid: int, baseline: int, process: ChildProcess,
                 timeout: float = 15.0) -> None:
    """Wait (bounded) until the child holds no more fds than ``baseline``."""
    await wait_until(lambda: fd_count(pid) <= baseline, timeout,
                     f"pid {pid} back to {baseline} fds", watch=[process])


async def closed_by_peer(frontend: Frontend) -> bool:
    """True once the peer closed the connection (reading past what it still sent)."""
    for _ in range(100):
        try:
            if await frontend.closed_by_backend(TIMEOUT):
                return True
        except TransportError:
            return True
    return False


async def quietly(frontend: Frontend, *steps: tuple[R, object, Sequence[int]]) -> None:
    """Send ``steps`` (request, payload, fds), ignoring a connection the peer closed."""
    with contextlib.suppress(TransportError):
        for request, payload, fds in steps:
            await frontend.send(request, payload, fds)  # type: ignore[arg-type]


async def round_trip(frontend: Frontend) -> bool:
    """GET_FEATURES answered (every earlier message handled), or False: the peer closed."""
    try:
        await frontend.send(R.GET_FEATURES)
        reply = await frontend.messages.recv_message()
    except TransportError:
        return False
    return reply is not None


async def opening(frontend: Frontend) -> None:
    """QEMU's opening without protocol features: rings start enabled on their kick."""
    await frontend.ask(R.GET_FEATURES)
    await frontend.send(R.SET_OWNER)
    await frontend.send(R.SET_FEATURES, U64(VERSION_1))


async def ring_connection(path: Path, guest: FakeGuest, place: RingPlace, call_fd: int,
                          kick_fd: int) -> Frontend:
    """A front-end that connected, opened like QEMU and set the TX ring up with these fds
    (however the peer took it)."""
    frontend = await Frontend.open(path)
    await opening(frontend)
    await quietly(frontend, *ring_steps(guest, place, call_fd, kick_fd))
    return frontend


async def closed_and_still_serving(frontend: Frontend, backend: RunningReferenceBackend) -> None:
    """The back-end closed ``frontend``'s connection and serves a new one."""
    assert await closed_by_peer(frontend)
    frontend.close()
    assert await served(backend.socket_path, backend.process)


def ring_steps(guest: FakeGuest, place: RingPlace, call_fd: int,
               kick_fd: int) -> list[tuple[R, object, Sequence[int]]]:
    """SET_MEM_TABLE and the TX ring's set-up, as QEMU sends them (fds duplicated)."""
    return [
        (R.SET_MEM_TABLE, MemoryTable((guest.region(),)), [guest.fd_copy()]),
        (R.SET_VRING_NUM, VringState(TX, place.num), []),
        (R.SET_VRING_ADDR, guest.address(TX, place), []),
        (R.SET_VRING_BASE, VringState(TX, 0), []),
        (R.SET_VRING_CALL, VringFile(TX), [os.dup(call_fd)]),
        (R.SET_VRING_KICK, VringFile(TX), [os.dup(kick_fd)]),
    ]


def long_chains(guest: FakeGuest, place: RingPlace) -> None:
    """Every descriptor chained to the next, and every available entry heading the chain."""
    for index in range(place.num):
        last = index == place.num - 1
        _DESCRIPTOR.pack_into(guest.memory, place.descriptors + 16 * index, 0x80000, 1,
                              0 if last else NEXT, 0 if last else index + 1)
    guest.make_available(place, [0] * place.num)


def half_header(path: Path, sent: bytes = b"\x01\x00\x00\x00\x01\x00") -> socket.socket:
    """A connection that sends the first bytes of a header (or nothing) and stops."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.fspath(path))
    if sent:
        sock.sendall(sent)
    return sock


HOSTILE_CATALOG = """
[[profile]]
version = "test.hostile"
virtio_features = ["VIRTIO_F_VERSION_1", "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_NET_F_MQ"]
protocol_features = ["MQ", "REPLY_ACK"]
max_queue_pairs = 1
"""


def proxy_config(run_dir: Path, backend_socket: Path) -> ProxyConfig:
    """A proxy in one-queue-pair mode in front of ``backend_socket``, stalls cut short."""
    catalog = run_dir / "hostile.toml"
    catalog.write_text(HOSTILE_CATALOG)
    return ProxyConfig(frontend=os.fspath(run_dir / "vhu0.sock"),
                       backend=os.fspath(backend_socket),
                       status_file=run_dir / "status.json",
                       mode=ProxyMode("test.hostile", catalogs=(catalog,)),
                       options=STALL_OPTIONS)


@contextlib.asynccontextmanager
async def proxied(run_dir: Path) -> AsyncIterator[tuple[RunningProxy, RunningReferenceBackend]]:
    """A reference back-end offering 2 queue pairs, behind a one-pair proxy."""
    async with reference_backend(run_dir) as backend, \
            run_proxy(proxy_config(run_dir, backend.socket_path), run_dir) as proxy:
        yield proxy, backend


async def qemu_start_up(frontend: Frontend, *, enable: bool = True) -> int:
    """QEMU 7.2's netdev start-up for one queue pair (and the device's ring enables,
    unless ``enable`` is False: what QEMU does when it wants more pairs than offered).
    Returns GET_QUEUE_NUM's answer."""
    await frontend.ask(R.GET_FEATURES)
    await frontend.ask(R.GET_PROTOCOL_FEATURES)
    await frontend.send(R.SET_PROTOCOL_FEATURES, U64(int(ProtocolFeature.MQ)))
    queues = await frontend.ask(R.GET_QUEUE_NUM)
    await frontend.send(R.SET_OWNER)
    await frontend.ask(R.GET_FEATURES)
    fds = [new_eventfd() for _ in range(4)]
    try:
        for ring in (0, 1):
            await frontend.send(R.SET_VRING_CALL, VringFile(ring), [fds[2 * ring]])
            await frontend.send(R.SET_VRING_ERR, VringFile(ring), [fds[2 * ring + 1]])
        if enable:
            for ring in (0, 1):
                await frontend.send(R.SET_VRING_ENABLE, VringState(ring, 1))
        assert await round_trip(frontend)
    finally:
        for fd in fds:
            os.close(fd)
    assert isinstance(queues.payload, U64)
    return queues.payload.value
