"""A monitor (RFC 7047 section 4.1.5) as an async iterator of updates.

``client.monitor({"Interface": ["name", "options"]})`` gives a
:class:`Monitor`; iterating it sends the ``monitor`` request and yields
:class:`MonitorUpdate` objects: ``{table: {uuid: (old_row, new_row)}}``, rows
as ``{column: value}`` in the Python shapes of :mod:`vhostcompat.ovsdb.values`
(only the monitored columns). ``old_row`` is None for a new row, ``new_row``
None for a deleted one; for a modified row both are whole rows (the monitor
keeps the rows it has seen, so ``old_row`` is complete, not just the columns
that changed).

The first update has ``initial=True`` and holds every current row. After a
reconnect (:class:`~vhostcompat.ovsdb.client.OvsdbClient` with
``reconnect=True``) the monitor is re-established and the iterator yields
another ``initial=True`` update with the full current contents: rows absent
from it are gone (they may have been deleted while disconnected). Consumers
that keep state replace it on an initial update.

With ``where`` (``client.monitor(tables, where={"Interface": [("host", "==",
"h1")]})``) the monitor is conditional (``monitor_cond``, ovsdb-server's
extension): the server sends only the rows matching the table's conditions,
as ``update2`` notifications (a modified row carries only its changes, which
the monitor applies to the row it keeps, so consumers see whole rows as
above).

The iterator ends when the client is closed or :meth:`Monitor.aclose` is
called; it raises the error when the connection is lost for good (no
reconnect) or the server refuses the monitor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from vhostcompat.ovsdb.operations import Condition, DecodedRow, where_json
from vhostcompat.ovsdb.schema import DatabaseSchema, TableSchema
from vhostcompat.ovsdb.values import DecodedValue, Uuid, ValueShapeError

RowChange: TypeAlias = tuple[DecodedRow | None, DecodedRow | None]


class MonitorUpdate(dict[str, dict[Uuid, RowChange]]):
    """One update: ``{table: {uuid: (old_row | None, new_row | None)}}``."""

    def __init__(self, changes: dict[str, dict[Uuid, RowChange]], initial: bool) -> None:
        super().__init__(changes)
        self.initial = initial

    def __repr__(self) -> str:
        return f"MonitorUpdate({dict(self)!r}, initial={self.initial})"


_END = object()


class Monitor:
    """Updates of the monitored tables; see the module docstring."""

    def __init__(self, monitor_id: str, tables: Mapping[str, Sequence[str]],
                 start: Callable[[Monitor], Awaitable[None]],
                 stop: Callable[[Monitor], Awaitable[None]],
                 where: Mapping[str, Sequence[Condition]] | None = None) -> None:
        if not tables or not all(tables.values()):
            raise ValueError("a monitor needs at least one table, each with columns")
        if where is not None and not set(where) <= set(tables):
            raise ValueError("conditions for a table that is not monitored")
        self.monitor_id = monitor_id
        self.tables = {table: tuple(columns) for table, columns in tables.items()}
        self.where = None if where is None else {table: list(conditions)
                                                 for table, conditions in where.items()}
        self._start = start
        self._stop = stop
        self._started = False
        self._closed = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._rows: dict[str, dict[Uuid, DecodedRow]] = {}

    @property
    def method(self) -> str:
        return "monitor" if self.where is None else "monitor_cond"

    def request(self, database: str) -> list[Any]:
        """The request's params: every row now, then inserts, deletes, modifies."""
        if self.where is None:
            return [database, self.monitor_id, {table: {"columns": list(columns)}
                                                for table, columns in self.tables.items()}]
        return [database, self.monitor_id, {
            table: [{"columns": list(columns), "where": where_json(self.where.get(table, ()))}]
            for table, columns in self.tables.items()}]

    def __aiter__(self) -> Monitor:
        return self

    async def __anext__(self) -> MonitorUpdate:
        if not self._started and not self._closed:
            self._started = True
            await self._start(self)
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later call ends too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(_END)
            raise item
        update: MonitorUpdate = item
        return update

    async def aclose(self) -> None:
        """Cancel the monitor on the server (if connected) and end the iterator."""
        if not self._closed:
            await self._stop(self)
            self.end()

    # -- fed by the client, inside the connection's reader --------------------------

    def initial(self, schema: DatabaseSchema, result: object) -> None:
        """The monitor's answer: every current row; replaces what was known."""
        self._rows = {table: {} for table in self.tables}
        self._queue.put_nowait(MonitorUpdate(self._changes(schema, result), initial=True))

    def update(self, schema: DatabaseSchema, table_updates: object) -> None:
        self._queue.put_nowait(MonitorUpdate(self._changes(schema, table_updates),
                                             initial=False))

    def end(self, error: BaseException | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_END if error is None else error)

    def _changes(self, schema: DatabaseSchema, table_updates: object) -> dict[str, dict[
            Uuid, RowChange]]:
        step = self._row_update if self.where is None else self._row_update2
        changes: dict[str, dict[Uuid, RowChange]] = {}
        for table, rows, definition in self._tables_of(schema, table_updates):
            known = self._rows.setdefault(table, {})
            changed: dict[Uuid, RowChange] = {}
            for uuid_text, row_update in rows.items():
                uuid = Uuid(uuid_text)
                old, new = step(table, definition, known.get(uuid), row_update)
                if new is None:
                    known.pop(uuid, None)
                else:
                    known[uuid] = new
                changed[uuid] = (old, new)
            changes[table] = changed
        return changes

    @staticmethod
    def _row_update(table: str, definition: TableSchema, old: DecodedRow | None,
                    row_update: object) -> RowChange:
        """``update``: ``{"old": row, "new": row}`` (either absent)."""
        if not isinstance(row_update, dict):
            raise ValueShapeError("a row update is not an object")
        new_json, old_json = row_update.get("new"), row_update.get("old")
        new = None if new_json is None else definition.decode_row(new_json)
        if old is None and old_json is not None:
            old = definition.decode_row(old_json)
        return old, new

    def _row_update2(self, table: str, definition: TableSchema, old: DecodedRow | None,
                     row_update: object) -> RowChange:
        """``update2``: ``{"initial"|"insert": row} | {"modify": diff} | {"delete": ...}``."""
        if not isinstance(row_update, dict) or len(row_update) != 1:
            raise ValueShapeError("a row update2 is not an object of one member")
        [(kind, data)] = row_update.items()
        if kind in ("initial", "insert"):
            # update2 leaves out the columns that hold their default.
            return old, {**{column: definition.column(column).default()
                            for column in self.tables[table]},
                         **definition.decode_row(data)}
        if kind == "modify" and old is not None:
            return old, _apply_diff(definition, old, definition.decode_row(data))
        if kind == "delete":
            return old, None
        raise ValueShapeError(f"a row update2 of kind {kind!r:.20} for "
                              f"{'an unknown' if old is None else 'a known'} row")

    def _tables_of(self, schema: DatabaseSchema, table_updates: object
                   ) -> list[tuple[str, dict[str, Any], TableSchema]]:
        if not isinstance(table_updates, dict):
            raise ValueShapeError("monitor updates are not an object")
        tables = []
        for table, rows in table_updates.items():
            if table not in self.tables or not isinstance(rows, dict):
                raise ValueShapeError(f"an update for an unmonitored table {table!r:.40}")
            tables.append((table, rows, schema.table(table)))
        return tables


def _apply_diff(definition: TableSchema, old: DecodedRow, diff: DecodedRow) -> DecodedRow:
    """A row after an ``update2`` ``modify``: maps key by key (a pair equal to the old one
    removes it), sets of more than one element by symmetric difference, the others
    (scalars, optional values) replaced."""
    new = dict(old)
    for column, change in diff.items():
        kind = definition.column(column)
        before = old.get(column)
        value: DecodedValue
        if kind.is_map and isinstance(change, dict) and isinstance(before, dict):
            merged = dict(before)
            for key, item in change.items():
                if merged.get(key) == item:
                    del merged[key]
                else:
                    merged[key] = item
            value = merged
        elif kind.max != 1 and isinstance(change, frozenset) and isinstance(
                before, frozenset):
            value = before ^ change
        else:
            value = change
        new[column] = value
    return new
