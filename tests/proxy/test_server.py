"""The proxy server: socket roles, paths refused, restarts, leaks, isolation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import open_fd_count, run_bounded
from tests.proxy.fakes import (
    NARROW,
    WAIT,
    F,
    FakeBackend,
    FakeFrontend,
    PeerClosedError,
)
from vhostcompat.proxy import (
    Endpoint,
    ProxyOptions,
    ProxyPolicy,
    ProxyServer,
    ProxyState,
    RelayOutcome,
    SocketRole,
)
from vhostcompat.transport import FdConnection, Listener, SocketPathError, connect, listen
from vhostcompat.vhostuser import U64, FrontendRequest, MemoryRegion, MemoryTable, Message, encode

pytestmark = pytest.mark.timeout(60)

# No pause between short relays: the tests make hundreds of them on purpose.
FAST = ProxyOptions(reply_timeout=1.0, backend_timeout=2.0, max_backoff=0.0,
                    takeover_timeout=0.2)



def run(scenario: Coroutine[Any, Any, None], timeout: float = 40) -> None:
    run_bounded(scenario, timeout)


class Interface:
    """One proxied interface in the test's event loop: fake back-end, proxy, paths."""

    def __init__(self, directory: Path, name: str, backend: FakeBackend, *,
                 frontend_role: SocketRole = SocketRole.SERVER,
                 backend_role: SocketRole = SocketRole.CLIENT,
                 options: ProxyOptions = FAST) -> None:
        self.frontend_path = directory / f"{name}.sock"
        self.backend_path = directory / f"{name}-be.sock"
        self.backend = backend
        self.server = ProxyServer(ProxyPolicy(NARROW),
                                  Endpoint(str(self.frontend_path), frontend_role),
                                  Endpoint(str(self.backend_path), backend_role),
                                  options=options, name=name)
        self.backend_listener: Listener | None = None

    async def start_backend(self) -> None:
        self.backend_listener = await listen(self.backend_path, self.backend.serve)

    async def stop_backend(self) -> None:
        """The back-end goes away (an upgrade): its socket and connections close."""
        assert self.backend_listener is not None
        listener, self.backend_listener = self.backend_listener, None
        listener.close()
        await listener.wait_closed()

    async def frontend(self) -> FakeFrontend:
        return FakeFrontend(await connect(self.frontend_path, retry_for=WAIT))


@contextlib.asynccontextmanager
async def interface(directory: Path, name: str = "vhu0", backend: FakeBackend | None = None,
                    **options: Any) -> AsyncIterator[Interface]:
    """A proxy with the default roles in front of a listening fake back-end."""
    iface = Interface(directory, name, backend or FakeBackend(), **options)
    await iface.start_backend()
    try:
        async with iface.server:
            yield iface
    finally:
        if iface.backend_listener is not None:
            await iface.stop_backend()


async def negotiate(frontend: FakeFrontend) -> None:
    await frontend.handshake()
    await frontend.start_ring(0)
    await frontend.start_ring(1)
    await frontend.sync()


# -- paths -----------------------------------------------------------------------------

def test_endpoint_suffixes_set_the_role() -> None:
    assert Endpoint.parse("/run/a.sock", SocketRole.SERVER) == Endpoint("/run/a.sock",
                                                                        SocketRole.SERVER)
    assert Endpoint.parse("/run/a.sock:client", SocketRole.SERVER).role is SocketRole.CLIENT
    assert Endpoint.parse("/run/a.sock:server", SocketRole.CLIENT) == Endpoint(
        "/run/a.sock", SocketRole.SERVER)
    assert str(Endpoint("/x", SocketRole.SERVER)) == "/x (proxy listens)"


def test_regular_files_symlinks_and_long_paths_are_refused(short_dir: Path) -> None:
    regular = short_dir / "file"
    regular.write_text("not a socket")
    with pytest.raises(SocketPathError, match="exists and is not a socket"):
        Endpoint(str(regular), SocketRole.CLIENT).check()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(short_dir / "live.sock"))
    link = short_dir / "link.sock"
    link.symlink_to(short_dir / "live.sock")
    try:
        for role in SocketRole:
            with pytest.raises(SocketPathError, match="is a symbolic link"):
                Endpoint(str(link), role).check()
    finally:
        live.close()
    with pytest.raises(SocketPathError, match="longer than 107 bytes"):
        Endpoint("/tmp/" + "x" * 120, SocketRole.SERVER).check()
    Endpoint(str(short_dir / "missing.sock"), SocketRole.CLIENT).check()  # fine: not yet there


@pytest.mark.parametrize("which", ["frontend", "backend"])
@pytest.mark.parametrize("kind", ["regular", "symlink"])
def test_a_bad_path_stops_the_proxy_from_starting(short_dir: Path, which: str,
                                                  kind: str) -> None:
    async def scenario() -> None:
        iface = Interface(short_dir, "vhu0", FakeBackend())
        bad = iface.frontend_path if which == "frontend" else iface.backend_path
        if kind == "regular":
            bad.write_text("precious data")
        else:
            bad.symlink_to(short_dir / "elsewhere.sock")
        with pytest.raises(SocketPathError) as refused:
            await iface.server.start()
        assert str(bad) in str(refused.value)
        assert bad.is_symlink() or bad.read_text() == "precious data"  # left alone
        assert not (short_dir / "elsewhere.sock").exists()

    run(scenario())


