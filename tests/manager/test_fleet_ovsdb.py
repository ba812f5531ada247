"""The manager over fleets of real ovsdb-servers (20-24, started here by vhostcompat.lab.ovsdb).

* select and provision over 24 hosts (one meeting the version by content),
  read back with plain ovs-vsctl; a re-run writes nothing;
* provision failing half-way for real (an interface missing on one host, a
  server stopped between read and write): every other database is back as
  it was, byte for byte in ``ovsdb-client dump``;
* two provisioning runs racing on one interface: one wins, the other names
  the conflict, and the fleet holds the winner's mode everywhere;
* targets, matrix and check-migration verdicts (version, content, running
  guest, ring size, queue pairs) with a stopped server among the hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.manager.helpers import (
    BIG,
    BIG_RENAMED,
    IFACE,
    NO_INDIRECT,
    SMALL,
    SMALL_ACKED,
    F,
    guest,
    record,
    run,
    write_catalog,
)
from tests.ovsdb.helpers import add_vhost_port, require_ovsdb, vsctl_get
from vhostcompat import manager
from vhostcompat.errors import VhostCompatError
from vhostcompat.hoststore import ModeWrite
from vhostcompat.lab.ovsdb import OvsdbServer, run_command, run_ovsdb_servers
from vhostcompat.ovsdb.connection import Connection
from vhostcompat.ovsdb.remotes import Remote
from vhostcompat.profiles import Catalog

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
FLEET = 20


def mixed(index: int) -> list[str]:
    """Host i publishes (i mod 4) big and small; small; big renamed (which satisfies
    small by content); no-indirect and small."""
    return [[BIG, SMALL], [SMALL], [BIG_RENAMED], [NO_INDIRECT, SMALL]][index % 4]


@contextlib.asynccontextmanager
async def fleet(run_dir: Path, catalog: Catalog, count: int = FLEET,
                versions: Callable[[int], list[str]] = mixed,
                without_port: Sequence[int] = ()) -> AsyncIterator[list[OvsdbServer]]:
    async with run_ovsdb_servers(run_dir, count) as servers:
        await asyncio.gather(*(add_vhost_port(server) for index, server in enumerate(servers)
                               if index not in without_port))
        await asyncio.gather(*(manager.publish(server.remote, catalog, versions(index))
                               for index, server in enumerate(servers)))
        yield servers


async def dump(server: OvsdbServer) -> str:
    """The whole database as ovsdb-client prints it."""
    return await run_command(["ovsdb-client", "dump", server.remote, "Open_vSwitch"])


async def dumps(servers: Sequence[OvsdbServer]) -> list[str]:
    return list(await asyncio.gather(*(dump(server) for server in servers)))


async def modes(servers: Sequence[OvsdbServer]) -> list[tuple[str, str]]:
    """Each host's (mode, provision id), as plain ovs-vsctl reads them."""

    async def one(server: OvsdbServer) -> tuple[str, str]:
        found = [(await vsctl_get(server, "Interface", IFACE, f"options:vhost-compat-{key}"))
                 .strip('"') for key in ("version", "provision-id")]
        return found[0], found[1]

    return list(await asyncio.gather(*(one(server) for server in servers)))


def scenario(short_dir: Path, body: Callable[[Catalog], object]) -> None:
    require_ovsdb()
    catalog = write_catalog(short_dir)
    outcome = body(catalog)
    assert asyncio.iscoroutine(outcome)
    run(outcome, 150.0)


def test_select_and_provision_over_a_fleet_and_a_rerun_writes_nothing(
        short_dir: Path) -> None:
    async def body(catalog: Catalog) -> None:
        async with fleet(short_dir, catalog, 24) as servers:
            remotes = [server.remote for server in servers]
            seen: list[int] = []
            selected = await manager.select(remotes, progress=lambda _a, done, _t:
                                            seen.append(done))
            assert selected.selection.version == SMALL and sorted(seen) == list(range(1, 25))
            report = await manager.provision(remotes, IFACE)
            assert report.version == SMALL and set(report.written) == set(remotes)
            assert report.provision_id is not None
            assert await modes(servers) == [(SMALL, report.provision_id)] * 24
            assert await vsctl_get(servers[5], "Interface", IFACE,
                                   "options:vhost-server-path") == '"/run/vhu0.sock"'
            # The host that met small by content publishes it now (after its own).
            assert await vsctl_get(servers[2], "Open_vSwitch", ".",
                                   "external_ids:vhost-compat-versions") == \
                f'"{BIG_RENAMED},{SMALL}"'
            before = await dumps(servers)
            again = await manager.provision(remotes, IFACE)
            assert again.written == () and again.provision_id is None
            assert again.lines()[0] == f"{IFACE}: already {SMALL} on {remotes[0]} " \
                "(nothing written)"
            assert await dumps(servers) == before

    scenario(short_dir, body)


