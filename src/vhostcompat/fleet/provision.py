"""Provisioning through the fleet database: each chosen mode where the host's agent acts.

The manager selects (pure computation over :mod:`vhostcompat.fleet.records`)
and :func:`write_modes` writes the mode of one interface on every chosen host
into the fleet database's ``Interface`` records, all in **one transaction**:
each row gets ``mode`` (the version), ``profile`` (a reference to its
content-addressed ``Profile`` row, so an agent whose host satisfies the
version by content has the contents) and ``provision`` (this provisioning's
id). Each host's agent monitors its own rows (``monitor_cond``) and applies
the mode in its host's database, where its reconciler acts on it.

Why here rather than in each host's own database: one transaction is
all-or-nothing for every host (a leader lost mid-way leaves no host
half-provisioned), and it costs one round trip instead of N connections
(README, "Fleet": measured with ``bench.bench_fleet``).

Idempotent: the operation first reads the rows; if every one already holds
this provisioning's id and mode, the write was committed before a lost
connection and is reported done, not written again. Otherwise it writes
conditionally: a ``wait`` on every row read (the interface rows' mode and id,
or their absence, and each host's published versions), so nothing another
writer changed is overwritten, and a retry after a leader's loss is exact.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.fleet.errors import FleetError
from vhostcompat.fleet.records import ranked_versions
from vhostcompat.fleet.registry import profile_digest
from vhostcompat.fleet.schema import HOST_TABLE, INTERFACE_TABLE, PROFILE_TABLE
from vhostcompat.fleet.session import FleetSession
from vhostcompat.hoststore.model import check_interface_name
from vhostcompat.ovsdb import Insert, OvsdbClient, OvsdbConflictError, Select, Update, Uuid, Wait
from vhostcompat.ovsdb.operations import DecodedRow, Operation
from vhostcompat.profiles.model import CompatProfile

ATTEMPTS = 4


class FleetConflictError(FleetError):
    """A host's versions or an interface record changed since the selection: nothing written."""


def new_provision_id() -> str:
    return uuid_module.uuid4().hex


@dataclass(frozen=True)
class ModeWrite:
    """Write ``profile``'s version as ``interface``'s mode on ``hosts`` (their versions as
    the selection saw them, in ``versions``)."""

    interface: str
    profile: CompatProfile
    hosts: tuple[str, ...]
    versions: Mapping[str, tuple[str, ...]]
    provision_id: str


async def write_modes(session: FleetSession, write: ModeWrite,
                      before_write: Callable[[], Awaitable[object]] | None = None) -> bool:
    """Write (or find written) the modes; True if this call wrote them, False if found done."""
    check_interface_name(write.interface)

    async def operation(client: OvsdbClient) -> bool:
        for _ in range(ATTEMPTS):
            outcome = await _write_once(client, write, before_write)
            if outcome is not None:
                return outcome
        raise FleetConflictError(f"fleet {session.address}: interface {write.interface} "
                                 "records kept changing under provisioning; nothing written")

    return await session.run(operation, f"provisioning {write.interface} on "
                             f"{len(write.hosts)} hosts")


async def _write_once(client: OvsdbClient, write: ModeWrite,
                      before_write: Callable[[], Awaitable[object]] | None) -> bool | None:
    digest = profile_digest(write.profile)
    results = await client.transact(
        Select(PROFILE_TABLE, [("digest", "==", digest)], ["_uuid"]),
        *(Select(HOST_TABLE, [("name", "==", host)], ["_uuid", "versions"])
          for host in write.hosts),
        *(Select(INTERFACE_TABLE, [("host", "==", host), ("name", "==", write.interface)],
                 ["_uuid", "mode", "provision"]) for host in write.hosts))
    count = len(write.hosts)
    profile_rows = results[0]["rows"]
    host_rows = [result["rows"] for result in results[1:1 + count]]
    interface_rows = [result["rows"] for result in results[1 + count:]]
    version = write.profile.version
    if all(rows and _is(rows[0], version, write.provision_id) for rows in interface_rows):
        return False  # committed before the connection was lost
    for host, rows in zip(write.hosts, host_rows, strict=True):
        if not rows or ranked_versions(rows[0]["versions"]) != write.versions.get(host):
            raise FleetConflictError(f"host {host}: its published versions changed since "
                                     "the selection; nothing written, run it again")
    if not profile_rows:
        raise FleetConflictError(f"fleet: no Profile row holds {version}'s contents any "
                                 "more; nothing written, run it again")
    profile_uuid = profile_rows[0]["_uuid"]
    assert isinstance(profile_uuid, Uuid)
    operations: list[Operation] = [Wait(PROFILE_TABLE, [("_uuid", "==", profile_uuid)],
                                        ["digest"], [{"digest": digest}])]
    for host, hosts, rows in zip(write.hosts, host_rows, interface_rows, strict=True):
        host_uuid = hosts[0]["_uuid"]
        assert isinstance(host_uuid, Uuid)
        operations.append(Wait(HOST_TABLE, [("_uuid", "==", host_uuid)], ["versions"],
                               [{"versions": hosts[0]["versions"]}]))
        values: dict[str, str | Uuid] = {"mode": version, "profile": profile_uuid,
                                         "provision": write.provision_id}
        operations.extend(_interface_write(host, write.interface, rows, values))
    if before_write is not None:
        await before_write()
    try:
        await client.transact(*operations)
    except OvsdbConflictError:
        return None
    return True


def _is(row: DecodedRow, version: str, provision_id: str) -> bool:
    return row["mode"] == frozenset({version}) and row["provision"] == frozenset({provision_id})


def _interface_write(host: str, interface: str, rows: list[DecodedRow],
                     values: dict[str, str | Uuid]) -> list[Operation]:
    if not rows:
        where = [("host", "==", host), ("name", "==", interface)]
        return [Wait(INTERFACE_TABLE, where, ["name"], []),
                Insert(INTERFACE_TABLE, {"host": host, "name": interface, **values})]
    row_uuid = rows[0]["_uuid"]
    assert isinstance(row_uuid, Uuid)
    where_uuid = [("_uuid", "==", row_uuid)]
    return [Wait(INTERFACE_TABLE, where_uuid, ["mode", "provision"],
                 [{"mode": rows[0]["mode"], "provision": rows[0]["provision"]}]),
            Update(INTERFACE_TABLE, where_uuid, values)]


async def read_modes(session: FleetSession, interface: str, hosts: Sequence[str]
                     ) -> dict[str, tuple[str | None, str | None]]:
    """host -> (mode, provision id) of one interface's records (None where absent)."""
    async def read(client: OvsdbClient) -> dict[str, tuple[str | None, str | None]]:
        results = await client.transact(*(Select(
            INTERFACE_TABLE, [("host", "==", host), ("name", "==", interface)],
            ["mode", "provision"]) for host in hosts))
        modes: dict[str, tuple[str | None, str | None]] = {}
        for host, result in zip(hosts, results, strict=True):
            row = result["rows"][0] if result["rows"] else None
            modes[host] = (None, None) if row is None else (_optional(row["mode"]),
                                                            _optional(row["provision"]))
        return modes

    return await session.read(read, f"reading {interface} on {len(hosts)} hosts")


def _optional(value: object) -> str | None:
    return str(next(iter(value))) if isinstance(value, frozenset) and value else None
