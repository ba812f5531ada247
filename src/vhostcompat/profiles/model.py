"""CompatProfile and the registry of profile keys with their comparison rules.

A compatibility profile is what one named version promises: the virtio
features and vhost-user protocol features a backend offers in that mode, and
limits (queue pairs, ring size). Every key declares how a destination's value
must relate to the value an interface needs (its :class:`Rule`), so the
checker iterates keys generically and a new key needs no code change: a
catalog declares it in a ``[rules]`` table (``max_mtu = "at_most"``) and it is
loaded, published and checked like the built-in ones.

Rules read as "the required value is <rule> the offered value":

=========  =====================================================================
subset     every required item is offered (feature sets, name sets)
at_most    required <= offered (a capacity: the destination must allow as many)
at_least   required >= offered (a floor the destination must not raise)
equal      required == offered
=========  =====================================================================

Profiles are self-describing: :func:`profile_to_mapping` writes the rules of
non-built-in keys next to their values, so a host that never saw the catalog a
profile came from can still compare it (``compatible by content``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from vhostcompat.errors import InputError
from vhostcompat.features import (
    MASK64,
    ProtocolFeature,
    VirtioFeature,
    bit_numbers,
    names,
    parse_protocol,
    parse_virtio,
)

# Version strings travel in a comma-separated OVSDB value and inside an
# external_ids key (vhost-compat-profile-<version>): no commas, spaces or quotes.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+~-]{0,127}")
KEY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")

# The largest split or packed virtqueue the virtio spec allows (2^15 entries);
# DPDK refuses SET_VRING_NUM above it.
MAX_RING_SIZE = 32768
# A vhost-user net device has at most 0x8000 virtqueues (u16 queue index space).
MAX_QUEUE_PAIRS = 0x8000 // 2


class Rule(enum.Enum):
    """How a destination's value must relate to the value an interface needs."""

    SUBSET = "subset"
    AT_MOST = "at_most"
    AT_LEAST = "at_least"
    EQUAL = "equal"

    @classmethod
    def parse(cls, text: object) -> Rule:
        if isinstance(text, str):
            for rule in cls:
                if rule.value == text:
                    return rule
        choices = ", ".join(rule.value for rule in cls)
        raise InputError(f"unknown rule {text!r} (one of: {choices})")


class ValueKind(enum.Enum):
    """The value type of a key; decides parsing, formatting and subset tests."""

    VIRTIO_FEATURES = "virtio feature set"
    PROTOCOL_FEATURES = "vhost-user protocol feature set"
    COUNT = "positive integer"
    INTEGER = "integer"
    NAMES = "array of strings"
    SCALAR = "string, integer or boolean"


ExtraValue = int | str | bool | frozenset[str]
Value = VirtioFeature | ProtocolFeature | ExtraValue


@dataclass(frozen=True)
class KeySpec:
    """One profile key: its rule, value kind and (for built-ins) bounds."""

    name: str
    rule: Rule
    kind: ValueKind
    description: str = ""
    maximum: int | None = None
    builtin: bool = False


BUILTIN_KEYS: dict[str, KeySpec] = {
    spec.name: spec
    for spec in (
        KeySpec("virtio_features", Rule.SUBSET, ValueKind.VIRTIO_FEATURES,
                "virtio feature bits the backend offers (GET_FEATURES)", builtin=True),
        KeySpec("protocol_features", Rule.SUBSET, ValueKind.PROTOCOL_FEATURES,
                "vhost-user protocol features (GET_PROTOCOL_FEATURES)", builtin=True),
        KeySpec("max_queue_pairs", Rule.AT_MOST, ValueKind.COUNT,
                "queue pairs the backend accepts", MAX_QUEUE_PAIRS, builtin=True),
        KeySpec("max_ring_size", Rule.AT_MOST, ValueKind.COUNT,
                "largest virtqueue size (SET_VRING_NUM) the backend accepts",
                MAX_RING_SIZE, builtin=True),
        KeySpec("machine_types", Rule.SUBSET, ValueKind.NAMES,
                "QEMU machine types the host runs (a VM's machine type must be among "
                "the destination's: QEMU refuses to load any other)", builtin=True),
    )
}

