"""Verbs on hosts' published data: ``publish``, ``assign``, ``versions``, ``select``, ``baseline``.

Each verb gathers records from a :class:`~vhostcompat.manager.sources.RecordSource`
and computes with the pure functions of :mod:`vhostcompat.profiles`; the
``*_from_records`` functions are that computation alone (what another
record source reuses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vhostcompat.errors import InputError, UnknownVersionError, VhostCompatError
from vhostcompat.hoststore import HostRecord, NotPublishedError, open_host
from vhostcompat.manager.sources import (
    Gathered,
    HostFailure,
    HostStores,
    ProgressCallback,
    RecordSource,
)
from vhostcompat.profiles import (
    Catalog,
    CompatProfile,
    Selection,
    profile_to_mapping,
    select_version,
)
from vhostcompat.profiles.baseline import Baseline, baseline_profile, newest_machine_type
from vhostcompat.profiles.catalog import catalog_entry_text
from vhostcompat.profiles.model import VERSION_PATTERN

if TYPE_CHECKING:  # verify (and the vhost-user codec under it) only for verified publishing
    from vhostcompat.verify import Verification

JsonObject = dict[str, object]


def default_source(source: RecordSource | None) -> RecordSource:
    return HostStores() if source is None else source


async def read_host(address: str) -> HostRecord:
    """One host's record, straight from its store (errors raised as they are)."""
    async with open_host(address) as store:
        return await store.read()


async def read_hosts(addresses: Sequence[str], *, records: RecordSource | None = None,
                     what: str = "reading hosts") -> list[HostRecord]:
    """Every host's record, in the order given; :class:`FleetError` if any failed."""
    gathered = await default_source(records).gather(addresses)
    return gathered.require_all(what)


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
    from vhostcompat.verify import verify  # noqa: PLC0415  (see the imports)

    chosen = catalog.only(only) if only else catalog
    verification = verify(chosen.profiles, offer)
    if not verification.published:
        raise NothingHonouredError(address, verification)
    async with open_host(address) as store:
        return await store.publish(verification.published), verification


async def assign(address: str, interface: str, version: str) -> None:
    """Write an interface's compatibility mode into one host's store."""
    async with open_host(address) as store:
        await store.assign(interface, version)


def failures_json(failures: Sequence[HostFailure]) -> list[dict[str, str]]:
    return [failure.to_json() for failure in failures]


@dataclass(frozen=True)
class VersionsReport:
    """Each host's published versions; hosts that could not be read, with their reason."""

    hosts: tuple[HostRecord, ...]
    failures: tuple[HostFailure, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.failures

    def to_json(self) -> JsonObject:
        return {"hosts": [{"host": host.address, "versions": list(host.versions)}
                          for host in self.hosts],
                "unreachable": failures_json(self.failures)}

    def lines(self) -> list[str]:
        return [f"{host.address}: {', '.join(host.versions) or '(nothing published)'}"
                for host in self.hosts]


async def versions(addresses: Sequence[str], *, records: RecordSource | None = None,
                   progress: ProgressCallback | None = None) -> VersionsReport:
    """Each host's versions; a host that cannot be read is listed with its reason."""
    gathered = await default_source(records).gather(addresses, progress, interfaces=False)
    return VersionsReport(tuple(gathered.records[address] for address in gathered.addresses
                                if address in gathered.records),
                          tuple(gathered.failure_list()))


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


def version_contents(hosts: Sequence[HostRecord], version: str) -> CompatProfile | None:
    """A version's contents as the first host publishing them has them."""
    return next((profile for host in hosts
                 if (profile := host.profile(version)) is not None), None)


def require_known(version: str, hosts: Sequence[HostRecord], catalog: Catalog | None) -> None:
    """Refuse a version string no host publishes and no catalog defines."""
    if not VERSION_PATTERN.fullmatch(version):
        raise InputError(f"invalid version string {version!r}")
    if any(version in host.versions for host in hosts):
        return
    if catalog is not None and catalog.find(version) is not None:
        return
    raise UnknownVersionError(f"unknown version {version!r}: no host publishes it"
                              + (" and no catalog defines it" if catalog is not None else ""))


def select_from_records(hosts: Sequence[HostRecord],
                        prefer: str | None = None) -> SelectionReport:
    """The first version every host publishes or satisfies by content (or the pinned one).

    A pinned version no host publishes is :class:`UnknownVersionError` (exit 2):
    nobody can support it, by name or by content.
    """
    if prefer is not None:
        require_known(prefer, hosts, None)
    selection = select_version({host.address: host.versions for host in hosts}, prefer,
                               profiles={host.address: published_profiles(host)
                                         for host in hosts})
    machine_type = None
    if selection.version is not None:
        content = version_contents(hosts, selection.version)
        if content is not None and content.machine_types is not None:
            machine_type = newest_machine_type(content.machine_types)
    return SelectionReport(tuple(host.address for host in hosts), selection, machine_type)


async def select(addresses: Sequence[str], prefer: str | None = None, *,
                 records: RecordSource | None = None,
                 progress: ProgressCallback | None = None) -> SelectionReport:
    """Select for every host a VM may run on; :class:`FleetError` if one cannot be read."""
    gathered = await default_source(records).gather(addresses, progress, interfaces=False)
    return select_from_records(gathered.require_all("select"), prefer)


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


async def baseline(addresses: Sequence[str], version: str, description: str = "", *,
                   records: RecordSource | None = None,
                   progress: ProgressCallback | None = None) -> BaselineReport:
    """The intersection of the hosts' offers (each host's first published profile)."""
    gathered: Gathered = await default_source(records).gather(addresses, progress,
                                                              interfaces=False)
    hosts = gathered.require_all("baseline")
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
