"""Hostile front-ends against ``vhostcompat backend`` running as a child process.

Each attack is one the back-end used to lose to (issue 11): a shrunk memfd
(SIGBUS), a blocking or non-eventfd call/kick fd (a frozen or spinning event
loop), num^2 descriptor walks in one kick, connections that stall. After
each, the back-end still runs, serves another connection and holds no more
fds than before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from pathlib import Path

import pytest

from tests.backend.helpers import FakeGuest, Frontend, RingPlace, memfd, new_eventfd, run
from tests.security.helpers import (
    closed_and_still_serving,
    closed_by_peer,
    fd_count,
    half_header,
    long_chains,
    opening,
    quietly,
    reference_backend,
    ring_connection,
    ring_steps,
    round_trip,
    rss_kib,
    served,
    settle,
)
from vhostcompat.backend import DirtyLog, GuestMemory, GuestMemoryError
from vhostcompat.lab.process import wait_until
from vhostcompat.transport import TransportError
from vhostcompat.vhostuser import LogDescription, MemoryRegion

pytestmark = pytest.mark.timeout(120)

SMALL_RING = RingPlace(8, 0x1000, 0x1000 + 16 * 8, 0x3000)


def _kick(fd: int) -> None:
    os.eventfd_write(fd, 1)


def test_a_shrunk_memfd_never_kills_the_backend(short_dir: Path) -> None:
    """Map unsealed memory, shrink it, kick: refused at SET_MEM_TABLE, nothing faults."""
    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            pid = backend.process.pid
            baseline = fd_count(pid)
            guest = FakeGuest(seal=False)
            call, kick = new_eventfd(), new_eventfd()
            try:
                guest.make_available(SMALL_RING, [0])
                frontend = await ring_connection(backend.socket_path, guest, SMALL_RING, call,
                                                 kick)
                await round_trip(frontend)  # the table is mapped (or refused) by now
                # The attack: shrink the memory under the back-end's mapping.
                guest.memory.close()
                os.ftruncate(guest.fd, 0)
                _kick(kick)
                await closed_and_still_serving(frontend, backend)
            finally:
                os.close(call)
                os.close(kick)
                os.close(guest.fd)
            await settle(pid, baseline, backend.process)
            assert "not sealed against shrinking (F_SEAL_SHRINK" in backend.process.log_text()

    run(scenario, timeout=60)


def test_a_sealed_memfd_cannot_be_shrunk_under_the_backend(short_dir: Path) -> None:
    """What QEMU sends (a sealed memfd) is served, and the attacker's ftruncate fails."""
    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            guest = FakeGuest()
            call, kick = new_eventfd(), new_eventfd()
            try:
                guest.put_descriptor(SMALL_RING, 0, 0x80000, 64)
                guest.make_available(SMALL_RING, [0])
                frontend = await ring_connection(backend.socket_path, guest, SMALL_RING, call,
                                                 kick)
                with pytest.raises(PermissionError):
                    os.ftruncate(guest.fd, 0)
                _kick(kick)
                await wait_until(lambda: guest.used_index(SMALL_RING) == 1, 10,
                                 "the buffer to be used", watch=[backend.process])
                frontend.close()
            finally:
                os.close(call)
                os.close(kick)
                guest.close()

    run(scenario, timeout=60)


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a blocking write to it never returns."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, bytes(65536))
    os.set_blocking(write_end, True)
    return read_end, write_end


def _full_blocking_eventfd() -> int:
    fd = os.eventfd(0)  # blocking, as an attacker would hand it over
    os.eventfd_write(fd, 0xFFFF_FFFF_FFFF_FFFE)  # the counter's maximum
    return fd


@pytest.mark.parametrize("call_kind", ["full pipe", "full blocking eventfd"])
def test_a_call_fd_that_blocks_never_freezes_the_backend(short_dir: Path,
                                                         call_kind: str) -> None:
    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            pid = backend.process.pid
            baseline = fd_count(pid)
            guest = FakeGuest()
            kick = new_eventfd()
            extra: list[int] = []
            if call_kind == "full pipe":
                read_end, call = _full_pipe()
                extra.append(read_end)
            else:
                call = _full_blocking_eventfd()
            try:
                guest.put_descriptor(SMALL_RING, 0, 0x80000, 64)
                guest.make_available(SMALL_RING, [0])
                frontend = await ring_connection(backend.socket_path, guest, SMALL_RING, call,
                                                 kick)
                _kick(kick)
                if call_kind == "full pipe":
                    assert await closed_by_peer(frontend)  # refused: not an eventfd
                else:
                    # Accepted and made non-blocking: the full counter is skipped.
                    await wait_until(lambda: guest.used_index(SMALL_RING) == 1, 10,
                                     "the buffer to be used", watch=[backend.process])
                # Every other connection is still served.
                assert await served(backend.socket_path, backend.process)
                frontend.close()
            finally:
                for fd in (call, kick, *extra):
                    os.close(fd)
                guest.close()
            await settle(pid, baseline, backend.process)
            # And SIGTERM still stops it cleanly.
            assert await backend.process.stop() == 0
            if call_kind == "full pipe":
                assert "SET_VRING_CALL: ring 1: not an eventfd (pipe:" in \
                    backend.process.log_text()

    run(scenario, timeout=60)


