"""The common ground of several hosts' offers, as a new profile; QEMU machine type order.

:func:`baseline_profile` is to virtio-net what ``virsh hypervisor-cpu-baseline``
is to CPUs: given what each host really offers (its captured profile), the
largest profile every one of them satisfies. Each key follows its rule:
``subset`` keys are intersected (feature sets, machine types), ``at_most``
limits take the minimum, ``at_least`` floors the maximum, ``equal`` keys must
agree. A key some host does not declare is left out (that host promises
nothing about it), and said so.

Machine types: QEMU refuses to load a VM whose machine type it does not
have ("Machine type received is 'pc-q35-10.0' and local is 'pc-q35-7.2'"),
before it compares a single feature, so the machine type is part of what
must be common. :func:`newest_machine_type` picks the newest versioned
machine of a family (``pc-q35-X.Y``) in a set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vhostcompat.errors import InputError
from vhostcompat.features import MASK64, ProtocolFeature, VirtioFeature
from vhostcompat.profiles.model import (
    BUILTIN_KEYS,
    CompatProfile,
    ExtraKey,
    KeySpec,
    Rule,
    Value,
)

DEFAULT_MACHINE_FAMILY = "pc-q35"
_VERSIONED_MACHINE = re.compile(r"(?P<family>[a-z0-9-]+?)-(?P<major>\d+)\.(?P<minor>\d+)")


def machine_version(name: str) -> tuple[str, tuple[int, int]] | None:
    """``("pc-q35", (10, 0))`` for ``pc-q35-10.0``; None for unversioned names (``q35``)."""
    match = _VERSIONED_MACHINE.fullmatch(name)
    if match is None:
        return None
    return match["family"], (int(match["major"]), int(match["minor"]))


def newest_machine_type(types: Iterable[str],
                        family: str = DEFAULT_MACHINE_FAMILY) -> str | None:
    """The newest ``FAMILY-X.Y`` machine type among ``types``; None if there is none."""
    best: tuple[tuple[int, int], str] | None = None
    for name in types:
        parsed = machine_version(name)
        if parsed is None or parsed[0] != family:
            continue
        if best is None or parsed[1] > best[0]:
            best = (parsed[1], name)
    return None if best is None else best[1]


@dataclass(frozen=True)
class Baseline:
    """The common profile and what was left out of it (and why)."""

    profile: CompatProfile
    notes: tuple[str, ...]
    machine_type: str | None
    """The newest common q35 machine type: the one to run VMs on."""


def _combine(spec: KeySpec, values: Sequence[Value]) -> Value:
    """One key's common value under its rule; InputError when there is none."""
    first = values[0]
    if spec.rule is Rule.SUBSET:
        if isinstance(first, VirtioFeature | ProtocolFeature):
            mask = MASK64
            for value in values:
                if not isinstance(value, type(first)):
                    break
                mask &= int(value)
            else:
                return type(first)(mask)
        if all(isinstance(value, frozenset) for value in values):
            common = frozenset(first) if isinstance(first, frozenset) else frozenset()
            for value in values:
                if isinstance(value, frozenset):
                    common &= value
            return common
    elif spec.rule in (Rule.AT_MOST, Rule.AT_LEAST):
        numbers = [value for value in values if isinstance(value, int)
                   and not isinstance(value, bool)]
        if len(numbers) == len(values):
            return min(numbers) if spec.rule is Rule.AT_MOST else max(numbers)
    elif all(value == first and type(value) is type(first) for value in values):
        return first
    raise InputError(f"the hosts' values of {spec.name} have no common value under rule "
                     f"{spec.rule.value}: {', '.join(repr(value) for value in values)}")


def baseline_profile(version: str, offers: Sequence[tuple[str, CompatProfile]],
                     description: str = "") -> Baseline:
    """The largest profile every ``(host, profile)`` offer satisfies."""
    if not offers:
        raise InputError("no host offers to compute a baseline of")
    notes: list[str] = []
    specs: dict[str, KeySpec] = {}
    values: dict[str, list[Value]] = {}
    for _host, profile in offers:
        for spec, value in profile.items():
            known = specs.setdefault(spec.name, spec)
            if known.rule is not spec.rule or known.kind is not spec.kind:
                raise InputError(f"the hosts compare {spec.name} by different rules "
                                 f"({known.rule.value}, {spec.rule.value})")
            values.setdefault(spec.name, []).append(value)
    common: dict[str, Value] = {}
    for name, spec in specs.items():
        lacking = [host for host, profile in offers if profile.lookup(name) is None]
        if lacking:
            notes.append(f"{name} left out: {', '.join(lacking)} declare(s) no {name}")
            continue
        common[name] = _combine(spec, values[name])
    virtio = common.get("virtio_features")
    if not isinstance(virtio, VirtioFeature):
        raise InputError("a host's profile declares no virtio_features")
    protocol = common.get("protocol_features")
    pairs = common.get("max_queue_pairs")
    ring = common.get("max_ring_size")
    machines = common.get("machine_types")
    extra = tuple(ExtraKey(name, specs[name].rule, value)
                  for name, value in sorted(common.items()) if name not in BUILTIN_KEYS
                  and not isinstance(value, VirtioFeature | ProtocolFeature))
    machine_types = machines if isinstance(machines, frozenset) else None
    newest = None if machine_types is None else newest_machine_type(machine_types)
    if machine_types is not None and newest is None:
        notes.append(f"the hosts have no {DEFAULT_MACHINE_FAMILY} machine type in common")
    hosts = ", ".join(host for host, _profile in offers)
    profile = CompatProfile(
        version=version,
        virtio_features=virtio,
        protocol_features=protocol if isinstance(protocol, ProtocolFeature) else None,
        max_queue_pairs=pairs if isinstance(pairs, int) else None,
        max_ring_size=ring if isinstance(ring, int) else None,
        extra=extra,
        description=description or f"baseline of {hosts}",
        machine_types=machine_types,
    )
    return Baseline(profile, tuple(notes), newest)