# -- roles and restarts ------------------------------------------------------------------

def test_default_roles_relay_and_report(short_dir: Path) -> None:
    async def scenario() -> None:
        async with interface(short_dir) as iface:
            frontend = await iface.frontend()
            await negotiate(frontend)
            status = iface.server.board.status
            assert status.state is ProxyState.RUNNING
            assert status.offered_features == ProxyPolicy(NARROW).offer_features(
                iface.backend.features)
            # All was acked; dirty logging (VHOST_F_LOG_ALL) is no part of it.
            assert status.offered_features is not None
            assert status.acked_features == status.offered_features & ~F.VHOST_F_LOG_ALL
            assert (status.queue_pairs, dict(status.ring_sizes)) == (1, {0: 256, 1: 256})
            frontend.close()
            result = await iface.server.wait_idle(WAIT)
            assert result is not None and result.outcome is RelayOutcome.FRONTEND_CLOSED
            await asyncio.wait_for(iface.backend.closed.wait(), WAIT)
            assert iface.server.board.status.state is ProxyState.FRONTEND_CLOSED
            # The next front-end gets a fresh back-end connection.
            again = await iface.frontend()
            await negotiate(again)
            again.close()
            assert iface.backend.connections == 2

    run(scenario())


def test_swapped_roles_qemu_as_server_and_the_backend_as_client(short_dir: Path) -> None:
    """The OVS dpdkvhostuserclient deployment: QEMU listens, the back-end connects."""
    async def scenario() -> None:
        backend = FakeBackend()
        iface = Interface(short_dir, "vhu0", backend, frontend_role=SocketRole.CLIENT,
                          backend_role=SocketRole.SERVER)
        qemu_side: asyncio.Queue[FdConnection] = asyncio.Queue()
        done = asyncio.Event()

        async def accepted(connection: FdConnection) -> None:
            await qemu_side.put(connection)
            await done.wait()

        async with await listen(iface.frontend_path, accepted), iface.server:
            frontend = FakeFrontend(await asyncio.wait_for(qemu_side.get(), WAIT))
            serving = asyncio.create_task(backend.serve(
                await connect(iface.backend_path, retry_for=WAIT)))
            await negotiate(frontend)
            assert backend.requests(FrontendRequest.SET_FEATURES)
            frontend.close()
            await asyncio.wait_for(serving, WAIT)  # the proxy closed the back-end
            done.set()

    run(scenario())


def test_backend_restart_then_frontend_reconnect_restores_the_same_mode(short_dir: Path) -> None:
    async def scenario() -> None:
        async with interface(short_dir) as iface:
            frontend = await iface.frontend()
            await negotiate(frontend)
            before = iface.server.board.status
            await iface.stop_backend()
            result = await iface.server.wait_idle(WAIT)
            assert result is not None and result.outcome is RelayOutcome.BACKEND_CLOSED
            await frontend.wait_closed()  # QEMU learns the back-end is gone
            assert iface.server.board.status.state is ProxyState.BACKEND_LOST
            await iface.start_backend()
            frontend = await iface.frontend()  # QEMU's reconnect
            await negotiate(frontend)
            after = iface.server.board.status
            assert after.state is ProxyState.RUNNING
            assert after.offered_features == before.offered_features
            assert after.acked_features == before.acked_features
            assert after.connections == 2
            frontend.close()

    run(scenario())


def test_a_hundred_cycles_leak_no_fd_and_no_task(short_dir: Path) -> None:
    async def scenario() -> None:
        async with interface(short_dir) as iface:
            async def cycle(number: int) -> None:
                frontend = await iface.frontend()
                await negotiate(frontend)
                if number % 2:
                    frontend.close()
                    await iface.server.wait_idle(WAIT)
                    await asyncio.wait_for(iface.backend.closed.wait(), WAIT)
                else:
                    await iface.stop_backend()
                    await iface.server.wait_idle(WAIT)
                    await frontend.wait_closed()
                    frontend.close()
                    await iface.start_backend()

            await cycle(0)  # warm up whatever is created once
            fds, tasks = open_fd_count(), len(asyncio.all_tasks())
            for number in range(1, 101):
                await cycle(number)
            assert iface.server.relays == 101
            assert iface.backend.open_connections == 0
            assert open_fd_count() == fds
            assert len(asyncio.all_tasks()) == tasks

    run(scenario(), timeout=50)


