"""Migration verdicts: ``check_migration`` (one destination) and ``targets`` (many).

Both decide from records alone (:func:`check_from_records`,
:func:`targets_from_records`) with :func:`vhostcompat.profiles.check_destination`:
the version string, the profile contents, and, once the interface has run,
what the guest negotiated (acked features, queue pairs and ring sizes in
use, machine type), as the proxy or ``record`` wrote it and as OVS-DPDK's
own ``Interface status`` says (the larger demand of the two).

Exit statuses the CLI gives each report (``exit_status``): 0 a yes verdict
(``compatible``, ``compatible-by-content``, ``compatible-for-running-guest``;
with ``strict`` only the first two), 1 ``incompatible``, 2 ``unknown`` or a
host that could not be read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.errors import InputError
from vhostcompat.hoststore import HostRecord, InterfaceRecord, NotPublishedError
from vhostcompat.manager.hosts import JsonObject, default_source
from vhostcompat.manager.sources import (
    FleetError,
    HostFailure,
    ProgressCallback,
    RecordSource,
)
from vhostcompat.profiles import (
    Catalog,
    CompatProfile,
    DestinationCheck,
    NegotiatedState,
    Verdict,
    check_destination,
)

EXIT_YES, EXIT_NO, EXIT_UNSURE = 0, 1, 2
STRICT_REASON = ("strict: only compatible and compatible-by-content are accepted (the "
                 "destination does not hold the interface's whole mode)")


def required_profile(version: str, source: HostRecord | None,
                     catalog: Catalog | None) -> CompatProfile | None:
    """A version's contents: as the source publishes them, else from the catalog."""
    published = source.profile(version) if source is not None else None
    if published is not None:
        return published
    return catalog.find(version) if catalog is not None else None


def check_json(check: DestinationCheck) -> JsonObject:
    return {"compatible": check.compatible, "verdict": check.verdict.value,
            "version": check.version, "destination_version": check.destination_version,
            "reasons": list(check.reasons),
            "shortfalls": [{"key": shortfall.key, "rule": shortfall.rule.value,
                            "missing": list(shortfall.missing), "reason": shortfall.reason}
                           for shortfall in check.shortfalls]}


def accepted(check: DestinationCheck, strict: bool) -> bool:
    return check.verdict.is_strict_yes if strict else check.verdict.is_yes


def exit_status(check: DestinationCheck, strict: bool) -> int:
    if accepted(check, strict):
        return EXIT_YES
    return EXIT_UNSURE if check.verdict is Verdict.UNKNOWN else EXIT_NO


@dataclass(frozen=True)
class MigrationReport:
    interface: str
    source: str
    destination: str
    check: DestinationCheck
    notes: tuple[str, ...] = ()
    ovs_status_disagreements: tuple[str, ...] = ()  # OVS's Interface status vs the proxy's
    strict: bool = False

    @property
    def compatible(self) -> bool:
        return accepted(self.check, self.strict)

    @property
    def exit_status(self) -> int:
        return exit_status(self.check, self.strict)

    def to_json(self) -> JsonObject:
        document = {"interface": self.interface, "from": self.source, "to": self.destination,
                    **check_json(self.check), "notes": list(self.notes),
                    "ovs_status_disagreements": list(self.ovs_status_disagreements),
                    "strict": self.strict}
        document["compatible"] = self.compatible
        return document

    def lines(self) -> list[str]:
        refused = self.check.compatible and not self.compatible
        headline = f"INCOMPATIBLE (strict; {self.check.headline()})" if refused \
            else self.check.headline()
        return [headline, *self.check.reasons, *([STRICT_REASON] if refused else []),
                *self.notes]


@dataclass(frozen=True)
class InterfaceAtSource:
    """An interface's mode, its contents and what its guest negotiated, from the source."""

    interface: InterfaceRecord
    version: str
    required: CompatProfile | None
    negotiated: NegotiatedState | None
    notes: tuple[str, ...]


def interface_at_source(name: str, source: HostRecord,
                        catalog: Catalog | None) -> InterfaceAtSource:
    record = source.interface(name)
    if record.version is None:
        raise NotPublishedError(source.address, f"interface {name!r} has no "
                                "compatibility version assigned")
    notes: list[str] = []
    if record.version not in source.versions:
        notes.append(f"note: the source no longer publishes {record.version}")
    required = required_profile(record.version, source, catalog)
    if required is not None and source.profile(record.version) is None:
        notes.append(f"note: contents of {record.version} taken from the catalog")
    # Where OVS and the proxy disagree, check what either saw (never a false yes).
    notes.extend(f"note: {line}; checking against both" for line in record.disagreements())
    negotiated = record.effective_negotiated()
    return InterfaceAtSource(record, record.version, required,
                             None if negotiated.is_empty() else negotiated, tuple(notes))


def check_from_records(interface: str, source: HostRecord, destination: HostRecord,
                       catalog: Catalog | None = None, strict: bool = False) -> MigrationReport:
    """The verdict for one destination, from the two hosts' records."""
    at_source = interface_at_source(interface, source, catalog)
    check = check_destination(at_source.version, at_source.required, destination.versions,
                              destination.profiles, at_source.negotiated)
    return MigrationReport(interface, source.address, destination.address, check,
                           at_source.notes, at_source.interface.disagreements(), strict)


