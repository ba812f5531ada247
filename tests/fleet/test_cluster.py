"""The fleet database on a real 3-member Raft cluster (ovsdb-server children on 127.0.0.1).

1,000 simulated hosts register through :func:`vhostcompat.fleet.register`
(the agent's code path, 100 per transaction) and are read back in one go;
the leader is SIGKILLed during a provision of 100 hosts and during
registrations, and every host is checked one by one afterwards; a
restarted member rejoins; below quorum nothing answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.fleet.helpers import require_ovsdb, shipped_profiles
from tests.helpers import run_bounded
from vhostcompat import manager
from vhostcompat.cli import main
from vhostcompat.fleet import (
    FleetSchemaError,
    FleetSession,
    FleetUnavailableError,
    Registration,
    register,
)
from vhostcompat.fleet.provision import read_modes
from vhostcompat.fleet.records import read_fleet
from vhostcompat.fleet.registry import profile_digest
from vhostcompat.fleet.schema import FLEET_DATABASE, check_version, schema_text
from vhostcompat.fleet.session import connect_fleet
from vhostcompat.fleet.source import FleetRecords
from vhostcompat.lab.fleet import FleetCluster, run_fleet_cluster
from vhostcompat.lab.ovsdb import run_command
from vhostcompat.lab.process import wait_until
from vhostcompat.ovsdb import OvsdbClient, Update

pytestmark = pytest.mark.e2e
BATCH = 100


def with_cluster(short_dir: Path, scenario: Callable[[FleetCluster], Awaitable[None]],
                 timeout: float = 120.0) -> None:
    require_ovsdb()

    async def run() -> None:
        async with run_fleet_cluster(short_dir) as cluster:
            await scenario(cluster)

    run_bounded(run(), timeout)


def registrations(count: int, prefix: str = "h", owner: str = "test") -> list[Registration]:
    """Hosts alternating between two version lists (so profile rows are shared)."""
    profiles = shipped_profiles()
    lists = [profiles[:2], profiles[1:3]]
    return [Registration.of(f"{prefix}{index}", f"tcp:127.0.0.1:{1000 + index}",
                            lists[index % 2], owner) for index in range(count)]


async def register_all(session: FleetSession, hosts: list[Registration]) -> None:
    for start in range(0, len(hosts), BATCH):
        await register(session, hosts[start:start + BATCH])


async def count_rows(remote: str, table: str) -> int:
    """Rows of a table as one member holds them (no leader check: to watch replication)."""
    client = OvsdbClient(remote, "VhostCompat_Fleet", timeout=5.0, reconnect=False)
    async with client:
        return len(await client.select(table, (), ["_uuid"]))


def test_a_thousand_hosts_register_and_are_read_in_one_go(short_dir: Path) -> None:
    async def scenario(cluster: FleetCluster) -> None:
        hosts = registrations(1000)
        async with FleetSession(cluster.address) as session:
            await register_all(session, hosts)
            names = [host.name for host in hosts]
            view = await read_fleet(session, names)
        assert [host.name for host in view.hosts] == names
        for registered, read in zip(hosts, view.records(), strict=True):
            assert read.address == registered.name
            assert read.versions == registered.versions
            assert set(read.profiles) == set(registered.versions)
            for version in registered.versions:
                assert read.profiles[version] == registered.profiles[version]
        assert view.stale() == {}
        digests = {digest for host in hosts for digest in host.digests().values()}
        leader = await cluster.wait_leader()
        assert await count_rows(cluster.member(leader).remote, "Profile") == len(digests) == 3
        assert await count_rows(cluster.member(leader).remote, "Host") == 1000
        await verbs_over_the_fleet(cluster, hosts)

    with_cluster(short_dir, scenario)


async def verbs_over_the_fleet(cluster: FleetCluster, hosts: list[Registration]) -> None:
    """select, provision, targets and matrix over the 1,000 hosts, from the fleet database."""
    names = [host.name for host in hosts]
    shared = hosts[0].versions[1]  # both version lists hold it (profiles[1])
    assert shared == hosts[1].versions[0]
    selection = await manager.select(names, records=FleetRecords(cluster.address))
    assert selection.selection.version == shared
    source = FleetRecords(cluster.address, ("vhu0",))
    provisioned = await manager.provision(names, "vhu0", records=source)
    assert provisioned.version == shared and len(provisioned.written) == 1000
    found = await manager.targets("vhu0", names[0], names[1:], records=source)
    assert found.compatible_hosts == tuple(names[1:])
    grid = await manager.matrix(names, shared, records=FleetRecords(cluster.address))
    assert grid.all_compatible and len(grid.cells) == 1000 * 999
    assert [len(domain.hosts) for domain in grid.domains] == [1000]



def test_a_stale_host_is_reported_by_name_with_its_age(short_dir: Path) -> None:
    async def scenario(cluster: FleetCluster) -> None:
        async with FleetSession(cluster.address) as session:
            await register(session, registrations(3))
            client = await session.client()
            long_ago = int(time.time() * 1000) - 125_000
            await client.transact(Update("Host", [("name", "==", "h1")],
                                         {"heartbeat": long_ago}))
            view = await read_fleet(session, ["h0", "h1", "h2"], stale_after=30.0)
        assert list(view.stale()) == ["h1"]
        assert 125 <= view.stale()["h1"] < 200
        [error] = view.stale_errors()
        assert str(error).startswith("host h1: heartbeat 12")
        assert "stale after 30 s" in str(error)
        assert [record.address for record in view.records()] == ["h0", "h2"]

    with_cluster(short_dir, scenario)


def test_leader_killed_during_a_provision_of_100_hosts(short_dir: Path) -> None:
    """``provision`` through the fleet: the leader killed before the write is sent, then
    killed as a write commits; every host is checked one by one: each provisioning is
    complete on every host, none is applied twice."""
    async def scenario(cluster: FleetCluster) -> None:
        hosts = registrations(100)
        names = [host.name for host in hosts]
        async with FleetSession(cluster.address) as session:
            await register_all(session, hosts)
        killed: list[int] = []

        async def kill_leader() -> None:
            if not killed:
                killed.append(await cluster.wait_leader())
                await cluster.kill(killed[0])

        source = FleetRecords(cluster.address, ("vhu0",), before_write=kill_leader)
        first = await manager.provision(names, "vhu0", records=source)
        assert killed and first.done and set(first.written) == set(names)
        await check_every_host(cluster, "vhu0", names, first)
        await cluster.restart(killed[0])
        await cluster.wait_connected(killed[0])

        task = asyncio.create_task(manager.provision(
            names, "vhu1", records=FleetRecords(cluster.address, ("vhu1",))))
        leader = await cluster.wait_leader()
        follower = next(index for index in cluster.running() if index != leader)
        await wait_until(lambda: _has_rows(cluster, follower, "vhu1"), 30.0,
                         "the provisioning to reach a follower")
        await cluster.kill(leader)
        second = await task
        assert second.done
        await check_every_host(cluster, "vhu1", names, second)
        assert await count_rows(cluster.member(follower).remote, "Interface") == 200

    with_cluster(short_dir, scenario)


async def _has_rows(cluster: FleetCluster, index: int, interface: str) -> bool:
    client = OvsdbClient(cluster.member(index).remote, "VhostCompat_Fleet", timeout=5.0,
                         reconnect=False)
    async with client:
        return bool(await client.select("Interface", [("name", "==", interface)], ["_uuid"]))


async def check_every_host(cluster: FleetCluster, interface: str, names: list[str],
                           report: manager.ProvisionReport) -> None:
    """Each host's record, one by one: this run's mode and id, on all of them."""
    assert report.version is not None and report.provision_id is not None
    async with FleetSession(cluster.address) as session:
        modes = await read_modes(session, interface, names)
    for name in names:
        assert modes[name] == (report.version, report.provision_id), name


def test_leader_killed_during_registrations_loses_and_doubles_nothing(
        short_dir: Path) -> None:
    async def scenario(cluster: FleetCluster) -> None:
        hosts = registrations(600, prefix="k")
        async with FleetSession(cluster.address) as session:
            task = asyncio.create_task(register_all(session, hosts))
            leader = await cluster.wait_leader()
            await wait_until(lambda: _host_count(cluster, leader, 100), 30.0,
                             "the first batch to commit")
            await cluster.kill(leader)
            await task
            view = await read_fleet(session, [host.name for host in hosts])
            assert all(record.versions == host.versions
                       for record, host in zip(view.records(), hosts, strict=True))
            new_leader = await cluster.wait_leader()
            remote = cluster.member(new_leader).remote
            assert await count_rows(remote, "Host") == 600
            assert await count_rows(remote, "Profile") == 3
            await cluster.restart(leader)
            await cluster.wait_connected(leader)
            await wait_until(lambda: _host_count(cluster, leader, 600), 30.0,
                             "the restarted member to catch up")

    with_cluster(short_dir, scenario)


async def _host_count(cluster: FleetCluster, index: int, at_least: int) -> bool:
    try:
        return await count_rows(cluster.member(index).remote, "Host") >= at_least
    except OSError:
        return False


def test_below_quorum_no_member_answers(short_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VHOSTCOMPAT_FLEET_FAILOVER", "1")
    monkeypatch.setenv("VHOSTCOMPAT_OVSDB_TIMEOUT", "1")
    async def scenario(cluster: FleetCluster) -> None:
        async with FleetSession(cluster.address) as session:
            await register(session, registrations(1))
        leader = await cluster.wait_leader()
        for index in cluster.running():
            if index != leader:
                await cluster.kill(index)

        async def refused() -> bool:
            try:
                client = await connect_fleet(cluster.address, timeout=1.0, failover=0.0)
            except FleetUnavailableError:
                return True
            await client.close()
            return False

        # The old leader notices the lost quorum after an election timeout or two.
        await wait_until(refused, 30.0, "the lone member to stop claiming the lead")
        with pytest.raises(FleetUnavailableError) as caught:
            await connect_fleet(cluster.address, timeout=1.0, failover=0.5)
        message = str(caught.value)
        assert "not the leader" in message or "not connected to the cluster" in message
        assert message.count("Connection refused") == 2
        # Every command: exit 2 (a read, and a write that no quorum can commit).
        for argv in (["select", "--fleet", cluster.address, "h0"],
                     ["publish", "--fleet", cluster.address, "--host", "h0"]):
            assert await asyncio.to_thread(main, argv) == 2
        assert message.count("tcp:127.0.0.1:") == 6  # the address, then each member's state
        assert "\n" not in message

    with_cluster(short_dir, scenario)


def test_a_later_schema_converts_the_live_cluster_and_is_still_spoken(
        short_dir: Path) -> None:
    """``ovsdb-client convert`` to 1.1.0 (a column added) on the running cluster: the rows
    stay, the client still reads them; a major version it does not speak is refused."""
    async def scenario(cluster: FleetCluster) -> None:
        async with FleetSession(cluster.address) as session:
            await register(session, registrations(3))
        later = json.loads(schema_text())
        later["version"] = "1.1.0"
        later["tables"]["Host"]["columns"]["rack"] = {"type": {"key": "string", "min": 0,
                                                               "max": 1}}
        path = short_dir / "fleet-1.1.ovsschema"
        path.write_text(json.dumps(later))
        leader = await cluster.wait_leader()
        await run_command(["ovsdb-client", "convert", cluster.member(leader).remote,
                           str(path)])
        async with FleetSession(cluster.address) as session:
            view = await read_fleet(session, ["h0", "h1", "h2"])
            client = await session.client()
            assert client.schema.version == "1.1.0"
        assert [record.versions for record in view.records()] == [
            host.versions for host in registrations(3)]
        for version, accepted in (("1.1.0", True), ("1.0.7", True), ("2.0.0", False),
                                  ("0.9.0", False), ("1.x.0", False)):
            try:
                check_version("m1", FLEET_DATABASE, version)
            except FleetSchemaError:
                assert not accepted, version
            else:
                assert accepted, version

    with_cluster(short_dir, scenario)


def test_profile_rows_are_content_addressed() -> None:
    profiles = shipped_profiles()
    assert profile_digest(profiles[0]) == profile_digest(profiles[0])
    assert len({profile_digest(profile) for profile in profiles}) == len(profiles)
    assert len(profile_digest(profiles[0])) == 64
