"""A database schema as ``get_schema`` returns it (RFC 7047 section 3.2), and the check on connect.

Only what the client needs is read: the database's name and version, each
table's columns and their types (to decode values into their Python shape,
see :mod:`vhostcompat.ovsdb.values`). Tables are parsed lazily, when first
used: the vswitch schema is 17 KB and most commands touch two tables.

:func:`check_schema` refuses, by name, a database that is not the one asked
for, or that lacks a table or a column the caller uses.

:func:`known_schema` builds the same object from a caller's own small typed
table of the columns it uses (the JSON of their types, as a schema file
writes them): a client given one skips ``get_schema`` on connect and lets
the server refuse what it lacks (see :mod:`vhostcompat.ovsdb.client`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vhostcompat.ovsdb.errors import OvsdbSchemaError
from vhostcompat.ovsdb.values import Atom, DecodedValue, Uuid, ValueShapeError, decode_value

BASE_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "real": (int, float), "boolean": bool, "uuid": Uuid}
IMPLICIT_COLUMNS = ("_uuid", "_version")
RequiredColumns = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class ColumnType:
    """A column's type: key (and value, for a map) base type, and its min/max size."""

    key: str
    value: str | None = None
    min: int = 1
    max: int | None = 1  # None: "unlimited"

    @property
    def is_map(self) -> bool:
        return self.value is not None

    @property
    def is_scalar(self) -> bool:
        return self.value is None and self.min == 1 and self.max == 1

    def decode(self, data: object) -> DecodedValue:
        """The column's Python shape: an atom, a frozenset or a dict, atoms type-checked."""
        if self.key == "string" and self.value == "string":
            strings = _string_map(data)
            if strings is not None:
                return strings
        value = decode_value(data)
        if self.is_map:
            if not isinstance(value, dict):
                raise ValueShapeError(f"expected a map, got {type(value).__name__}")
            assert self.value is not None
            for key, item in value.items():
                self._check_atom(self.key, key)
                self._check_atom(self.value, item)
            return value
        if isinstance(value, dict):
            raise ValueShapeError("expected a set or an atom, got a map")
        members = value if isinstance(value, frozenset) else frozenset((value,))
        for atom in members:
            self._check_atom(self.key, atom)
        if self.is_scalar:
            if len(members) != 1:
                raise ValueShapeError(f"expected one {self.key}, got {len(members)}")
            return next(iter(members))
        return members

    def default(self) -> DecodedValue:
        """The column's default (what ``update2`` leaves out of a row): empty, or the
        base type's zero."""
        if self.is_map:
            return {}
        if not self.is_scalar:
            return frozenset()
        zero: dict[str, DecodedValue] = {"string": "", "integer": 0, "real": 0.0,
                                         "boolean": False,
                                         "uuid": Uuid("00000000-0000-0000-0000-000000000000")}
        return zero[self.key]

    @staticmethod
    def _check_atom(base: str, atom: Atom) -> None:
        expected = BASE_TYPES.get(base, object)
        if not isinstance(atom, expected) or (base != "boolean" and isinstance(atom, bool)):
            raise ValueShapeError(f"expected a {base}, got {atom!r}")


def _string_map(data: object) -> dict[Atom, Atom] | None:
    """The usual shape of a string-to-string map (external_ids, options, status), decoded
    in one pass; None for anything else, which the general decoding then explains."""
    if not (type(data) is list and len(data) == 2 and data[0] == "map"
            and type(data[1]) is list):
        return None
    pairs = data[1]
    if all(type(pair) is list and len(pair) == 2 and type(pair[0]) is str
           and type(pair[1]) is str for pair in pairs):
        return dict(pairs)
    return None


def _base_type(data: object) -> str:
    if isinstance(data, dict):
        data = data.get("type")
    if not isinstance(data, str) or data not in BASE_TYPES:
        raise ValueShapeError(f"unknown base type {data!r}")
    return data