@pytest.mark.parametrize("kick_kind", ["pipe at end of file", "listening socket"])
def test_a_kick_fd_that_is_not_an_eventfd_is_refused(short_dir: Path, kick_kind: str) -> None:
    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            pid = backend.process.pid
            baseline = fd_count(pid)
            guest = FakeGuest()
            call = new_eventfd()
            keep: list[socket.socket] = []
            if kick_kind == "listening socket":
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(os.fspath(short_dir / "kick.sock"))
                listener.listen(16)
                keep.append(listener)
                kick = os.dup(listener.fileno())
                # Someone connects: the socket stays readable forever.
                connector = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                connector.connect(os.fspath(short_dir / "kick.sock"))
                keep.append(connector)
            else:
                kick, write_end = os.pipe()
                os.close(write_end)  # readable at once, forever: end of file
            try:
                frontend = await ring_connection(backend.socket_path, guest, SMALL_RING, call,
                                                 kick)
                await closed_and_still_serving(frontend, backend)
            finally:
                os.close(call)
                os.close(kick)
                for sock in keep:
                    sock.close()
                guest.close()
            await settle(pid, baseline, backend.process)
            log = backend.process.log_text()
            assert "SET_VRING_KICK: ring 1: not an eventfd" in log
            assert "Traceback" not in log and len(log) < 20_000

    run(scenario, timeout=60)


def test_one_kick_of_num_squared_descriptors_never_starves_other_connections(
        short_dir: Path) -> None:
    """2048 chains of 2048 descriptors: another connection is answered mid-drain."""
    num = 2048
    place = RingPlace(num, 0x10000, 0x10000 + 16 * num, 0x10000 + 16 * num + 8192)

    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            guest = FakeGuest()
            call, kick = new_eventfd(), new_eventfd()
            try:
                long_chains(guest, place)
                frontend = await ring_connection(backend.socket_path, guest, place, call, kick)
                _kick(kick)
                await wait_until(lambda: guest.used_index(place) > 0, 20,
                                 "the first chains to be used", watch=[backend.process])
                assert await served(backend.socket_path, backend.process)
                # Answered while the drain still had most of its 4 million steps to go.
                assert guest.used_index(place) < num
                frontend.close()  # the rest of the drain is abandoned with the connection
                assert await served(backend.socket_path, backend.process)
            finally:
                os.close(call)
                os.close(kick)
                guest.close()

    run(scenario, timeout=60)


def test_stalled_connections_are_cut_off(short_dir: Path) -> None:
    """200 connections: half send half a header, half send nothing; all are closed."""
    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            pid = backend.process.pid
            baseline = fd_count(pid)
            stalled = [half_header(backend.socket_path, b"" if number % 2 else
                                   b"\x01\x00\x00\x00\x01\x00")
                       for number in range(200)]
            try:
                await wait_until(lambda: fd_count(pid) >= baseline + 150, 10,
                                 "the stalled connections to be accepted",
                                 watch=[backend.process])
                assert await served(backend.socket_path, backend.process)
                await settle(pid, baseline, backend.process)
            finally:
                for sock in stalled:
                    sock.close()
            log = backend.process.log_text()
            assert "stalled in the middle of a message (6 bytes received" in log
            assert "sent no message within 1 s of connecting" in log

    run(scenario, timeout=60)


async def _attack(path: Path, number: int) -> None:
    """One of four attacks, by ``number``: unsealed memory, a pipe as kick fd,
    an unknown request, half a header then close."""
    kind = number % 4
    if kind == 3:
        half_header(path).close()
        return
    guest = FakeGuest(size=1 << 16, seal=kind != 0)
    call, kick = new_eventfd(), new_eventfd()
    pipe_kick, write_end = os.pipe()
    os.close(write_end)
    try:
        frontend = await Frontend.open(path)
        await opening(frontend)
        if kind == 2:
            with contextlib.suppress(TransportError):
                await frontend.send_raw(struct.pack("=III", 999, 1, 0))
        else:
            await quietly(frontend, *ring_steps(guest, SMALL_RING, call,
                                                pipe_kick if kind == 1 else kick))
        assert await closed_by_peer(frontend)
        frontend.close()
    finally:
        for fd in (call, kick, pipe_kick):
            os.close(fd)
        guest.close()


def test_200_hostile_connections_leave_fds_and_memory_where_they_were(
        short_dir: Path) -> None:
    """The attacks above, 200 connections in all: fds back to the baseline, RSS flat."""
    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            pid, path = backend.process.pid, backend.socket_path
            baseline = fd_count(pid)
            for number in range(20):  # warm up: allocator pools, code paths
                await _attack(path, number)
            await settle(pid, baseline, backend.process)
            rss_before = rss_kib(pid)
            for number in range(180):
                await _attack(path, number)
                if number % 40 == 0:
                    assert await served(path, backend.process)
            await settle(pid, baseline, backend.process)
            assert await served(path, backend.process)
            growth = rss_kib(pid) - rss_before
            assert growth < 4096, f"RSS grew by {growth} KiB over 180 hostile connections"

    run(scenario, timeout=90)


@pytest.mark.parametrize("what", ["memory table", "dirty log"])
def test_a_memfd_without_seals_is_refused_before_it_is_mapped(what: str) -> None:
    """The seal is read from the fd itself (F_GET_SEALS), not assumed."""
    fd = memfd(1 << 16, seal=False)
    memory = GuestMemory()

    def use() -> None:
        if what == "memory table":
            memory.set_table([MemoryRegion(0, 1 << 16, 0x7F00_0000_0000, 0)], [fd])
        else:
            DirtyLog(fd, LogDescription(1 << 16, 0)).close()

    try:
        with pytest.raises(GuestMemoryError, match="not sealed against shrinking"):
            use()
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        use()
    finally:
        memory.close()
        os.close(fd)
