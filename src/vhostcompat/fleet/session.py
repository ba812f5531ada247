"""Talking to the fleet database: only to a member that is connected and leading.

A member of a Raft cluster that lost its peers still answers reads, from
what it had (measured: with two of three members SIGKILLed, the third
answered a ``select`` with its old rows, and hung on a write). So a fleet
client never takes a member's word without asking the member itself first:
each ovsdb-server reports, in its ``_Server`` database (``Database`` table,
the row named ``VhostCompat_Fleet``), whether it is ``connected`` to the
cluster and whether it is the ``leader``. :func:`connect_fleet` tries the
members of the multi-remote address in turn and keeps the first that is
both (a standalone, unclustered fleet database counts as its own leader);
reads are followed by the same check (:meth:`FleetSession.read`), so an
answer is never built on rows of a member that stopped leading meanwhile.

While some member answers but none leads (an election: 1.2-1.9 s after the
leader's SIGKILL, here) the client keeps trying until its deadline
(``VHOSTCOMPAT_FLEET_FAILOVER`` seconds, default 10); when no
member answers at all, or the deadline passes, :class:`FleetUnavailableError`
names every member's state (exit 2).

:meth:`FleetSession.run` runs an idempotent operation and, when the
connection is lost under it (the leader killed), reconnects to the new
leader and runs it again: operations read the current state first, so a
write that was committed before the loss is found done, never applied twice
(see :mod:`vhostcompat.fleet.registry` and :mod:`vhostcompat.fleet.provision`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

from vhostcompat.fleet.errors import FleetOutcomeError, FleetUnavailableError
from vhostcompat.fleet.schema import FLEET_DATABASE, REQUIRED_COLUMNS, check_version
from vhostcompat.hoststore.ovsdb import seconds_from_environment, store_timeout
from vhostcompat.ovsdb import (
    OvsdbClient,
    OvsdbConnectionError,
    OvsdbProtocolError,
    OvsdbTimeoutError,
    parse_remotes,
)
from vhostcompat.ovsdb.errors import describe

_log = logging.getLogger("vhostcompat.fleet")

T = TypeVar("T")
SERVER_DATABASE = "_Server"
DEFAULT_FAILOVER = 10.0  # seconds to find a leader again (elections took 1.2-1.9 s here)
FAILOVER_VARIABLE = "VHOSTCOMPAT_FLEET_FAILOVER"
RETRY_DELAY = 0.05
LOST = (OvsdbConnectionError, OvsdbTimeoutError)


@dataclass(frozen=True)
class MemberState:
    """What a member says of itself in ``_Server``."""

    remote: str
    model: str
    connected: bool
    leader: bool

    @property
    def usable(self) -> bool:
        return self.connected and self.leader

    def describe(self) -> str:
        if self.usable:
            return f"{self.model}, connected, leader"
        if not self.connected:
            return f"{self.model}, not connected to the cluster"
        return f"{self.model}, connected, not the leader"


async def member_state(client: OvsdbClient) -> MemberState:
    """The connected member's own ``_Server`` row for the fleet database (untrusted)."""
    remote = client.remote or client.address
    reply = await client.call("transact", [SERVER_DATABASE, {
        "op": "select", "table": "Database", "where": [["name", "==", FLEET_DATABASE]],
        "columns": ["model", "connected", "leader"]}])
    rows = reply[0].get("rows") if isinstance(reply, list) and reply and isinstance(
        reply[0], dict) else None
    if not isinstance(rows, list) or len(rows) != 1 or not isinstance(rows[0], dict):
        raise OvsdbProtocolError(remote, f"{SERVER_DATABASE} has no one row for "
                                 f"{FLEET_DATABASE}")
    row = rows[0]
    model, connected, leader = row.get("model"), row.get("connected"), row.get("leader")
    if not isinstance(model, str) or not isinstance(connected, bool) or not isinstance(
            leader, bool):
        raise OvsdbProtocolError(remote, f"{SERVER_DATABASE} Database row is malformed")
    return MemberState(remote, model, connected, leader)