# Fields of a profile table that are not compatibility keys.
METADATA_FIELDS = ("version", "description", "rules")


def spec_for_declared_key(name: str, rule: Rule) -> KeySpec:
    """The spec of a key a catalog declares: its value kind follows its rule."""
    kind = {
        Rule.SUBSET: ValueKind.NAMES,
        Rule.AT_MOST: ValueKind.INTEGER,
        Rule.AT_LEAST: ValueKind.INTEGER,
        Rule.EQUAL: ValueKind.SCALAR,
    }[rule]
    return KeySpec(name, rule, kind, "declared by a catalog")


@dataclass(frozen=True)
class ExtraKey:
    """A key declared by a catalog (not built in), with its rule and value."""

    name: str
    rule: Rule
    value: ExtraValue

    @property
    def spec(self) -> KeySpec:
        return spec_for_declared_key(self.name, self.rule)


@dataclass(frozen=True)
class CompatProfile:
    """One named compatibility version: features and limits, immutable.

    ``None`` means the profile does not declare the key. An interface's
    profile that does not declare a key requires nothing of it; a
    destination's profile that does not declare a key promises nothing, so a
    requirement on it is not met (never "compatible" when unsure).
    """

    version: str
    virtio_features: VirtioFeature
    protocol_features: ProtocolFeature | None = None
    max_queue_pairs: int | None = None
    max_ring_size: int | None = None
    extra: tuple[ExtraKey, ...] = ()
    description: str = field(default="", compare=False)
    machine_types: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not VERSION_PATTERN.fullmatch(self.version):
            raise InputError(f"invalid version string {self.version!r}")
        seen = set(BUILTIN_KEYS)
        for key in self.extra:
            if key.name in seen:
                raise InputError(f"profile {self.version!r}: key {key.name!r} given twice")
            seen.add(key.name)

    def items(self) -> Iterator[tuple[KeySpec, Value]]:
        """Every declared key with its value: built-ins first, then extras by name."""
        for spec in BUILTIN_KEYS.values():
            value = self._builtin_value(spec.name)
            if value is not None:
                yield spec, value
        for key in sorted(self.extra, key=lambda item: item.name):
            yield key.spec, key.value

    def lookup(self, name: str) -> tuple[KeySpec, Value] | None:
        """The spec and value of one key, or ``None`` if the profile lacks it."""
        if name in BUILTIN_KEYS:
            value = self._builtin_value(name)
            return None if value is None else (BUILTIN_KEYS[name], value)
        for key in self.extra:
            if key.name == name:
                return key.spec, key.value
        return None

    def same_content(self, other: CompatProfile) -> bool:
        """Equal keys, rules and values, whatever the two versions are called."""
        return dict(self.items()) == dict(other.items())

    def _builtin_value(self, name: str) -> Value | None:
        values: dict[str, Value | None] = {
            "virtio_features": self.virtio_features,
            "protocol_features": self.protocol_features,
            "max_queue_pairs": self.max_queue_pairs,
            "max_ring_size": self.max_ring_size,
            "machine_types": self.machine_types,
        }
        return values[name]


# --- parsing one profile from a TOML table or a published JSON object --------


def parse_rules(table: object) -> dict[str, Rule]:
    """A ``rules`` table: declared key name -> rule. Built-in keys are fixed."""
    if not isinstance(table, Mapping):
        raise InputError("'rules' must be a table of key = rule")
    rules: dict[str, Rule] = {}
    for name, text in table.items():
        if not isinstance(name, str) or not KEY_PATTERN.fullmatch(name):
            raise InputError(f"rules: invalid key name {name!r} (lower case, digits, _)")
        if name in BUILTIN_KEYS or name in METADATA_FIELDS:
            raise InputError(f"rules: {name!r} is built in; its rule cannot be declared")
        try:
            rules[name] = Rule.parse(text)
        except InputError as error:
            raise InputError(f"rules: key {name!r}: {error}") from error
    return rules


