"""One-shot reads (``read_once``) and the connection's socket handling, against real
ovsdb-servers and plain listeners of the tests' own.

``read_once`` is what every fleet query does per host, so it must answer
exactly what a connected client answers, try the members of a list in turn,
and fail the same ways; the connection underneath writes what the kernel
does not take at once later, and never hangs on a peer that stops reading.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_bounded
from tests.ovsdb.helpers import listener, require_ovsdb, write_schema
from vhostcompat.hoststore.ovsdb import KNOWN_SCHEMA, REQUIRED_COLUMNS
from vhostcompat.lab.ovsdb import free_tcp_port, run_ovsdb_server
from vhostcompat.ovsdb import (
    OvsdbClient,
    OvsdbConflictError,
    OvsdbConnectionError,
    OvsdbSchemaError,
    OvsdbTimeoutError,
    Select,
    Update,
    Wait,
    connect,
    parse_remotes,
    read_once,
    transact_once,
)
from vhostcompat.ovsdb import connection as connection_module
from vhostcompat.ovsdb.remotes import Remote

pytestmark = pytest.mark.e2e
READ = (Select("Open_vSwitch", (), ("_uuid", "external_ids")),
        Select("Interface", (), ("_uuid", "name", "options", "external_ids", "status")))


async def once(remotes: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    return await read_once(remotes, READ, known_schema=KNOWN_SCHEMA,
                           required_columns=REQUIRED_COLUMNS, timeout=timeout)


def test_a_one_shot_read_answers_what_a_connected_client_does(short_dir: Path) -> None:
    require_ovsdb()

    async def scenario() -> None:
        async with run_ovsdb_server(short_dir, "db") as server:
            await server.vsctl("set", "Open_vSwitch", ".", "external_ids:a=1",
                               'external_ids:b="x y"')
            client = OvsdbClient(server.remote, required_columns=REQUIRED_COLUMNS,
                                 known_schema=KNOWN_SCHEMA, reconnect=False)
            try:
                expected = await client.connect(read=READ)
            finally:
                await client.close()
            got = await once(server.remote)
            assert got == expected
            assert got[0]["rows"][0]["external_ids"] == {"a": "1", "b": "x y"}
            # A dead member first: the next one answers.
            dead = f"tcp:127.0.0.1:{free_tcp_port()},unix:{short_dir / 'none.sock'}"
            assert await once(f"{dead},{server.remote}") == expected

    run_bounded(scenario(), 60.0)


def test_no_member_answering_names_every_member_in_one_line(short_dir: Path) -> None:
    async def scenario() -> None:
        port = free_tcp_port()
        with pytest.raises(OvsdbConnectionError) as caught:
            await once(f"tcp:127.0.0.1:{port},unix:{short_dir / 'none.sock'}")
        message = str(caught.value)
        assert f"tcp:127.0.0.1:{port}" in message and "none.sock" in message
        assert "Connection refused" in message and "No such file or directory" in message
        assert "\n" not in message

    run_bounded(scenario(), 30.0)


def test_a_database_that_does_not_fit_is_named_as_by_the_client(short_dir: Path) -> None:
    require_ovsdb()

    async def scenario() -> None:
        tiny = write_schema(short_dir / "tiny.ovsschema", "Tiny", {"Thing": {"name": "string"}})
        async with run_ovsdb_server(short_dir, "tiny", schema=tiny) as server:
            with pytest.raises(OvsdbSchemaError, match=r"no database 'Open_vSwitch' "
                               r"\(it serves: Tiny\)"):
                await once(server.remote)
        fake = write_schema(short_dir / "fake.ovsschema", "Open_vSwitch",
                            {"Open_vSwitch": {"external_ids": "string"},
                             "Interface": {"name": "string"}})
        async with run_ovsdb_server(short_dir, "fake", schema=fake) as server:
            with pytest.raises(OvsdbSchemaError, match=r"table Interface lacks column\(s\) "
                               r"type, options, external_ids, status"):
                await once(server.remote)

    run_bounded(scenario(), 60.0)


@pytest.mark.parametrize(("sent", "reason"), [
    (b'{"id":1,"result":nonsense}', "malformed JSON"),
    (b'{"id":1,"result":' + b"[" * 1000, "nested deeper than 64"),
    (b'{"id":1,"result":[{"rows":[{"_uuid":5}]}],"error":null}', "expected 4 results"),
])
def test_a_hostile_server_is_refused_with_its_reason(short_dir: Path, sent: bytes,
                                                      reason: str) -> None:
    async def scenario() -> None:
        path = short_dir / "hostile.sock"
        async with listener(path, sent):
            with pytest.raises(OvsdbConnectionError, match=reason) as caught:
                await once(f"unix:{path}")
            assert "\n" not in str(caught.value)

    run_bounded(scenario(), 30.0)


def test_a_silent_server_times_out_naming_the_call(short_dir: Path) -> None:
    async def scenario() -> None:
        path = short_dir / "silent.sock"
        async with listener(path) as received:
            with pytest.raises(OvsdbConnectionError, match=r"no reply to transact within "
                               r"0\.3 s"):
                await once(f"unix:{path}", timeout=0.3)
            assert b"transact" in b"".join(received)

    run_bounded(scenario(), 30.0)


def test_a_write_larger_than_the_socket_buffer_goes_out_whole(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel takes a few hundred KB at once; the rest is written as it drains."""
    require_ovsdb()
    big = "v" * (3 * 1024 * 1024)
    drained: list[int] = []
    on_writable = connection_module.Connection._on_writable

    def counting(connection: connection_module.Connection) -> None:
        drained.append(1)
        on_writable(connection)

    monkeypatch.setattr(connection_module.Connection, "_on_writable", counting)

    async def scenario() -> None:
        async with run_ovsdb_server(short_dir, "db") as server:
            async with await connect(server.remote) as client:
                await client.transact(Update("Open_vSwitch", [], {"external_ids": {"big": big}}))
                [row] = await client.select("Open_vSwitch", columns=["external_ids"])
                assert row["external_ids"] == {"big": big}
            assert len(await server.vsctl("get", "Open_vSwitch", ".",
                                          "external_ids:big")) >= len(big)
        assert drained  # the rest really was written later


    run_bounded(scenario(), 60.0)


