"""profiles.model: CompatProfile, key rules, parsing and the self-describing JSON form."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhostcompat.errors import InputError
from vhostcompat.features import MASK64, ProtocolFeature, VirtioFeature
from vhostcompat.profiles import (
    BUILTIN_KEYS,
    CompatProfile,
    ExtraKey,
    Rule,
    ValueKind,
    profile_from_mapping,
    profile_to_mapping,
)
from vhostcompat.profiles.model import KeyValueError, parse_rules

INDIRECT = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC


def test_builtin_keys_declare_their_rules() -> None:
    assert BUILTIN_KEYS["virtio_features"].rule is Rule.SUBSET
    assert BUILTIN_KEYS["protocol_features"].rule is Rule.SUBSET
    assert BUILTIN_KEYS["max_queue_pairs"].rule is Rule.AT_MOST
    assert BUILTIN_KEYS["max_ring_size"].rule is Rule.AT_MOST


def test_profile_from_names_and_aliases() -> None:
    profile = profile_from_mapping({
        "version": "v1", "virtio_features": ["VIRTIO_F_INDIRECT_DESC", "VIRTIO_F_VERSION_1"],
        "protocol_features": ["VHOST_USER_PROTOCOL_F_MQ", "REPLY_ACK"],
        "max_queue_pairs": 4, "max_ring_size": 256})
    assert profile.virtio_features == INDIRECT | VirtioFeature.VIRTIO_F_VERSION_1
    assert profile.protocol_features == ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
    assert (profile.max_queue_pairs, profile.max_ring_size) == (4, 256)


def test_hex_string_and_integer_masks_are_accepted() -> None:
    from_hex = profile_from_mapping({"version": "v", "virtio_features": "0x10000000"})
    from_int = profile_from_mapping({"version": "v", "virtio_features": 0x10000000})
    assert from_hex.virtio_features == from_int.virtio_features == INDIRECT


def test_optional_keys_are_absent_not_zero() -> None:
    profile = profile_from_mapping({"version": "v", "virtio_features": []})
    assert profile.protocol_features is None
    assert profile.max_queue_pairs is None
    assert [spec.name for spec, _ in profile.items()] == ["virtio_features"]


@pytest.mark.parametrize(("table", "key", "fragment"), [
    ({"virtio_features": []}, "version", "missing"),
    ({"version": "a,b", "virtio_features": []}, "version", "not a valid version"),
    ({"version": "v"}, "virtio_features", "missing"),
    ({"version": "v", "virtio_features": ["VIRTIO_F_NO_SUCH_THING"]}, "virtio_features",
     "unknown virtio feature"),
    ({"version": "v", "virtio_features": [], "protocol_features": ["NOPE"]},
     "protocol_features", "unknown vhost-user protocol feature"),
    ({"version": "v", "virtio_features": True}, "virtio_features", "got boolean"),
    ({"version": "v", "virtio_features": [1, 2]}, "virtio_features", "not a string"),
    ({"version": "v", "virtio_features": -1}, "virtio_features", "64-bit"),
    ({"version": "v", "virtio_features": MASK64 + 1}, "virtio_features", "64-bit"),
    ({"version": "v", "virtio_features": [], "max_queue_pairs": "8"}, "max_queue_pairs",
     "expected an integer, got string"),
    ({"version": "v", "virtio_features": [], "max_queue_pairs": True}, "max_queue_pairs",
     "got boolean"),
    ({"version": "v", "virtio_features": [], "max_queue_pairs": 0}, "max_queue_pairs",
     "out of range"),
    ({"version": "v", "virtio_features": [], "max_ring_size": 65536}, "max_ring_size",
     "out of range"),
    ({"version": "v", "virtio_features": [], "max_mtu": 9000}, "max_mtu",
     "unknown key without a declared rule"),
])
def test_bad_values_name_the_key(table: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(KeyValueError) as caught:
        profile_from_mapping(table)
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_declared_keys_load_with_their_rule_and_kind() -> None:
    rules = parse_rules({"max_mtu": "at_most", "offloads": "subset", "mode": "equal",
                         "min_ring": "at_least"})
    profile = profile_from_mapping({"version": "v", "virtio_features": [], "max_mtu": 9000,
                                    "offloads": ["a", "b"], "mode": "split",
                                    "min_ring": 64}, rules)
    kinds = {spec.name: (spec.rule, spec.kind) for spec, _ in profile.items()}
    assert kinds["max_mtu"] == (Rule.AT_MOST, ValueKind.INTEGER)
    assert kinds["offloads"] == (Rule.SUBSET, ValueKind.NAMES)
    assert kinds["mode"] == (Rule.EQUAL, ValueKind.SCALAR)
    assert kinds["min_ring"] == (Rule.AT_LEAST, ValueKind.INTEGER)
    assert profile.lookup("offloads") == (kinds_spec(profile, "offloads"), frozenset("ab"))


def kinds_spec(profile: CompatProfile, name: str) -> object:
    found = profile.lookup(name)
    assert found is not None
    return found[0]


@pytest.mark.parametrize(("rules", "fragment"), [
    ({"max_queue_pairs": "at_least"}, "built in"),
    ({"version": "equal"}, "built in"),
    ({"x": "bigger"}, "unknown rule"),
    ({"X-Y": "equal"}, "invalid key name"),
    ("at_most", "must be a table"),
])
def test_bad_rules_are_refused(rules: object, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_rules(rules)


def test_declared_value_type_follows_the_rule() -> None:
    rules = {"max_mtu": Rule.AT_MOST}
    with pytest.raises(KeyValueError, match="expected an integer"):
        profile_from_mapping({"version": "v", "virtio_features": [], "max_mtu": "9000"}, rules)


def test_a_profile_rules_table_cannot_contradict_the_catalog() -> None:
    with pytest.raises(KeyValueError, match="conflicts"):
        profile_from_mapping({"version": "v", "virtio_features": [], "k": 1,
                              "rules": {"k": "at_least"}}, {"k": Rule.AT_MOST})


def test_published_form_is_self_describing() -> None:
    rules = {"max_mtu": Rule.AT_MOST}
    profile = profile_from_mapping({"version": "v", "virtio_features": ["VIRTIO_F_VERSION_1"],
                                    "max_mtu": 1500}, rules)
    published = json.loads(json.dumps(profile_to_mapping(profile)))
    assert published["rules"] == {"max_mtu": "at_most"}
    assert published["virtio_features"] == "0x100000000"
    # Read back without the catalog's rules: the published form carries them.
    assert profile_from_mapping(published) == profile


def test_description_does_not_change_content() -> None:
    a = CompatProfile("v", INDIRECT, description="one")
    b = CompatProfile("w", INDIRECT, description="two")
    assert a.same_content(b)
    assert not a.same_content(CompatProfile("v", INDIRECT, max_ring_size=256))


def test_extra_key_cannot_shadow_a_builtin() -> None:
    with pytest.raises(InputError, match="given twice"):
        CompatProfile("v", INDIRECT, extra=(ExtraKey("max_ring_size", Rule.AT_MOST, 1),))


names_strategy = st.frozensets(st.text("abcxyz", min_size=1, max_size=4), max_size=4)
extra_strategy = st.one_of(
    st.builds(lambda v: ExtraKey("max_mtu", Rule.AT_MOST, v), st.integers(0, 10**6)),
    st.builds(lambda v: ExtraKey("min_ring", Rule.AT_LEAST, v), st.integers(0, 10**6)),
    st.builds(lambda v: ExtraKey("mode", Rule.EQUAL, v),
              st.one_of(st.booleans(), st.integers(0, 99), st.text("ab", max_size=3))),
    st.builds(lambda v: ExtraKey("offloads", Rule.SUBSET, v), names_strategy),
)
profiles_strategy = st.builds(
    CompatProfile,
    version=st.from_regex(r"[a-z][a-z0-9.]{0,10}", fullmatch=True),
    virtio_features=st.integers(0, MASK64).map(VirtioFeature),
    protocol_features=st.one_of(st.none(), st.integers(0, MASK64).map(ProtocolFeature)),
    max_queue_pairs=st.one_of(st.none(), st.integers(1, 16384)),
    max_ring_size=st.one_of(st.none(), st.integers(1, 32768)),
    extra=st.lists(extra_strategy, max_size=4, unique_by=lambda key: key.name).map(
        lambda keys: tuple(sorted(keys, key=lambda key: key.name))),
)


@given(profiles_strategy)
def test_published_form_round_trips(profile: CompatProfile) -> None:
    text = json.dumps(profile_to_mapping(profile))
    assert profile_from_mapping(json.loads(text)) == profile
