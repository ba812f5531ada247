"""The OVSDB host store: a host's published data in its Open vSwitch database.

The rows and keys of :mod:`vhostcompat.hoststore.model`, through our own
client (:mod:`vhostcompat.ovsdb`), readable and writable with plain
``ovs-vsctl --no-wait`` as well::

    ovs-vsctl --no-wait get Open_vSwitch . external_ids:vhost-compat-versions
    ovs-vsctl --no-wait get Interface vhu0 options:vhost-compat-version

* One read is one transaction (two ``select``\\ s), so a record is consistent.
* Every write that depends on what it read is conditional: a ``wait`` on the
  columns read (``until "=="``, timeout 0) in the same transaction. If
  another writer changed them meanwhile, the server writes nothing and this
  store raises :class:`HostStoreConflictError` (one line, exit 2): two tools
  writing at once never lose an update.
* ``record_negotiated`` reads nothing: one ``mutate`` replaces the
  negotiated keys and leaves every other key to its writers.
* ``assign`` and ``record_negotiated`` never create an Interface row (OVSDB
  garbage-collects Interface rows that no Port links): an interface that
  does not exist is an error naming it.
* ``publish`` creates the Open_vSwitch row only when there is none (as
  ``ovs-vsctl init`` would), conditionally too.

The database is refused by name on connect unless it is ``Open_vSwitch`` with
the tables and columns used here. Their types are known here
(:data:`KNOWN_COLUMNS`, as vswitch.ovsschema declares them; a test compares
the two), so the connection asks no ``get_schema``: its first transaction
names exactly these columns and the server refuses what it lacks (see
:mod:`vhostcompat.ovsdb.client`), and values are decoded with these types.
Each call is bounded by the store's timeout (``VHOSTCOMPAT_OVSDB_TIMEOUT``
seconds in the environment, default 5).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vhostcompat.errors import InputError
from vhostcompat.hoststore.model import (
    INTERFACE_VERSION_KEY,
    NEGOTIATED_KEYS,
    HostRecord,
    HostStore,
    HostStoreConflictError,
    HostStoreCorruptError,
    HostStoreMissingError,
    ModeWrite,
    NotPublishedError,
    apply_mode_write,
    check_interface_name,
    encode_negotiated,
    published_external_ids,
    record_from_rows,
    require_published,
)
from vhostcompat.ovsdb import (
    HeldConnection,
    Insert,
    Mutate,
    OvsdbClient,
    OvsdbConflictError,
    Select,
    Update,
    Uuid,
    Wait,
    parse_remotes,
    read_once,
    transact_held,
    transact_once,
)
from vhostcompat.ovsdb.operations import Condition, DecodedRow, Operation
from vhostcompat.ovsdb.schema import DatabaseSchema, known_schema
from vhostcompat.profiles.model import CompatProfile, NegotiatedState

TIMEOUT_VARIABLE = "VHOSTCOMPAT_OVSDB_TIMEOUT"
DEFAULT_TIMEOUT = 5.0
ROOT_TABLE = "Open_vSwitch"
INTERFACE_TABLE = "Interface"
ROOT_COLUMNS = ("_uuid", "external_ids")
INTERFACE_COLUMNS = ("_uuid", "name", "options", "external_ids", "status")
STRING_MAP = {"key": "string", "value": "string", "min": 0, "max": "unlimited"}
# The type of every column used here, as vswitch.ovsschema writes it.
KNOWN_COLUMNS: Mapping[str, Mapping[str, object]] = {
    ROOT_TABLE: {"external_ids": STRING_MAP},
    INTERFACE_TABLE: {"name": "string", "type": "string", "options": STRING_MAP,
                      "external_ids": STRING_MAP, "status": STRING_MAP}}
REQUIRED_COLUMNS: Mapping[str, Sequence[str]] = {
    table: tuple(columns) for table, columns in KNOWN_COLUMNS.items()}
KNOWN_SCHEMA = known_schema(ROOT_TABLE, KNOWN_COLUMNS)


def store_timeout() -> float:
    """The per-call timeout: ``VHOSTCOMPAT_OVSDB_TIMEOUT`` seconds, default 5."""
    return seconds_from_environment(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT)


def seconds_from_environment(variable: str, default: float, zero: bool = False) -> float:
    """A number of seconds from the environment (0-3600; 0 only with ``zero``)."""
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 if zero else value > 0) or value > 3600:
        low = "[0" if zero else "(0"
        raise InputError(f"{variable}={text!r} is not a number of seconds {low}-3600]")
    return value


@dataclass(frozen=True)
class OvsdbRead:
    """What :meth:`OvsdbHostStore.read` saw (a :attr:`HostRecord.basis`): the root row's
    external_ids and each Interface row's options, by name (unique in the schema)."""

    address: str
    external_ids: Mapping[str, str]
    interfaces: Mapping[str, Mapping[str, str]]


