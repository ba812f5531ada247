"""Provisioning through the fleet database: each chosen mode where the host's agent acts.

The manager plans (:mod:`vhostcompat.manager.provision`: one conditional
:class:`~vhostcompat.hoststore.ModeWrite` per host) and the fleet record
source carries the writes here: :func:`write_modes` writes the interface
records of **every host of the call in one transaction** (``Interface``:
``mode``, ``provision`` = the run's id; for a host that supports the version
by content only, its ``Host`` row's versions and profiles too). Each host's
agent monitors its own records (``monitor_cond`` on ``host``) and applies the
mode in its host's database, where its reconciler acts on it.

Why here rather than in each host's own database: one transaction is
all-or-nothing for every host in it (a leader lost mid-way leaves no host
half-provisioned) and costs one round trip instead of N connections (README,
"Fleet", measured with ``bench.bench_fleet``).

Each write is decided by :func:`vhostcompat.hoststore.model.apply_mode_write`,
the very check a host's own store makes (the mode and provisioning id read
must still be there, the version must be published), and committed with a
``wait`` on every row read. Idempotent: the operation reads first, so after
a lost connection (a leader killed under the commit) a host whose record
already holds the wanted mode and id is reported written, never written twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.errors import VhostCompatError
from vhostcompat.fleet.records import ranked_versions
from vhostcompat.fleet.registry import profile_digest, profile_operations, profile_selects
from vhostcompat.fleet.schema import HOST_TABLE, INTERFACE_TABLE
from vhostcompat.fleet.session import FleetSession
from vhostcompat.hoststore.model import (
    INTERFACE_VERSION_KEY,
    PROVISION_ID_KEY,
    VERSIONS_KEY,
    HostStoreConflictError,
    ModeWrite,
    NotPublishedError,
    apply_mode_write,
    check_interface_name,
)
from vhostcompat.ovsdb import (
    Insert,
    NamedUuid,
    OvsdbClient,
    OvsdbConflictError,
    Select,
    Update,
    Uuid,
    Wait,
)
from vhostcompat.ovsdb.operations import DecodedRow, Operation
from vhostcompat.ovsdb.values import Value

Outcomes = dict[str, VhostCompatError | None]
BeforeWrite = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class _Read:
    host: DecodedRow | None
    interface: DecodedRow | None


async def write_modes(session: FleetSession, changes: Mapping[str, ModeWrite],
                      before_write: BeforeWrite | None = None) -> Outcomes:
    """Write every host's change in one transaction: host -> None (written) or its error."""
    if not changes:
        return {}
    for change in changes.values():
        check_interface_name(change.interface)

    async def operation(client: OvsdbClient) -> Outcomes:
        return await _write_once(client, changes, before_write)

    return await session.run(operation, f"provisioning {len(changes)} hosts")


async def _write_once(client: OvsdbClient, changes: Mapping[str, ModeWrite],
                      before_write: BeforeWrite | None) -> Outcomes:
    hosts = list(changes)
    wanted_profiles = {profile_digest(profile): profile for change in changes.values()
                       for profile in change.publish or ()}
    digests = sorted(wanted_profiles)
    results = await client.transact(
        *(Select(HOST_TABLE, [("name", "==", host)], ["_uuid", "versions"]) for host in hosts),
        *(Select(INTERFACE_TABLE, [("host", "==", host), ("name", "==", changes[host].interface)],
                 ["_uuid", "mode", "provision"]) for host in hosts),
        *profile_selects(digests))
    count = len(hosts)
    reads = {host: _Read(_first(results[index]["rows"]), _first(results[count + index]["rows"]))
             for index, host in enumerate(hosts)}
    found = {digest: result["rows"] for digest, result in
             zip(digests, results[2 * count:], strict=True)}
    outcomes: Outcomes = {}
    pending: list[str] = []
    for host in hosts:
        change, read = changes[host], reads[host]
        if _mode_state(read.interface) == (change.wanted.mode, change.wanted.provision_id):
            outcomes[host] = None  # committed before a lost connection: not written again
            continue
        try:
            _decide(host, change, read)
        except VhostCompatError as error:
            return _refused(hosts, outcomes, host, error)
        pending.append(host)
    if not pending:
        return outcomes
    operations, references = profile_operations(wanted_profiles, found)
    owners: list[tuple[int, str]] = []  # (first operation index, host) to name a conflict
    for host in pending:
        owners.append((len(operations), host))
        operations.extend(_host_operations(host, changes[host], reads[host], references))
    if before_write is not None:
        await before_write()
    try:
        await client.transact(*operations)
    except OvsdbConflictError as error:
        index = error.index or 0
        host = next((name for start, name in reversed(owners) if start <= index), pending[0])
        return _refused(hosts, outcomes, host, HostStoreConflictError(
            host, f"interface {changes[host].interface}'s fleet record or versions"))
    outcomes.update(dict.fromkeys(pending))
    return outcomes


