"""What managers read from the fleet database: host records by fleet name, in one read.

:func:`read_fleet` answers for N named hosts with one transaction (a
``select`` of each named ``Host`` row, or of the whole table when many are
named: measured 0.15 s for 1,000 rows in one ``select`` against 0.49 s for
1,000 ``select``\\ s by name), a second for the ``Profile`` rows those hosts
reference (content-addressed, so a few), and the interface records a
command asks for. It never opens a host's own database.

The hosts come back as :class:`~vhostcompat.hoststore.HostRecord`\\ s whose
``address`` is the fleet name, so the manager's pure computation runs on
them unchanged. A host whose heartbeat is older than ``stale_after`` seconds
(default 30: three missed beats of the agent's 10 s) is **stale**: its
record carries no versions and no profiles (so nothing can select it or
migrate to it), and :meth:`FleetView.reasons` says, by name, how stale it is.
Every value read is checked as a host's own store checks it (a corrupt row
is an error naming the host, never a traceback).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.errors import InputError
from vhostcompat.fleet.errors import FleetStaleHostError
from vhostcompat.fleet.registry import DEFAULT_STALE_AFTER, now_ms
from vhostcompat.fleet.schema import HOST_TABLE, INTERFACE_TABLE, PROFILE_TABLE
from vhostcompat.fleet.session import FleetSession
from vhostcompat.hoststore.model import (
    INTERFACE_VERSION_KEY,
    PROFILE_KEY_PREFIX,
    PROVISION_ID_KEY,
    VERSIONS_KEY,
    HostRecord,
    HostStoreCorruptError,
    decode_profile,
    record_from_rows,
)
from vhostcompat.ovsdb import OvsdbClient, Select, Uuid
from vhostcompat.ovsdb.operations import DecodedRow
from vhostcompat.profiles.model import CompatProfile

WHOLE_TABLE_FROM = 32  # named hosts from which one select of the whole Host table is cheaper
READ_ATTEMPTS = 4


@dataclass(frozen=True)
class FleetHost:
    name: str
    remote: str
    heartbeat_ms: int
    owner: str
    record: HostRecord  # as published (stale or not)

    def age(self, at_ms: int) -> float:
        """Seconds since the last heartbeat (0 for a clock ahead of ours)."""
        return max(at_ms - self.heartbeat_ms, 0) / 1000


@dataclass(frozen=True)
class FleetView:
    """The named hosts as the fleet database holds them, read at ``read_at_ms``."""

    address: str
    hosts: tuple[FleetHost, ...]  # the names the fleet holds, in the order asked
    read_at_ms: int
    stale_after: float
    unknown: tuple[str, ...] = ()  # names no Host row holds

    def stale(self) -> dict[str, float]:
        """Stale host name -> seconds since its heartbeat."""
        return {host.name: host.age(self.read_at_ms) for host in self.hosts
                if host.age(self.read_at_ms) > self.stale_after}

    def stale_errors(self) -> list[FleetStaleHostError]:
        return [FleetStaleHostError(name, age, self.stale_after)
                for name, age in self.stale().items()]

    def records(self) -> list[HostRecord]:
        """The fresh hosts' records, in the order asked."""
        stale = self.stale()
        return [host.record for host in self.hosts if host.name not in stale]


def check_names(names: Sequence[str]) -> None:
    if not names:
        raise InputError("no hosts given")
    if len(set(names)) != len(names):
        raise InputError("a host is given twice")


async def read_fleet(session: FleetSession, names: Sequence[str], *,
                     interfaces: Sequence[str] = (),
                     stale_after: float = DEFAULT_STALE_AFTER) -> FleetView:
    """The named hosts (and their records of these interfaces); see the module docstring.

    Names the fleet does not hold are in :attr:`FleetView.unknown`."""
    check_names(names)

    async def read(client: OvsdbClient) -> FleetView:
        for _ in range(READ_ATTEMPTS):
            view = await _read_once(client, session.address, names, interfaces, stale_after)
            if view is not None:
                return view
        raise HostStoreCorruptError(session.address, "hosts reference Profile rows that "
                                    "do not exist (re-read kept failing)")

    return await session.read(read, f"reading {len(names)} hosts")


