"""The fleet on the command line, against a real 3-member cluster: ``fleet schema|init|status``,
``publish --fleet``, the manager verbs with ``--fleet``, and bad input (one line, exit 2,
nothing written)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import V26, V27, Cli
from tests.fleet.helpers import ClusterThread, cluster_thread, require_ovsdb, shipped_profiles
from vhostcompat.fleet import FleetInputError, FleetSession, Registration, register
from vhostcompat.fleet.schema import schema_text
from vhostcompat.lab.ovsdb import free_tcp_port, run_ovsdb_server
from vhostcompat.ovsdb import Update

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterThread]:
    require_ovsdb()
    with cluster_thread(Path(tmp_path_factory.mktemp("fleet"))) as thread:
        yield thread


def address(fleet: ClusterThread) -> str:
    assert fleet.cluster is not None
    return fleet.cluster.address


async def _rows(remotes: str, table: str) -> int:
    async with FleetSession(remotes) as session:
        client = await session.client()
        return len(await client.select(table, (), ["_uuid"]))


def rows(fleet: ClusterThread, table: str = "Host") -> int:
    return asyncio.run(_rows(address(fleet), table))


def age(fleet: ClusterThread, name: str, seconds: float) -> None:
    """Make a host's heartbeat ``seconds`` old."""
    async def write() -> None:
        async with FleetSession(address(fleet)) as session:
            client = await session.client()
            await client.transact(Update("Host", [("name", "==", name)], {
                "heartbeat": int((time.time() - seconds) * 1000)}))

    asyncio.run(write())


def one_line_error(result: tuple[int, str, str], *parts: str) -> None:
    status, _stdout, stderr = result
    assert status == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for part in parts:
        assert part in stderr, stderr


def test_schema_init_and_status(cli: Cli, fleet: ClusterThread, tmp_path: Path) -> None:
    printed = cli("fleet", "schema")
    assert printed.status == 0 and json.loads(printed.stdout) == json.loads(schema_text())
    assert json.loads(printed.stdout)["version"] == "1.0.0"
    base = free_tcp_port()
    made = cli("fleet", "init", "--dir", str(tmp_path / "c"), "--base-port", str(base))
    assert made.status == 0
    assert f"tcp:127.0.0.1:{base + 1},tcp:127.0.0.1:{base + 3},tcp:127.0.0.1:{base + 5}" in \
        made.stdout
    assert all((tmp_path / "c" / f"m{index}" / "fleet.db").exists() for index in (1, 2, 3))
    one_line_error(cli("fleet", "init", "--dir", str(tmp_path / "c"), "--base-port",
                       str(base)), "already exists")
    status = cli("fleet", "status", "--fleet", address(fleet), "--json")
    assert status.status == 0
    members = json.loads(status.stdout)["members"]
    assert [member["leader"] for member in members].count(True) == 1


def test_publish_then_every_verb_from_the_fleet(cli: Cli, fleet: ClusterThread) -> None:
    remotes = address(fleet)
    assert cli("publish", "--fleet", remotes, "--host", "cli-a").status == 0
    assert cli("publish", "--fleet", remotes, "--host", "cli-b", "--only", V26).status == 0
    again = cli("publish", "--fleet", remotes, "--host", "cli-b", "--only", V26, "--json")
    assert again.status == 0 and json.loads(again.stdout)["versions"] == [V26]  # idempotent
    versions = cli("versions", "--fleet", remotes, "cli-a", "cli-b")
    assert versions.status == 0 and f"cli-b: {V26}" in versions.stdout
    selected = cli("select", "--fleet", remotes, "cli-a", "cli-b")
    assert selected.status == 0 and selected.stdout.splitlines()[0] == V26
    assert cli("provision", "--fleet", remotes, "cli-a", "cli-b", "--iface", "vhu9").status == 0
    checked = cli("check-migration", "--fleet", remotes, "--iface", "vhu9", "--from", "cli-a",
                  "--to", "cli-b")
    assert checked.status == 0, checked
    matrix = cli("matrix", "--fleet", remotes, "cli-a", "cli-b", "--version", V27)
    assert matrix.status == 1  # cli-b cannot take a VM of 2.7

    # A stale host: never compatible, named with how stale it is.
    assert cli("publish", "--fleet", remotes, "--host", "cli-old").status == 0
    age(fleet, "cli-old", 95)
    one_line_error(cli("select", "--fleet", remotes, "cli-a", "cli-old"),
                   "cli-old: heartbeat 9", "stale after 30 s")
    targets = cli("targets", "--fleet", remotes, "--iface", "vhu9", "--from", "cli-a",
                  "cli-b", "cli-old", "--json")
    document = json.loads(targets.stdout)
    verdicts = {target["host"]: target for target in document["targets"]}
    assert verdicts["cli-b"]["compatible"] is True
    assert verdicts["cli-old"]["compatible"] is False
    assert "stale" in json.dumps(verdicts["cli-old"])
    assert cli("select", "--fleet", remotes, "cli-a", "cli-old", "--stale-after",
               "3600").status == 0
    one_line_error(cli("select", "--fleet", remotes, "cli-a", "nowhere"),
                   "nowhere: not registered in the fleet")