def test_closing_on_a_peer_that_never_reads_is_bounded(short_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "CLOSE_TIMEOUT", 0.2)

    async def scenario() -> None:
        path = short_dir / "deaf.sock"
        deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deaf.bind(str(path))
        deaf.listen(1)  # accepted by the kernel, never read
        try:
            (remote,) = parse_remotes(f"unix:{path}")
            opened = await connection_module.Connection.open(
                remote, on_notify=lambda method, params: None,
                on_lost=lambda connection, reason: None,
                max_message_bytes=1 << 20, max_depth=64)
            with pytest.raises(OvsdbTimeoutError):
                await opened.call("echo", ["x" * (8 * 1024 * 1024)], 0.2)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await opened.close()
            assert loop.time() - started < 2.0
            assert opened.lost is not None
        finally:
            deaf.close()

    run_bounded(scenario(), 30.0)


def test_a_full_unix_backlog_is_retried_until_the_listener_accepts(short_dir: Path) -> None:
    """A non-blocking connect to a full backlog fails with EAGAIN and queues nothing."""

    async def scenario() -> None:
        path = short_dir / "busy.sock"
        busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        busy.bind(str(path))
        busy.listen(0)
        busy.setblocking(False)
        queued: list[socket.socket] = []
        try:
            while True:  # fill the backlog
                extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                extra.setblocking(False)
                try:
                    extra.connect(str(path))
                except BlockingIOError:
                    extra.close()
                    break
                queued.append(extra)
            remote = Remote("unix", path=str(path))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await remote.open_socket()
            waiting = asyncio.create_task(remote.open_socket())
            accepted = [busy.accept()[0] for _ in queued]  # the backlog drains
            async with asyncio.timeout(5.0):
                connected = await waiting
            connected.close()
            for sock in accepted:
                sock.close()
        finally:
            for sock in queued:
                sock.close()
            busy.close()

    run_bounded(scenario(), 30.0)


def test_a_one_shot_write_commits_conflicts_and_is_never_sent_twice(short_dir: Path) -> None:
    """transact_once carries writes: a failed wait is a conflict; a write sent to a
    member that then says nothing is not sent to the next member (its outcome is
    unknown), where a read goes on to the next member."""
    require_ovsdb()

    async def scenario() -> None:
        async with run_ovsdb_server(short_dir, "db") as server:
            [root] = (await once(server.remote))[0]["rows"]
            where = [("_uuid", "==", root["_uuid"])]

            async def write(remotes: str, value: str, seen: dict[str, str]) -> None:
                await transact_once(remotes, [
                    Wait("Open_vSwitch", where, ["external_ids"], [{"external_ids": seen}]),
                    Update("Open_vSwitch", where, {"external_ids": {"k": value}})],
                    known_schema=KNOWN_SCHEMA, required_columns=REQUIRED_COLUMNS,
                    timeout=0.5)

            await write(server.remote, "1", {})
            with pytest.raises(OvsdbConflictError):
                await write(server.remote, "2", {})  # no longer empty
            assert (await once(server.remote))[0]["rows"][0]["external_ids"] == {"k": "1"}
            silent = short_dir / "silent.sock"
            async with listener(silent) as received:
                both = f"unix:{silent},{server.remote}"
                with pytest.raises(OvsdbTimeoutError):
                    await write(both, "3", {"k": "1"})
                assert received  # it was sent to the silent member...
                rows = (await once(both, timeout=0.5))[0]["rows"]
            assert rows[0]["external_ids"] == {"k": "1"}  # ...and to no other

    run_bounded(scenario(), 60.0)
