"""The testpmd command line and start checks (no DPDK started)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vhostcompat.errors import InputError
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.testpmd import TestpmdConfig, dpdk_testpmd_argv, run_testpmd


def test_default_is_an_interactive_server_without_hugepages_or_pci() -> None:
    argv = dpdk_testpmd_argv(TestpmdConfig(Path("/tmp/r/v.sock")), "vcprefix")
    assert argv[0] == "dpdk-testpmd"
    eal, application = argv[1:argv.index("--")], argv[argv.index("--") + 1:]
    assert {"--no-huge", "--no-pci", "--no-shconf"} <= set(eal)
    assert eal[eal.index("--file-prefix") + 1] == "vcprefix"
    assert eal[eal.index("-m") + 1] == "256"
    assert eal[eal.index("--vdev") + 1] == (
        "net_vhost0,iface=/tmp/r/v.sock,queues=1,client=0,tso=0")
    # Interactive: no forwarding, so no busy-polling core.
    assert "-i" in application
    assert "--auto-start" not in application
    assert "--total-num-mbufs=8192" in application


def test_client_tso_and_queues_reach_the_vdev() -> None:
    config = TestpmdConfig(Path("/tmp/r/v.sock"), queues=4, client=True, tso=True)
    argv = dpdk_testpmd_argv(config, "p")
    assert argv[argv.index("--vdev") + 1] == (
        "net_vhost0,iface=/tmp/r/v.sock,queues=4,client=1,tso=1")


@pytest.mark.parametrize("kwargs", [
    {"queues": 0}, {"queues": 129}, {"memory_mib": 16},
    {"socket_path": Path("/tmp/a,b/v.sock")},
])
def test_bad_configurations_are_refused(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"socket_path": Path("/tmp/r/v.sock"), **kwargs}
    with pytest.raises(InputError):
        TestpmdConfig(**arguments)  # type: ignore[arg-type]


def test_an_existing_socket_path_is_refused_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "taken.sock"
    path.touch()

    async def scenario() -> None:
        async with run_testpmd(TestpmdConfig(path), tmp_path):
            pytest.fail("testpmd started over an existing path")

    with pytest.raises(LabError, match="already exists"):
        asyncio.run(scenario())
    assert not (tmp_path / "testpmd.log").exists()
