"""The agent's side of the fleet: register, keep the heartbeat fresh, apply provisioned modes.

``vhostcompat agent --db REMOTE --fleet REMOTES --host-name NAME`` runs one
:class:`FleetPresence` beside the agent's own loop:

* once the host's published versions are known (the agent reads them from
  its Open vSwitch database and calls :meth:`FleetPresence.published`), it
  registers them (:func:`vhostcompat.fleet.registry.register`, the very
  function ``publish --fleet`` uses), and registers again whenever they
  change;
* every ``heartbeat_interval`` seconds it refreshes the host row's
  heartbeat (conditional on the owner: a row taken over by another agent is
  :class:`FleetOwnerError`, and the agent stops with exit 2, as it does when
  the name is already owned at start);
* it monitors its own host's ``Interface`` records only (``monitor_cond``
  with ``host == NAME``: the other hosts' records never reach it) and
  applies each provisioned mode in the host's database (publishing the
  version first when the host satisfies it by content only, with the
  contents the record references), where the agent's reconciler acts on it;
* when the fleet connection is lost (a leader killed, the cluster below
  quorum) it reconnects to the new leader, registers again (republishes)
  and monitors again: modes provisioned meanwhile are applied then.

The owner id is kept in the agent's state directory (``fleet-owner``), so a
restarted agent reclaims its own row at once, while a second agent (another
state directory) claiming the same host name is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.errors import VhostCompatError
from vhostcompat.fleet.errors import FleetInputError, FleetOwnerError, FleetSchemaError
from vhostcompat.fleet.registry import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_STALE_AFTER,
    Registration,
    heartbeat,
    register,
)
from vhostcompat.fleet.schema import HOST_TABLE, INTERFACE_TABLE, PROFILE_TABLE
from vhostcompat.fleet.session import FleetSession
from vhostcompat.hoststore.model import (
    NEGOTIATED_KEYS,
    PROFILE_KEY_PREFIX,
    NotPublishedError,
    decode_profile,
)
from vhostcompat.hoststore.ovsdb import OvsdbHostStore
from vhostcompat.manager import published_profiles
from vhostcompat.ovsdb import Mutate, OvsdbClient, Select, Uuid
from vhostcompat.ovsdb.operations import DecodedRow
from vhostcompat.profiles.model import CompatProfile

_log = logging.getLogger("vhostcompat.fleet.presence")

OWNER_FILE = "fleet-owner"
FLEET_STATUS_KEY = "vhost-compat-fleet-status"  # in Interface.negotiated: the mode applied?
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
WATCHED = ("host", "name", "mode", "provision")
FATAL = (FleetOwnerError, FleetInputError, FleetSchemaError)

Apply = Callable[[str, CompatProfile], Awaitable[None]]


def owner_of(state_dir: Path) -> str:
    """The agent's owner id, made once and kept in its state directory."""
    path = state_dir / OWNER_FILE
    with contextlib.suppress(FileNotFoundError):
        owner = path.read_text().strip()
        if owner:
            return owner
    owner = f"agent:{uuid_module.uuid4()}"
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(owner + "\n")
    temporary.replace(path)
    return owner


@dataclass(frozen=True)
class FleetOptions:
    address: str
    host_name: str
    owner: str
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    stale_after: float = DEFAULT_STALE_AFTER


async def apply_in_host_database(remote: str, interface: str, profile: CompatProfile) -> None:
    """Write a provisioned mode into the host's own database (publishing it if needed)."""
    async with OvsdbHostStore(remote) as store:
        record = await store.read()
        if profile.version not in record.versions:
            await store.publish([*published_profiles(record), profile])
        await store.assign(interface, profile.version)