async def check_migration(interface: str, source: str, destination: str,
                          catalog: Catalog | None = None, *, strict: bool = False,
                          records: RecordSource | None = None,
                          progress: ProgressCallback | None = None) -> MigrationReport:
    """Can ``interface`` (as recorded on ``source``) live-migrate to ``destination``?"""
    if source == destination:
        raise InputError("source and destination are the same host")
    gathered = await default_source(records).gather([source, destination], progress)
    source_host, destination_host = gathered.require_all("check-migration")
    return check_from_records(interface, source_host, destination_host, catalog, strict)


@dataclass(frozen=True)
class Target:
    """One candidate destination: the verdict from the mode alone and from the guest."""

    host: str
    static: DestinationCheck | None
    """From the interface's mode alone (what holds before the VM starts)."""
    live: DestinationCheck | None
    """From what the guest negotiated too; None until the interface has run."""
    failure: HostFailure | None = None
    strict: bool = False

    @property
    def check(self) -> DestinationCheck | None:
        return self.live if self.live is not None else self.static

    @property
    def compatible(self) -> bool:
        return self.check is not None and accepted(self.check, self.strict)

    @property
    def verdict(self) -> str:
        return "unreachable" if self.check is None else self.check.verdict.value

    @property
    def reasons(self) -> tuple[str, ...]:
        if self.failure is not None:
            return (self.failure.reason,)
        assert self.check is not None
        refused = self.check.compatible and not self.compatible
        return (*self.check.reasons, *([STRICT_REASON] if refused else []))

    def to_json(self) -> JsonObject:
        return {"host": self.host, "compatible": self.compatible, "verdict": self.verdict,
                "destination_version": None if self.check is None
                else self.check.destination_version,
                "reasons": list(self.reasons),
                "static": None if self.static is None else check_json(self.static),
                "live": None if self.live is None else check_json(self.live)}


@dataclass(frozen=True)
class TargetsReport:
    interface: str
    source: str
    version: str
    targets: tuple[Target, ...]
    notes: tuple[str, ...] = ()
    live: bool = False
    """Whether the guest's negotiated state was known (the ``live`` verdicts)."""

    @property
    def compatible_hosts(self) -> tuple[str, ...]:
        return tuple(target.host for target in self.targets if target.compatible)

    @property
    def exit_status(self) -> int:
        """0 some candidate can take the VM; else 2 if one was unsure or unreachable; 1."""
        if self.compatible_hosts:
            return EXIT_YES
        if any(target.check is None or target.check.verdict is Verdict.UNKNOWN
               for target in self.targets):
            return EXIT_UNSURE
        return EXIT_NO

    def to_json(self) -> JsonObject:
        return {"interface": self.interface, "from": self.source, "version": self.version,
                "live": self.live, "targets": [target.to_json() for target in self.targets],
                "compatible_hosts": list(self.compatible_hosts), "notes": list(self.notes)}

    def lines(self) -> list[str]:
        basis = "what its guest negotiated" if self.live else "its mode (it has not run yet)"
        lines = [f"{self.interface} on {self.source} ({self.version}), judged by {basis}:"]
        for target in self.targets:
            mode = ""
            if target.compatible and target.check is not None:
                mode = f" in {target.check.destination_version}"
            lines.append(f"  {target.host}: {target.verdict}{mode}")
            if not target.compatible:
                lines.extend(f"    {reason}" for reason in target.reasons)
        return [*lines, *self.notes]


def targets_from_records(interface: str, source: HostRecord,
                         candidates: Sequence[HostRecord | HostFailure],
                         catalog: Catalog | None = None, strict: bool = False,
                         ) -> TargetsReport:
    """Where this interface's VM can go: each candidate's static and live verdict.

    Candidates that publish equal data (most of a fleet) share one computation.
    """
    at_source = interface_at_source(interface, source, catalog)
    memo: dict[tuple[object, ...], tuple[DestinationCheck, DestinationCheck | None]] = {}
    targets: list[Target] = []
    for candidate in candidates:
        if isinstance(candidate, HostFailure):
            targets.append(Target(candidate.address, None, None, candidate, strict))
            continue
        # Equal published data, equal verdicts (profiles are frozen and hashable).
        key = (candidate.versions,
               tuple(candidate.profiles.get(version) for version in candidate.versions))
        found = memo.get(key)
        if found is None:
            found = _verdicts(at_source, candidate.versions, candidate.profiles)
            memo[key] = found
        targets.append(Target(candidate.address, found[0], found[1], None, strict))
    return TargetsReport(interface, source.address, at_source.version, tuple(targets),
                         at_source.notes, at_source.negotiated is not None)


def _verdicts(at_source: InterfaceAtSource, versions: Sequence[str],
              profiles: Mapping[str, CompatProfile],
              ) -> tuple[DestinationCheck, DestinationCheck | None]:
    static = check_destination(at_source.version, at_source.required, versions, profiles)
    live = None if at_source.negotiated is None else check_destination(
        at_source.version, at_source.required, versions, profiles, at_source.negotiated)
    return static, live


async def targets(interface: str, source: str, candidates: Sequence[str],
                  catalog: Catalog | None = None, *, strict: bool = False,
                  records: RecordSource | None = None,
                  progress: ProgressCallback | None = None) -> TargetsReport:
    """Ask the source and every candidate (concurrently); unreachable candidates are listed
    with their reason, never as compatible. The source must be readable."""
    if source in candidates:
        raise InputError(f"host {source} is both the source and a candidate")
    gathered = await default_source(records).gather([source, *candidates], progress)
    if source in gathered.failures:
        raise FleetError("targets: the source", [gathered.failures[source]])
    listed: list[HostRecord | HostFailure] = [
        gathered.records.get(address) or gathered.failures[address] for address in candidates]
    return targets_from_records(interface, gathered.records[source], listed, catalog, strict)