def _string_map(value: object) -> dict[str, str]:
    # The schema typed these columns string->string; the client checked every atom.
    assert isinstance(value, dict)
    return {str(key): str(item) for key, item in value.items()}


class OvsdbHostStore(HostStore):
    """A host whose store is its OVSDB (``unix:PATH``, ``tcp:IP:PORT``, or a list)."""

    known_schema: DatabaseSchema | None = KNOWN_SCHEMA
    """The column types the connections assume (None: ask ``get_schema``, as the
    benchmark does side by side)."""

    def __init__(self, address: str, timeout: float | None = None,
                 before_write: Callable[[], Awaitable[object]] | None = None, *,
                 hold: bool = False) -> None:
        """``before_write`` is awaited between a write's read and its conditional write
        (to interleave writers on purpose, as the concurrency tests do).

        ``hold``: a read keeps its one-shot connection open until :meth:`close`, and a
        write planned from that read goes on it (provisioning reads every host, then
        writes every host: one connection each instead of two)."""
        super().__init__(address)
        self.remotes = parse_remotes(address)
        self.timeout = store_timeout() if timeout is None else timeout
        self.before_write = before_write
        self.hold = hold
        self._client: OvsdbClient | None = None
        self._held: HeldConnection | None = None

    async def client(self) -> OvsdbClient:
        """The connection, made on first use (no reconnect: one command, one answer)."""
        if self._client is None:
            await self._connect()
        assert self._client is not None
        return self._client

    async def _connect(self, read: Sequence[Select] = ()) -> list[dict[str, Any]]:
        client = OvsdbClient(self.remotes, timeout=self.timeout,
                             required_columns=REQUIRED_COLUMNS, known_schema=self.known_schema,
                             reconnect=False)
        results = await client.connect(read=read)
        self._client = client
        return results

    async def close(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            await held.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- reads ------------------------------------------------------------------

    async def _select(self, *selects: Select) -> list[list[DecodedRow]]:
        """One transaction of selects; the first travels with the connection's schema check."""
        if self._client is None:
            results = await self._connect(read=selects)
        else:
            results = await self._client.transact(*selects)
        return [result["rows"] for result in results]

    async def _read_selects(self, *selects: Select) -> list[list[DecodedRow]]:
        """:meth:`_select` for a read that writes nothing after: a one-shot connection
        when none is open (:func:`~vhostcompat.ovsdb.read_once`; with :attr:`hold`, kept
        open for the write), else the open one."""
        if self._client is not None or self.known_schema is None:
            return await self._select(*selects)
        if self.hold and self._held is None:
            results, self._held = await transact_held(
                self.remotes, selects, known_schema=self.known_schema,
                required_columns=REQUIRED_COLUMNS, timeout=self.timeout)
        else:
            results = await read_once(self.remotes, selects, known_schema=self.known_schema,
                                      required_columns=REQUIRED_COLUMNS, timeout=self.timeout)
        return [result["rows"] for result in results]

    def _root(self, rows: list[DecodedRow], required: bool = True) -> DecodedRow | None:
        if len(rows) > 1:
            raise HostStoreCorruptError(self.address, f"{len(rows)} Open_vSwitch rows")
        if not rows:
            if required:
                raise HostStoreMissingError(self.address, "no Open_vSwitch row (the database "
                                            "was never initialised: ovs-vsctl init)")
            return None
        return rows[0]

    async def read(self, *, interfaces: bool | tuple[str, ...] = True) -> HostRecord:
        if interfaces is False or interfaces == ():
            [root_rows] = await self._read_selects(Select(ROOT_TABLE, (), ROOT_COLUMNS))
            interface_rows: list[DecodedRow] = []
        else:
            # One name: the server picks its row (names are unique); several: all rows,
            # kept by name here (a condition cannot say "one of these").
            where: tuple[Condition, ...] = () if interfaces is True or len(interfaces) > 1 \
                else (("name", "==", interfaces[0]),)
            root_rows, interface_rows = await self._read_selects(
                Select(ROOT_TABLE, (), ROOT_COLUMNS),
                Select(INTERFACE_TABLE, where, INTERFACE_COLUMNS))
            if interfaces is not True:
                interface_rows = [row for row in interface_rows if row["name"] in interfaces]
        root = self._root(root_rows)
        assert root is not None
        external_ids = _string_map(root["external_ids"])
        rows: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        statuses: dict[str, dict[str, str]] = {}
        for row in interface_rows:
            name = str(row["name"])
            rows[name] = (_string_map(row["options"]), _string_map(row["external_ids"]))
            statuses[name] = _string_map(row["status"])
        basis = OvsdbRead(self.address, external_ids, {
            name: options for name, (options, _) in rows.items()}) \
            if interfaces is not False else None
        return record_from_rows(self.address, external_ids, rows, statuses, basis)

    # -- writes -----------------------------------------------------------------

    async def _commit(self, what: str, *operations: Operation, once: bool = False
                      ) -> list[dict[str, Any]]:
        """One transaction; a failed ``wait`` is a :class:`HostStoreConflictError`.
        ``once``: on the connection a held read kept (closed after: the write was
        what it was kept for), if it is still up, else on a one-shot connection
        (:func:`~vhostcompat.ovsdb.transact_once`) when none is open and the schema
        is known, as a write that read nothing here can be."""
        if self.before_write is not None:
            await self.before_write()
        try:
            held, self._held = (self._held, None) if once else (None, self._held)
            if held is not None:
                async with held:
                    if held.usable:
                        return await held.transact(operations)
            if once and self._client is None and self.known_schema is not None:
                return await transact_once(self.remotes, operations,
                                           known_schema=self.known_schema,
                                           required_columns=REQUIRED_COLUMNS,
                                           timeout=self.timeout)
            client = await self.client()
            return await client.transact(*operations)
        except OvsdbConflictError:
            raise HostStoreConflictError(self.address, what) from None

    async def publish(self, profiles: Sequence[CompatProfile]) -> HostRecord:
        published_external_ids({}, profiles)  # bad input refused before connecting
        [root_rows] = await self._select(Select(ROOT_TABLE, (), ROOT_COLUMNS))
        root = self._root(root_rows, required=False)
        if root is None:
            wanted = published_external_ids({}, profiles)
            await self._commit("the Open_vSwitch table",
                               Wait(ROOT_TABLE, (), ["_uuid"], []),
                               Insert(ROOT_TABLE, {"external_ids": wanted}))
        else:
            current = _string_map(root["external_ids"])
            wanted = published_external_ids(current, profiles)
            where = _by_uuid(root)
            await self._commit("Open_vSwitch external_ids",
                               Wait(ROOT_TABLE, where, ["external_ids"],
                                    [{"external_ids": current}]),
                               Update(ROOT_TABLE, where, {"external_ids": wanted}))
        return await self.read()

    async def _interface(self, interface: str) -> tuple[dict[str, str], DecodedRow]:
        """The Open_vSwitch external_ids and the named Interface row (which must exist)."""
        check_interface_name(interface)
        root_rows, interface_rows = await self._select(
            Select(ROOT_TABLE, (), ROOT_COLUMNS),
            Select(INTERFACE_TABLE, [("name", "==", interface)], INTERFACE_COLUMNS))
        root = self._root(root_rows)
        assert root is not None
        if not interface_rows:
            raise _no_interface(self.address, interface)
        return _string_map(root["external_ids"]), interface_rows[0]

    async def assign(self, interface: str, version: str) -> None:
        external_ids, row = await self._interface(interface)
        require_published(self.address, external_ids, version)
        options = _string_map(row["options"])
        wanted = {**options, INTERFACE_VERSION_KEY: version}
        where = _by_uuid(row)
        await self._commit(f"Interface {interface} options (or the published versions)",
                           Wait(ROOT_TABLE, (), ["external_ids"],
                                [{"external_ids": external_ids}]),
                           Wait(INTERFACE_TABLE, where, ["options"], [{"options": options}]),
                           Update(INTERFACE_TABLE, where, {"options": wanted}))

    async def write_mode(self, change: ModeWrite) -> None:
        """Check the row against ``change.expected``, then commit waiting on exactly
        what was read.

        A write planned from this store's own read (``change.basis``, an
        :class:`OvsdbRead` of this host) waits on that read and is one
        transaction on a one-shot connection. Any other reads the rows first
        and waits on that: conditional twice, on the caller's read and on ours.
        """
        planned = change.basis
        basis = planned if isinstance(planned, OvsdbRead) and planned.address == self.address \
            else None
        if basis is not None:
            options = basis.interfaces.get(change.interface)
            if options is None:
                raise _no_interface(self.address, change.interface)
            external_ids = basis.external_ids
            where: list[Condition] = [("name", "==", change.interface)]
        else:
            external_ids, row = await self._interface(change.interface)
            options = _string_map(row["options"])
            where = _by_uuid(row)
        updated_ids, updated = apply_mode_write(self.address, change, external_ids, options)
        operations: list[Operation] = [
            Wait(ROOT_TABLE, (), ["external_ids"], [{"external_ids": external_ids}]),
            Wait(INTERFACE_TABLE, where, ["options"], [{"options": options}])]
        if updated_ids is not None:
            operations.append(Update(ROOT_TABLE, (), {"external_ids": updated_ids}))
        operations.append(Update(INTERFACE_TABLE, where, {"options": updated}))
        what = f"Interface {change.interface} options (or the published versions)"
        await self._commit(what, *operations, once=basis is not None)

    async def record_negotiated(self, interface: str, state: NegotiatedState) -> None:
        """Replace the negotiated keys in one mutate: it reads nothing, so it waits on
        nothing, and never conflicts with other writers of the row's external_ids
        (libvirt's iface-id, an agent's keys)."""
        check_interface_name(interface)
        [result] = await self._commit(
            f"Interface {interface} external_ids",
            Mutate(INTERFACE_TABLE, [("name", "==", interface)], [
                ("external_ids", "delete", frozenset(NEGOTIATED_KEYS)),
                ("external_ids", "insert", encode_negotiated(state))]))
        if result["count"] == 0:
            raise _no_interface(self.address, interface)


def _no_interface(address: str, interface: str) -> NotPublishedError:
    return NotPublishedError(address, f"no interface {interface!r} in the Interface table "
                             "(add its port first, e.g. ovs-vsctl add-port; rows are never "
                             "created here)")


def _by_uuid(row: DecodedRow) -> list[Condition]:
    uuid = row["_uuid"]
    assert isinstance(uuid, Uuid)
    return [("_uuid", "==", uuid)]