def parse_column_type(data: object) -> ColumnType:
    if isinstance(data, str):
        return ColumnType(_base_type(data))
    if not isinstance(data, dict) or "key" not in data:
        raise ValueShapeError(f"malformed column type {data!r:.60}")
    value = data.get("value")
    low = data.get("min", 1)
    high = data.get("max", 1)
    if not isinstance(low, int) or isinstance(low, bool) or low not in (0, 1):
        raise ValueShapeError(f"malformed column type min {low!r}")
    if high != "unlimited" and (not isinstance(high, int) or isinstance(high, bool)
                                or high < max(low, 1)):
        raise ValueShapeError(f"malformed column type max {high!r}")
    return ColumnType(_base_type(data["key"]), None if value is None else _base_type(value),
                      low, None if high == "unlimited" else high)


class TableSchema:
    """One table's columns, parsed on first use."""

    def __init__(self, name: str, columns: Mapping[str, Any]) -> None:
        self.name = name
        self._raw = columns
        self._types: dict[str, ColumnType] = {"_uuid": ColumnType("uuid"),
                                              "_version": ColumnType("uuid")}

    def has_column(self, column: str) -> bool:
        return column in IMPLICIT_COLUMNS or column in self._raw

    def column(self, column: str) -> ColumnType:
        found = self._types.get(column)
        if found is None:
            definition = self._raw.get(column)
            if not isinstance(definition, dict):
                raise ValueShapeError(f"table {self.name} has no column {column!r}")
            found = parse_column_type(definition.get("type"))
            self._types[column] = found
        return found

    def decode_row(self, row: object) -> dict[str, DecodedValue]:
        """A row from the server, every column decoded to its Python shape."""
        if not isinstance(row, dict):
            raise ValueShapeError(f"a {self.name} row is not an object")
        return {column: self.column(column).decode(data) for column, data in row.items()}


class DatabaseSchema:
    """The parts of a ``get_schema`` answer the client uses."""

    def __init__(self, data: object) -> None:
        if not isinstance(data, dict):
            raise ValueShapeError("the schema is not an object")
        name, version, tables = data.get("name"), data.get("version"), data.get("tables")
        if not isinstance(name, str) or not isinstance(tables, dict):
            raise ValueShapeError("the schema lacks a name or tables")
        self.name = name
        self.version = version if isinstance(version, str) else ""
        self._tables: dict[str, TableSchema] = {}
        self._raw = tables

    def has_table(self, table: str) -> bool:
        return table in self._raw

    def table(self, table: str) -> TableSchema:
        found = self._tables.get(table)
        if found is None:
            definition = self._raw.get(table)
            columns = definition.get("columns") if isinstance(definition, dict) else None
            if not isinstance(columns, dict):
                raise ValueShapeError(f"the schema has no table {table!r}")
            found = TableSchema(table, columns)
            self._tables[table] = found
        return found


def known_schema(database: str, tables: Mapping[str, Mapping[str, object]]) -> DatabaseSchema:
    """A schema of only these tables and columns (``{table: {column: type JSON}}``),
    every type parsed now: a malformed one is the caller's bug, raised at once."""
    schema = DatabaseSchema({"name": database, "tables": {
        table: {"columns": {column: {"type": kind} for column, kind in columns.items()}}
        for table, columns in tables.items()}})
    for table, columns in tables.items():
        for column in columns:
            schema.table(table).column(column)
    return schema


def check_schema(remote: str, schema: DatabaseSchema, database: str,
                 required: RequiredColumns) -> None:
    """Refuse, by name, another database or a missing table or column."""
    if schema.name != database:
        raise OvsdbSchemaError(remote, f"the database is {schema.name!r}, not {database!r}")
    for table, columns in required.items():
        if not schema.has_table(table):
            raise OvsdbSchemaError(remote, f"database {database} (schema {schema.version}) "
                                   f"has no table {table}")
        try:
            definition = schema.table(table)
        except ValueShapeError as error:
            raise OvsdbSchemaError(remote, f"table {table}: {error}") from None
        missing = [column for column in columns if not definition.has_column(column)]
        if missing:
            raise OvsdbSchemaError(remote, f"database {database} (schema {schema.version}) "
                                   f"table {table} lacks column(s) {', '.join(missing)}")
        for column in columns:
            try:
                definition.column(column)
            except ValueShapeError as error:
                raise OvsdbSchemaError(remote, f"table {table} column {column}: "
                                       f"{error}") from None
