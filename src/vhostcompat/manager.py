"""The orchestrator side: query hosts, select, provision, check migrations, matrix.

This is the management layer of the proposal (Nova's role there): it reads what
hosts publish through :mod:`vhostcompat.hoststore`, decides with the pure
functions of :mod:`vhostcompat.profiles`, and writes the chosen version into
each host's interface parameters. Hosts are read concurrently; any host that
cannot be read makes the whole operation fail with its :class:`HostError`
(never an answer built on a partial view).

Every result is a small frozen dataclass that renders itself for people
(``lines()``) and for programs (``to_json()``), so the CLI and the demo print
the same thing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from vhostcompat.errors import InputError, VhostCompatError
from vhostcompat.hoststore import HostRecord, NotPublishedError, open_host
from vhostcompat.profiles import (
    Catalog,
    CompatProfile,
    DestinationCheck,
    Selection,
    Verdict,
    check_destination,
    profile_to_mapping,
    select_version,
)
from vhostcompat.profiles.baseline import Baseline, baseline_profile, newest_machine_type
from vhostcompat.profiles.catalog import catalog_entry_text
from vhostcompat.verify import Verification, verify

JsonObject = dict[str, object]


async def read_host(address: str) -> HostRecord:
    async with open_host(address) as store:
        return await store.read()


async def read_hosts(addresses: Sequence[str]) -> list[HostRecord]:
    """Every host's record, read concurrently, in the order given."""
    if not addresses:
        raise InputError("no hosts given")
    if len(set(addresses)) != len(addresses):
        raise InputError("a host is given twice")
    return list(await asyncio.gather(*(read_host(address) for address in addresses)))


# --- publish, versions, assign ------------------------------------------------


async def publish(address: str, catalog: Catalog,
                  only: Sequence[str] | None = None) -> HostRecord:
    """Host init: publish a catalog's versions (or ``only`` those) and contents."""
    chosen = catalog.only(only) if only else catalog
    async with open_host(address) as store:
        return await store.publish(chosen.profiles)


class NothingHonouredError(VhostCompatError):
    """Verified publishing found no profile the running backend honours (exit 1)."""

    exit_status = 1

    def __init__(self, address: str, verification: Verification) -> None:
        self.verification = verification
        reasons = "; ".join(f"{entry.version}: {', '.join(entry.missing)}"
                            for entry in verification.dropped)
        super().__init__(f"host {address}: the running backend honours none of the "
                         f"profiles, nothing published ({reasons})")


async def publish_verified(address: str, catalog: Catalog, only: Sequence[str] | None,
                           offer: CompatProfile) -> tuple[HostRecord, Verification]:
    """Publish only the profiles ``offer`` (what the running backend offers) honours.

    Nothing is written when none is honoured (:class:`NothingHonouredError`).
    """
    chosen = catalog.only(only) if only else catalog
    verification = verify(chosen.profiles, offer)
    if not verification.published:
        raise NothingHonouredError(address, verification)
    async with open_host(address) as store:
        return await store.publish(verification.published), verification


@dataclass(frozen=True)
class VersionsReport:
    hosts: tuple[HostRecord, ...]

    def to_json(self) -> JsonObject:
        return {"hosts": [{"host": host.address, "versions": list(host.versions)}
                          for host in self.hosts]}

    def lines(self) -> list[str]:
        return [f"{host.address}: {', '.join(host.versions) or '(nothing published)'}"
                for host in self.hosts]


async def versions(addresses: Sequence[str]) -> VersionsReport:
    return VersionsReport(tuple(await read_hosts(addresses)))


async def assign(address: str, interface: str, version: str) -> None:
    """Write an interface's compatibility mode into one host's store."""
    async with open_host(address) as store:
        await store.assign(interface, version)


# --- selection and provisioning ----------------------------------------------


@dataclass(frozen=True)
class SelectionReport:
    hosts: tuple[str, ...]
    selection: Selection
    machine_type: str | None = None
    """The newest q35 machine type of the selected version (every host has it: each
    publishes or satisfies the version, machine types included); None when the
    version names no machine types."""

    def to_json(self) -> JsonObject:
        selection = self.selection
        return {"version": selection.version, "pinned": selection.pinned,
                "hosts": list(self.hosts), "candidates": list(selection.candidates),
                "lacking": {host: list(missing) for host, missing in selection.lacking},
                "reasons": list(selection.reasons), "machine_type": self.machine_type}

    def lines(self) -> list[str]:
        if self.selection.version is not None:
            return [self.selection.version, *([f"machine type: {self.machine_type}"]
                                              if self.machine_type else [])]
        return [("pinned version refused" if self.selection.pinned else "no common version"),
                *(f"  {reason}" for reason in self.selection.reasons)]