def test_provision_keeps_one_connection_per_host_and_leaves_none_open(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside holding(), each host's read connection carries its write too: one
    connection per host for the whole run, all closed when provision returns."""
    opened: list[str] = []
    real_open = Connection.open.__func__  # type: ignore[attr-defined]

    async def counting(cls: type[Connection], /, remote: Remote, **options: Any) -> Connection:
        opened.append(str(remote))
        connection: Connection = await real_open(cls, remote, **options)
        return connection

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def body(catalog: Catalog) -> None:
        async with fleet(short_dir, catalog) as servers:
            remotes = [server.remote for server in servers]
            before = open_fds()
            monkeypatch.setattr(Connection, "open", classmethod(counting))
            report = await manager.provision(remotes, IFACE)
            assert set(report.written) == set(remotes)
            assert sorted(opened) == sorted(remotes)  # once each: read, then write
            assert open_fds() == before
            # Without holding (another source's way) each host takes two.
            opened.clear()
            plain = manager.HostStores()
            gathered = await plain.gather(remotes)
            assert len(opened) == FLEET and open_fds() == before
            assert gathered.complete

    scenario(short_dir, body)


def test_a_host_without_the_interface_fails_half_way_and_the_rest_is_restored(
        short_dir: Path) -> None:
    async def body(catalog: Catalog) -> None:
        async with fleet(short_dir, catalog, without_port=[7]) as servers:
            remotes = [server.remote for server in servers]
            # Some hosts had a mode already: restored to it, not to nothing.
            await manager.assign(remotes[0], IFACE, BIG)
            await manager.assign(remotes[3], IFACE, SMALL)
            before = await dumps(servers)
            with pytest.raises(manager.ProvisionError) as refused:
                await manager.provision(remotes, IFACE)
            message = str(refused.value)
            assert f"host {remotes[7]}: no interface 'vhu0'" in message, message
            assert "restored 19 host(s) written before" in message and "NOT" not in message
            assert refused.value.failed[0].address == remotes[7]
            assert await dumps(servers) == before

    scenario(short_dir, body)


@dataclass
class AfterRead:
    """Host stores that run ``then`` between a run's read and its writes."""

    then: Callable[[], Awaitable[object]]
    inner: manager.RecordSource = field(default_factory=manager.HostStores)

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[manager.RecordSource]:
        async with self.inner.holding() as held:
            yield AfterRead(self.then, held)

    async def gather(self, addresses: Sequence[str],
                     progress: manager.ProgressCallback | None = None, *,
                     interfaces: bool | tuple[str, ...] = True) -> manager.Gathered:
        gathered = await self.inner.gather(addresses, progress, interfaces=interfaces)
        await self.then()
        return gathered

    async def write(self, changes: Mapping[str, ModeWrite],
                    progress: manager.ProgressCallback | None = None,
                    ) -> dict[str, VhostCompatError | None]:
        return await self.inner.write(changes, progress)


def test_a_server_stopped_between_read_and_write_leaves_every_host_as_it_was(
        short_dir: Path) -> None:
    async def body(catalog: Catalog) -> None:
        async with fleet(short_dir, catalog) as servers:
            remotes = [server.remote for server in servers]
            before = await dumps(servers)
            victim = servers[11]
            with pytest.raises(manager.ProvisionError) as refused:
                await manager.provision(remotes, IFACE, records=AfterRead(victim.stop))
            assert str(refused.value).startswith(f"provision {IFACE}: host {victim.remote}")
            assert "cannot connect" in str(refused.value)
            await victim.start()
            assert await dumps(servers) == before

    scenario(short_dir, body)


def test_two_runs_racing_on_one_interface_one_wins_one_names_the_conflict(
        short_dir: Path) -> None:
    async def body(catalog: Catalog) -> None:
        async with fleet(short_dir, catalog, versions=lambda _index: [BIG, SMALL]) as servers:
            remotes = [server.remote for server in servers]
            barrier = asyncio.Barrier(2)
            outcomes = await asyncio.gather(
                # Both runs read before either writes.
                *(manager.provision(remotes, IFACE, prefer, records=AfterRead(barrier.wait))
                  for prefer in (BIG, SMALL)),
                return_exceptions=True)
            won = [outcome for outcome in outcomes
                   if isinstance(outcome, manager.ProvisionReport)]
            lost = [outcome for outcome in outcomes
                    if isinstance(outcome, manager.ProvisionError)]
            assert len(won) == 1 and len(lost) == 1, outcomes
            message = str(lost[0])
            # Seen by our read of the row, or by the server's wait: either names both.
            assert f"provision {IFACE}: host {remotes[0]}: conflict: " in message, message
            assert f"nterface {IFACE}" in message and message.endswith("; no host was written")
            winner = won[0]
            assert await modes(servers) == [(winner.version, winner.provision_id)] * FLEET

    scenario(short_dir, body)


def test_targets_matrix_and_verdicts_over_a_fleet_with_a_stopped_server(
        short_dir: Path) -> None:
    async def body(catalog: Catalog) -> None:
        async with fleet(short_dir, catalog) as servers:
            remotes = [server.remote for server in servers]
            source, candidates = remotes[0], remotes[1:]
            await manager.assign(source, IFACE, BIG)
            await servers[19].stop()

            static = await manager.targets(IFACE, source, candidates)
            verdicts = {target.host: target.verdict for target in static.targets}
            assert verdicts[remotes[4]] == "compatible"          # publishes big
            assert verdicts[remotes[2]] == "compatible-by-content"  # big renamed
            assert verdicts[remotes[1]] == "incompatible"        # small only
            assert verdicts[remotes[19]] == "unreachable"
            assert remotes[19] not in static.compatible_hosts

            # (what the guest negotiated, the candidate, the verdict expected there)
            cases = {"running guest": (guest(), 3, "compatible-for-running-guest"),
                     "acked feature": (guest(SMALL_ACKED | F.VIRTIO_RING_F_INDIRECT_DESC), 3,
                                       "incompatible"),
                     "ring size": (guest(ring_size=1024), 3, "incompatible"),
                     "queue pairs": (guest(queue_pairs=2), 1, "incompatible")}
            for label, (state, index, expected) in cases.items():
                await record(source, state)
                live = await manager.targets(IFACE, source, candidates)
                found = next(target for target in live.targets if target.host == remotes[index])
                assert found.verdict == expected, (label, found.reasons)
                assert found.static is not None and not found.static.compatible
                if expected != "incompatible":
                    assert found.check is not None
                    assert found.check.destination_version == NO_INDIRECT
                # Candidates holding the whole mode stay yes whatever the guest did.
                assert {target.verdict for target in live.targets
                        if target.host in (remotes[4], remotes[2])} == {
                    "compatible", "compatible-by-content"}
                report = await manager.check_migration(IFACE, source, remotes[index])
                assert report.check.verdict.value == expected, label

            matrix = await manager.matrix(remotes, SMALL)
            assert matrix.exit_status == 2
            assert [failure.address for failure in matrix.failures] == [remotes[19]]
            # Every reachable host runs small (publishes it or meets it by content).
            assert [set(domain.hosts) for domain in matrix.domains] == [set(remotes[:19])]
            assert matrix.cell(remotes[1], remotes[19]).symbol == "unreachable"
            # Any version: all six share small; the big group is inside it, so not maximal.
            anything = await manager.matrix(remotes[:6])
            assert [(set(domain.hosts), domain.versions) for domain in anything.domains] == [
                (set(remotes[:6]), (SMALL,))]
            assert anything.cell(remotes[0], remotes[2]).version == BIG
            big = await manager.matrix(remotes[:6], BIG)
            assert [domain.hosts for domain in big.domains] == [
                tuple(remotes[index] for index in (0, 2, 4))]

    scenario(short_dir, body)