async def _read_once(client: OvsdbClient, address: str, names: Sequence[str],
                     interfaces: Sequence[str],
                     stale_after: float) -> FleetView | None:
    if len(names) >= WHOLE_TABLE_FROM:
        selects = [Select(HOST_TABLE, (), None)]
    else:
        selects = [Select(HOST_TABLE, [("name", "==", name)]) for name in names]
    # One select per interface name (every host's record of it), filtered here: the
    # Interface table is never read whole, nor row by row for N hosts.
    interface_selects = [Select(INTERFACE_TABLE, [("name", "==", name)])
                         for name in dict.fromkeys(interfaces)]
    results = await client.transact(*selects, *interface_selects)
    read_at = now_ms()
    rows = {str(row["name"]): row for result in results[:len(selects)]
            for row in result["rows"]}
    known = [name for name in names if name in rows]
    references = sorted({uuid for name in known for uuid in _uuids(rows[name]["profiles"])},
                        key=str)
    profiles: dict[Uuid, CompatProfile] = {}
    if references:
        found = await client.transact(*(Select(PROFILE_TABLE, [("_uuid", "==", uuid)])
                                        for uuid in references))
        for uuid, result in zip(references, found, strict=True):
            if not result["rows"]:
                return None  # a host re-registered between the two reads: read again
            # Decoded once per content, whatever the number of hosts sharing it.
            profiles[uuid] = _profile(address, result["rows"][0])
    wanted = set(known)
    by_host: dict[str, dict[str, tuple[dict[str, str], dict[str, str]]]] = {}
    for result in results[len(selects):]:
        for row in result["rows"]:
            if str(row["host"]) in wanted:
                by_host.setdefault(str(row["host"]), {})[str(row["name"])] = (
                    _options(row), _string_map(row["negotiated"]))
    hosts = tuple(_fleet_host(name, rows[name], profiles, by_host.get(name, {}))
                  for name in known)
    return FleetView(address, hosts, read_at, stale_after,
                     tuple(name for name in names if name not in rows))


def _options(row: DecodedRow) -> dict[str, str]:
    """An interface record as the host store's Interface options (mode, provisioning id)."""
    options = {}
    for column, key in (("mode", INTERFACE_VERSION_KEY), ("provision", PROVISION_ID_KEY)):
        value = row[column]
        if isinstance(value, frozenset) and value:
            options[key] = str(next(iter(value)))
    return options


def ranked_versions(value: object) -> tuple[str, ...]:
    """A ``Host.versions`` map (rank -> version) as the list, most preferred first."""
    assert isinstance(value, dict)  # the schema types it integer -> string
    return tuple(str(value[rank]) for rank in sorted(value, key=lambda rank: int(str(rank))))


def _uuids(value: object) -> list[Uuid]:
    members = value if isinstance(value, frozenset) else frozenset()
    return [member for member in members if isinstance(member, Uuid)]


def _string_map(value: object) -> dict[str, str]:
    assert isinstance(value, dict)  # the schema types it string -> string (checked on read)
    return {str(key): str(item) for key, item in value.items()}


def _profile(name: str, row: DecodedRow) -> CompatProfile:
    version, contents = str(row["version"]), str(row["contents"])
    return decode_profile(name, PROFILE_KEY_PREFIX + version, contents)


def _fleet_host(name: str, row: DecodedRow, profiles: Mapping[Uuid, CompatProfile],
                interfaces: Mapping[str, tuple[dict[str, str], dict[str, str]]]) -> FleetHost:
    """A host's row as the host-store rows :func:`record_from_rows` checks."""
    versions = ranked_versions(row["versions"])
    record = record_from_rows(name, {VERSIONS_KEY: ",".join(versions)}, interfaces)
    published = {profiles[uuid].version: profiles[uuid] for uuid in _uuids(row["profiles"])}
    record = dataclasses.replace(record, profiles=published)
    heartbeat, owner = row["heartbeat"], row["owner"]
    assert isinstance(heartbeat, int) and isinstance(owner, str)
    return FleetHost(name, str(row["remote"]), heartbeat, owner, record)