class KeyValueError(InputError):
    """A profile key whose value is refused; carries the key for the message."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"key {key!r}: {message}")


def profile_from_mapping(table: Mapping[str, object],
                         rules: Mapping[str, Rule] | None = None) -> CompatProfile:
    """Build a profile from a TOML table or a decoded JSON object.

    ``rules`` are the declared rules in force (a catalog's ``[rules]``); a
    ``rules`` entry inside the table itself adds to them (published profiles
    carry theirs). Raises :class:`KeyValueError` naming the key at fault, or
    :class:`InputError` for table-level problems.
    """
    declared = dict(rules or {})
    if "rules" in table:
        own = parse_rules(table["rules"])
        for name, rule in own.items():
            if name in declared and declared[name] is not rule:
                raise KeyValueError(name, f"rule {rule.value!r} conflicts with the catalog's "
                                          f"{declared[name].value!r}")
        declared.update(own)
    version = table.get("version")
    if not isinstance(version, str):
        raise KeyValueError("version", "missing or not a string")
    if not VERSION_PATTERN.fullmatch(version):
        raise KeyValueError("version", f"{version!r} is not a valid version string "
                            "(letters, digits and . _ : + ~ -, at most 128, no commas)")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise KeyValueError("description", "must be a string")
    values: dict[str, Value] = {}
    extra: list[ExtraKey] = []
    for name, raw in table.items():
        if name in METADATA_FIELDS:
            continue
        if name in BUILTIN_KEYS:
            values[name] = parse_value(BUILTIN_KEYS[name], raw)
        elif name in declared:
            parsed = parse_value(spec_for_declared_key(name, declared[name]), raw)
            if isinstance(parsed, VirtioFeature | ProtocolFeature):
                # Declared keys never have a feature-set kind (see spec_for_declared_key).
                raise KeyValueError(name, "a declared key cannot hold feature bits")
            extra.append(ExtraKey(name, declared[name], parsed))
        else:
            raise KeyValueError(name, "unknown key without a declared rule (declare it in a "
                                "[rules] table: subset, at_most, at_least or equal)")
    virtio = values.get("virtio_features")
    if not isinstance(virtio, VirtioFeature):
        raise KeyValueError("virtio_features", "missing (every profile lists its features)")
    protocol = values.get("protocol_features")
    queue_pairs = values.get("max_queue_pairs")
    ring_size = values.get("max_ring_size")
    machine_types = values.get("machine_types")
    return CompatProfile(
        version=version,
        virtio_features=virtio,
        protocol_features=protocol if isinstance(protocol, ProtocolFeature) else None,
        max_queue_pairs=queue_pairs if isinstance(queue_pairs, int) else None,
        max_ring_size=ring_size if isinstance(ring_size, int) else None,
        extra=tuple(sorted(extra, key=lambda key: key.name)),
        description=description,
        machine_types=machine_types if isinstance(machine_types, frozenset) else None,
    )


def _type_name(raw: object) -> str:
    return {bool: "boolean", int: "integer", str: "string", float: "float",
            list: "array", dict: "table"}.get(type(raw), type(raw).__name__)


def parse_value(spec: KeySpec, raw: object) -> Value:
    """Check and convert one raw TOML/JSON value for ``spec``."""
    try:
        return _parse_value(spec, raw)
    except KeyValueError:
        raise
    except InputError as error:
        raise KeyValueError(spec.name, str(error)) from error


def _parse_value(spec: KeySpec, raw: object) -> Value:
    kind = spec.kind
    if kind in (ValueKind.VIRTIO_FEATURES, ValueKind.PROTOCOL_FEATURES):
        if isinstance(raw, bool) or not isinstance(raw, str | int | list):
            raise KeyValueError(spec.name, f"expected an array of feature names or a hex "
                                f"string, got {_type_name(raw)}")
        if isinstance(raw, int) and not 0 <= raw <= MASK64:
            raise KeyValueError(spec.name, f"{raw} is not a 64-bit feature mask")
        if kind is ValueKind.VIRTIO_FEATURES:
            return parse_virtio(raw)
        return parse_protocol(raw)
    if kind in (ValueKind.COUNT, ValueKind.INTEGER):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise KeyValueError(spec.name, f"expected an integer, got {_type_name(raw)}")
        low = 1 if kind is ValueKind.COUNT else 0
        if raw < low or (spec.maximum is not None and raw > spec.maximum):
            bound = f" and at most {spec.maximum}" if spec.maximum is not None else ""
            raise KeyValueError(spec.name, f"{raw} out of range (at least {low}{bound})")
        return raw
    if kind is ValueKind.NAMES:
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise KeyValueError(spec.name, f"expected an array of strings, got {_type_name(raw)}")
        return frozenset(raw)
    if isinstance(raw, bool | int | str):
        return raw
    raise KeyValueError(spec.name, f"expected a string, integer or boolean, got {_type_name(raw)}")


def profile_to_mapping(profile: CompatProfile) -> dict[str, object]:
    """A JSON-ready, self-describing form; :func:`profile_from_mapping` reads it back.

    Feature sets are hex strings: exact, and independent of the names this
    version of the package knows.
    """
    data: dict[str, object] = {"version": profile.version}
    if profile.description:
        data["description"] = profile.description
    rules: dict[str, str] = {}
    for spec, value in profile.items():
        data[spec.name] = format_raw(value)
        if not spec.builtin:
            rules[spec.name] = spec.rule.value
    if rules:
        data["rules"] = rules
    return data


def format_raw(value: Value) -> object:
    """A value as JSON/TOML data."""
    if isinstance(value, VirtioFeature | ProtocolFeature):
        return f"{int(value):#x}"
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def describe_value(spec: KeySpec, value: Value) -> str:
    """A value for people: feature names, sorted name sets, plain scalars.

    Takes the key's spec too, so that ``describe_value(*pair)`` works on the
    ``(spec, value)`` pairs :meth:`CompatProfile.items` yields.
    """
    if isinstance(value, VirtioFeature):
        return ", ".join(names(value, VirtioFeature)) or "none"
    if isinstance(value, ProtocolFeature):
        return ", ".join(names(value, ProtocolFeature)) or "none"
    if isinstance(value, frozenset):
        return ", ".join(sorted(value)) or "none"
    if spec.kind is ValueKind.SCALAR and isinstance(value, str):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def feature_labels(value: VirtioFeature | ProtocolFeature) -> list[str]:
    """``NAME (bit N)`` for every bit set, the form used in reasons."""
    if not value:
        return []  # the common case in a fleet-sized matrix: nothing lacking
    bits = bit_numbers(int(value))
    label = (names(int(value), VirtioFeature) if isinstance(value, VirtioFeature)
             else names(int(value), ProtocolFeature))
    return [f"{name} (bit {bit})" if not name.startswith("bit ") else name
            for name, bit in zip(label, bits, strict=True)]


@dataclass(frozen=True)
class NegotiatedState:
    """What an interface actually negotiated, as the host agent recorded it.

    Every field is optional: the agent writes what it learnt. A migration
    check compares each present field with the destination's profile.
    """

    acked_features: VirtioFeature | None = None
    acked_protocol_features: ProtocolFeature | None = None
    queue_pairs: int | None = None
    ring_size: int | None = None
    status: str | None = None
    machine_type: str | None = None
    """The QEMU machine type the VM runs (as QEMU resolved it: pc-q35-10.0, not q35)."""

    def is_empty(self) -> bool:
        return all(value is None for value in (
            self.acked_features, self.acked_protocol_features, self.queue_pairs,
            self.ring_size, self.status, self.machine_type))
