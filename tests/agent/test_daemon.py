"""The agent's daemon against a real ovsdb-server (no vswitchd: only the rows matter here).

The deterministic way in (a port created with its mode and QEMU's path in
external_ids, no vhost-server-path: OVS has nothing to connect to until the
agent points it at its proxy), a mode change (the proxy restarts, the port
stays), the agent's own restart (nothing re-created), and a crash between a
port's removal and its insertion (the journal puts it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from tests.helpers import require_tool, run_bounded
from vhostcompat.agent.daemon import Agent, AgentConfig
from vhostcompat.agent.journal import Journal
from vhostcompat.agent.ports import PortCopy
from vhostcompat.hoststore import encode_profile
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.ovsdb import OvsdbServer, run_ovsdb_server
from vhostcompat.lab.process import wait_until
from vhostcompat.profiles import load_default_catalog

V1, V2 = "debian12.ovs-dpdk.v3.1-base", "debian12.ovs-dpdk.v3.1"
QEMU = "/run/qemu-not-started/vhu0.sock"
TIMEOUT = 20.0


async def prepared(server: OvsdbServer) -> None:
    catalog = load_default_catalog()
    await server.vsctl("add-br", "br0", "--", "set", "Bridge", "br0", "datapath_type=netdev")
    await server.vsctl("set", "Open_vSwitch", ".",
                       "external_ids:vhost-compat-versions=" + json.dumps(f"{V2},{V1}"),
                       *[f"external_ids:vhost-compat-profile-{version}="
                         + json.dumps(encode_profile(catalog.get(version)))
                         for version in (V1, V2)])


async def get(server: OvsdbServer, column: str, iface: str = "vhu0") -> str | None:
    try:
        return (await server.vsctl("get", "Interface", iface, column)).strip().strip('"')
    except LabError:
        return None  # being re-created


@contextlib.asynccontextmanager
async def running(config: AgentConfig) -> AsyncIterator[Agent]:
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await task


def test_modes_restarts_and_a_crash_between_removal_and_insertion(short_dir: Path) -> None:
    require_tool("ovsdb-server", "ovsdb-tool", "ovs-vsctl")
    state_dir = short_dir / "agent"

    async def play() -> None:
        async with run_ovsdb_server(short_dir, "db") as server:
            await prepared(server)
            here = AgentConfig(server.remote, state_dir)
            agent_path = here.socket_path("vhu0")
            await server.vsctl("add-port", "br0", "vhu0", "--", "set", "Interface", "vhu0",
                               "type=dpdkvhostuserclient", f"options:vhost-compat-version={V1}",
                               f"external_ids:vhost-compat-frontend-path={QEMU}",
                               "external_ids:iface-id=port-1")
            not_a_socket = short_dir / "qemu-file"
            not_a_socket.write_text("")
            await server.vsctl("add-port", "br0", "vhu1", "--", "set", "Interface", "vhu1",
                               "type=dpdkvhostuserclient", f"options:vhost-compat-version={V1}",
                               f"options:vhost-server-path={not_a_socket}")
            async with running(here) as agent:
                await wait_until(lambda: _is(server, "options:vhost-server-path", agent_path),
                                 TIMEOUT, "the redirection", interval=0.02)
                assert agent.proxies["vhu0"].running.version == V1
                # QEMU's path is not a socket: said on the row, and OVS kept off it.
                await wait_until(lambda: _is(server, "options:vhost-server-path",
                                             here.socket_path("vhu1"), "vhu1"),
                                 TIMEOUT, "vhu1 redirected", interval=0.02)
                assert (await get(server, "external_ids:vhost-compat-status", "vhu1") or ""
                        ).startswith("failed: the proxy cannot start: ")
                assert "vhu1" not in agent.proxies
                assert await get(server, "external_ids:iface-id") == "port-1"
                uuid = await get(server, "_uuid")
                await server.vsctl("set", "Interface", "vhu0",
                                   f"options:vhost-compat-version={V2}")
                await wait_until(lambda: agent.proxies.get("vhu0") is not None
                                 and agent.proxies["vhu0"].running.version == V2,
                                 TIMEOUT, "the proxy in the new mode")
                assert await get(server, "_uuid") == uuid  # the port stayed
            async with running(here) as agent:  # the agent restarts
                await wait_until(lambda: "vhu0" in agent.proxies, TIMEOUT, "the proxy again")
                assert await get(server, "_uuid") == uuid  # nothing re-created
            # A crash between step 1 (removal) and step 2 (insertion) of a re-creation:
            copy = PortCopy("br0", {"name": "vhu0"}, {
                "name": "vhu0", "type": "dpdkvhostuserclient",
                "options": {"vhost-server-path": agent_path, "vhost-compat-version": V2},
                "external_ids": {"vhost-compat-frontend-path": QEMU, "iface-id": "port-1"}})
            journal = Journal.open(state_dir)
            journal.entry("vhu0").pending = copy
            journal.save()
            await server.vsctl("del-port", "br0", "vhu0")
            async with running(here) as agent:
                await wait_until(lambda: "vhu0" in agent.proxies, TIMEOUT,
                                 "the port back and its proxy")
                assert await get(server, "external_ids:vhost-compat-frontend-path") == QEMU
                assert Journal.open(state_dir).entries["vhu0"].pending is None

    run_bounded(play(), 90)


async def _is(server: OvsdbServer, column: str, value: str, iface: str = "vhu0") -> bool:
    return await get(server, column, iface) == value
