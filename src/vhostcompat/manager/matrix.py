"""``matrix``: which ordered host pairs can exchange VMs, and the migration domains.

A cell ``source -> destination`` answers "can a VM running on the source in
version V move to the destination?" with the static verdict of
:func:`vhostcompat.profiles.check_destination` (the mode alone: a matrix is
about VMs of a version, not one running guest):

* ``--version V``: about V only. A source that neither publishes V nor
  satisfies it by content cannot run such a VM: ``n/a``.
* without a version: about *any* version the source supports: the first
  version in the source's preference order that the destination takes names
  the cell; ``no`` when it takes none of them.

A *migration domain* is a maximal group of hosts in which every ordered pair
works for one version they all share (so one VM, provisioned once in that
version, can go anywhere in the group). Computed per version as the maximal
cliques (Bron-Kerbosch with pivoting) of the mutual-compatibility graph
(hosts joined when both directions are yes for that version); without
``--version``, the groups of every version, keeping only those no other group
contains. Connected components would be wrong: A<->B and B<->C does not make
A->C work. Domains have at least two hosts; a host that can exchange with
nobody is listed as isolated; a host that could not be read is in no domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.hoststore import HostRecord
from vhostcompat.manager.hosts import (
    JsonObject,
    default_source,
    failures_json,
    published_profiles,
    require_known,
    version_contents,
)
from vhostcompat.manager.migration import required_profile
from vhostcompat.manager.sources import HostFailure, ProgressCallback, RecordSource
from vhostcompat.profiles import (
    Catalog,
    CompatProfile,
    DestinationCheck,
    Verdict,
    check_destination,
    compare_profiles,
)

SYMBOLS = {Verdict.COMPATIBLE: "yes", Verdict.COMPATIBLE_BY_CONTENT: "content",
           Verdict.COMPATIBLE_FOR_RUNNING_GUEST: "guest", Verdict.INCOMPATIBLE: "no",
           Verdict.UNKNOWN: "unknown"}
NOT_APPLICABLE, UNREACHABLE = "n/a", "unreachable"
LEGEND = ("yes: publishes the version; content: a profile satisfies it by content; "
          "no: neither; n/a: the source does not run it; unknown: its contents are "
          "known nowhere; unreachable: a host could not be read")


@dataclass(frozen=True)
class MatrixCell:
    source: str
    destination: str
    check: DestinationCheck | None
    """None: not applicable (the source does not run the version) or unreachable."""
    version: str | None = None
    """The version the cell is about (without --version: the first that works)."""
    unreachable: bool = False

    @property
    def symbol(self) -> str:
        if self.unreachable:
            return UNREACHABLE
        if self.check is None:
            return NOT_APPLICABLE
        return SYMBOLS[self.check.verdict]

    @property
    def compatible(self) -> bool:
        return self.check is not None and self.check.compatible


@dataclass(frozen=True)
class Domain:
    """Hosts that can all exchange VMs of each of ``versions``."""

    hosts: tuple[str, ...]
    versions: tuple[str, ...]

    def to_json(self) -> JsonObject:
        return {"hosts": list(self.hosts), "versions": list(self.versions)}


@dataclass(frozen=True)
class MatrixReport:
    version: str | None
    hosts: tuple[str, ...]
    cells: tuple[MatrixCell, ...]
    domains: tuple[Domain, ...] = ()
    failures: tuple[HostFailure, ...] = ()

    @property
    def all_compatible(self) -> bool:
        """Every pair whose source runs such a VM can move it (and there is one)."""
        applicable = [cell for cell in self.cells if cell.symbol != NOT_APPLICABLE]
        return bool(applicable) and all(cell.compatible for cell in applicable)

    @property
    def exit_status(self) -> int:
        """2 if a host could not be read or a verdict is unknown, 0 if all pairs work, 1."""
        if self.failures or any(cell.symbol == "unknown" for cell in self.cells):
            return 2
        return 0 if self.all_compatible else 1

    @property
    def isolated(self) -> tuple[str, ...]:
        members = {host for domain in self.domains for host in domain.hosts}
        unreachable = {failure.address for failure in self.failures}
        return tuple(host for host in self.hosts
                     if host not in members and host not in unreachable)

    def cell(self, source: str, destination: str) -> MatrixCell:
        for cell in self.cells:
            if (cell.source, cell.destination) == (source, destination):
                return cell
        raise KeyError((source, destination))

    def to_json(self) -> JsonObject:
        pairs: list[JsonObject] = []
        for cell in self.cells:
            entry: JsonObject = {"from": cell.source, "to": cell.destination,
                                 "compatible": cell.compatible, "status": cell.symbol,
                                 "version": cell.version}
            if cell.check is not None:
                entry.update(verdict=cell.check.verdict.value,
                             reasons=list(cell.check.reasons))
            elif cell.unreachable:
                entry.update(verdict=UNREACHABLE, reasons=[
                    failure.reason for failure in self.failures
                    if failure.address in (cell.source, cell.destination)])
            else:
                entry.update(verdict=None, reasons=[
                    f"{cell.source} does not run {self.version}: no such VM runs there"])
            pairs.append(entry)
        return {"version": self.version, "hosts": list(self.hosts), "pairs": pairs,
                "all_compatible": self.all_compatible,
                "domains": [domain.to_json() for domain in self.domains],
                "isolated": list(self.isolated), "unreachable": failures_json(self.failures)}

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and rows: one row per source, one column per destination."""
        headers = ["from \\ to", *self.hosts]
        rows = [[source, *("-" if source == destination
                           else self.cell(source, destination).symbol
                           for destination in self.hosts)]
                for source in self.hosts]
        return headers, rows

    def summary_lines(self) -> list[str]:
        lines = [LEGEND]
        for number, domain in enumerate(self.domains, 1):
            lines.append(f"domain {number} ({', '.join(domain.versions)}): "
                         f"{', '.join(domain.hosts)}")
        if not self.domains:
            lines.append("no migration domain: no two hosts can exchange VMs both ways")
        if self.isolated:
            lines.append(f"isolated (can exchange with nobody): {', '.join(self.isolated)}")
        return lines


