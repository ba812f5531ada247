"""Typed transaction operations (RFC 7047 section 5.2) and their results.

Each operation is a small frozen dataclass that checks itself and knows its
JSON (:meth:`to_json`); :func:`decode_result` reads its result back with the
table's schema. Conditions are ``(column, function, value)`` triples and
mutations ``(column, mutator, value)`` triples, values in the Python shapes
of :mod:`vhostcompat.ovsdb.values`.

A ``Wait`` with ``until="=="`` and ``timeout=0`` before a write makes the
write conditional on the rows read earlier: if they changed, the server
fails the wait (``"timed out"``) and writes nothing, and the client raises
:class:`~vhostcompat.ovsdb.errors.OvsdbConflictError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from vhostcompat.ovsdb.schema import DatabaseSchema
from vhostcompat.ovsdb.values import (
    NAMED_UUID_PATTERN,
    DecodedValue,
    Json,
    Uuid,
    Value,
    ValueShapeError,
    encode_value,
)

FUNCTIONS = frozenset({"<", "<=", "==", "!=", ">=", ">", "includes", "excludes"})
MUTATORS = frozenset({"+=", "-=", "*=", "/=", "%=", "insert", "delete"})
Condition: TypeAlias = tuple[str, str, Value]
Mutation: TypeAlias = tuple[str, str, Value]
Row: TypeAlias = Mapping[str, Value]
DecodedRow: TypeAlias = dict[str, DecodedValue]
Result: TypeAlias = dict[str, Any]


def _triples(triples: Sequence[tuple[str, str, Value]], allowed: frozenset[str],
             what: str) -> list[Json]:
    """Conditions or mutations: ``[column, function-or-mutator, value]``, checked."""
    encoded: list[Json] = []
    for column, verb, value in triples:
        if verb not in allowed:
            raise ValueError(f"unknown {what} {verb!r}")
        encoded.append([column, verb, encode_value(value)])
    return encoded


def where_json(where: Sequence[Condition]) -> list[Json]:
    """Conditions as RFC 7047 JSON (a ``where`` clause)."""
    return _triples(where, FUNCTIONS, "condition function")


def _row(row: Row) -> dict[str, Json]:
    return {column: encode_value(value) for column, value in row.items()}


class Operation:
    """Base of every operation: its ``op`` name and table."""

    op: ClassVar[str] = ""
    table: str

    def to_json(self) -> dict[str, Json]:
        return {"op": self.op, "table": self.table, **self._fields()}

    def _fields(self) -> dict[str, Json]:
        return {}


@dataclass(frozen=True)
class Filtered(Operation):
    """An operation on the rows of ``table`` matching every condition of ``where``."""

    table: str
    where: Sequence[Condition] = ()

    def _fields(self) -> dict[str, Json]:
        return {"where": where_json(self.where)}


@dataclass(frozen=True)
class Select(Filtered):
    op: ClassVar[str] = "select"
    columns: Sequence[str] | None = None

    def _fields(self) -> dict[str, Json]:
        fields = super()._fields()
        if self.columns is not None:
            fields["columns"] = list(self.columns)
        return fields


@dataclass(frozen=True)
class Insert(Operation):
    op: ClassVar[str] = "insert"
    table: str
    row: Row = field(default_factory=dict)
    uuid_name: str | None = None

    def __post_init__(self) -> None:
        if self.uuid_name is not None and not NAMED_UUID_PATTERN.fullmatch(self.uuid_name):
            raise ValueError(f"invalid uuid-name {self.uuid_name!r}")

    def _fields(self) -> dict[str, Json]:
        fields: dict[str, Json] = {"row": _row(self.row)}
        if self.uuid_name is not None:
            fields["uuid-name"] = self.uuid_name
        return fields


@dataclass(frozen=True)
class Update(Filtered):
    op: ClassVar[str] = "update"
    row: Row = field(default_factory=dict)

    def _fields(self) -> dict[str, Json]:
        return {**super()._fields(), "row": _row(self.row)}


@dataclass(frozen=True)
class Mutate(Filtered):
    op: ClassVar[str] = "mutate"
    mutations: Sequence[Mutation] = ()

    def _fields(self) -> dict[str, Json]:
        return {**super()._fields(),
                "mutations": _triples(self.mutations, MUTATORS, "mutator")}


@dataclass(frozen=True)
class Delete(Filtered):
    op: ClassVar[str] = "delete"


@dataclass(frozen=True)
class Wait(Filtered):
    """Wait until the rows matching ``where`` (``columns`` only) are (``==``) ``rows``."""

    op: ClassVar[str] = "wait"
    columns: Sequence[str] = ()
    rows: Sequence[Row] = ()
    until: str = "=="
    timeout: int = 0  # milliseconds; 0: fail at once rather than wait

    def __post_init__(self) -> None:
        if self.until not in ("==", "!="):
            raise ValueError(f"wait until must be '==' or '!=', not {self.until!r}")
        if self.timeout < 0:
            raise ValueError("wait timeout must be 0 or more milliseconds")

    def _fields(self) -> dict[str, Json]:
        return {**super()._fields(), "columns": list(self.columns),
                "rows": [_row(row) for row in self.rows], "until": self.until,
                "timeout": self.timeout}


@dataclass(frozen=True)
class Comment(Operation):
    """A comment for the server's log (it names no table)."""

    op: ClassVar[str] = "comment"
    comment: str

    def to_json(self) -> dict[str, Json]:
        return {"op": self.op, "comment": self.comment}


def decode_result(operation: Operation, result: object,
                  schema: DatabaseSchema) -> Result:
    """One operation's successful result in Python shapes; ValueShapeError if malformed."""
    if not isinstance(result, dict):
        raise ValueShapeError(f"{operation.op} result is not an object")
    if isinstance(operation, Select):
        rows = result.get("rows")
        if not isinstance(rows, list):
            raise ValueShapeError("select result has no rows")
        table = schema.table(operation.table)
        return {"rows": [table.decode_row(row) for row in rows]}
    if isinstance(operation, Insert):
        uuid = result.get("uuid")
        if not isinstance(uuid, list) or len(uuid) != 2 or uuid[0] != "uuid":
            raise ValueShapeError("insert result has no uuid")
        return {"uuid": Uuid(uuid[1])}
    if isinstance(operation, Update | Mutate | Delete):
        count = result.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueShapeError(f"{operation.op} result has no count")
        return {"count": count}
    return {}