def _first(rows: list[DecodedRow]) -> DecodedRow | None:
    return rows[0] if rows else None


def _optional(value: object) -> str | None:
    return str(next(iter(value))) if isinstance(value, frozenset) and value else None


def _mode_state(row: DecodedRow | None) -> tuple[str | None, str | None]:
    return (None, None) if row is None else (_optional(row["mode"]),
                                             _optional(row["provision"]))


def _decide(host: str, change: ModeWrite, read: _Read) -> None:
    """The host store's own check, on the fleet's rows (raises what it would raise)."""
    if read.host is None:
        raise NotPublishedError(host, "is not registered in the fleet")
    mode, provision = _mode_state(read.interface)
    options = {key: value for key, value in ((INTERFACE_VERSION_KEY, mode),
                                             (PROVISION_ID_KEY, provision)) if value}
    versions = ",".join(ranked_versions(read.host["versions"]))
    apply_mode_write(host, change, {VERSIONS_KEY: versions}, options)


def _refused(hosts: Sequence[str], outcomes: Outcomes, host: str,
             error: VhostCompatError) -> Outcomes:
    """One host refused: nothing of this call is written; the others say so."""
    for other in hosts:
        if other not in outcomes:
            outcomes[other] = error if other == host else HostStoreConflictError(
                other, f"not written: {host} refused the provisioning ({error})")
    return outcomes


def _host_operations(host: str, change: ModeWrite, read: _Read,
                     references: Mapping[str, Uuid | NamedUuid]) -> list[Operation]:
    assert read.host is not None
    host_uuid = read.host["_uuid"]
    assert isinstance(host_uuid, Uuid)
    by_uuid = [("_uuid", "==", host_uuid)]
    operations: list[Operation] = [Wait(HOST_TABLE, by_uuid, ["versions"],
                                        [{"versions": read.host["versions"]}])]
    if change.publish is not None:
        operations.append(Update(HOST_TABLE, by_uuid, {
            "versions": dict(enumerate(profile.version for profile in change.publish)),
            "profiles": frozenset(references[profile_digest(profile)]
                                  for profile in change.publish)}))
    values: dict[str, Value] = {
        "mode": frozenset({change.wanted.mode} if change.wanted.mode else ()),
        "provision": frozenset({change.wanted.provision_id} if change.wanted.provision_id
                               else ())}
    where = [("host", "==", host), ("name", "==", change.interface)]
    if read.interface is None:
        operations += [Wait(INTERFACE_TABLE, where, ["name"], []),
                       Insert(INTERFACE_TABLE, {"host": host, "name": change.interface,
                                                **values})]
        return operations
    row_uuid = read.interface["_uuid"]
    assert isinstance(row_uuid, Uuid)
    row_where = [("_uuid", "==", row_uuid)]
    operations += [Wait(INTERFACE_TABLE, row_where, ["mode", "provision"],
                        [{"mode": read.interface["mode"],
                          "provision": read.interface["provision"]}]),
                   Update(INTERFACE_TABLE, row_where, values)]
    return operations


async def read_modes(session: FleetSession, interface: str, hosts: Sequence[str]
                     ) -> dict[str, tuple[str | None, str | None]]:
    """host -> (mode, provision id) of one interface's records ((None, None) where absent)."""
    async def read(client: OvsdbClient) -> dict[str, tuple[str | None, str | None]]:
        results = await client.transact(*(Select(
            INTERFACE_TABLE, [("host", "==", host), ("name", "==", interface)],
            ["mode", "provision"]) for host in hosts))
        return {host: _mode_state(_first(result["rows"]))
                for host, result in zip(hosts, results, strict=True)}

    return await session.read(read, f"reading {interface} on {len(hosts)} hosts")
