"""Every HOST-taking command through OVSDB remotes, against real ovsdb-servers.

The commands run in-process (in a worker thread: each makes its own event
loop) while the test's loop keeps the servers; what they wrote is read back
with plain ``ovs-vsctl --no-wait get``. Bad input, each one checked by
reading the database after: an unreachable remote, a database with another
schema, a value that is not a valid version list, an interface that does
not exist, a server that accepts and never answers, a version the host does
not publish, a malformed remote string: one line on stderr, exit 2, nothing
written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.cli.conftest import V26, V27, Cli
from tests.cli.test_bad_input import assert_one_line_error
from tests.helpers import CliResult, run_bounded
from tests.ovsdb.helpers import add_vhost_port, listener, require_ovsdb, vsctl_get, write_schema
from vhostcompat.hoststore.ovsdb import TIMEOUT_VARIABLE
from vhostcompat.lab.ovsdb import OvsdbServer, free_tcp_port, run_ovsdb_server

pytestmark = pytest.mark.e2e
AsyncCli = Callable[..., Awaitable[CliResult]]


@contextlib.asynccontextmanager
async def two_servers(short_dir: Path) -> AsyncIterator[tuple[OvsdbServer, OvsdbServer]]:
    """host-a (reached over its Unix socket) and host-b (over TCP), each with port vhu0."""
    async with run_ovsdb_server(short_dir, "a") as host_a, \
            run_ovsdb_server(short_dir, "b", tcp=True) as host_b:
        await asyncio.gather(add_vhost_port(host_a), add_vhost_port(host_b))
        yield host_a, host_b


def scenario(cli: Cli, short_dir: Path,
             body: Callable[[AsyncCli, OvsdbServer, OvsdbServer], Awaitable[None]]) -> None:
    require_ovsdb()

    async def command(*argv: str) -> CliResult:
        return await asyncio.to_thread(cli, *argv)

    async def run() -> None:
        async with two_servers(short_dir) as (host_a, host_b):
            await body(command, host_a, host_b)

    run_bounded(run(), 90.0)


def test_the_story_through_remotes(cli: Cli, short_dir: Path) -> None:
    async def body(command: AsyncCli, host_a: OvsdbServer, host_b: OvsdbServer) -> None:
        a, b = host_a.remote, host_b.tcp_remote
        assert b is not None
        assert (await command("publish", "--db", a)).status == 0
        published = await command("publish", "--db", b, "--only", V26, "--json")
        assert json.loads(published.stdout) == {"host": b, "versions": [V26]}
        assert await vsctl_get(host_b, "Open_vSwitch", ".",
                               "external_ids:vhost-compat-versions") == V26
        versions = await command("versions", a, b)
        assert versions.status == 0 and versions.stdout.splitlines()[1] == f"{b}: {V26}"
        # A list of members: the dead one is skipped.
        dead_first = f"tcp:127.0.0.1:{free_tcp_port()},{a}"
        assert V27 in (await command("versions", dead_first)).stdout
        assert (await command("select", a, b)).stdout == f"{V26}\n"
        assert (await command("assign", "--db", a, "--iface", "vhu0", "--version",
                              V27)).status == 0
        assert await vsctl_get(host_a, "Interface", "vhu0",
                               "options:vhost-compat-version") == V27
        refused = await command("check-migration", "--iface", "vhu0", "--from", a, "--to", b)
        assert refused.status == 1 and refused.stdout.splitlines()[0] == "INCOMPATIBLE"
        assert "VIRTIO_RING_F_INDIRECT_DESC" in refused.stdout
        matrix = await command("matrix", a, b, "--version", V27, "--json")
        assert matrix.status == 1
        assert {(pair["from"], pair["to"]): pair["status"]
                for pair in json.loads(matrix.stdout)["pairs"]} == {(a, b): "no", (b, a): "n/a"}
        provisioned = await command("provision", a, b, "--iface", "vhu0")
        assert provisioned.status == 0
        for server in (host_a, host_b):
            assert await vsctl_get(server, "Interface", "vhu0",
                                   "options:vhost-compat-version") == V26
            assert await vsctl_get(server, "Interface", "vhu0",
                                   "options:vhost-server-path") == '"/run/vhu0.sock"'
        passed = await command("check-migration", "--iface", "vhu0", "--from", a, "--to", b)
        assert passed.status == 0 and passed.stdout.splitlines()[0] == "compatible"

    scenario(cli, short_dir, body)


def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        cli: Cli, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(command: AsyncCli, host_a: OvsdbServer, host_b: OvsdbServer) -> None:
        a = host_a.remote
        assert (await command("publish", "--db", a, "--only", V26)).status == 0

        async def state() -> tuple[str, str, str]:
            return (await vsctl_get(host_a, "Open_vSwitch", ".", "external_ids"),
                    await vsctl_get(host_a, "Interface", "vhu0", "options"),
                    (await host_a.vsctl("--bare", "--columns=name", "list", "Interface")))

        before = await state()

        async def refused(*argv: str, says: str) -> None:
            result = await command(*argv)
            assert result.status == 2, (argv, result)
            assert result.stdout == ""
            assert_one_line_error(result.stderr, says)
            assert await state() == before, argv

        await refused("versions", f"unix:{short_dir / 'nobody.sock'}",
                      says="cannot connect to OVSDB: unix:")
        await refused("assign", "--db", a, "--iface", "vhu9", "--version", V26,
                      says="no interface 'vhu9'")
        await refused("assign", "--db", a, "--iface", "vhu0", "--version", V27,
                      says=f"does not publish '{V27}'")
        await refused("select", a, "tcp:example.org:6640", says="is not an IP address")
        await refused("assign", "--db", "unix:", "--iface", "vhu0", "--version", V26,
                      says="malformed OVSDB remote 'unix:'")
        await refused("publish", "--db", "tcp:127.0.0.1:6640,,unix:/x",
                      says="empty member in the list")
        silent = short_dir / "silent.sock"
        monkeypatch.setenv(TIMEOUT_VARIABLE, "0.3")
        async with listener(silent):
            await refused("check-migration", "--iface", "vhu0", "--from", a, "--to",
                          f"unix:{silent}", says="no reply to transact within 0.3 s")
        monkeypatch.setenv(TIMEOUT_VARIABLE, "soon")
        await refused("versions", a, says=f"{TIMEOUT_VARIABLE}='soon' is not a number")
        monkeypatch.delenv(TIMEOUT_VARIABLE)
        tiny = write_schema(short_dir / "tiny.ovsschema", "Tiny", {"Thing": {"name": "string"}})
        async with run_ovsdb_server(short_dir, "tiny", schema=tiny) as other:
            await refused("publish", "--db", other.remote,
                          says="no database 'Open_vSwitch' (it serves: Tiny)")
        # A version list someone else wrote badly: reads and writes refuse it.
        await host_a.vsctl("set", "Open_vSwitch", ".",
                           'external_ids:vhost-compat-versions="v1,not a version"')
        before = await state()
        await refused("versions", a, says="invalid version 'not a version'")
        await refused("assign", "--db", a, "--iface", "vhu0", "--version", "v1",
                      says="invalid version 'not a version'")
        await refused("provision", a, "--iface", "vhu0", says="invalid version")

    scenario(cli, short_dir, body)