def test_a_second_frontend_is_turned_away_while_one_is_relayed(
        short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with interface(short_dir) as iface:
            first = await iface.frontend()
            await negotiate(first)
            intruder = await iface.frontend()
            await intruder.wait_closed()
            intruder.close()
            await first.sync()  # the first one is untouched
            first.close()

    run(scenario())
    assert any("a second front-end connected" in record.getMessage()
               for record in caplog.records if record.levelno == logging.ERROR)


def test_a_frontend_reconnecting_at_once_is_served_after_the_old_relay_ends(
        short_dir: Path) -> None:
    """QEMU retrying a failed start reconnects before the proxy has seen it close."""
    async def scenario() -> None:
        async with interface(short_dir) as iface:
            first = await iface.frontend()
            await negotiate(first)
            first.close()
            second = await iface.frontend()  # no wait: the old relay may still run
            await negotiate(second)
            second.close()
            await iface.server.wait_idle(WAIT)
            assert [result.outcome for result in iface.server.results] == [
                RelayOutcome.FRONTEND_CLOSED, RelayOutcome.FRONTEND_CLOSED]

    run(scenario())


def test_an_unreachable_backend_closes_the_frontend_after_the_timeout(short_dir: Path) -> None:
    async def scenario() -> None:
        iface = Interface(short_dir, "vhu0", FakeBackend(),
                          options=ProxyOptions(backend_timeout=0.3, max_backoff=0.0))
        async with iface.server:
            frontend = await iface.frontend()
            with pytest.raises(PeerClosedError):
                await frontend.call(FrontendRequest.GET_FEATURES)
            status = iface.server.board.status
            assert status.state is ProxyState.FAILED
            assert "unreachable" in status.detail and str(iface.backend_path) in status.detail
            frontend.close()

    run(scenario())


# -- one broken interface never touches another ----------------------------------------

async def _break_with_garbage(frontend: FakeFrontend, iface: Interface) -> None:
    await frontend.link.connection.send(b"\x63\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00")


async def _break_with_wrong_fds(frontend: FakeFrontend, iface: Interface) -> None:
    regions = (MemoryRegion(0, 0x1000, 0x7F00_0000_0000, 0),)
    data, _ = encode(Message(FrontendRequest.SET_MEM_TABLE, MemoryTable(regions), fds=(0,)))
    await frontend.link.connection.send(data)  # the region's fd is missing


async def _break_with_a_silent_backend(frontend: FakeFrontend, iface: Interface) -> None:
    iface.backend.silent = frozenset(FrontendRequest)
    with contextlib.suppress(PeerClosedError):
        await frontend.call(FrontendRequest.GET_FEATURES)


async def _break_with_backend_garbage(frontend: FakeFrontend, iface: Interface) -> None:
    assert iface.backend.link is not None
    await iface.backend.link.connection.send(b"\xff" * 40)


async def _break_with_a_refusal(frontend: FakeFrontend, iface: Interface) -> None:
    frontend.session.offered_features = None  # ignore the offer, like a buggy front-end
    await frontend.link.send_message(Message(FrontendRequest.SET_FEATURES, U64(1 << 11)))


BREAKS = {
    "frontend-garbage": (_break_with_garbage, RelayOutcome.FRONTEND_ERROR),
    "set-mem-table-fds": (_break_with_wrong_fds, RelayOutcome.FRONTEND_ERROR),
    "backend-timeout": (_break_with_a_silent_backend, RelayOutcome.BACKEND_TIMEOUT),
    "backend-garbage": (_break_with_backend_garbage, RelayOutcome.BACKEND_ERROR),
    "refused": (_break_with_a_refusal, RelayOutcome.REFUSED),
}


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_breaking_one_interface_leaves_the_other_running(short_dir: Path, how: str) -> None:
    """Two proxies in one event loop; one is broken mid-session, the other carries on."""
    breaker, outcome = BREAKS[how]

    async def scenario() -> None:
        async with interface(short_dir, "vhu0") as broken, \
                interface(short_dir, "vhu1") as healthy:
            victim = await broken.frontend()
            survivor = await healthy.frontend()
            await negotiate(victim)
            await survivor.handshake()
            before = open_fd_count()

            await breaker(victim, broken)
            result = await broken.server.wait_idle(WAIT)
            assert result is not None and result.outcome is outcome, result
            await victim.wait_closed()
            victim.close()

            # The survivor's connection is the same one, and it goes on.
            await survivor.start_ring(0)
            await survivor.start_ring(1)
            await survivor.sync()
            assert healthy.server.board.status.state is ProxyState.RUNNING
            assert healthy.server.relays == 1
            survivor.close()
            await healthy.server.wait_idle(WAIT)
            # And the broken one serves its next front-end.
            broken.backend.silent = frozenset()
            again = await broken.frontend()
            await negotiate(again)
            again.close()
            await broken.server.wait_idle(WAIT)
            assert open_fd_count() <= before

    run(scenario())


def test_status_of_a_server_without_sinks_still_tracks_state(short_dir: Path) -> None:
    async def scenario() -> None:
        async with interface(short_dir) as iface:
            assert iface.server.board.status.state is ProxyState.WAITING
            assert os.path.exists(iface.frontend_path)
        assert not os.path.exists(iface.frontend_path)  # our socket file is removed

    run(scenario())