def published_profiles(host: HostRecord) -> list[CompatProfile]:
    """A host's published profiles, in its preference order."""
    return [profile for version in host.versions
            if (profile := host.profile(version)) is not None]


async def select(addresses: Sequence[str], prefer: str | None = None) -> SelectionReport:
    """The first version every host publishes or satisfies by content (or the pinned one)."""
    hosts = await read_hosts(addresses)
    selection = select_version({host.address: host.versions for host in hosts}, prefer,
                               profiles={host.address: published_profiles(host)
                                         for host in hosts})
    machine_type = None
    if selection.version is not None:
        content = next((profile for host in hosts
                        if (profile := host.profile(selection.version)) is not None), None)
        if content is not None and content.machine_types is not None:
            machine_type = newest_machine_type(content.machine_types)
    return SelectionReport(tuple(addresses), selection, machine_type)


@dataclass(frozen=True)
class BaselineReport:
    """The common profile of several hosts' first published offers."""

    hosts: tuple[str, ...]
    offers: tuple[str, ...]
    baseline: Baseline

    def to_json(self) -> JsonObject:
        return {"hosts": list(self.hosts), "offers": list(self.offers),
                "profile": profile_to_mapping(self.baseline.profile),
                "machine_type": self.baseline.machine_type,
                "notes": list(self.baseline.notes)}

    def lines(self) -> list[str]:
        comments = [f"baseline of {host} ({offer})"
                    for host, offer in zip(self.hosts, self.offers, strict=True)]
        if self.baseline.machine_type is not None:
            comments.append(f"newest common machine type: {self.baseline.machine_type}")
        comments.extend(self.baseline.notes)
        return catalog_entry_text(self.baseline.profile, comments).splitlines()


async def baseline(addresses: Sequence[str], version: str,
                   description: str = "") -> BaselineReport:
    """The intersection of the hosts' offers (each host's first published profile)."""
    hosts = await read_hosts(addresses)
    offers: list[tuple[str, CompatProfile]] = []
    for host in hosts:
        profiles = published_profiles(host)
        if not profiles:
            raise NotPublishedError(host.address, "publishes no profile contents to "
                                    "compute a baseline from")
        offers.append((host.address, profiles[0]))
    common = baseline_profile(version, offers, description)
    return BaselineReport(tuple(addresses), tuple(profile.version for _h, profile in offers),
                          common)


@dataclass(frozen=True)
class ProvisionReport:
    interface: str
    selection: SelectionReport

    def to_json(self) -> JsonObject:
        return {"interface": self.interface, **self.selection.to_json(),
                "assigned": list(self.selection.hosts) if self.selection.selection.found
                else []}

    def lines(self) -> list[str]:
        version = self.selection.selection.version
        if version is None:
            return self.selection.lines()
        return [f"{self.interface}: {version} assigned on {host}"
                for host in self.selection.hosts]


async def provision(addresses: Sequence[str], interface: str,
                    prefer: str | None = None) -> ProvisionReport:
    """Select for every host the VM may run on, then assign on each of them.

    A host that supports the version by content only (it does not publish
    it) publishes it first, after its own versions, so that it can be assigned.
    """
    hosts = await read_hosts(addresses)
    report = await select(addresses, prefer)
    version = report.selection.version
    if version is not None:
        content = next(profile for host in hosts
                       if (profile := host.profile(version)) is not None)
        await asyncio.gather(*(_publish_also(host, content) for host in hosts
                               if version not in host.versions))
        await asyncio.gather(*(assign(address, interface, version) for address in addresses))
    return ProvisionReport(interface, report)


async def _publish_also(host: HostRecord, profile: CompatProfile) -> None:
    unknown = [version for version in host.versions if host.profile(version) is None]
    if unknown:
        raise NotPublishedError(host.address, f"cannot add {profile.version} to its "
                                f"versions: no contents published for {', '.join(unknown)}")
    async with open_host(host.address) as store:
        await store.publish([*published_profiles(host), profile])


# --- migration checks ---------------------------------------------------------


def required_profile(version: str, source: HostRecord | None,
                     catalog: Catalog | None) -> CompatProfile | None:
    """A version's contents: as the source publishes them, else from the catalog."""
    published = source.profile(version) if source is not None else None
    if published is not None:
        return published
    return catalog.find(version) if catalog is not None else None


def _check_json(check: DestinationCheck) -> JsonObject:
    return {"compatible": check.compatible, "verdict": check.verdict.value,
            "version": check.version, "destination_version": check.destination_version,
            "reasons": list(check.reasons),
            "shortfalls": [{"key": shortfall.key, "rule": shortfall.rule.value,
                            "missing": list(shortfall.missing), "reason": shortfall.reason}
                           for shortfall in check.shortfalls]}


