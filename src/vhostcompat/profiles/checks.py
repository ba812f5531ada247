"""Pure compatibility checks: profile against profile, negotiated state against profile.

Everything here is a function of its arguments (no hosts, no files), so the
manager, the CLI, the demo and the property tests share one definition of
"compatible". Each failed comparison becomes a :class:`Shortfall` carrying a
sentence that names the feature (by name and bit) or the limit and the version
that required it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.profiles.model import (
    BUILTIN_KEYS,
    CompatProfile,
    KeySpec,
    NegotiatedState,
    Rule,
    Value,
    describe_value,
    feature_labels,
)


@dataclass(frozen=True)
class Shortfall:
    """One way a destination fails a requirement; ``reason`` is the sentence."""

    key: str
    rule: Rule
    reason: str
    missing: tuple[str, ...] = ()


def compare_profiles(required: CompatProfile, offered: CompatProfile,
                     subject: str = "destination") -> tuple[Shortfall, ...]:
    """Every way ``offered`` fails to satisfy ``required`` under each key's rule.

    Keys ``required`` does not declare require nothing; keys ``offered`` does
    not declare promise nothing, so a requirement on them is a shortfall.
    """
    shortfalls: list[Shortfall] = []
    for spec, needed in required.items():
        found = offered.lookup(spec.name)
        if found is None:
            shortfalls.append(Shortfall(
                spec.name, spec.rule,
                f"{subject}'s profile {offered.version} does not declare {spec.name}, "
                f"which {required.version} requires ({describe_value(spec, needed)})"))
            continue
        offered_spec, have = found
        if offered_spec.rule is not spec.rule or offered_spec.kind is not spec.kind:
            shortfalls.append(Shortfall(
                spec.name, spec.rule,
                f"{subject}'s profile {offered.version} compares {spec.name} by rule "
                f"{offered_spec.rule.value}, {required.version} by rule {spec.rule.value}"))
            continue
        shortfalls.extend(_apply_rule(spec, needed, have, subject,
                                      f"required by {required.version}"))
    return tuple(shortfalls)


def check_negotiated(state: NegotiatedState, offered: CompatProfile,
                     subject: str = "destination") -> tuple[Shortfall, ...]:
    """What the guest actually negotiated, against the profile it would meet."""
    wanted: list[tuple[str, Value | None]] = [
        ("virtio_features", state.acked_features),
        ("protocol_features", state.acked_protocol_features),
        ("max_queue_pairs", state.queue_pairs),
        ("max_ring_size", state.ring_size),
        ("machine_types", None if state.machine_type is None
         else frozenset({state.machine_type})),
    ]
    shortfalls: list[Shortfall] = []
    for name, in_use in wanted:
        if in_use is None:
            continue
        spec = BUILTIN_KEYS[name]
        found = offered.lookup(name)
        if found is None:
            shortfalls.append(Shortfall(
                name, spec.rule,
                f"{subject}'s profile {offered.version} does not declare {name}; the "
                f"interface uses {describe_value(spec, in_use)}"))
            continue
        shortfalls.extend(_apply_rule(spec, in_use, found[1], subject,
                                      "in use by the guest"))
    return tuple(shortfalls)


def _apply_rule(spec: KeySpec, needed: Value, have: Value, subject: str,
                because: str) -> Iterator[Shortfall]:
    """Shortfalls of one key: one per missing item for sets, one for a scalar."""
    rule = spec.rule
    if rule is Rule.SUBSET:
        yield from _subset_shortfalls(spec, needed, have, subject, because)
    elif rule is Rule.AT_MOST:
        if not _ordered(needed, have):
            yield Shortfall(spec.name, rule,
                            f"{subject} allows {spec.name} = {have}, below the {needed} {because}")
    elif rule is Rule.AT_LEAST:
        if not _ordered(have, needed):
            yield Shortfall(spec.name, rule,
                            f"{subject}'s {spec.name} is {have}, above the {needed} {because}")
    elif needed != have or type(needed) is not type(have):
        yield Shortfall(spec.name, rule,
                        f"{subject}'s {spec.name} is {have!r}, not the {needed!r} {because}")


def _ordered(low: Value, high: Value) -> bool:
    """``low <= high`` for two integers; anything else never satisfies an order rule."""
    if isinstance(low, bool) or isinstance(high, bool):
        return False
    if isinstance(low, int) and isinstance(high, int):
        return low <= high
    return False


def _subset_shortfalls(spec: KeySpec, needed: Value, have: Value, subject: str,
                       because: str) -> Iterator[Shortfall]:
    if isinstance(needed, VirtioFeature) and isinstance(have, VirtioFeature):
        for label in feature_labels(needed & ~have):
            yield Shortfall(spec.name, spec.rule, f"{subject} lacks {label} {because}", (label,))
    elif isinstance(needed, ProtocolFeature) and isinstance(have, ProtocolFeature):
        for label in feature_labels(needed & ~have):
            yield Shortfall(spec.name, spec.rule,
                            f"{subject} lacks vhost-user protocol feature {label} {because}",
                            (label,))
    elif isinstance(needed, frozenset) and isinstance(have, frozenset):
        what = "machine type" if spec.name == "machine_types" else f"{spec.name} item"
        for item in sorted(needed - have):
            yield Shortfall(spec.name, spec.rule,
                            f"{subject} lacks {what} {item!r} {because}", (item,))
    else:
        yield Shortfall(spec.name, spec.rule,
                        f"{subject}'s {spec.name} cannot be compared as a set")


class Verdict(enum.Enum):
    """The answers of a migration check (DESIGN.md's "Verdicts")."""

    COMPATIBLE = "compatible"
    """The destination publishes the interface's version."""
    COMPATIBLE_BY_CONTENT = "compatible-by-content"
    """A destination profile of another name satisfies the version under every key's rule."""
    COMPATIBLE_FOR_RUNNING_GUEST = "compatible-for-running-guest"
    """The destination lacks part of the mode, but one of its profiles covers everything
    the guest negotiated and every limit in use (named in ``destination_version``)."""
    INCOMPATIBLE = "incompatible"
    UNKNOWN = "unknown"
    """Not enough is known to answer (no contents of the version anywhere): never a yes."""

    @property
    def is_yes(self) -> bool:
        return self in YES_VERDICTS

    @property
    def is_strict_yes(self) -> bool:
        """A yes that holds for the interface's whole mode, whatever the guest does next."""
        return self in (Verdict.COMPATIBLE, Verdict.COMPATIBLE_BY_CONTENT)


YES_VERDICTS = frozenset({Verdict.COMPATIBLE, Verdict.COMPATIBLE_BY_CONTENT,
                          Verdict.COMPATIBLE_FOR_RUNNING_GUEST})

RING_SIZE_NOTE = ("QEMU never checks ring sizes on a migration's load: the device would "
                  "stop on the destination while QEMU reports the migration completed")


@dataclass(frozen=True)
class DestinationCheck:
    """Whether a destination can take an interface of ``version``, and why."""

    version: str
    verdict: Verdict
    destination_version: str | None
    reasons: tuple[str, ...]
    shortfalls: tuple[Shortfall, ...] = ()

    @property
    def compatible(self) -> bool:
        return self.verdict.is_yes

    def headline(self) -> str:
        """The first line of a human report."""
        if self.verdict is Verdict.COMPATIBLE:
            return "compatible"
        if self.verdict is Verdict.COMPATIBLE_BY_CONTENT:
            return (f"compatible by content (destination does not publish {self.version}; "
                    f"its {self.destination_version} satisfies it under every key's rule)")
        if self.verdict is Verdict.COMPATIBLE_FOR_RUNNING_GUEST:
            return (f"compatible for the running guest (in the destination's "
                    f"{self.destination_version}: it lacks part of {self.version}, but "
                    "covers everything the guest negotiated and every limit in use)")
        if self.verdict is Verdict.UNKNOWN:
            return "UNKNOWN"
        return "INCOMPATIBLE"


def check_destination(version: str, required: CompatProfile | None,
                      destination_versions: Sequence[str],
                      destination_profiles: Mapping[str, CompatProfile],
                      negotiated: NegotiatedState | None = None) -> DestinationCheck:
    """Can a destination publishing these versions take an interface of ``version``?

    ``required`` is the version's contents as the source (or a catalog) knows
    them, ``None`` if unknown; ``negotiated`` what the guest negotiated, when
    the interface has run. In order:

    * compatible: the destination publishes the version (its contents, when
      published, satisfy ``required`` and what the guest negotiated);
    * compatible by content: it does not, but one of its published profiles
      satisfies ``required`` (and what the guest negotiated) under every rule;
    * compatible for the running guest: neither, but one of its profiles
      covers everything the guest negotiated and every limit in use (see
      :func:`in_use`: queue pairs at the mode's limit, rings as recorded);
    * otherwise incompatible, every blocking item named; unknown when the
      version's contents are known nowhere and nothing else decides.
    """
    if negotiated is not None and negotiated.is_empty():
        negotiated = None
    static = _static_check(version, required, destination_versions, destination_profiles,
                           negotiated)
    if static.compatible or negotiated is None:
        return static
    running = _running_guest_check(version, required, destination_versions,
                                   destination_profiles, negotiated)
    if running is None:
        return static
    if running.compatible or static.verdict is Verdict.UNKNOWN:
        return dataclasses.replace(running, reasons=(*static.reasons, *running.reasons))
    return dataclasses.replace(static, reasons=(*static.reasons, *running.reasons),
                               shortfalls=(*static.shortfalls, *running.shortfalls))


def _static_check(version: str, required: CompatProfile | None,
                  destination_versions: Sequence[str],
                  destination_profiles: Mapping[str, CompatProfile],
                  negotiated: NegotiatedState | None) -> DestinationCheck:
    """The version and by-content verdicts (what the whole mode needs)."""
    if version in destination_versions:
        return _check_same_version(version, required, destination_profiles.get(version),
                                   negotiated)
    published = ", ".join(destination_versions) or "nothing"
    reasons = [f"destination does not publish {version} (it publishes: {published})"]
    if required is None:
        reasons.append(f"the contents of {version} are unknown, so no destination profile "
                       "can be matched by content")
        return DestinationCheck(version, Verdict.UNKNOWN, None, tuple(reasons))
    shortfalls: list[Shortfall] = []
    for candidate in destination_versions:
        offered = destination_profiles.get(candidate)
        if offered is None:
            reasons.append(f"{candidate}: the destination publishes no contents to compare")
            continue
        found = compare_profiles(required, offered)
        if negotiated is not None:
            found += check_negotiated(negotiated, offered)
        if not found:
            return DestinationCheck(
                version, Verdict.COMPATIBLE_BY_CONTENT, candidate,
                (f"destination does not publish {version}",
                 f"its profile {candidate} satisfies {version} under every key's rule"
                 + (" and covers what the guest negotiated" if negotiated else "")))
        shortfalls.extend(found)
        reasons.extend(f"{candidate}: {shortfall.reason}" for shortfall in found)
    return DestinationCheck(version, Verdict.INCOMPATIBLE, None, tuple(reasons),
                            tuple(shortfalls))


def in_use(negotiated: NegotiatedState, mode: CompatProfile | None) -> NegotiatedState | None:
    """What a running guest holds the destination to; ``None`` when that is not known.

    The acked features must have been recorded. Ring sizes count as recorded
    (the migrated rings keep the sizes the guest set; a size never recorded
    counts at the mode's limit). Queue pairs count at the mode's limit when it
    declares one: QEMU compares the VM's configured queue count (which the
    source's mode allowed) with the destination's GET_QUEUE_NUM at the
    destination's start, whatever the guest enabled.
    """
    if negotiated.acked_features is None:
        return None
    queue_pairs = negotiated.queue_pairs
    if mode is not None and mode.max_queue_pairs is not None:
        queue_pairs = max(queue_pairs or 0, mode.max_queue_pairs)
    ring_size = negotiated.ring_size
    if ring_size is None:
        ring_size = None if mode is None else mode.max_ring_size
    if queue_pairs is None or ring_size is None:
        return None
    return dataclasses.replace(negotiated, queue_pairs=queue_pairs, ring_size=ring_size)


def _running_guest_check(version: str, required: CompatProfile | None,
                         destination_versions: Sequence[str],
                         destination_profiles: Mapping[str, CompatProfile],
                         negotiated: NegotiatedState) -> DestinationCheck | None:
    """The first destination profile covering what the guest uses; else every blocker."""
    state = in_use(negotiated, required)
    if state is None:
        return None
    reasons: list[str] = []
    shortfalls: list[Shortfall] = []
    for candidate in destination_versions:
        offered = destination_profiles.get(candidate)
        if offered is None:
            continue
        found = check_negotiated(state, offered)
        if not found:
            return DestinationCheck(
                version, Verdict.COMPATIBLE_FOR_RUNNING_GUEST, candidate,
                (f"its profile {candidate} covers everything the guest negotiated and every "
                 "limit in use: assign it there for this migration",))
        shortfalls.extend(found)
        reasons.extend(f"{candidate} for the running guest: {shortfall.reason}"
                       for shortfall in found)
    if any(shortfall.key == "max_ring_size" for shortfall in shortfalls):
        reasons.append(f"note: {RING_SIZE_NOTE}")
    return DestinationCheck(version, Verdict.INCOMPATIBLE, None, tuple(reasons),
                            tuple(shortfalls))


def _check_same_version(version: str, required: CompatProfile | None,
                        published: CompatProfile | None,
                        negotiated: NegotiatedState | None) -> DestinationCheck:
    reasons = [f"destination publishes {version}"]
    shortfalls: list[Shortfall] = []
    if published is not None and required is not None:
        differences = compare_profiles(required, published)
        if differences:
            reasons.append(f"but its contents of {version} differ from the source's")
            shortfalls.extend(differences)
    content = published or required
    if content is None:
        reasons.append(f"no contents of {version} are known on either side: only the "
                       "version string was matched")
        if negotiated is not None:
            reasons.append("what the guest negotiated cannot be verified")
            return DestinationCheck(version, Verdict.UNKNOWN, None, tuple(reasons))
    elif negotiated is not None:
        used = check_negotiated(negotiated, content)
        if used:
            shortfalls.extend(used)
        else:
            reasons.append(f"its {version} covers what the guest negotiated")
    if shortfalls:
        reasons.extend(shortfall.reason for shortfall in shortfalls)
        return DestinationCheck(version, Verdict.INCOMPATIBLE, None, tuple(reasons),
                                tuple(shortfalls))
    return DestinationCheck(version, Verdict.COMPATIBLE, version, tuple(reasons))


@dataclass(frozen=True)
class KeyDifference:
    """How one key differs between two profiles (for ``profile diff``)."""

    key: str
    first: str | None
    second: str | None
    only_first: tuple[str, ...] = ()
    only_second: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.only_first or self.only_second:
            parts = []
            if self.only_first:
                parts.append(f"only in the first: {', '.join(self.only_first)}")
            if self.only_second:
                parts.append(f"only in the second: {', '.join(self.only_second)}")
            return f"{self.key}: {'; '.join(parts)}"
        return f"{self.key}: {self.first or '(not declared)'} -> {self.second or '(not declared)'}"


def diff_profiles(first: CompatProfile, second: CompatProfile) -> tuple[KeyDifference, ...]:
    """Every key whose value (or rule) differs, in key order; empty when equivalent."""
    first_items = {spec.name: (spec, value) for spec, value in first.items()}
    second_items = {spec.name: (spec, value) for spec, value in second.items()}
    differences: list[KeyDifference] = []
    for name in [*first_items, *(key for key in second_items if key not in first_items)]:
        a = first_items.get(name)
        b = second_items.get(name)
        if a == b:
            continue
        if a is not None and b is not None and a[0] == b[0]:
            only = _set_difference(a[1], b[1])
            if only is not None:
                differences.append(KeyDifference(
                    name, describe_value(*a), describe_value(*b), only[0], only[1]))
                continue
        differences.append(KeyDifference(
            name, None if a is None else f"{describe_value(*a)} ({a[0].rule.value})",
            None if b is None else f"{describe_value(*b)} ({b[0].rule.value})"))
    return tuple(differences)


def _set_difference(a: Value, b: Value) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if isinstance(a, VirtioFeature | ProtocolFeature) and isinstance(
            b, VirtioFeature | ProtocolFeature) and type(a) is type(b):
        return tuple(feature_labels(a & ~b)), tuple(feature_labels(b & ~a))
    if isinstance(a, frozenset) and isinstance(b, frozenset):
        return tuple(sorted(a - b)), tuple(sorted(b - a))
    return None
