"""The OVSDB host store against real ovsdb-server processes: rows, ovs-vsctl, conflicts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.helpers import run_bounded
from tests.ovsdb.helpers import add_vhost_port, require_ovsdb, vsctl_get
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.hoststore import (
    NO_MODE,
    HostStoreConflictError,
    HostStoreCorruptError,
    ModeState,
    ModeWrite,
    NotPublishedError,
    OvsdbHostStore,
    OvsStatus,
    open_host,
)
from vhostcompat.hoststore.ovsdb import OvsdbRead
from vhostcompat.lab.ovsdb import OvsdbServer, run_ovsdb_server
from vhostcompat.ovsdb import Delete, Update, connect
from vhostcompat.profiles import CompatProfile, NegotiatedState

pytestmark = pytest.mark.e2e
VERSION_1 = VirtioFeature.VIRTIO_F_VERSION_1
INDIRECT = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
V27 = CompatProfile("upstream.ovs-dpdk.v2.7", VERSION_1 | INDIRECT, ProtocolFeature.MQ, 8, 1024)
V26 = CompatProfile("upstream.ovs-dpdk.v2.6", VERSION_1, ProtocolFeature.MQ, 8, 1024)
V25 = CompatProfile("upstream.ovs-dpdk.v2.5", VERSION_1, ProtocolFeature.MQ, 4, 256)

Scenario = Callable[[OvsdbServer], Awaitable[None]]


def with_server(short_dir: Path, scenario: Scenario, timeout: float = 60.0) -> None:
    require_ovsdb()

    async def run() -> None:
        async with run_ovsdb_server(short_dir, "db") as server:
            await scenario(server)

    run_bounded(run(), timeout)


def test_publish_assign_record_and_ovs_vsctl_reads_every_key(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        await server.vsctl("set", "Open_vSwitch", ".", "external_ids:system-id=host-a")
        await add_vhost_port(server)
        async with open_host(server.remote) as store:
            record = await store.publish([V27, V26])
            assert record.versions == (V27.version, V26.version)
            await store.assign("vhu0", V26.version)
            await store.record_negotiated("vhu0", NegotiatedState(
                acked_features=VERSION_1, queue_pairs=1, ring_size=256, status="running"))
            record = await store.read()
        assert await vsctl_get(server, "Open_vSwitch", ".",
                               "external_ids:vhost-compat-versions") == (
            f'"{V27.version},{V26.version}"')
        profile = json.loads(json.loads(await vsctl_get(
            server, "Open_vSwitch", ".", f"external_ids:vhost-compat-profile-{V26.version}")))
        assert profile["virtio_features"] == "0x100000000"
        assert await vsctl_get(server, "Open_vSwitch", ".", "external_ids:system-id") == (
            "host-a")
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == V26.version
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-server-path") == '"/run/vhu0.sock"'
        assert await vsctl_get(server, "Interface", "vhu0",
                               "external_ids:vhost-compat-ring-size") == '"256"'
        assert await vsctl_get(server, "Interface", "vhu0", "external_ids:iface-id") == "abc"
        interface = record.interface("vhu0")
        assert interface.version == V26.version and interface.negotiated.ring_size == 256
        assert record.profile(V27.version) == V27
        # Republishing replaces the list and the profiles, keeps the interface's mode.
        async with open_host(server.remote) as store:
            record = await store.publish([V26])
        assert set(record.profiles) == {V26.version}
        assert record.interface("vhu0").version == V26.version

    with_server(short_dir, scenario)


def test_ovs_status_is_read_and_disagreement_is_said(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        await add_vhost_port(server)
        async with open_host(server.remote) as store:
            await store.publish([V26])
            await store.assign("vhu0", V26.version)
            await store.record_negotiated("vhu0", NegotiatedState(
                acked_features=VERSION_1, queue_pairs=1, ring_size=256,
                machine_type="pc-q35-7.2"))
        async with await connect(server.remote) as client:  # as OVS-DPDK writes it
            await client.transact(Update("Interface", [("name", "==", "vhu0")], {"status": {
                "features": f"{int(VERSION_1 | INDIRECT):#x}", "num_of_vrings": "2",
                "vring_0_size": "256", "vring_1_size": "512", "status": "connected"}}))
        async with open_host(server.remote) as store:
            interface = (await store.read()).interface("vhu0")
        assert interface.ovs_status == OvsStatus(int(VERSION_1 | INDIRECT), 2, 512)
        assert interface.disagreements() == (
            f"OVS status features={int(VERSION_1 | INDIRECT):#x} but the proxy recorded "
            f"acked features {int(VERSION_1):#x}",
            "OVS status ring size 512 but the proxy recorded 256")
        effective = interface.effective_negotiated()
        assert effective.acked_features == VERSION_1 | INDIRECT and effective.ring_size == 512
        assert effective.machine_type == "pc-q35-7.2"  # kept as recorded

    with_server(short_dir, scenario)


def test_publish_creates_the_open_vswitch_row_when_there_is_none(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        async with await connect(server.remote) as client:
            await client.transact(Delete("Open_vSwitch", []))
        async with open_host(server.remote) as store:
            with pytest.raises(Exception, match="no Open_vSwitch row"):
                await store.read()
            assert (await store.publish([V26])).versions == (V26.version,)
        assert await vsctl_get(server, "Open_vSwitch", ".",
                               "external_ids:vhost-compat-versions") == V26.version

    with_server(short_dir, scenario)


def test_refusals_name_the_interface_or_version_and_write_nothing(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        await add_vhost_port(server)
        async with open_host(server.remote) as store:
            await store.publish([V26])
            with pytest.raises(NotPublishedError, match="no interface 'vhu9' in the "
                               "Interface table"):
                await store.assign("vhu9", V26.version)
            with pytest.raises(NotPublishedError, match="no interface 'vhu9'"):
                await store.record_negotiated("vhu9", NegotiatedState(ring_size=256))
            with pytest.raises(NotPublishedError, match=f"does not publish '{V27.version}'"):
                await store.assign("vhu0", V27.version)
        assert sorted((await server.vsctl("--bare", "--columns=name", "list",
                                          "Interface")).split()) == ["br0", "vhu0"]
        assert await vsctl_get(server, "Interface", "vhu0", "options") == (
            '{vhost-server-path="/run/vhu0.sock"}')
        await server.vsctl("set", "Open_vSwitch", ".",
                           'external_ids:vhost-compat-versions="v1,not a version"')
        async with open_host(server.remote) as store:
            for attempt in (store.read(), store.assign("vhu0", "v1")):
                with pytest.raises(HostStoreCorruptError, match="invalid version 'not a "
                                   "version'"):
                    await attempt
        assert await vsctl_get(server, "Interface", "vhu0", "options") == (
            '{vhost-server-path="/run/vhu0.sock"}')

    with_server(short_dir, scenario)


ROUNDS = 100


def test_two_writers_racing_on_one_interface_never_lose_an_update(short_dir: Path) -> None:
    """Both read, then both write: each round exactly one wins, the other conflicts."""

    async def scenario(server: OvsdbServer) -> None:
        await add_vhost_port(server)
        barrier = asyncio.Barrier(2)
        first, second = (OvsdbHostStore(server.remote, before_write=barrier.wait)
                         for _ in range(2))
        versions = [V27.version, V26.version, V25.version]
        async with OvsdbHostStore(server.remote) as setup:
            await setup.publish([V27, V26, V25])
            await setup.assign("vhu0", versions[0])
        current = versions[0]
        wins = {0: 0, 1: 0}
        async with first, second:
            for round_number in range(ROUNDS):
                # Two versions other than the current one: either write changes the row.
                wanted = [version for version in versions if version != current]
                if round_number % 2:
                    wanted.reverse()
                outcomes = await asyncio.gather(
                    first.assign("vhu0", wanted[0]), second.assign("vhu0", wanted[1]),
                    return_exceptions=True)
                winners = [index for index, outcome in enumerate(outcomes) if outcome is None]
                losers = [outcome for outcome in outcomes
                          if isinstance(outcome, HostStoreConflictError)]
                assert len(winners) == 1 and len(losers) == 1, (round_number, outcomes)
                assert "\n" not in str(losers[0]) and losers[0].exit_status == 2
                current = wanted[winners[0]]
                wins[winners[0]] += 1
                assert (await first.read()).interface("vhu0").version == current
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == current
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-server-path") == '"/run/vhu0.sock"'
        assert sum(wins.values()) == ROUNDS

    with_server(short_dir, scenario, timeout=120.0)


def test_a_write_planned_from_a_read_waits_on_that_read(short_dir: Path) -> None:
    """A ModeWrite carrying the record's basis commits in one transaction, waiting on
    what that read saw: a change made after the read (even to another key of the
    row) is a conflict and nothing is written; without a basis the store reads again."""

    async def scenario(server: OvsdbServer) -> None:
        await add_vhost_port(server)
        async with OvsdbHostStore(server.remote) as setup:
            await setup.publish([V27, V26])
            await setup.assign("vhu0", V27.version)
        reader = OvsdbHostStore(server.remote)
        record = await reader.read()
        assert isinstance(record.basis, OvsdbRead) and record.basis.address == server.remote
        assert (await reader.read(interfaces=False)).basis is None
        before = record.interface("vhu0").mode_state
        change = ModeWrite("vhu0", before, ModeState(V26.version, "run-1"), basis=record.basis)
        await server.vsctl("set", "Interface", "vhu0", "options:n_rxq_desc=512")
        async with OvsdbHostStore(server.remote) as writer:
            with pytest.raises(HostStoreConflictError) as raised:
                await writer.write_mode(change)
        assert "vhu0" in str(raised.value) and "\n" not in str(raised.value)
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == V27.version
        # Read again: the same write goes through, keeping the other key.
        record = await reader.read()
        async with OvsdbHostStore(server.remote) as writer:
            await writer.write_mode(ModeWrite("vhu0", before, ModeState(V26.version, "run-1"),
                                              basis=record.basis))
            assert writer._client is None  # one-shot: no client was opened for it
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == V26.version
        assert await vsctl_get(server, "Interface", "vhu0", "options:n_rxq_desc") == '"512"'
        # A basis from another host is not used: that write reads this host first.
        stale = ModeWrite("vhu0", ModeState(V26.version, "run-1"), ModeState(V27.version),
                          basis=OvsdbRead("unix:/nonexistent", {}, {}))
        async with OvsdbHostStore(server.remote) as writer:
            await writer.write_mode(stale)
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == V27.version

    with_server(short_dir, scenario)


def test_a_held_read_carries_its_write_and_a_lost_one_is_replaced(short_dir: Path) -> None:
    """With hold, the read's connection stays open and the write planned from it goes
    on it, then it is closed; if the server dropped it meanwhile (a restart), the
    write goes on a fresh one-shot connection, still waiting on what was read."""

    async def scenario(server: OvsdbServer) -> None:
        await add_vhost_port(server)
        async with OvsdbHostStore(server.remote) as setup:
            await setup.publish([V27, V26])
        await add_vhost_port(server, "vhu1")
        async with OvsdbHostStore(server.remote) as store:

            async def read(*names: str) -> set[str]:
                basis = (await store.read(interfaces=names if names else True)).basis
                assert isinstance(basis, OvsdbRead)
                return set(basis.interfaces)

            assert await read() == {"br0", "vhu0", "vhu1"}
            assert await read("vhu1", "br0") == {"vhu1", "br0"}
            assert await read("vhu9") == set()
        async with OvsdbHostStore(server.remote, hold=True) as store:
            record = await store.read(interfaces=("vhu0",))
            assert isinstance(record.basis, OvsdbRead) and set(record.basis.interfaces) == {
                "vhu0"}
            held = store._held
            assert held is not None and held.usable
            await store.write_mode(ModeWrite("vhu0", NO_MODE, ModeState(V27.version, "run-1"),
                                             basis=record.basis))
            assert store._held is None and not held.usable and store._client is None
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == V27.version
        async with OvsdbHostStore(server.remote, hold=True) as store:
            record = await store.read()
            held = store._held
            assert held is not None
            await server.stop()
            await server.start()
            async with asyncio.timeout(10):
                while held.usable:  # the server's close reaches the loop
                    await asyncio.sleep(0.01)
            await store.write_mode(ModeWrite("vhu0", ModeState(V27.version, "run-1"),
                                             ModeState(V26.version, "run-2"),
                                             basis=record.basis))
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == V26.version
        # Conflict on a held connection: nothing written, the connection closed.
        async with OvsdbHostStore(server.remote, hold=True) as store:
            record = await store.read()
            held = store._held
            assert held is not None
            await server.vsctl("set", "Interface", "vhu0", "options:n_rxq_desc=512")
            with pytest.raises(HostStoreConflictError):
                await store.write_mode(ModeWrite("vhu0", ModeState(V26.version, "run-2"),
                                                 ModeState(V27.version, "run-3"),
                                                 basis=record.basis))
            assert not held.usable
        assert await vsctl_get(server, "Interface", "vhu0",
                               "options:vhost-compat-version") == V26.version

    with_server(short_dir, scenario)