def supports(host: HostRecord, version: str, contents: CompatProfile | None) -> bool:
    """Whether a host publishes ``version`` or satisfies its contents by content."""
    if version in host.versions:
        return True
    return contents is not None and any(
        not compare_profiles(contents, profile) for profile in published_profiles(host))


def matrix_from_records(addresses: Sequence[str], records: Mapping[str, HostRecord],
                        failures: Sequence[HostFailure] = (), version: str | None = None,
                        catalog: Catalog | None = None) -> MatrixReport:
    """The matrix and domains over the hosts that could be read (pure)."""
    hosts = [records[address] for address in addresses if address in records]
    if version is not None and not failures:
        require_known(version, hosts, catalog)
    versions = [version] if version is not None else list(dict.fromkeys(
        name for host in hosts for name in host.versions))
    # As selection does: a host runs a version it publishes, or one whose contents some
    # host publishes and one of its own profiles satisfies (provision publishes it there).
    published = {name: version_contents(hosts, name) for name in versions}
    contents = {name: published[name] or (catalog.find(name) if catalog else None)
                for name in versions}
    runs = {name: {host.address for host in hosts if supports(host, name, published[name])}
            for name in versions}
    checks: dict[tuple[str, str, str], DestinationCheck] = {}
    # Hosts of a fleet share profiles (the fleet's are content-addressed: one object per
    # contents): a verdict depends only on what is compared, so each is computed once.
    verdicts: dict[tuple[object, ...], DestinationCheck] = {}
    compared = {host.address: (host.versions, *map(id, host.profiles.values()))
                for host in hosts}
    for name in versions:
        for source in hosts:
            if source.address not in runs[name]:
                continue
            required = required_profile(name, source, catalog) or contents[name]
            for destination in hosts:
                if destination is not source:
                    key = (name, id(required), compared[destination.address])
                    check = verdicts.get(key)
                    if check is None:
                        check = verdicts[key] = check_destination(
                            name, required, destination.versions, destination.profiles)
                    checks[(name, source.address, destination.address)] = check
    cells: list[MatrixCell] = []
    for source_address in addresses:
        preference = _preference(records.get(source_address), versions)
        for destination_address in addresses:
            if source_address == destination_address:
                continue
            cells.append(_cell(source_address, destination_address, records, checks,
                               preference))
    domains = migration_domains(addresses, versions, checks)
    return MatrixReport(version, tuple(addresses), tuple(cells), domains, tuple(failures))