@dataclass(frozen=True)
class MigrationReport:
    interface: str
    source: str
    destination: str
    check: DestinationCheck
    notes: tuple[str, ...] = ()
    ovs_status_disagreements: tuple[str, ...] = ()  # OVS's Interface status vs the proxy's

    @property
    def compatible(self) -> bool:
        return self.check.compatible

    def to_json(self) -> JsonObject:
        return {"interface": self.interface, "from": self.source, "to": self.destination,
                **_check_json(self.check), "notes": list(self.notes),
                "ovs_status_disagreements": list(self.ovs_status_disagreements)}

    def lines(self) -> list[str]:
        return [self.check.headline(), *self.check.reasons, *self.notes]


async def check_migration(interface: str, source: str, destination: str,
                          catalog: Catalog | None = None) -> MigrationReport:
    """Can ``interface`` (as recorded on ``source``) live-migrate to ``destination``?"""
    if source == destination:
        raise InputError("source and destination are the same host")
    source_host, destination_host = await read_hosts([source, destination])
    record = source_host.interface(interface)
    if record.version is None:
        raise NotPublishedError(source, f"interface {interface!r} has no "
                                "compatibility version assigned")
    notes: list[str] = []
    if record.version not in source_host.versions:
        notes.append(f"note: the source no longer publishes {record.version}")
    required = required_profile(record.version, source_host, catalog)
    if required is not None and source_host.profile(record.version) is None:
        notes.append(f"note: contents of {record.version} taken from the catalog")
    disagreements = record.disagreements()
    # Where OVS and the proxy disagree, check what either saw (never a false yes).
    notes.extend(f"note: {line}; checking against both" for line in disagreements)
    check = check_destination(record.version, required, destination_host.versions,
                              destination_host.profiles, record.effective_negotiated())
    return MigrationReport(interface, source, destination, check, tuple(notes),
                           disagreements)


# --- matrix ---------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixCell:
    source: str
    destination: str
    check: DestinationCheck | None  # None: the source does not publish the version

    @property
    def symbol(self) -> str:
        if self.check is None:
            return "n/a"
        return {Verdict.COMPATIBLE: "yes", Verdict.COMPATIBLE_BY_CONTENT: "content",
                Verdict.INCOMPATIBLE: "no"}[self.check.verdict]

    @property
    def compatible(self) -> bool:
        return self.check is not None and self.check.compatible


@dataclass(frozen=True)
class MatrixReport:
    version: str
    hosts: tuple[str, ...]
    cells: tuple[MatrixCell, ...]

    @property
    def all_compatible(self) -> bool:
        """Every pair whose source runs such a VM can move it (and there is one)."""
        applicable = [cell for cell in self.cells if cell.check is not None]
        return bool(applicable) and all(cell.compatible for cell in applicable)

    def cell(self, source: str, destination: str) -> MatrixCell:
        for cell in self.cells:
            if (cell.source, cell.destination) == (source, destination):
                return cell
        raise KeyError((source, destination))

    def to_json(self) -> JsonObject:
        pairs: list[JsonObject] = []
        for cell in self.cells:
            entry: JsonObject = {"from": cell.source, "to": cell.destination,
                                 "compatible": cell.compatible, "status": cell.symbol}
            if cell.check is not None:
                entry.update(verdict=cell.check.verdict.value,
                             reasons=list(cell.check.reasons))
            else:
                entry.update(verdict=None, reasons=[
                    f"{cell.source} does not publish {self.version}: no such VM runs there"])
            pairs.append(entry)
        return {"version": self.version, "hosts": list(self.hosts), "pairs": pairs,
                "all_compatible": self.all_compatible}

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and rows: one row per source, one column per destination."""
        headers = ["from \\ to", *self.hosts]
        rows = [[source, *("-" if source == destination
                           else self.cell(source, destination).symbol
                           for destination in self.hosts)]
                for source in self.hosts]
        return headers, rows


async def matrix(addresses: Sequence[str], version: str,
                 catalog: Catalog | None = None) -> MatrixReport:
    """For every ordered pair of hosts: can a VM of ``version`` move from one to the other?

    A pair can exchange such a VM when the source publishes the version (else
    no such VM runs there: ``n/a``) and the destination takes it, by version
    or by content. ``all_compatible``: no applicable pair answers no.
    """
    hosts = await read_hosts(addresses)
    cells: list[MatrixCell] = []
    for source in hosts:
        for destination in hosts:
            if source is destination:
                continue
            if version not in source.versions:
                cells.append(MatrixCell(source.address, destination.address, None))
                continue
            required = required_profile(version, source, catalog)
            check = check_destination(version, required, destination.versions,
                                      destination.profiles)
            cells.append(MatrixCell(source.address, destination.address, check))
    return MatrixReport(version, tuple(addresses), tuple(cells))