class FleetPresence:
    """One host's registration in the fleet; see the module docstring."""

    def __init__(self, options: FleetOptions, host_remote: str,
                 apply: Apply | None = None) -> None:
        self.options = options
        self.host_remote = host_remote
        self.apply: Apply = apply or (lambda interface, profile: apply_in_host_database(
            host_remote, interface, profile))
        self.registrations = 0
        self.heartbeats = 0
        self.applied: dict[str, tuple[str, str | None]] = {}
        self.recorded: dict[str, dict[str, str]] = {}  # interface -> negotiated, as written
        self._negotiated: dict[str, dict[str, str]] = {}  # interface -> latest from the agent
        self._profiles: tuple[CompatProfile, ...] | None = None
        self._registered: tuple[CompatProfile, ...] | None = None
        self._changed = asyncio.Event()

    def published(self, profiles: Sequence[CompatProfile]) -> None:
        """The host's published profiles now (preference order); registers them if new."""
        profiles = tuple(profiles)
        if profiles and profiles != self._profiles:
            self._profiles = profiles
            self._changed.set()

    def negotiated(self, interface: str, entries: dict[str, str]) -> None:
        """What an interface's proxy negotiated (the host row's keys): copied to the
        interface's fleet record, where ``check-migration --fleet`` reads it."""
        if self._negotiated.get(interface) != entries:
            self._negotiated[interface] = dict(entries)
            self._changed.set()

    def _registration(self) -> Registration:
        assert self._profiles is not None
        return Registration.of(self.options.host_name, self.host_remote, self._profiles,
                               self.options.owner)

    async def run(self) -> None:
        """Until cancelled; raises only what retrying cannot cure (owner, input, schema)."""
        delay = RECONNECT_MIN
        while True:
            await self._changed.wait()
            if self._profiles is None:  # nothing published yet: nothing to register
                self._changed.clear()
                continue
            session = FleetSession(self.options.address)
            try:
                await self._serve(session)
            except FATAL:
                raise
            except VhostCompatError as error:
                _log.warning("fleet %s: %s (again in %g s)", self.options.address, error,
                             delay)
                await asyncio.sleep(delay)  # a bounded backoff before reconnecting
                delay = min(delay * 2, RECONNECT_MAX)
                self._changed.set()  # register again (republish) after the reconnect
            finally:
                await session.close()

    async def _serve(self, session: FleetSession) -> None:
        await self._register(session)
        client = await session.client()
        watcher = asyncio.create_task(self._watch(client), name="fleet interface records")
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(),
                                           self.options.heartbeat_interval)
                if watcher.done():
                    watcher.result()
                    return
                if self._profiles != self._registered:
                    await self._register(session)
                elif self._changed.is_set():
                    self._changed.clear()
                    await self._record_negotiated(await session.client())
                else:
                    await heartbeat(session, self.options.host_name, self.options.owner)
                    self.heartbeats += 1
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _register(self, session: FleetSession) -> None:
        self._changed.clear()
        registration = self._registration()
        await register(session, [registration], stale_after=self.options.stale_after)
        self._registered = self._profiles
        self.registrations += 1
        self.recorded.clear()  # after a reconnect: written again
        await self._record_negotiated(await session.client())
        _log.info("fleet %s: registered %s with %s", self.options.address,
                  registration.name, ", ".join(registration.versions))

    async def _watch(self, client: OvsdbClient) -> None:
        """Apply every mode provisioned on this host's records (only its own rows come)."""
        monitor = client.monitor({INTERFACE_TABLE: WATCHED},
                                 where={INTERFACE_TABLE: [("host", "==",
                                                           self.options.host_name)]})
        async for update in monitor:
            for _uuid, (_old, new) in update.get(INTERFACE_TABLE, {}).items():
                if new is not None:
                    await self._apply_row(client, new)

    async def _apply_row(self, client: OvsdbClient, row: DecodedRow) -> None:
        name, mode, provision = str(row["name"]), _one(row["mode"]), _one(row["provision"])
        if mode is None or self.applied.get(name) == (mode, provision):
            return
        try:
            profile = await self._contents(client, mode)
            await self.apply(name, profile)
            status = f"applied {mode}"
        except VhostCompatError as error:
            status = f"not applied: {error}"
            _log.error("fleet: interface %s mode %s: %s", name, mode, error)
        self.applied[name] = (mode, provision)
        await self._write_negotiated(client, name, {FLEET_STATUS_KEY: status[:200]})
        self.recorded.pop(name, None)  # the record exists now: what was negotiated too
        await self._record_negotiated(client)

    async def _record_negotiated(self, client: OvsdbClient) -> None:
        for name, entries in list(self._negotiated.items()):
            if self.recorded.get(name) != entries:
                await self._write_negotiated(client, name, entries, NEGOTIATED_KEYS)
                self.recorded[name] = entries

    async def _write_negotiated(self, client: OvsdbClient, name: str,
                                entries: dict[str, str], replaced: Sequence[str] = ()) -> None:
        """Replace keys of the record's ``negotiated`` (a record not provisioned yet is
        not created: nothing matches)."""
        await client.transact(Mutate(
            INTERFACE_TABLE, [("host", "==", self.options.host_name), ("name", "==", name)],
            [("negotiated", "delete", frozenset({*replaced, *entries})),
             ("negotiated", "insert", entries)]))

    async def _contents(self, client: OvsdbClient, version: str) -> CompatProfile:
        """The contents of ``version`` as this host's row references them (a provisioning
        of a version the host satisfies by content put it there)."""
        [hosts] = await client.transact(Select(HOST_TABLE, [
            ("name", "==", self.options.host_name)], ["profiles"]))
        references = [uuid for row in hosts["rows"] for uuid in row["profiles"]
                      if isinstance(uuid, Uuid)]
        results = await client.transact(*(Select(PROFILE_TABLE, [
            ("_uuid", "==", uuid), ("version", "==", version)], ["contents"])
            for uuid in references)) if references else []
        for result in results:
            for found in result["rows"]:
                return decode_profile(self.options.address, PROFILE_KEY_PREFIX + version,
                                      str(found["contents"]))
        raise NotPublishedError(self.options.host_name, f"its fleet row references no "
                                f"contents for {version}")


def _one(value: object) -> str | None:
    return str(next(iter(value))) if isinstance(value, frozenset) and value else None