def _preference(source: HostRecord | None, versions: Sequence[str]) -> list[str]:
    """The versions in the source's order, then the others (computed once per source)."""
    if source is None:
        return []
    return [*source.versions, *(name for name in versions if name not in source.versions)]


def _cell(source: str, destination: str, records: Mapping[str, HostRecord],
          checks: Mapping[tuple[str, str, str], DestinationCheck],
          preference: Sequence[str]) -> MatrixCell:
    if source not in records or destination not in records:
        return MatrixCell(source, destination, None, unreachable=True)
    found = [(name, check) for name in preference
             if (check := checks.get((name, source, destination))) is not None]
    for name, check in found:
        if check.compatible:
            return MatrixCell(source, destination, check, name)
    if found:
        return MatrixCell(source, destination, found[0][1], found[0][0])
    return MatrixCell(source, destination, None)


def migration_domains(addresses: Sequence[str], versions: Sequence[str],
                      checks: Mapping[tuple[str, str, str], DestinationCheck],
                      ) -> tuple[Domain, ...]:
    """Maximal groups (two hosts or more) where every ordered pair works for one version."""
    groups: dict[frozenset[str], list[str]] = {}
    for name in versions:
        adjacent: dict[str, set[str]] = {address: set() for address in addresses}
        for (version, source, destination), check in checks.items():
            if version != name or not check.compatible:
                continue
            back = checks.get((name, destination, source))
            if back is not None and back.compatible:
                adjacent[source].add(destination)
        nodes = [address for address in addresses if adjacent[address]]
        for clique in maximal_cliques(nodes, adjacent):
            groups.setdefault(clique, []).append(name)
    kept = [group for group in groups if not any(group < other for other in groups)]
    order = {address: index for index, address in enumerate(addresses)}
    kept.sort(key=lambda group: (-len(group), min(order[host] for host in group)))
    return tuple(Domain(tuple(sorted(group, key=order.__getitem__)), tuple(groups[group]))
                 for group in kept)


def maximal_cliques(nodes: Iterable[str],
                    adjacent: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """Every maximal clique of an undirected graph (Bron-Kerbosch with pivoting).

    Twins (nodes with the same closed neighbourhood: hosts of one configuration in a
    fleet) are always in the same maximal cliques: one of each stands for all of them,
    so a fleet of a few configurations is a graph of a few nodes."""
    twins: dict[frozenset[str], list[str]] = {}
    for node in nodes:
        twins.setdefault(frozenset(adjacent[node] | {node}), []).append(node)
    if all(len(members) == 1 for members in twins.values()):
        return _bron_kerbosch([members[0] for members in twins.values()], adjacent)
    standing = {members[0]: members for members in twins.values()}
    reduced = {node: {other for other in adjacent[node] if other in standing}
               for node in standing}
    return [frozenset(member for node in clique for member in standing[node])
            for clique in _bron_kerbosch(list(standing), reduced, keep_single=True)
            if sum(len(standing[node]) for node in clique) > 1]


def _bron_kerbosch(nodes: Iterable[str], adjacent: Mapping[str, set[str]],
                   keep_single: bool = False) -> list[frozenset[str]]:
    found: list[frozenset[str]] = []
    # An explicit stack: a fleet-sized clique would otherwise recurse once per member.
    stack: list[tuple[frozenset[str], set[str], set[str]]] = [
        (frozenset(), set(nodes), set())]
    while stack:
        clique, candidates, excluded = stack.pop()
        if not candidates and not excluded:
            if len(clique) > 1 or (keep_single and clique):
                found.append(clique)
            continue
        pivot = max(candidates | excluded, key=lambda node: len(adjacent[node] & candidates))
        for node in sorted(candidates - adjacent[pivot]):
            stack.append((clique | {node}, candidates & adjacent[node],
                          excluded & adjacent[node]))
            candidates = candidates - {node}
            excluded = excluded | {node}
    return found


async def matrix(addresses: Sequence[str], version: str | None = None,
                 catalog: Catalog | None = None, *, records: RecordSource | None = None,
                 progress: ProgressCallback | None = None) -> MatrixReport:
    """Ask every host (concurrently), then :func:`matrix_from_records`."""
    gathered = await default_source(records).gather(addresses, progress)
    return matrix_from_records(gathered.addresses, gathered.records, gathered.failure_list(),
                               version, catalog)
