"""lab.hosts without QEMU: where a host's backend listens, and a factory that breaks the rule."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vhostcompat.backend import BackendConfig, BackendServer, serve_backend
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.hosts import reference_backend_in_process, run_backend
from vhostcompat.profiles import load_default_catalog

pytestmark = pytest.mark.timeout(30)

CONFIG = BackendConfig.from_profile(load_default_catalog().get("upstream.ovs-dpdk.v2.7"))
TIMEOUT = 10.0



def test_a_direct_host_gives_qemu_its_backends_socket(short_dir: Path) -> None:
    async def scenario() -> None:
        factory = reference_backend_in_process(CONFIG)
        async with run_backend(short_dir, "a", factory) as (server, proxy, socket_path):
            assert isinstance(server, BackendServer)
            assert proxy is None
            assert socket_path == server.socket_path == short_dir / "a-backend.sock"
            assert socket_path.is_socket()
        assert not socket_path.exists()  # the backend was stopped on exit

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_factory_listening_elsewhere_is_refused_and_stopped(short_dir: Path) -> None:
    elsewhere = short_dir / "elsewhere.sock"

    @contextlib.asynccontextmanager
    async def misplaced(directory: Path, name: str) -> AsyncIterator[BackendServer]:
        async with serve_backend(CONFIG, elsewhere) as server:
            yield server

    async def scenario() -> None:
        with pytest.raises(LabError, match=r"a-backend\.sock"):
            async with run_backend(short_dir, "a", misplaced):
                pytest.fail("a backend on the wrong socket was accepted")
        assert not elsewhere.exists()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
