"""The fd-carrying asyncio transport: fds really cross, errors close them, no leaks."""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.helpers import open_fd_count, run_bounded
from tests.vhostuser.helpers import close_all, is_open, new_fds
from vhostcompat.errors import InputError, RemoteProtocolError
from vhostcompat.transport import (
    ConnectError,
    ConnectionClosedError,
    FdConnection,
    FdTransferError,
    MessageConnection,
    PeerStalledError,
    SocketPathError,
    StallTimeouts,
    TransportError,
    connect,
    listen,
)
from vhostcompat.vhostuser import (
    U64,
    Channel,
    FrontendRequest,
    MemoryRegion,
    MemoryTable,
    Message,
    Role,
    VringFile,
    encode,
    make_reply,
)

TIMEOUT = 10.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an async scenario with a bound on its duration."""
    run_bounded(scenario(), TIMEOUT)


def connection_pair() -> tuple[FdConnection, FdConnection]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return FdConnection(left, name="left"), FdConnection(right, name="right")


def test_fds_cross_and_still_point_at_the_same_file() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        read_end, write_end = os.pipe()
        await left.send(b"hello", [write_end])
        data, fds = await right.recv()
        assert data == b"hello" and len(fds) == 1
        assert fds[0] != write_end
        os.write(fds[0], b"through the passed fd")
        assert os.read(read_end, 100) == b"through the passed fd"
        assert os.get_inheritable(fds[0]) is False  # MSG_CMSG_CLOEXEC
        close_all([read_end, write_end, *fds])
        left.close()
        right.close()
    run(scenario)


def test_end_of_stream_and_use_after_close() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        await left.send(b"last words")
        left.close()
        assert await right.recv() == (b"last words", [])
        assert await right.recv() == (b"", [])
        right.close()
        with pytest.raises(ConnectionClosedError):
            await right.recv()
    run(scenario)


def test_close_wakes_a_pending_recv() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        pending = asyncio.create_task(right.recv())
        await asyncio.sleep(0)  # let it block in the reader callback
        right.close()
        with pytest.raises(ConnectionClosedError):
            await pending
        left.close()
    run(scenario)


def test_too_many_fds_truncate_and_are_all_closed() -> None:
    async def scenario() -> None:
        before = open_fd_count()
        raw, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        receiver = FdConnection(other, name="receiver")
        fds = new_fds(12)
        raw.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        close_all(fds)
        with pytest.raises(FdTransferError, match="more than 8 fds"):
            await receiver.recv()
        receiver.close()
        raw.close()
        assert open_fd_count() == before
    run(scenario)


def test_send_refuses_fds_without_data() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        with pytest.raises(Exception, match="at least one byte"):
            await left.send(b"", [0])
        left.close()
        right.close()
    run(scenario)


def test_large_payload_crosses_a_full_socket_buffer() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        blob = os.urandom(4 << 20)  # far beyond the socket buffer: exercises add_writer
        received = bytearray()

        async def drain() -> None:
            while len(received) < len(blob):
                data, _ = await right.recv()
                received.extend(data)

        await asyncio.gather(left.send(blob), drain())
        assert bytes(received) == blob
        left.close()
        right.close()
    run(scenario)


def test_a_send_that_waits_is_never_overtaken() -> None:
    """Sends try the socket at once only when no earlier send is still waiting."""
    async def scenario() -> None:
        left, right = connection_pair()
        blob = os.urandom(4 << 20)
        first = asyncio.create_task(left.send(blob))
        while not left.sending:
            await asyncio.sleep(0)
        with pytest.raises(TransportError, match="in progress"):
            left.send_nowait(b"tail")
        second = asyncio.create_task(left.send(b"tail"))
        received = bytearray()
        while len(received) < len(blob) + 4:
            data, _ = await right.recv()
            received.extend(data)
        await asyncio.gather(first, second)
        assert bytes(received) == blob + b"tail"
        assert not left.sending and left.send_nowait(b"!") == 1
        left.close()
        right.close()
    run(scenario)


def test_a_message_with_too_many_fds_is_never_sent() -> None:
    """Forwarded bytes (``wire``) skip the encoder's checks, never the fd limit."""
    async def scenario() -> None:
        left, right = connection_pair()
        link = MessageConnection(left, Channel.FRONTEND, Role.FRONTEND)
        fds = new_fds(9)
        wire, _ = encode(Message(FrontendRequest.GET_FEATURES))
        with pytest.raises(TransportError, match="at most 8"):
            await link.send_message(Message(FrontendRequest.GET_FEATURES, fds=tuple(fds)), wire)
        with socket.socket(fileno=os.dup(right.fileno())) as peer:
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                peer.recv(1)  # nothing was sent
        close_all(fds)
        left.close()
        right.close()
    run(scenario)