def failure_text(error: BaseException) -> str:
    """Why one member did not answer, without repeating its remote."""
    causes = getattr(error, "causes", ())
    return describe(causes[0][1]) if causes else str(error)


async def _try_member(remote: str, timeout: float
                      ) -> tuple[OvsdbClient | None, MemberState | None, str]:
    """The client when the member leads; else its state (None: unreachable) and why.

    The member is asked in ``_Server`` first: a member that has not joined yet, or
    lost its leader, may not even serve the fleet database's schema."""
    try:
        async with OvsdbClient(remote, SERVER_DATABASE, timeout=timeout,
                               reconnect=False) as server:
            state = await member_state(server)
    except LOST as error:
        return None, None, failure_text(error)
    if not state.usable:
        return None, state, state.describe()
    client = OvsdbClient(remote, FLEET_DATABASE, timeout=timeout,
                         required_columns=REQUIRED_COLUMNS, reconnect=False)
    try:
        await client.connect()
        check_version(remote, client.schema.name, client.schema.version)
    except LOST as error:
        await client.close()
        return None, state, failure_text(error)
    except BaseException:
        await client.close()
        raise
    return client, state, state.describe()


async def connect_fleet(address: str, *, timeout: float | None = None,
                        failover: float = DEFAULT_FAILOVER) -> OvsdbClient:
    """A client of the member that is connected and leading; see the module docstring."""
    remotes = [str(remote) for remote in parse_remotes(address)]
    call_timeout = store_timeout() if timeout is None else timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + failover
    while True:
        states: list[tuple[str, str]] = []
        answered = False
        for remote in remotes:
            client, state, text = await _try_member(remote, call_timeout)
            if client is not None:
                return client
            states.append((remote, text))
            answered = answered or state is not None
        if not answered or loop.time() >= deadline:
            raise FleetUnavailableError(address, states)
        await asyncio.sleep(RETRY_DELAY)  # an election is under way: ask again


def failover_seconds() -> float:
    """How long to look for a leader: ``VHOSTCOMPAT_FLEET_FAILOVER`` seconds, default 10."""
    return seconds_from_environment(FAILOVER_VARIABLE, DEFAULT_FAILOVER, zero=True)


class FleetSession:
    """One command's (or one agent's) use of the fleet database; reconnects to the leader."""

    def __init__(self, address: str, *, timeout: float | None = None,
                 failover: float | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.failover = failover_seconds() if failover is None else failover
        self.reconnects = 0
        self._client: OvsdbClient | None = None

    async def client(self) -> OvsdbClient:
        if self._client is None:
            self._client = await connect_fleet(self.address, timeout=self.timeout,
                                               failover=self.failover)
        return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def close(self) -> None:
        await self._drop()

    async def __aenter__(self) -> Self:
        await self.client()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def run(self, operation: Callable[[OvsdbClient], Awaitable[T]], what: str) -> T:
        """Run an idempotent ``operation``; after a lost connection, again on the new leader."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover
        while True:
            client = await self.client()
            try:
                return await operation(client)
            except LOST as error:
                await self._drop()
                if loop.time() >= deadline:
                    raise FleetOutcomeError(
                        f"fleet {self.address}: {what} did not complete: {error}") from None
                self.reconnects += 1
                _log.warning("%s: %s; reconnecting to the leader", what, error)

    async def read(self, operation: Callable[[OvsdbClient], Awaitable[T]], what: str) -> T:
        """:meth:`run` a read, then make sure its member still leads (else read again)."""
        async def checked(client: OvsdbClient) -> T:
            result = await operation(client)
            state = await member_state(client)
            if not state.usable:
                raise OvsdbConnectionError(f"{state.remote}: {state.describe()} after the read")
            return result

        return await self.run(checked, what)


