"""ovsdb.values and schema.ColumnType: Python values <-> RFC 7047 JSON, server data checked."""

from __future__ import annotations

import pytest

from vhostcompat.ovsdb import Mutate, Select, Wait
from vhostcompat.ovsdb.schema import ColumnType, parse_column_type
from vhostcompat.ovsdb.values import (
    NamedUuid,
    Uuid,
    ValueShapeError,
    decode_value,
    encode_value,
)

U1 = "550e8400-e29b-41d4-a716-446655440000"


@pytest.mark.parametrize(("value", "json"), [
    ("text", "text"), (7, 7), (1.5, 1.5), (True, True),
    (Uuid(U1), ["uuid", U1]), (NamedUuid("row1"), ["named-uuid", "row1"]),
    (frozenset({"a"}), ["set", ["a"]]), ((), ["set", []]),
    ({"k": "v"}, ["map", [["k", "v"]]]), ({}, ["map", []]),
    ({"k": Uuid(U1)}, ["map", [["k", ["uuid", U1]]]]),
])
def test_encoding(value: object, json: object) -> None:
    assert encode_value(value) == json  # type: ignore[arg-type]


@pytest.mark.parametrize(("json", "value"), [
    ("text", "text"), (3, 3), (["uuid", U1], Uuid(U1)),
    (["set", ["a", "b"]], frozenset({"a", "b"})), (["map", [["k", "v"]]], {"k": "v"}),
])
def test_decoding_as_sent(json: object, value: object) -> None:
    assert decode_value(json) == value


@pytest.mark.parametrize("json", [
    None, ["uuid", "not-a-uuid"], ["named-uuid", "x"], ["set", "a"], ["map", [["k"]]],
    ["set", [["set", []]]], {"a": 1}, ["map", [[["map", []], "v"]]],
])
def test_malformed_server_values_are_refused(json: object) -> None:
    with pytest.raises(ValueShapeError):
        decode_value(json)


def test_invalid_local_names_are_refused() -> None:
    with pytest.raises(ValueShapeError):
        NamedUuid("1row")
    with pytest.raises(ValueShapeError):
        Uuid("ABC")
    with pytest.raises(TypeError):
        encode_value([1, 2])  # type: ignore[arg-type]


def test_column_types_give_each_column_its_python_shape() -> None:
    scalar = parse_column_type("string")
    optional = parse_column_type({"key": "integer", "min": 0, "max": 1})
    many = parse_column_type({"key": {"type": "uuid", "refTable": "Port"}, "min": 0,
                              "max": "unlimited"})
    mapping = parse_column_type({"key": "string", "value": "string", "min": 0,
                                 "max": "unlimited"})
    assert scalar.decode("x") == "x"
    assert optional.decode(["set", []]) == frozenset()
    assert optional.decode(5) == frozenset({5})  # a one-element set sent as its atom
    assert many.decode(["uuid", U1]) == frozenset({Uuid(U1)})
    assert mapping.decode(["map", []]) == {}
    for column, bad in [(scalar, 5), (scalar, ["set", []]), (mapping, ["map", [["k", 1]]]),
                        (mapping, "x"), (optional, True), (many, "x")]:
        with pytest.raises(ValueShapeError):
            column.decode(bad)
    assert ColumnType("boolean").decode(False) is False


def test_string_maps_decode_in_one_pass_and_refuse_every_other_shape() -> None:
    """external_ids, options and status take a fast path; it accepts nothing the general
    decoding would refuse."""
    mapping = parse_column_type({"key": "string", "value": "string", "min": 0,
                                 "max": "unlimited"})
    assert mapping.decode(["map", [["a", "1"], ["b", ""]]]) == {"a": "1", "b": ""}
    assert mapping.decode(["map", [["a", "1"], ["a", "2"]]]) == {"a": "2"}
    for bad in (["map", ["ab"]], ["map", [["a", "1", "x"]]], ["map", [["a", 1]]],
                ["map", [[1, "a"]]], ["map", [["a", True]]], ["map", [["a", ["uuid", U1]]]],
                ["map", "ab"], ["set", [["a", "1"]]], ["map", [("a", "1")], "extra"],
                ["map", [["a", None]]], ["map", [["a", {"x": 1}]]]):
        with pytest.raises(ValueShapeError):
            mapping.decode(bad)


@pytest.mark.parametrize("json", [{"key": "string", "min": 2}, {"key": "nosuch"},
                                  {"key": "string", "max": 0}, 7])
def test_malformed_column_types_are_refused(json: object) -> None:
    with pytest.raises(ValueShapeError):
        parse_column_type(json)


def test_operations_check_their_verbs() -> None:
    assert Select("T", [("a", "==", 1)], ["a"]).to_json() == {
        "op": "select", "table": "T", "where": [["a", "==", 1]], "columns": ["a"]}
    with pytest.raises(ValueError, match="unknown condition function '=~'"):
        Select("T", [("a", "=~", 1)]).to_json()
    with pytest.raises(ValueError, match="unknown mutator 'append'"):
        Mutate("T", [], [("a", "append", 1)]).to_json()
    with pytest.raises(ValueError, match="wait until"):
        Wait("T", until="<")