def test_messages_with_fds_over_a_message_connection() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        frontend = MessageConnection(left, Channel.FRONTEND, Role.FRONTEND)
        backend = MessageConnection(right, Channel.FRONTEND, Role.BACKEND)
        fds = new_fds(3)
        regions = (MemoryRegion(0, 0x1000, 0x10000, 0), MemoryRegion(0x1000, 0x1000, 0x20000, 0))
        sent = [
            Message(FrontendRequest.GET_FEATURES),
            Message(FrontendRequest.SET_MEM_TABLE, MemoryTable(regions), fds=tuple(fds[:2])),
            Message(FrontendRequest.SET_VRING_CALL, VringFile(1), fds=(fds[2],)),
        ]
        for message in sent:
            await frontend.send_message(message)
        received: list[Message] = []
        for _ in sent:
            got = await backend.recv_message()
            assert got is not None
            received.append(got)
        assert [message.request for message in received] == [message.request for message in sent]
        assert [len(message.fds) for message in received] == [0, 2, 1]
        for message in received:
            close_all(message.fds)
        await backend.send_message(make_reply(sent[0], U64(0x4000_0000)))
        reply = await frontend.recv_message()
        assert reply is not None and reply.payload == U64(0x4000_0000)
        frontend.close()
        assert await backend.recv_message() is None  # clean EOF
        backend.close()
        close_all(fds)
    run(scenario)


def test_message_connection_refuses_garbage_and_eof_mid_message() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        backend = MessageConnection(right, Channel.FRONTEND, Role.BACKEND)
        await left.send(b"\x63\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00")
        with pytest.raises(RemoteProtocolError, match="unknown front-end request 99"):
            await backend.recv_message()
        backend.close()
        left.close()

        left, right = connection_pair()
        backend = MessageConnection(right, Channel.FRONTEND, Role.BACKEND)
        await left.send(b"\x01\x00\x00")
        left.close()
        with pytest.raises(RemoteProtocolError, match="closed in the middle"):
            await backend.recv_message()
        backend.close()
    run(scenario)


def test_listen_and_connect_100_times_without_leaking(short_dir: Path) -> None:
    path = short_dir / "vhost.sock"

    async def echo(connection: FdConnection) -> None:
        while True:
            data, fds = await connection.recv()
            if not data:
                return
            await connection.send(data, fds)
            close_all(fds)

    async def scenario() -> None:
        before = open_fd_count()
        async with await listen(path, echo) as listener:
            for number in range(100):
                async with await connect(path) as client:
                    fds = new_fds(1)
                    await client.send(number.to_bytes(2, "little"), fds)
                    data, echoed = await client.recv()
                    assert data == number.to_bytes(2, "little") and len(echoed) == 1
                    close_all(fds + echoed)
            assert listener.path == str(path)
        assert not path.exists()
        assert open_fd_count() == before
    run(scenario)


