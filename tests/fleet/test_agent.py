"""The agent in a fleet: it registers its host, keeps the heartbeat fresh, applies the modes
provisioned through the fleet database, re-registers after losing the leader, and a second
agent claiming the same host name is refused (in-process, and as a real process: exit 2).

A real host ovsdb-server (vswitch schema, no vswitchd: only the rows matter) and a real
3-member fleet cluster, both started here.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.agent.test_daemon import QEMU, V1, V2, prepared, running
from tests.fleet.helpers import require_ovsdb
from tests.helpers import require_tool, run_bounded
from vhostcompat import manager
from vhostcompat.agent.daemon import Agent, AgentConfig
from vhostcompat.fleet import FleetOwnerError, FleetSession
from vhostcompat.fleet.presence import FleetOptions, owner_of
from vhostcompat.fleet.records import read_fleet
from vhostcompat.fleet.registry import ONE_SHOT_OWNER, Registration, publish_once
from vhostcompat.fleet.source import FleetRecords
from vhostcompat.hoststore import ACKED_FEATURES_KEY, STATUS_KEY
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.fleet import FleetCluster, run_fleet_cluster
from vhostcompat.lab.ovsdb import OvsdbServer, run_ovsdb_server
from vhostcompat.lab.process import wait_until
from vhostcompat.ovsdb import Select
from vhostcompat.ovsdb.operations import DecodedRow
from vhostcompat.profiles import load_default_catalog

pytestmark = pytest.mark.e2e
TIMEOUT = 30.0


async def host_database(server: OvsdbServer) -> None:
    """Versions V2, V1 published (as the agent's own tests do); a port vhu0 without a mode."""
    await prepared(server)
    await server.vsctl("add-port", "br0", "vhu0", "--", "set", "Interface", "vhu0",
                       "type=dpdkvhostuserclient",
                       f"external_ids:vhost-compat-frontend-path={QEMU}")


def fleet_config(server: OvsdbServer, cluster: FleetCluster, state_dir: Path) -> AgentConfig:
    return AgentConfig(server.remote, state_dir, fleet=FleetOptions(
        cluster.address, "host-a", owner_of(state_dir), heartbeat_interval=0.2,
        stale_after=10.0))


async def fleet_row(cluster: FleetCluster) -> DecodedRow:
    async with FleetSession(cluster.address) as session:
        client = await session.client()
        rows = await client.select("Host", [("name", "==", "host-a")],
                                   ["versions", "heartbeat", "owner"])
    return rows[0] if rows else {}


def test_the_agent_registers_heartbeats_applies_modes_and_survives_the_leader(
        short_dir: Path) -> None:
    require_ovsdb()
    require_tool("ovs-vsctl")

    async def play() -> None:
        async with run_ovsdb_server(short_dir, "host") as server, \
                run_fleet_cluster(short_dir / "fleet") as cluster:
            await host_database(server)
            # A one-shot `publish --fleet` came first: the agent takes the row over.
            await publish_once(cluster.address, Registration.of(
                "host-a", "", [load_default_catalog().get(V1)], ONE_SHOT_OWNER + "host-a"))
            async with running(fleet_config(server, cluster, short_dir / "agent")) as agent:
                presence = agent.presence
                assert presence is not None
                owner = owner_of(short_dir / "agent")
                await wait_until(lambda: _registered(cluster, owner), TIMEOUT,
                                 "the agent's registration")
                first = await fleet_row(cluster)
                assert first["versions"] == {0: V2, 1: V1}
                assert first["owner"] == owner
                await wait_until(lambda: presence.heartbeats >= 2, TIMEOUT, "heartbeats")
                assert (await fleet_row(cluster))["heartbeat"] != first["heartbeat"]

                report = await manager.provision(
                    ["host-a"], "vhu0", records=FleetRecords(cluster.address, ("vhu0",)))
                assert report.version == V2
                await wait_until(lambda: _local_mode(server, V2), TIMEOUT,
                                 "the agent to apply the mode in its host's database")
                await wait_until(lambda: _fleet_status(cluster, "applied " + V2), TIMEOUT,
                                 "the agent to say so in its fleet record")

                # What the interface's proxy negotiated reaches its fleet record.
                presence.negotiated("vhu0", {ACKED_FEATURES_KEY: "0x130000000",
                                             STATUS_KEY: "running"})
                await wait_until(lambda: _fleet_acked(cluster, 0x130000000), TIMEOUT,
                                 "the negotiated state on the fleet record")

                registrations = presence.registrations
                await cluster.kill(await cluster.wait_leader())
                await wait_until(lambda: presence.registrations > registrations, TIMEOUT,
                                 "the agent to register again with the new leader")
                async with FleetSession(cluster.address) as session:
                    view = await read_fleet(session, ["host-a"], stale_after=10.0)
                assert view.stale() == {} and view.records()[0].versions == (V2, V1)

                # A second host's agent claiming the name host-a is refused.
                async with run_ovsdb_server(short_dir, "host-2") as other:
                    await prepared(other)
                    await second_agents_refused(other, cluster, short_dir)

    run_bounded(play(), 120)


async def second_agents_refused(other: OvsdbServer, cluster: FleetCluster,
                                short_dir: Path) -> None:
    """In-process and as a process (exit 2, one line); the row stays the first agent's."""
    second = Agent(fleet_config(other, cluster, short_dir / "agent-2"))
    with pytest.raises(FleetOwnerError) as refused:
        await asyncio.wait_for(second.run(asyncio.Event()), TIMEOUT)
    assert "host-a is already registered by another agent" in str(refused.value)
    assert (await fleet_row(cluster))["owner"] == owner_of(short_dir / "agent")
    await cli_agent_refused(other, cluster, short_dir / "agent-3")
    assert (await fleet_row(cluster))["owner"] == owner_of(short_dir / "agent")


async def cli_agent_refused(server: OvsdbServer, cluster: FleetCluster,
                            state_dir: Path) -> None:
    """``vhostcompat agent --fleet ... --host-name host-a`` as a process: exit 2, one line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vhostcompat.cli", "agent", "--db", server.remote,
        "--state-dir", str(state_dir), "--fleet", cluster.address, "--host-name", "host-a",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2
    errors = [line for line in stderr.decode().splitlines() if "error" in line.lower()
              or line.startswith("vhostcompat: ")]
    assert errors[-1].startswith("vhostcompat: host host-a is already registered by "
                                 "another agent"), stderr.decode()
    assert "Traceback" not in stderr.decode()


async def _fleet_acked(cluster: FleetCluster, features: int) -> bool:
    async with FleetSession(cluster.address) as session:
        view = await read_fleet(session, ["host-a"], interfaces=["vhu0"], stale_after=10.0)
    acked = view.records()[0].interfaces["vhu0"].negotiated.acked_features
    return acked is not None and int(acked) == features


async def _registered(cluster: FleetCluster, owner: str) -> bool:
    return (await fleet_row(cluster)).get("owner") == owner


async def _local_mode(server: OvsdbServer, version: str) -> bool:
    try:
        found = await server.vsctl("get", "Interface", "vhu0", "options")
    except LabError:
        return False  # the agent re-creates the port to point it at its proxy
    return f'vhost-compat-version="{version}"' in found or \
        f"vhost-compat-version={version}" in found


async def _fleet_status(cluster: FleetCluster, status: str) -> bool:
    async with FleetSession(cluster.address) as session:
        client = await session.client()
        [result] = await client.transact(Select("Interface", [("host", "==", "host-a")],
                                                ["negotiated"]))
    return any(isinstance(row["negotiated"], dict)
               and row["negotiated"].get("vhost-compat-fleet-status") == status
               for row in result["rows"])
