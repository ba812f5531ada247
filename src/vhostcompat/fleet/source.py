"""The fleet database as the manager's record source: ``--fleet REMOTES`` on every verb.

:class:`FleetRecords` implements :class:`vhostcompat.manager.RecordSource`:
``gather`` reads every named host from the fleet database in one go
(:func:`vhostcompat.fleet.records.read_fleet`), ``write`` carries a
provisioning's mode writes into the fleet's interface records, all hosts of
the call in one transaction (:func:`vhostcompat.fleet.provision.write_modes`).
Hosts are named by their fleet names. A host the fleet does not hold, or
whose heartbeat is stale, is a :class:`~vhostcompat.manager.HostFailure`
with its reason (how stale): every verb then says what it could not decide
because of it, and never counts it compatible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.errors import InputError, VhostCompatError
from vhostcompat.fleet.errors import FleetUnknownHostError
from vhostcompat.fleet.provision import BeforeWrite, write_modes
from vhostcompat.fleet.records import read_fleet
from vhostcompat.fleet.registry import DEFAULT_STALE_AFTER, check_host_name
from vhostcompat.fleet.session import FleetSession
from vhostcompat.hoststore import ModeWrite
from vhostcompat.manager.sources import (
    Gathered,
    HostFailure,
    ProgressCallback,
    check_addresses,
    failure_of,
)


@dataclass(frozen=True)
class FleetRecords:
    """Host records from the fleet database at ``address`` (a multi-remote string).

    ``interfaces``: the interface records to read with the hosts (the verb's
    ``--iface``); ``stale_after``: seconds after which a heartbeat is stale.
    """

    address: str
    interfaces: tuple[str, ...] = ()
    stale_after: float = DEFAULT_STALE_AFTER
    timeout: float | None = None
    failover: float | None = None  # default: VHOSTCOMPAT_FLEET_FAILOVER, else 10 s
    before_write: BeforeWrite | None = None  # tests: interleave a failure with the commit

    def __post_init__(self) -> None:
        if not 0 < self.stale_after <= 86400:
            raise InputError(f"--stale-after must be in (0, 86400] seconds, not "
                             f"{self.stale_after:g}")

    def session(self) -> FleetSession:
        return FleetSession(self.address, timeout=self.timeout, failover=self.failover)

    async def gather(self, addresses: Sequence[str],
                     progress: ProgressCallback | None = None, *,
                     interfaces: bool | tuple[str, ...] = True) -> Gathered:
        names = check_addresses(addresses)
        for name in names:
            check_host_name(name)
        async with self.session() as session:
            view = await read_fleet(session, names,
                                    interfaces=self.interfaces if interfaces is True else (
                                        () if interfaces is False else interfaces),
                                    stale_after=self.stale_after)
        failures: dict[str, HostFailure] = {}
        for name in view.unknown:
            error = FleetUnknownHostError(f"host {name}: not registered in the fleet")
            failures[name] = failure_of(name, error)
        for stale in view.stale_errors():
            failures[stale.name] = failure_of(stale.name, stale)
        records = {record.address: record for record in view.records()}
        if progress is not None:
            for done, name in enumerate(names, start=1):
                progress(name, done, len(names))
        return Gathered(names, records, failures)

    def holding(self) -> contextlib.nullcontext[FleetRecords]:
        """Itself: each gather and each write is one session of the fleet database."""
        return contextlib.nullcontext(self)

    async def write(self, changes: Mapping[str, ModeWrite],
                    progress: ProgressCallback | None = None,
                    ) -> dict[str, VhostCompatError | None]:
        try:
            async with self.session() as session:
                outcomes = await write_modes(session, changes, self.before_write)
        except VhostCompatError as error:
            # Unreachable, or the outcome unknown: the manager restores conditionally (a
            # restore finds whether the write was committed).
            outcomes = dict.fromkeys(changes, error)
        if progress is not None:
            for done, name in enumerate(changes, start=1):
                progress(name, done, len(changes))
        return outcomes