def test_100_connections_do_not_grow_the_logging_registry(
        short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Connections log through their module's logger, labelled: no logger per connection."""
    path = short_dir / "vhost.sock"
    caplog.set_level(logging.DEBUG, logger="vhostcompat.transport")

    async def answer(connection: FdConnection) -> None:
        link = MessageConnection(connection, Channel.FRONTEND, Role.BACKEND)
        while (request := await link.recv_message()) is not None:
            await link.send_message(make_reply(request, U64(7)))

    async def scenario() -> None:
        async with await listen(path, answer):
            before = set(logging.Logger.manager.loggerDict)
            for _ in range(100):
                async with await connect(path) as client:
                    link = MessageConnection(client, Channel.FRONTEND, Role.FRONTEND)
                    await link.send_message(Message(FrontendRequest.GET_FEATURES))
                    assert await link.recv_message() is not None
            assert set(logging.Logger.manager.loggerDict) == before

    run(scenario)
    # The DEBUG lines are still there, each naming its connection.
    served = [record.getMessage() for record in caplog.records
              if record.name == "vhostcompat.transport" and "<-- GET_FEATURES" in
              record.getMessage() and record.getMessage().startswith("vhost_sock#")]
    assert [line.split(": ", 1)[0] for line in served] == [
        f"vhost_sock#{number}" for number in range(1, 101)]
    assert all(line.split(": ", 1)[1].startswith("<-- GET_FEATURES") for line in served)


def test_failing_handler_is_logged_and_its_connection_closed(
        short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = short_dir / "s"

    async def broken(connection: FdConnection) -> None:
        raise RemoteProtocolError("peer misbehaved")

    async def scenario() -> None:
        async with await listen(path, broken), await connect(path) as client:
            assert await client.recv() == (b"", [])  # the server side was closed
    run(scenario)
    assert "peer misbehaved" in caplog.text


def test_listen_refuses_a_regular_file(short_dir: Path) -> None:
    path = short_dir / "file"
    path.write_text("not a socket")

    async def scenario() -> None:
        with pytest.raises(SocketPathError, match="is not a socket"):
            await listen(path, _unused)
    run(scenario)
    assert path.read_text() == "not a socket"


def test_listen_refuses_a_symlink(short_dir: Path) -> None:
    target = short_dir / "target"
    target.write_text("")
    link = short_dir / "link"
    link.symlink_to(target)

    async def scenario() -> None:
        with pytest.raises(SocketPathError, match="symbolic link"):
            await listen(link, _unused)
    run(scenario)
    assert link.is_symlink()


def test_listen_replaces_a_stale_socket_but_not_a_live_one(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens

    async def scenario() -> None:
        async with await listen(path, _unused):
            with pytest.raises(SocketPathError, match="another process is listening"):
                await listen(path, _unused)
    run(scenario)


def test_socket_path_errors_are_input_errors(short_dir: Path) -> None:
    long_path = short_dir / ("x" * 120)

    async def scenario() -> None:
        with pytest.raises(InputError, match="longer than 107 bytes"):
            await listen(long_path, _unused)
        with pytest.raises(SocketPathError, match="longer than 107 bytes"):
            await connect(long_path)
    run(scenario)


def test_connect_retries_until_the_server_appears(short_dir: Path) -> None:
    path = short_dir / "late.sock"

    async def scenario() -> None:
        attempt = asyncio.create_task(connect(path, retry_for=5.0, backoff=0.01))
        await asyncio.sleep(0.1)  # the scenario: the server starts late
        assert not attempt.done()
        async with await listen(path, _hold):
            client = await attempt
            client.close()
    run(scenario)


def test_connect_gives_up_with_a_clear_error(short_dir: Path) -> None:
    path = short_dir / "nobody.sock"

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectError, match=r"nobody.sock: No such file.*attempts") as caught:
            await connect(path, retry_for=0.2, backoff=0.02)
        assert caught.value.attempts > 2
        assert loop.time() - started < 2.0
        regular = short_dir / "regular"
        regular.write_text("")
        with pytest.raises(SocketPathError, match="is not a socket"):
            await connect(regular)
    run(scenario)


def test_a_closed_listener_leaves_no_handler_running(short_dir: Path) -> None:
    path = short_dir / "h.sock"

    async def scenario() -> None:
        accepted = asyncio.Event()

        async def hold(connection: FdConnection) -> None:
            accepted.set()
            await _hold(connection)

        listener = await listen(path, hold)
        client = await connect(path)
        await accepted.wait()
        assert listener.connections == 1
        listener.close()
        await listener.wait_closed()
        assert listener.connections == 0
        assert await client.recv() == (b"", [])
        client.close()
    run(scenario)


async def _unused(connection: FdConnection) -> None:
    raise AssertionError("no client expected")


async def _hold(connection: FdConnection) -> None:
    """Keep the connection until the peer closes it."""
    while (await connection.recv())[0]:
        pass


def test_received_fds_are_closed_when_the_message_is_refused() -> None:
    async def scenario() -> None:
        left, right = connection_pair()
        backend = MessageConnection(right, Channel.FRONTEND, Role.BACKEND)
        fds = new_fds(2)
        received_before = open_fd_count()
        # SET_VRING_CALL without NOFD takes one fd; two arrive.
        await left.send(b"\x0d\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00" + bytes(8), fds)
        with pytest.raises(RemoteProtocolError, match="2 fds received, 1 expected"):
            await backend.recv_message()
        assert open_fd_count() == received_before
        assert all(is_open(fd) for fd in fds)  # ours are untouched
        close_all(fds)
        backend.close()
        left.close()
    run(scenario)


def test_a_full_backlog_is_never_a_connection(short_dir: Path) -> None:
    """asyncio reports a Unix connect that got EAGAIN (backlog full) as connected."""
    path = short_dir / "full.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)  # never accepted: the backlog fills at once
    waiting: list[socket.socket] = []

    async def scenario() -> None:
        for _ in range(4):  # fill it (the kernel allows backlog + 1)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(path))
            except BlockingIOError:
                sock.close()
                break
            waiting.append(sock)
        with pytest.raises(ConnectError, match="backlog is full"):
            await connect(path)

    try:
        run_bounded(scenario(), 10)
    finally:
        for sock in waiting:
            sock.close()
        listener.close()


def test_a_peer_that_stops_mid_message_or_never_speaks_is_cut_off() -> None:
    async def scenario() -> None:
        for sent, reason in ((b"\x01\x00\x00\x00", "stalled in the middle of a message"),
                             (b"", "sent no message within")):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            link = MessageConnection(FdConnection(ours), Channel.FRONTEND, Role.BACKEND,
                                     timeouts=StallTimeouts(first_message=0.2, message=0.2))
            if sent:
                theirs.send(sent)
            with pytest.raises(PeerStalledError, match=reason):
                await link.recv_message()
            link.close()
            theirs.close()

    run_bounded(scenario(), 10)
