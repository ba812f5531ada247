"""The OVSDB client against real ovsdb-server processes started by each test.

Every operation, commit errors, conflicts, monitors, echo, reconnect, pending
calls on a drop, members of a remote list, the schema check, and hostile or
silent servers (plain listeners of the test's own).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import vhostcompat.ovsdb
from tests.helpers import run_bounded
from tests.ovsdb.helpers import listener, require_ovsdb, write_schema
from vhostcompat.lab.ovsdb import OvsdbServer, free_tcp_port, run_ovsdb_server
from vhostcompat.lab.process import wait_until
from vhostcompat.ovsdb import (
    Comment,
    Delete,
    Insert,
    Mutate,
    NamedUuid,
    OvsdbClient,
    OvsdbCommitError,
    OvsdbConflictError,
    OvsdbConnectionError,
    OvsdbSchemaError,
    Runstate,
    Select,
    Update,
    Uuid,
    Wait,
    connect,
)

pytestmark = pytest.mark.e2e
INTERFACE_COLUMNS = ("name", "type", "options", "external_ids", "status")
WHERE_VHU0 = [("name", "==", "vhu0")]

Scenario = Callable[[OvsdbServer], Awaitable[None]]


def with_server(short_dir: Path, scenario: Scenario, **options: object) -> None:
    require_ovsdb()

    async def run() -> None:
        async with run_ovsdb_server(short_dir, "db", **options) as server:  # type: ignore[arg-type]
            await scenario(server)

    run_bounded(run(), 60.0)


async def add_port(client: OvsdbClient, name: str = "vhu0") -> Uuid:
    """Bridge br0 -> Port NAME -> Interface NAME, linked (Interface is not a root table)."""
    results = await client.transact(
        Insert("Interface", {"name": name, "type": "dpdkvhostuserclient"}, uuid_name="iface"),
        Insert("Port", {"name": name, "interfaces": NamedUuid("iface")}, uuid_name="port"),
        Insert("Bridge", {"name": "br0", "ports": NamedUuid("port")}, uuid_name="bridge"),
        Mutate("Open_vSwitch", [], [("bridges", "insert", frozenset({NamedUuid("bridge")}))]),
        Comment("vhostcompat test: add a port"))
    uuid: Uuid = results[0]["uuid"]
    assert results[3] == {"count": 1} and results[4] == {}
    return uuid


def test_every_operation_round_trips_and_ovs_vsctl_reads_it_back(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        async with await connect(server.remote, required_columns={
                "Interface": INTERFACE_COLUMNS}) as client:
            uuid = await add_port(client)
            update = await client.transact(Update("Interface", WHERE_VHU0, {
                "options": {"vhost-compat-version": "v1", "comma": "a,b"},
                "external_ids": {"vhost-compat-status": "running"}}))
            assert update == [{"count": 1}]
            assert (await server.vsctl("get", "Interface", "vhu0",
                                       "options:vhost-compat-version")).strip() == "v1"
            assert (await server.vsctl("get", "Interface", "vhu0",
                                       "options:comma")).strip() == '"a,b"'
            await client.transact(Mutate("Interface", WHERE_VHU0, [
                ("options", "delete", frozenset({"comma"})),
                ("external_ids", "insert", {"vhost-compat-ring-size": "256"})]))
            [row] = await client.select("Interface", WHERE_VHU0,
                                        ["_uuid", "options", "external_ids", "ofport"])
            assert row == {"_uuid": uuid, "options": {"vhost-compat-version": "v1"},
                           "external_ids": {"vhost-compat-status": "running",
                                            "vhost-compat-ring-size": "256"},
                           "ofport": frozenset()}
            waited = await client.transact(
                Wait("Interface", WHERE_VHU0, ["options"],
                     [{"options": {"vhost-compat-version": "v1"}}]),
                Select("Interface", [("_uuid", "==", uuid)], ["name"]))
            assert waited == [{}, {"rows": [{"name": "vhu0"}]}]
            [bridge] = await client.select("Bridge", [("name", "==", "br0")], ["_uuid"])
            bridge_uuid = bridge["_uuid"]
            assert isinstance(bridge_uuid, Uuid)
            assert await client.transact(
                Delete("Bridge", [("name", "==", "br0")]),
                Mutate("Open_vSwitch", [], [("bridges", "delete",
                                             frozenset({bridge_uuid}))])) == [
                {"count": 1}, {"count": 1}]
            assert await client.select("Interface") == []  # garbage-collected with its port
        assert client.runstate is Runstate.IDLE

    with_server(short_dir, scenario)


def test_commit_errors_and_conflicts_are_raised_and_nothing_is_written(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        async with await connect(server.remote) as client:
            await add_port(client)
            with pytest.raises(OvsdbCommitError) as commit:
                await client.transact(Update("Interface", WHERE_VHU0, {"mtu_request": 1500}),
                                      Insert("Open_vSwitch", {}))
            assert commit.value.index is None and commit.value.error == "constraint violation"
            assert "commit failed: constraint violation" in str(commit.value)
            with pytest.raises(OvsdbCommitError) as operation:
                await client.transact(Update("Interface", WHERE_VHU0, {"nosuch": "x"}))
            assert operation.value.index == 0 and operation.value.operation == "update"
            with pytest.raises(OvsdbConflictError) as conflict:
                await client.transact(
                    Wait("Interface", WHERE_VHU0, ["options"], [{"options": {"a": "b"}}]),
                    Update("Interface", WHERE_VHU0, {"mtu_request": 9000}))
            assert '"where" clause test failed' in str(conflict.value)
            assert (await server.vsctl("get", "Interface", "vhu0", "mtu_request")).strip() == "[]"

    with_server(short_dir, scenario)


def test_monitor_delivers_initial_rows_then_every_change(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        async with await connect(server.remote) as client:
            await add_port(client)
            updates = client.monitor({"Interface": ["name", "options"]})
            initial = await anext(updates)
            assert initial.initial
            [(uuid, (old, new))] = initial["Interface"].items()
            assert old is None and new == {"name": "vhu0", "options": {}}
            await server.vsctl("set", "Interface", "vhu0", "options:vhost-compat-version=v2")
            change = await anext(updates)
            assert not change.initial
            assert change["Interface"][uuid] == ({"name": "vhu0", "options": {}}, {
                "name": "vhu0", "options": {"vhost-compat-version": "v2"}})
            await server.vsctl("del-br", "br0")
            deleted = await anext(updates)
            assert deleted["Interface"][uuid] == (
                {"name": "vhu0", "options": {"vhost-compat-version": "v2"}}, None)
            await updates.aclose()
            with pytest.raises(StopAsyncIteration):
                await anext(updates)

    with_server(short_dir, scenario)


def test_echo_probes_from_the_server_are_answered(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        assert server.tcp_remote is not None
        async with await connect(server.tcp_remote) as client:
            # ovsdb-server probes a TCP client idle for 1 s and drops it if it
            # does not answer within another second.
            await wait_until(lambda: client.echo_replies >= 2, 30.0, "two echo probes")
            assert await client.select("Open_vSwitch", columns=["_uuid"])
            assert client.connections_made == 1

    with_server(short_dir, scenario, tcp=True, probe_interval_ms=1000)


def test_reconnect_after_a_crash_resyncs_monitors_and_fails_pending_calls(
        short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        async with await connect(server.remote, timeout=10.0) as client:
            await add_port(client)
            updates = client.monitor({"Interface": ["name", "options"]})
            assert (await anext(updates)).initial
            # A wait the server holds open (until the row changes): a pending call.
            pending = asyncio.ensure_future(client.transact(
                Wait("Interface", WHERE_VHU0, ["options"], [{"options": {}}], until="!=",
                     timeout=60_000)))
            await wait_until(lambda: client.pending_calls == 1, 5.0, "the wait to be pending")
            await server.kill()
            with pytest.raises(OvsdbConnectionError, match=r"lost while waiting for the reply "
                               r"to transact.*may or may not have been committed"):
                await pending
            # Changed while the client is away: the resync must show it.
            await server.transact_offline(Update("Interface", WHERE_VHU0,
                                                 {"options": {"mode": "after"}}))
            await server.start()
            resynced = await anext(updates)
            assert resynced.initial
            assert [new for _, new in resynced["Interface"].values()] == [
                {"name": "vhu0", "options": {"mode": "after"}}]
            assert client.runstate is Runstate.RUNNING and client.connections_made == 2
            assert len(await client.select("Interface")) == 1

    with_server(short_dir, scenario)


def test_a_list_of_members_is_tried_in_turn(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        dead = f"tcp:127.0.0.1:{free_tcp_port()},unix:{short_dir / 'none.sock'}"
        async with await connect(f"{dead},{server.remote}") as client:
            assert client.remote == server.remote
        with pytest.raises(OvsdbConnectionError) as caught:
            await connect(dead)
        message = str(caught.value)
        assert "Connection refused" in message and "No such file or directory" in message
        assert "\n" not in message

    with_server(short_dir, scenario)


def test_another_schema_or_missing_columns_are_refused_by_name(short_dir: Path) -> None:
    require_ovsdb()

    async def scenario() -> None:
        tiny = write_schema(short_dir / "tiny.ovsschema", "Tiny", {"Thing": {"name": "string"}})
        async with run_ovsdb_server(short_dir, "tiny", schema=tiny) as server:
            with pytest.raises(OvsdbSchemaError, match="no database 'Open_vSwitch' "
                               r"\(it serves: Tiny\)"):
                await connect(server.remote)
            async with await connect(server.remote, database="Tiny") as client:
                await client.transact(Insert("Thing", {"name": "x"}))
                assert await client.select("Thing", columns=["name"]) == [{"name": "x"}]
        fake = write_schema(short_dir / "fake.ovsschema", "Open_vSwitch",
                            {"Open_vSwitch": {"external_ids": "string"},
                             "Interface": {"name": "string"}})
        async with run_ovsdb_server(short_dir, "fake", schema=fake) as server:
            with pytest.raises(OvsdbSchemaError, match=r"table Interface lacks column\(s\) "
                               r"options, status"):
                await connect(server.remote, required_columns={
                    "Interface": ("name", "options", "status")})
            with pytest.raises(OvsdbSchemaError, match="has no table Port"):
                await connect(server.remote, required_columns={"Port": ("name",)})

    run_bounded(scenario(), 60.0)


def test_a_server_that_accepts_and_never_answers_times_out(short_dir: Path) -> None:
    async def scenario() -> None:
        path = short_dir / "silent.sock"
        async with listener(path) as received:
            with pytest.raises(OvsdbConnectionError, match=r"no reply to get_schema within "
                               r"0\.3 s"):
                await connect(f"unix:{path}", timeout=0.3)
            assert b"get_schema" in b"".join(received)

    run_bounded(scenario(), 30.0)


@pytest.mark.parametrize(("sent", "reason"), [
    (b'{"id":"schema","result":nonsense}', "malformed JSON"),
    (b'{"id":"schema","result":' + b"[" * 1000, "nested deeper than 64"),
    (b"[1]", "not a JSON object"),
    (json.dumps({"id": "schema", "result": {"name": 5}, "error": None}).encode(),
     "get_schema answer: the schema lacks a name"),
])
def test_a_hostile_server_is_refused_and_disconnected(short_dir: Path, sent: bytes,
                                                      reason: str) -> None:
    async def scenario() -> None:
        path = short_dir / "hostile.sock"
        async with listener(path, sent):
            with pytest.raises(OvsdbConnectionError, match=reason) as caught:
                await connect(f"unix:{path}", timeout=5.0)
            assert "\n" not in str(caught.value)

    run_bounded(scenario(), 30.0)


def test_a_hung_server_is_probed_dropped_and_reached_again(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        async with await connect(server.remote, timeout=0.5, probe_interval=0.5) as client:
            os.kill(server.pid, signal.SIGSTOP)  # alive, socket open, never answering
            try:
                await wait_until(lambda: client.runstate is Runstate.CONNECTING, 10.0,
                                 "the client to drop the silent server")
                assert "no reply to an echo probe within 0.5 s" in str(client.last_error)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert await client.select("Open_vSwitch", columns=["_uuid"], timeout=10.0)
            assert client.connections_made >= 2

    with_server(short_dir, scenario)


def test_without_reconnect_a_lost_connection_ends_monitors_and_calls_clearly(
        short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        client = await connect(server.remote, reconnect=False)
        updates = client.monitor({"Open_vSwitch": ["external_ids"]})
        assert (await anext(updates)).initial
        await server.kill()
        with pytest.raises(OvsdbConnectionError, match=r"monitor ended: .*closed"):
            await anext(updates)
        await wait_until(lambda: client.runstate is Runstate.IDLE, 10.0, "the client idle")
        with pytest.raises(OvsdbConnectionError, match="not connected"):
            await client.select("Open_vSwitch")
        await client.close()
        await server.start()
        await client.connect()  # an idle client may connect again
        assert client.connections_made == 2
        await client.close()

    with_server(short_dir, scenario)


def test_the_api_the_agent_codes_against(short_dir: Path) -> None:
    """The contract of issue 7, exactly as the agent uses it."""
    assert {"OvsdbError", "OvsdbTimeoutError", "parse_remotes", "NamedUuid", "Uuid",
            "OvsdbCommitError", "OvsdbConflictError", "OvsdbSchemaError"} <= set(
        vhostcompat.ovsdb.__all__)

    async def scenario(server: OvsdbServer) -> None:
        columns = ("name", "options", "external_ids", "status", "type")
        client = await connect(f"{server.remote},tcp:127.0.0.1:{free_tcp_port()}",
                               database="Open_vSwitch", timeout=5.0,
                               required_columns={"Interface": columns})
        async with client:
            await add_port(client)
            updates = client.monitor({"Interface": list(columns)})
            first = await anext(updates)
            assert first.initial and len(first["Interface"]) == 1
            results = await client.transact(
                Wait("Interface", where=[("name", "==", "vhu0")], columns=["options"],
                     rows=[{"options": {}}]),
                Update("Interface", where=[("name", "==", "vhu0")], row={"options": {"a": "b"}}),
                timeout=5.0)
            assert results == [{}, {"count": 1}]
            [(old, new)] = (await anext(updates))["Interface"].values()
            assert old is not None and new is not None
            assert (old["options"], new["options"]) == ({}, {"a": "b"})
        await client.close()  # closing twice is harmless
        assert client.runstate is Runstate.IDLE

    with_server(short_dir, scenario)


def test_connect_can_wait_for_a_server_that_starts_later(short_dir: Path) -> None:
    async def scenario(server: OvsdbServer) -> None:
        await server.stop()
        client = OvsdbClient(server.remote)
        started = asyncio.ensure_future(client.connect(retry_for=30.0))
        await wait_until(lambda: client.last_error is not None, 10.0, "a first failed attempt")
        assert not started.done() and client.runstate is Runstate.CONNECTING
        await server.start()
        await started
        async with client:
            assert client.remote == server.remote and client.connections_made == 1
        with pytest.raises(OvsdbConnectionError, match="cannot connect"):
            await connect(f"unix:{short_dir / 'never.sock'}", retry_for=0.2)

    with_server(short_dir, scenario)
