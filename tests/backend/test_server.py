"""Connection level: every bad input closes its own connection only, and releases it.

Two frontends connect to one backend and both map memory and hand over an
eventfd. One of them then sends a bad message; the backend must log one
ERROR line naming that connection and the reason, close that connection,
release every fd and mapping it owned, and keep serving the other one.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.backend.helpers import (
    CONFIG,
    OFFER,
    F,
    FakeGuest,
    Frontend,
    memfd,
    new_eventfd,
    run,
)
from tests.helpers import open_fd_count
from vhostcompat.backend import BackendServer, serve_backend
from vhostcompat.lab.process import wait_until
from vhostcompat.vhostuser import (
    U64,
    FrontendRequest,
    MemoryRegion,
    MemoryTable,
    Message,
    VringFile,
    VringState,
    encode,
)

R = FrontendRequest
_HEADER = struct.Struct("=III")
BadInput = Callable[[Frontend, FakeGuest], Awaitable[None]]



def raw(request: int, size: int, body: bytes = b"", flags: int = 1) -> bytes:
    return _HEADER.pack(request, flags, size) + body


async def truncated_header(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send_raw(raw(R.GET_FEATURES, 0)[:5])
    # Half-close: the backend sees the stream end inside a header.
    with socket.socket(fileno=os.dup(frontend.connection.fileno())) as sock:
        sock.shutdown(socket.SHUT_WR)


async def size_beyond_payload_type(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send_raw(raw(R.GET_FEATURES, 8, bytes(8)))


async def size_beyond_any_payload(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send_raw(raw(R.SET_MEM_TABLE, 1 << 20))


async def extra_fd(frontend: Frontend, guest: FakeGuest) -> None:
    # Encoded with one placeholder fd; two real ones travel instead.
    data, _ = encode(Message(R.SET_VRING_CALL, VringFile(0), fds=(0,)))
    first, second = new_eventfd(), new_eventfd()
    await frontend.send_raw(data, [first, second])
    os.close(first)
    os.close(second)


async def missing_fd(frontend: Frontend, guest: FakeGuest) -> None:
    data, _ = encode(Message(R.SET_MEM_TABLE, MemoryTable((guest.region(),)), fds=(0,)))
    await frontend.send_raw(data)


async def ring_index_out_of_range(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send(R.SET_VRING_NUM, VringState(2, 256))


async def overlapping_regions(frontend: Frontend, guest: FakeGuest) -> None:
    table = MemoryTable((MemoryRegion(0, 1 << 16, 0x10_0000, 0),
                         MemoryRegion(0x8000, 1 << 16, 0x20_0000, 0)))
    fds = [guest.fd_copy(), guest.fd_copy()]
    await frontend.send(R.SET_MEM_TABLE, table, fds)
    for fd in fds:
        os.close(fd)


async def region_out_of_bounds(frontend: Frontend, guest: FakeGuest) -> None:
    fd = memfd(1 << 16)
    await frontend.send(R.SET_MEM_TABLE, MemoryTable((guest.region(1 << 20),)), [fd])
    os.close(fd)


async def unknown_request(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send_raw(raw(99, 0))


async def reply_from_the_frontend(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send_raw(raw(R.GET_FEATURES, 8, bytes(8), flags=0x5))


async def features_never_offered(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send(R.SET_FEATURES, U64(OFFER | F.VIRTIO_RING_F_INDIRECT_DESC))


async def ring_size_beyond_the_limit(frontend: Frontend, guest: FakeGuest) -> None:
    await frontend.send(R.SET_VRING_NUM, VringState(1, 512))


async def request_not_served(frontend: Frontend, guest: FakeGuest) -> None:
    fd = new_eventfd()
    await frontend.send(R.GPU_SET_SOCKET, fds=[fd])
    os.close(fd)


BAD_INPUTS: dict[str, tuple[BadInput, str]] = {
    "truncated header": (truncated_header, "connection closed in the middle of a message header"),
    "size larger than the payload type": (size_beyond_payload_type,
                                          "GET_FEATURES: request payload size 8 does not fit "
                                          "Empty (0 bytes)"),
    "size larger than any payload": (size_beyond_any_payload,
                                     "SET_MEM_TABLE: request payload size 1048576"),
    "one fd too many": (extra_fd, "SET_VRING_CALL: 2 fds received, 1 expected"),
    "fd missing": (missing_fd, "SET_MEM_TABLE: 0 fds received, 1 expected"),
    "ring index out of range": (ring_index_out_of_range,
                                "SET_VRING_NUM (ring 2): ring index 2 out of range "
                                "(at most 2 rings)"),
    "memory regions overlapping": (overlapping_regions, "overlap in guest physical space"),
    "memory region out of bounds": (region_out_of_bounds,
                                    "ends at offset 0x100000, out of bounds of its fd "
                                    "(0x10000 bytes)"),
    "unknown request": (unknown_request, "unknown front-end request 99"),
    "reply sent by the frontend": (reply_from_the_frontend, "only sends requests"),
    "features never offered": (features_never_offered,
                               "SET_FEATURES: acks features the back-end did not offer: "
                               "VIRTIO_RING_F_INDIRECT_DESC"),
    "ring size beyond the limit": (ring_size_beyond_the_limit,
                                   "SET_VRING_NUM (ring 1): ring size 512 out of range "
                                   "(1 to 256)"),
    "request not served": (request_not_served,
                           "GPU_SET_SOCKET: not served by the reference backend"),
}


async def connect_and_hold_resources(server: BackendServer, guest: FakeGuest,
                                     ) -> tuple[Frontend, str]:
    """A frontend whose device maps guest memory and holds a call eventfd."""
    known = set(server.devices)
    frontend = await Frontend.open(server.socket_path)
    reply = await frontend.ask(R.GET_FEATURES)
    assert reply.payload == U64(CONFIG.features)
    (name,) = set(server.devices) - known
    fd = guest.fd_copy()
    await frontend.send(R.SET_MEM_TABLE, MemoryTable((guest.region(),)), [fd])
    os.close(fd)
    call = new_eventfd()
    await frontend.send(R.SET_VRING_CALL, VringFile(0), [call])
    os.close(call)
    # A reply proves everything before it was applied.
    await frontend.ask(R.GET_FEATURES)
    device = server.devices[name]
    assert len(device.memory) == 1 and device.queues[0].call_fd is not None
    return frontend, name


@pytest.mark.parametrize("label", sorted(BAD_INPUTS))
def test_a_bad_input_closes_only_its_own_connection(
        short_dir: Path, caplog: pytest.LogCaptureFixture, label: str) -> None:
    bad_input, fragment = BAD_INPUTS[label]
    caplog.set_level(logging.INFO, logger="vhostcompat")

    async def scenario() -> None:
        guest = FakeGuest()
        async with serve_backend(CONFIG, short_dir / "vhost.sock") as server:
            baseline = open_fd_count()
            broken, broken_name = await connect_and_hold_resources(server, guest)
            healthy, healthy_name = await connect_and_hold_resources(server, guest)

            await bad_input(broken, guest)

            assert await broken.closed_by_backend()
            closed = server.closed[-1]
            assert closed.name == broken_name
            assert closed.reason is not None and fragment in closed.reason
            assert closed.device.closed and len(closed.device.memory) == 0
            assert not closed.device.queues
            errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
            assert len(errors) == 1, [record.getMessage() for record in errors]
            line = errors[0].getMessage()
            assert broken_name in line and fragment in line and "peer pid" in line
            assert "\n" not in line

            # The other connection is untouched and still served.
            assert list(server.devices) == [healthy_name]
            reply = await healthy.ask(R.GET_FEATURES)
            assert reply.payload == U64(CONFIG.features)
            assert len(server.devices[healthy_name].memory) == 1

            broken.close()
            healthy.close()
            await _wait_closed(server, 2)
            # Every fd the two connections had the backend hold is released.
            assert open_fd_count() == baseline
        guest.close()

    run(scenario)


async def _wait_closed(server: BackendServer, count: int) -> None:
    await wait_until(lambda: len(server.closed) >= count, 5.0,
                     "the backend to notice the frontend closing")


def test_a_clean_close_is_not_an_error(short_dir: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vhostcompat")

    async def scenario() -> None:
        async with serve_backend(CONFIG, short_dir / "vhost.sock") as server:
            frontend = await Frontend.open(server.socket_path)
            await frontend.ask(R.GET_FEATURES)
            frontend.close()
            await _wait_closed(server, 1)
            assert server.closed[0].reason is None
        assert not (short_dir / "vhost.sock").exists()

    run(scenario)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    # Requests and replies at DEBUG, on the backend's logger, labelled with the connection.
    exchanged = [(record.name, *record.getMessage().split(": ", 1))
                 for record in caplog.records if record.name.startswith("vhostcompat.backend")
                 and record.getMessage().partition(": ")[2][:3] in ("<--", "-->")]
    assert {(name, label) for name, label, _ in exchanged} == {
        ("vhostcompat.backend.server", "vhost_sock#1")}
    assert any(text.startswith("<-- GET_FEATURES") for _, _, text in exchanged)
    assert any(text.startswith("--> GET_FEATURES reply") for _, _, text in exchanged)


def test_100_connections_do_not_grow_the_logging_registry(short_dir: Path) -> None:
    async def scenario() -> None:
        async with serve_backend(CONFIG, short_dir / "vhost.sock") as server:
            before = set(logging.Logger.manager.loggerDict)
            for _ in range(100):
                frontend = await Frontend.open(server.socket_path)
                assert (await frontend.ask(R.GET_FEATURES)).payload == U64(CONFIG.features)
                frontend.close()
            await _wait_closed(server, 100)
            assert set(logging.Logger.manager.loggerDict) == before

    run(scenario)


def test_closing_the_server_closes_its_connections(short_dir: Path) -> None:
    async def scenario() -> None:
        guest = FakeGuest()
        async with serve_backend(CONFIG, short_dir / "vhost.sock") as server:
            baseline = open_fd_count() - 1  # the listening socket goes too
            frontend, _ = await connect_and_hold_resources(server, guest)
        assert await frontend.closed_by_backend()
        assert server.closed[0].device.closed
        frontend.close()
        assert open_fd_count() == baseline
        guest.close()

    run(scenario)
