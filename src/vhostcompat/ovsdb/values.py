"""OVSDB values (RFC 7047 section 5.1) <-> Python values, in one place.

==========================  ==============================================
OVSDB (JSON)                Python
==========================  ==============================================
string, integer, real,      ``str``, ``int``, ``float``, ``bool``
boolean atoms
``["uuid", "..."]``         :class:`Uuid`
``["named-uuid", "row1"]``  :class:`NamedUuid` (in a transaction only)
``["set", [atom, ...]]``    ``frozenset`` (``set`` and ``tuple`` are accepted
                            when encoding)
``["map", [[k, v], ...]]``  ``dict``
==========================  ==============================================

On the wire a set of exactly one element may be its bare atom;
:func:`decode_value` returns what the JSON says, and the schema's column type
(:meth:`vhostcompat.ovsdb.schema.ColumnType.decode`) turns it into the
column's Python shape: a scalar column (min = max = 1) gives an atom, any
other set column a ``frozenset`` (an empty one when the column is empty), a
map column a ``dict``.

Everything decoded here comes from the server and is checked: a malformed
value raises :class:`ValueShapeError`, which the client turns into an
:class:`~vhostcompat.ovsdb.errors.OvsdbProtocolError` naming the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NAMED_UUID_PATTERN = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")


class ValueShapeError(ValueError):
    """A JSON value that is not a well-formed OVSDB value."""


@dataclass(frozen=True, slots=True)
class Uuid:
    """A row's UUID (``["uuid", "550e8400-..."]``)."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not UUID_PATTERN.fullmatch(self.value):
            raise ValueShapeError(f"invalid UUID {self.value!r}")

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class NamedUuid:
    """A row inserted earlier in the same transaction (``["named-uuid", "row1"]``)."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAMED_UUID_PATTERN.fullmatch(self.name):
            raise ValueShapeError(f"invalid uuid-name {self.name!r}")

    def __str__(self) -> str:
        return self.name


Atom: TypeAlias = str | int | float | bool | Uuid | NamedUuid
# A map's keys share one base type; Mapping is invariant in its key, so each is listed.
Value: TypeAlias = ("Atom | frozenset[Atom] | set[Atom] | tuple[Atom, ...] | Mapping[str, Atom]"
                    " | Mapping[int, Atom] | Mapping[Uuid, Atom] | Mapping[Atom, Atom]")
Json: TypeAlias = "str | int | float | bool | list[Json] | dict[str, Json] | None"


def encode_atom(atom: Atom) -> Json:
    if isinstance(atom, Uuid):
        return ["uuid", atom.value]
    if isinstance(atom, NamedUuid):
        return ["named-uuid", atom.name]
    if isinstance(atom, str | int | float):  # bool is an int
        return atom
    raise TypeError(f"not an OVSDB atom: {atom!r}")


def encode_value(value: Value) -> Json:
    """The RFC 7047 JSON for a Python value (see the module table)."""
    if isinstance(value, Mapping):
        return ["map", [[encode_atom(key), encode_atom(item)] for key, item in value.items()]]
    if isinstance(value, frozenset | set | tuple):
        return ["set", [encode_atom(atom) for atom in value]]
    return encode_atom(value)


def decode_atom(data: object) -> Atom:
    """An atom from the server: a scalar, or a ``["uuid", ...]`` pair."""
    if isinstance(data, str | int | float):  # bool is an int
        return data
    if isinstance(data, list) and len(data) == 2 and data[0] == "uuid":
        return Uuid(data[1])
    raise ValueShapeError(f"not an OVSDB atom: {_short(data)}")


DecodedValue: TypeAlias = "Atom | frozenset[Atom] | dict[Atom, Atom]"


def decode_value(data: object) -> DecodedValue:
    """A value from the server as the JSON says it (a lone atom stays an atom)."""
    if isinstance(data, list) and len(data) == 2 and data[0] in ("set", "map"):
        if not isinstance(data[1], list):
            raise ValueShapeError(f"{data[0]} members are not a list: {_short(data)}")
        if data[0] == "set":
            return frozenset(decode_atom(atom) for atom in data[1])
        pairs: dict[Atom, Atom] = {}
        for pair in data[1]:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueShapeError(f"map entry is not a pair: {_short(pair)}")
            pairs[decode_atom(pair[0])] = decode_atom(pair[1])
        return pairs
    return decode_atom(data)


def _short(data: object, limit: int = 60) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + "..."
