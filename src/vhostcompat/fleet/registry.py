"""Host registration: one code path for ``publish --fleet`` and the agent.

:func:`register` writes a batch of :class:`Registration`\\ s (one for the
agent, a hundred at a time for tests and scripts) in one transaction:

1. every registration is checked first (:meth:`Registration.check`: host
   name, remote, a version list that is non-empty, well-formed, without
   duplicates, each version with its contents): nothing is written when one
   is malformed;
2. one read: each host's row, and each profile's row by digest (the SHA-256
   of the profile's canonical JSON: hosts publishing the same contents share
   one ``Profile`` row);
3. a host row owned by another agent (``owner``) whose heartbeat is fresh
   refuses the batch (:class:`FleetOwnerError`, naming both); a stale one may
   be taken over (an agent that died without a word), and so may one written
   by a one-shot ``publish --fleet`` (owner ``publish:NAME``, no heartbeat);
4. one conditional transaction: ``wait`` on every row read (the host row's
   owner and heartbeat, or its absence; each shared profile row's presence),
   then insert the missing profiles and insert or update the host rows. If
   anything changed since the read (a second agent registering at the same
   moment, a profile garbage-collected) the server writes nothing and the
   batch is read and decided again.

The written state is absolute (the host row *is* the registration), so
running a registration again after a lost connection finds it done and
writes the same values: nothing is applied twice (:meth:`FleetSession.run`
does that after a leader's loss). :func:`heartbeat` refreshes one row,
conditional on the owner.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.fleet.errors import FleetInputError, FleetOwnerError
from vhostcompat.fleet.schema import HOST_TABLE, PROFILE_TABLE
from vhostcompat.fleet.session import FleetSession
from vhostcompat.hoststore.model import encode_profile
from vhostcompat.ovsdb import (
    Insert,
    NamedUuid,
    OvsdbClient,
    OvsdbCommitError,
    OvsdbConflictError,
    Select,
    Update,
    Uuid,
    Wait,
    parse_remotes,
)
from vhostcompat.ovsdb.operations import DecodedRow, Operation
from vhostcompat.ovsdb.values import Value
from vhostcompat.profiles.model import VERSION_PATTERN, CompatProfile

HOST_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
MAX_VERSIONS = 4096  # the schema's rank range
DEFAULT_STALE_AFTER = 30.0  # seconds: three missed heartbeats of the agent's default 10 s
DEFAULT_HEARTBEAT_INTERVAL = 10.0
ATTEMPTS = 8  # reads and conditional writes per batch before giving up on contention
CONSTRAINT_VIOLATION = "constraint violation"  # a unique index: another writer inserted first
ONE_SHOT_OWNER = "publish:"  # `publish --fleet`: no heartbeat after, never blocks an agent


def now_ms() -> int:
    return int(time.time() * 1000)


def check_host_name(name: str) -> str:
    if not HOST_NAME_PATTERN.fullmatch(name):
        raise FleetInputError(f"host {name!r:.80}: invalid fleet host name (letters, digits, "
                              ". _ -, at most 253 characters)")
    return name


def profile_digest(profile: CompatProfile) -> str:
    """The content address of a profile: SHA-256 of its canonical (sorted, compact) JSON."""
    return hashlib.sha256(encode_profile(profile).encode()).hexdigest()


@dataclass(frozen=True)
class Registration:
    """What one host registers: its fleet name, own remote, versions (preferred first)."""

    name: str
    remote: str
    versions: tuple[str, ...]
    profiles: Mapping[str, CompatProfile]
    owner: str

    @classmethod
    def of(cls, name: str, remote: str, profiles: Sequence[CompatProfile],
           owner: str) -> Registration:
        return cls(name, remote, tuple(profile.version for profile in profiles),
                   {profile.version: profile for profile in profiles}, owner)

    def check(self) -> None:
        """Refuse a malformed registration, naming what is wrong (nothing is written)."""
        where = f"host {self.name!r:.80}"
        check_host_name(self.name)
        if self.remote:
            parse_remotes(self.remote)
        if not self.owner or not self.owner.isprintable() or len(self.owner) > 200:
            raise FleetInputError(f"{where}: invalid owner id {self.owner!r:.80}")
        if not self.versions:
            raise FleetInputError(f"{where}: malformed version list: empty")
        if len(self.versions) > MAX_VERSIONS:
            raise FleetInputError(f"{where}: malformed version list: more than "
                                  f"{MAX_VERSIONS} versions")
        for version in self.versions:
            if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
                raise FleetInputError(f"{where}: malformed version list: invalid version "
                                      f"{version!r:.80}")
            profile = self.profiles.get(version)
            if profile is None or profile.version != version:
                raise FleetInputError(f"{where}: malformed version list: no contents for "
                                      f"{version}")
        if len(set(self.versions)) != len(self.versions):
            raise FleetInputError(f"{where}: malformed version list: a version is listed "
                                  "twice")

    def digests(self) -> dict[str, str]:
        """version -> content digest."""
        return {version: profile_digest(self.profiles[version]) for version in self.versions}


def check_batch(registrations: Sequence[Registration]) -> None:
    if not registrations:
        raise FleetInputError("nothing to register")
    for registration in registrations:
        registration.check()
    names = [registration.name for registration in registrations]
    if len(set(names)) != len(names):
        raise FleetInputError("a host name is registered twice in one batch")


async def register(session: FleetSession, registrations: Sequence[Registration], *,
                   stale_after: float = DEFAULT_STALE_AFTER) -> None:
    """Register (or re-register) a batch of hosts; see the module docstring."""
    check_batch(registrations)

    async def attempt(client: OvsdbClient) -> None:
        for _ in range(ATTEMPTS):
            if await _register_once(client, registrations, stale_after):
                return
        raise FleetOwnerError(f"fleet {session.address}: registration of "
                              f"{_names(registrations)} kept conflicting with other writers")

    await session.run(attempt, f"registration of {_names(registrations)}")


def _names(registrations: Sequence[Registration]) -> str:
    names = [registration.name for registration in registrations]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} and {len(names) - 1} more hosts"


async def _register_once(client: OvsdbClient, registrations: Sequence[Registration],
                         stale_after: float) -> bool:
    """One read and one conditional write; False when another writer got in between."""
    digests = [registration.digests() for registration in registrations]
    wanted = {digest: registration.profiles[version]
              for registration, by_version in zip(registrations, digests, strict=True)
              for version, digest in by_version.items()}
    ordered = sorted(wanted)
    results = await client.transact(
        *(Select(HOST_TABLE, [("name", "==", registration.name)],
                 ["_uuid", "owner", "heartbeat"]) for registration in registrations),
        *profile_selects(ordered))
    hosts = [result["rows"] for result in results[:len(registrations)]]
    found = {digest: result["rows"] for digest, result in
             zip(ordered, results[len(registrations):], strict=True)}
    now = now_ms()
    for registration, rows in zip(registrations, hosts, strict=True):
        _check_owner(registration, rows, now, stale_after)
    operations, references = profile_operations(wanted, found)
    for registration, by_version, rows in zip(registrations, digests, hosts, strict=True):
        row: dict[str, Value] = {"name": registration.name, "remote": registration.remote,
               "versions": dict(enumerate(registration.versions)),
               "profiles": frozenset(references[digest] for digest in by_version.values()),
               "heartbeat": now, "owner": registration.owner}
        operations.extend(_host_write(registration.name, rows, row))
    try:
        await client.transact(*operations)
    except OvsdbConflictError:
        return False
    except OvsdbCommitError as error:
        if error.error == CONSTRAINT_VIOLATION:
            return False
        raise
    return True


def profile_operations(wanted: dict[str, CompatProfile], found: dict[str, list[DecodedRow]]
                       ) -> tuple[list[Operation], dict[str, Uuid | NamedUuid]]:
    """Rows for these profiles (digest -> profile): a ``wait`` on each row found (it must
    still be there), an insert of each missing one; and how to reference each."""
    operations: list[Operation] = []
    references: dict[str, Uuid | NamedUuid] = {}
    for index, digest in enumerate(sorted(wanted)):
        if found.get(digest):
            uuid = found[digest][0]["_uuid"]
            assert isinstance(uuid, Uuid)
            references[digest] = uuid
            operations.append(Wait(PROFILE_TABLE, [("_uuid", "==", uuid)], ["digest"],
                                   [{"digest": digest}]))
        else:
            name = f"profile{index}"
            references[digest] = NamedUuid(name)
            profile = wanted[digest]
            operations.append(Insert(PROFILE_TABLE, {
                "digest": digest, "version": profile.version,
                "contents": encode_profile(profile)}, uuid_name=name))
    return operations, references


def profile_selects(digests: list[str]) -> list[Select]:
    return [Select(PROFILE_TABLE, [("digest", "==", digest)], ["_uuid"]) for digest in digests]


def _check_owner(registration: Registration, rows: list[DecodedRow], now: int,
                 stale_after: float) -> None:
    if not rows:
        return
    owner, beat = rows[0]["owner"], rows[0]["heartbeat"]
    assert isinstance(owner, str) and isinstance(beat, int)
    age = (now - beat) / 1000
    if owner != registration.owner and age <= stale_after and not owner.startswith(
            ONE_SHOT_OWNER):
        raise FleetOwnerError(
            f"host {registration.name} is already registered by another agent (owner "
            f"{owner[:80]}, heartbeat {max(age, 0):.1f} s ago, fresh until {stale_after:g} s):"
            f" refused for owner {registration.owner[:80]}")


def _host_write(name: str, rows: list[DecodedRow], row: dict[str, Value]) -> list[Operation]:
    if not rows:
        return [Wait(HOST_TABLE, [("name", "==", name)], ["name"], []),
                Insert(HOST_TABLE, row)]
    uuid = rows[0]["_uuid"]
    assert isinstance(uuid, Uuid)
    where = [("_uuid", "==", uuid)]
    return [Wait(HOST_TABLE, where, ["owner", "heartbeat"],
                 [{"owner": rows[0]["owner"], "heartbeat": rows[0]["heartbeat"]}]),
            Update(HOST_TABLE, where, row)]


async def heartbeat(session: FleetSession, name: str, owner: str) -> None:
    """Refresh one host's heartbeat; :class:`FleetOwnerError` when it is no longer ours."""
    async def beat(client: OvsdbClient) -> None:
        [result] = await client.transact(Update(
            HOST_TABLE, [("name", "==", name), ("owner", "==", owner)],
            {"heartbeat": now_ms()}))
        if result["count"] != 1:
            raise FleetOwnerError(f"host {name} is no longer registered by this agent "
                                  f"(owner {owner[:80]})")

    await session.run(beat, f"heartbeat of {name}")


async def publish_once(address: str, registration: Registration, *,
                       stale_after: float = DEFAULT_STALE_AFTER) -> None:
    """``publish --fleet``: one registration (checked before connecting), no heartbeat after."""
    registration.check()
    async with FleetSession(address) as session:
        await register(session, [registration], stale_after=stale_after)
