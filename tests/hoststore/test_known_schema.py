"""The OVSDB store's connection without ``get_schema``: the column types it knows,
compared with the real vswitch schema, and what real servers that do not fit get.

The store's first transaction names exactly the columns it uses; the server
refuses an unknown database, table or column, and the store names what is
missing as the ``get_schema`` check does. Values are decoded with the known
types: one that does not fit is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_bounded
from tests.ovsdb.helpers import add_vhost_port, require_ovsdb
from vhostcompat.hoststore import HostRecord, open_host
from vhostcompat.hoststore.ovsdb import KNOWN_COLUMNS, KNOWN_SCHEMA, REQUIRED_COLUMNS
from vhostcompat.lab.ovsdb import run_ovsdb_server
from vhostcompat.ovsdb import Insert, OvsdbError, OvsdbSchemaError, connect
from vhostcompat.ovsdb.connection import Connection
from vhostcompat.ovsdb.jsonrpc import MessageReader
from vhostcompat.ovsdb.schema import DatabaseSchema

pytestmark = pytest.mark.e2e
VSWITCH_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
STRING_MAP = {"key": "string", "value": "string", "min": 0, "max": "unlimited"}


def write_typed_schema(path: Path, name: str, tables: dict[str, dict[str, Any]]) -> Path:
    """A schema file whose columns have these type JSONs (maps too)."""
    path.write_text(json.dumps({"name": name, "version": "1.0.0", "tables": {
        table: {"columns": {column: {"type": kind} for column, kind in columns.items()},
                "isRoot": True}
        for table, columns in tables.items()}}))
    return path


def test_the_known_column_types_are_those_of_the_real_vswitch_schema() -> None:
    require_ovsdb()
    real = DatabaseSchema(json.loads(VSWITCH_SCHEMA.read_text()))
    assert real.name == KNOWN_SCHEMA.name == "Open_vSwitch"
    compared = 0
    for table, columns in KNOWN_COLUMNS.items():
        for column in columns:
            assert KNOWN_SCHEMA.table(table).column(column) == real.table(table).column(column)
            compared += 1
    assert compared == sum(len(columns) for columns in REQUIRED_COLUMNS.values()) == 6


def wire_recorder(sent: list[dict[str, Any]]) -> Callable[[Connection, bytes], None]:
    """A Connection._write that also appends what goes on the wire to ``sent`` (each
    write is one or more whole messages)."""
    write = Connection._write

    def recording(connection: Connection, data: bytes) -> None:
        sent.extend(MessageReader().feed(data))
        write(connection, data)

    return recording


def test_the_store_reads_without_get_schema_naming_exactly_its_columns(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_ovsdb()
    sent: list[dict[str, Any]] = []
    recording = wire_recorder(sent)

    async def scenario() -> None:
        async with run_ovsdb_server(short_dir, "db") as server:
            await add_vhost_port(server)
            await server.vsctl("set", "Interface", "vhu0", "options:vhost-compat-version=v1")
            monkeypatch.setattr(Connection, "_write", recording)
            async with open_host(server.remote) as store:
                record = await store.read()
            assert record.interfaces["vhu0"].version == "v1"

    run_bounded(scenario(), 60.0)
    methods = [message.get("method") for message in sent]
    assert "get_schema" not in methods and methods[0] == "transact"
    first = sent[0]["params"]
    assert first[0] == "Open_vSwitch"
    checks = {op["table"]: tuple(op["columns"]) for op in first[1:1 + len(REQUIRED_COLUMNS)]}
    assert checks == dict(REQUIRED_COLUMNS)


def test_a_read_without_interfaces_asks_only_the_open_vswitch_row(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What versions and select read: one select after the checks, no Interface rows."""
    require_ovsdb()
    sent: list[dict[str, Any]] = []
    recording, write = wire_recorder(sent), Connection._write

    async def scenario() -> tuple[HostRecord, HostRecord]:
        async with run_ovsdb_server(short_dir, "db") as server:
            await add_vhost_port(server)
            await server.vsctl("set", "Open_vSwitch", ".",
                               "external_ids:vhost-compat-versions=v1")
            await server.vsctl("set", "Interface", "vhu0", "options:vhost-compat-version=v1")
            monkeypatch.setattr(Connection, "_write", recording)
            async with open_host(server.remote) as store:
                published = await store.read(interfaces=False)
            monkeypatch.setattr(Connection, "_write", write)
            async with open_host(server.remote) as store:
                return published, await store.read()

    published, whole = run_bounded(scenario(), 60.0)
    assert published.versions == whole.versions == ("v1",)
    assert published.interfaces == {} and set(whole.interfaces) == {"vhu0"}
    [request] = sent
    reads = request["params"][1 + len(REQUIRED_COLUMNS):]
    assert [(op["op"], op["table"]) for op in reads] == [("select", "Open_vSwitch")]


def test_servers_that_lack_what_the_store_uses_are_refused_by_name(short_dir: Path) -> None:
    require_ovsdb()

    async def refused(remote: str, says: str) -> None:
        async with open_host(remote) as store:
            with pytest.raises(OvsdbSchemaError, match=says) as caught:
                await store.read()
        assert remote in str(caught.value) and "\n" not in str(caught.value)

    async def scenario() -> None:
        lacking = write_typed_schema(short_dir / "lacking.ovsschema", "Open_vSwitch", {
            "Open_vSwitch": {"external_ids": STRING_MAP},
            "Interface": {"name": "string", "type": "string"}})
        async with run_ovsdb_server(short_dir, "lacking", schema=lacking) as server:
            await refused(server.remote, r"table Interface lacks column\(s\) options, "
                          "external_ids, status")
        no_table = write_typed_schema(short_dir / "notable.ovsschema", "Open_vSwitch", {
            "Open_vSwitch": {"external_ids": STRING_MAP}})
        async with run_ovsdb_server(short_dir, "notable", schema=no_table) as server:
            await refused(server.remote, "has no table Interface")
        tiny = write_typed_schema(short_dir / "tiny.ovsschema", "Tiny",
                                  {"Thing": {"name": "string"}})
        async with run_ovsdb_server(short_dir, "tiny", schema=tiny) as server:
            await refused(server.remote, r"no database 'Open_vSwitch' \(it serves: Tiny\)")

    run_bounded(scenario(), 60.0)


def test_a_value_that_does_not_fit_its_known_type_is_refused(short_dir: Path) -> None:
    require_ovsdb()

    async def scenario() -> None:
        # Every column is there, but options is a string, not a map: an untrusted
        # server's shapes are checked against what we know, never guessed.
        odd = write_typed_schema(short_dir / "odd.ovsschema", "Open_vSwitch", {
            "Open_vSwitch": {"external_ids": STRING_MAP},
            "Interface": {"name": "string", "type": "string", "options": "string",
                          "external_ids": STRING_MAP, "status": STRING_MAP}})
        async with run_ovsdb_server(short_dir, "odd", schema=odd) as server:
            async with await connect(server.remote) as client:
                await client.transact(Insert("Open_vSwitch", {"external_ids": {}}),
                                      Insert("Interface", {"name": "vhu0", "options": "x"}))
            async with open_host(server.remote) as store:
                # On connect: the member is refused as one that cannot be used.
                with pytest.raises(OvsdbError, match=f"{server.remote}: transact answer: "
                                   "expected a map, got str"):
                    await store.read()

    run_bounded(scenario(), 60.0)
