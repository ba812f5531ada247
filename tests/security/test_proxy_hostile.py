"""Hostile front-ends against ``vhostcompat proxy`` (a child process, as deployed).

The proxy relays one front-end at a time to a real ``vhostcompat backend``.
A peer that connects and stalls must never keep QEMU out; a front-end that
closes after a complete start-up is not a queue-pair refusal; and 200
hostile connections leave the proxy's fds and memory where they were.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.backend.helpers import Frontend, run
from tests.security.helpers import (
    fd_count,
    half_header,
    proxied,
    qemu_start_up,
    rss_kib,
    settle,
)
from vhostcompat.lab.process import wait_until
from vhostcompat.proxy import ProxyState

pytestmark = pytest.mark.timeout(120)
WAIT = 20.0


@pytest.mark.parametrize("sent", [b"\x01\x00\x00\x00\x01\x00", b""],
                         ids=["6 bytes", "nothing"])
def test_a_stalled_frontend_never_locks_qemu_out(short_dir: Path, sent: bytes) -> None:
    async def scenario() -> None:
        async with proxied(short_dir) as (proxy, _backend):
            path = Path(proxy.config.frontend)
            staller = half_header(path, sent)
            try:
                await proxy.wait_for(lambda status: status.connections >= 1, WAIT,
                                     "the stalled connection relayed")
                # QEMU connects (once, no retry) and gets through.
                qemu = await Frontend.open(path)
                assert await qemu_start_up(qemu) == 1
                qemu.close()
            finally:
                staller.close()
            log = proxy.process.log_text()
            assert "stalls; a new front-end connection takes over" in log

    run(scenario, timeout=60)


def test_a_frontend_closing_after_its_start_up_is_not_a_refusal(short_dir: Path) -> None:
    """A destination QEMU whose incoming migration fails exits after a full start-up
    (rings enabled): that is the front-end closing, not GET_QUEUE_NUM refused."""
    async def scenario() -> None:
        async with proxied(short_dir) as (proxy, _backend):
            qemu = await Frontend.open(Path(proxy.config.frontend))
            assert await qemu_start_up(qemu, enable=True) == 1  # capped: back-end offers 2
            qemu.close()
            status = await proxy.wait_for_state(ProxyState.FRONTEND_CLOSED, WAIT)
            assert status.refusals == ()
            assert "during start-up" in status.detail
            assert "GET_QUEUE_NUM refused" not in proxy.process.log_text()

    run(scenario, timeout=60)


def test_a_frontend_giving_up_on_its_queue_pairs_is_still_a_refusal(short_dir: Path) -> None:
    """QEMU wanting 2 pairs closes before enabling any ring: the limit is named."""
    async def scenario() -> None:
        async with proxied(short_dir) as (proxy, _backend):
            qemu = await Frontend.open(Path(proxy.config.frontend))
            assert await qemu_start_up(qemu, enable=False) == 1
            qemu.close()
            status = await proxy.wait_for_state(ProxyState.REFUSED, WAIT)
            assert "max_queue_pairs 1 of mode test.hostile" in status.refusals[-1]
            assert "back-end offers 2" in status.refusals[-1]

    run(scenario, timeout=60)


def test_200_hostile_connections_leave_the_proxy_serving_with_stable_fds_and_memory(
        short_dir: Path) -> None:
    """100 stalled connections at once, then 100 that send garbage and close."""
    async def scenario() -> None:
        async with proxied(short_dir) as (proxy, backend):
            path = Path(proxy.config.frontend)
            pid = proxy.process.pid
            qemu = await Frontend.open(path)  # warm up the relay's code paths
            await qemu_start_up(qemu)
            qemu.close()
            await proxy.wait_for_state(ProxyState.FRONTEND_CLOSED, WAIT)
            baseline, backend_baseline = fd_count(pid), fd_count(backend.process.pid)
            rss_before = rss_kib(pid)
            stalled = [half_header(path, b"\x01\x00" if number % 2 else b"")
                       for number in range(100)]
            for _ in range(100):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(path))
                    sock.sendall(b"\xff" * 12)  # an unknown request
                await asyncio.sleep(0)
            qemu = await Frontend.open(path, retry_for=WAIT)  # the backlog may be full
            assert await qemu_start_up(qemu) == 1
            qemu.close()
            # The proxy let go of every stalled connection itself.
            await settle(pid, baseline, proxy.process)
            await settle(backend.process.pid, backend_baseline, backend.process)
            for sock in stalled:
                sock.close()
            growth = rss_kib(pid) - rss_before
            assert growth < 4096, f"RSS grew by {growth} KiB over 200 hostile connections"
            await wait_until(lambda: proxy.process.running, 1, "the proxy still running")

    run(scenario, timeout=90)