def test_bad_input_is_refused_and_nothing_is_written(cli: Cli, fleet: ClusterThread,
                                                     short_dir: Path) -> None:
    remotes = address(fleet)
    before = rows(fleet)
    one_line_error(cli("publish", "--fleet", remotes, "--host", "bad name!"),
                   "invalid fleet host name")
    one_line_error(cli("publish", "--fleet", remotes), "--fleet REMOTES and --host NAME")
    profile = shipped_profiles()[0]
    malformed = [
        Registration("h-dup", "", (profile.version, profile.version),
                     {profile.version: profile}, "test"),
        Registration("h-empty", "", (), {}, "test"),
        Registration("h-bad", "", ("a,b",), {}, "test"),
        Registration("h-nocontents", "", (profile.version, "other.v1"),
                     {profile.version: profile}, "test")]

    async def refuse(registration: Registration) -> str:
        async with FleetSession(remotes) as session:
            with pytest.raises(FleetInputError) as refused:
                # Batched with a good one: the whole batch is refused before any write.
                await register(session, [Registration.of("h-good", "", [profile], "test"),
                                         registration])
        return str(refused.value)

    reasons = [asyncio.run(refuse(registration)) for registration in malformed]
    assert all("malformed version list" in reason for reason in reasons), reasons
    assert "listed twice" in reasons[0] and "empty" in reasons[1]
    assert "'a,b'" in reasons[2] and "no contents for other.v1" in reasons[3]
    assert rows(fleet) == before

    # Two agents claiming one host name: the second is refused, the row stays the first's.
    assert cli("publish", "--fleet", remotes, "--host", "claimed", "--owner",
               "agent:first").status == 0
    one_line_error(cli("publish", "--fleet", remotes, "--host", "claimed", "--owner",
                       "agent:second"), "host claimed is already registered by another agent",
                   "owner agent:first")
    # ... until the first one's heartbeat is stale: an agent that died may be replaced.
    age(fleet, "claimed", 45)
    assert cli("publish", "--fleet", remotes, "--host", "claimed", "--owner",
               "agent:second").status == 0
    # No member reachable.
    dead = f"tcp:127.0.0.1:{free_tcp_port()},tcp:127.0.0.1:{free_tcp_port()}"
    one_line_error(cli("select", "--fleet", dead, "cli-a"), "no member is connected",
                   "Connection refused")
    one_line_error(cli("publish", "--fleet", dead, "--host", "x1"), "Connection refused")
    # A fleet database of another schema version.
    other = json.loads(schema_text())
    other["version"] = "2.0.0"
    schema = short_dir / "fleet-2.ovsschema"
    schema.write_text(json.dumps(other))

    async def against_other_version() -> None:
        async with run_ovsdb_server(short_dir, "v2", tcp=True, schema=schema) as server:
            assert server.tcp_remote is not None
            result = await asyncio.to_thread(cli, "select", "--fleet", server.tcp_remote,
                                             "cli-a")
            one_line_error(result, "fleet database schema 2.0.0 is not the 1.0.0")

    asyncio.run(against_other_version())
