"""Conditional monitors (``monitor_cond``, ``update2``) against a real ovsdb-server.

Only the rows matching the condition arrive; a modified row arrives as a diff
(maps key by key, sets by symmetric difference, scalars and optional values replaced) and the
monitor hands out the whole row; a row leaving the condition is deleted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_bounded
from tests.ovsdb.helpers import require_ovsdb
from vhostcompat.fleet.schema import FLEET_DATABASE, schema_path
from vhostcompat.lab.ovsdb import run_ovsdb_server
from vhostcompat.ovsdb import Delete, Insert, Mutate, NamedUuid, OvsdbClient, Update
from vhostcompat.ovsdb.values import Value

pytestmark = pytest.mark.e2e
COLUMNS = ("host", "name", "mode", "negotiated")


def test_only_matching_rows_arrive_and_diffs_make_whole_rows(short_dir: Path) -> None:
    require_ovsdb()

    async def play() -> None:
        async with run_ovsdb_server(short_dir, "db", schema=Path(schema_path())) as server, \
                OvsdbClient(server.remote, FLEET_DATABASE, reconnect=False) as client:
            await client.transact(
                Insert("Interface", {"host": "a", "name": "vhu0",
                                     "negotiated": {"k1": "v1", "k2": "v2"}}),
                Insert("Interface", {"host": "b", "name": "vhu0"}))
            monitor = client.monitor({"Interface": COLUMNS},
                                     where={"Interface": [("host", "==", "a")]})
            initial = await anext(monitor)
            assert initial.initial
            [(old, new)] = initial["Interface"].values()
            assert old is None and new is not None and new["host"] == "a"
            assert new["mode"] == frozenset() and new["negotiated"] == {"k1": "v1",
                                                                         "k2": "v2"}
            await client.transact(Insert("Interface", {"host": "b", "name": "vhu1"}))
            await client.transact(
                Update("Interface", [("host", "==", "a")], {"mode": "v2.6"}),
                Mutate("Interface", [("host", "==", "a")],
                       [("negotiated", "delete", frozenset({"k1"})),
                        ("negotiated", "insert", {"k3": "v3"})]))
            modified = await anext(monitor)  # the insert for host b never came
            [(old, new)] = modified["Interface"].values()
            assert old is not None and new is not None
            assert old["mode"] == frozenset() and new["mode"] == frozenset({"v2.6"})
            assert new["negotiated"] == {"k2": "v2", "k3": "v3"}
            assert new["host"] == "a" and new["name"] == "vhu0"
            await client.transact(Update("Interface", [("host", "==", "a")],
                                         {"mode": "v2.7", "negotiated": {"k2": "x"}}))
            [(_, new)] = (await anext(monitor))["Interface"].values()
            assert new is not None and new["mode"] == frozenset({"v2.7"})
            assert new["negotiated"] == {"k2": "x"}
            await client.transact(Delete("Interface", [("host", "==", "a")]))
            [(old, new)] = (await anext(monitor))["Interface"].values()
            assert new is None and old is not None and old["mode"] == frozenset({"v2.7"})
            await monitor.aclose()

    run_bounded(play(), 60)


def test_sets_of_many_arrive_as_symmetric_differences(short_dir: Path) -> None:
    require_ovsdb()
    row: dict[str, Value] = {"name": "a", "remote": "", "heartbeat": 1, "owner": "o"}

    async def play() -> None:
        async with run_ovsdb_server(short_dir, "db", schema=Path(schema_path())) as server, \
                OvsdbClient(server.remote, FLEET_DATABASE, reconnect=False) as client:
            results = await client.transact(
                *(Insert("Profile", {"digest": digest, "version": digest, "contents": "{}"},
                         uuid_name=digest) for digest in ("p1", "p2")),
                Insert("Host", {**row, "profiles": frozenset({NamedUuid("p1"),
                                                              NamedUuid("p2")}),
                                "versions": {0: "p1", 1: "p2"}}))
            p1, p2 = (result["uuid"] for result in results[:2])
            monitor = client.monitor({"Host": ("name", "profiles", "versions")},
                                     where={"Host": [("name", "==", "a")]})
            [(_, new)] = (await anext(monitor))["Host"].values()
            assert new is not None and new["profiles"] == frozenset({p1, p2})
            # A profile row no host references is garbage-collected: p3 comes with its use.
            inserted, _ = await client.transact(
                Insert("Profile", {"digest": "p3", "version": "p3", "contents": "{}"},
                       uuid_name="p3"),
                Update("Host", [("name", "==", "a")], {
                    "profiles": frozenset({p2, NamedUuid("p3")}),
                    "versions": {0: "p3", 1: "p2"}}))
            p3 = inserted["uuid"]
            [(old, new)] = (await anext(monitor))["Host"].values()
            assert old is not None and old["profiles"] == frozenset({p1, p2})
            assert new is not None and new["profiles"] == frozenset({p2, p3})
            assert new["versions"] == {0: "p3", 1: "p2"}
            await monitor.aclose()

    run_bounded(play(), 60)
