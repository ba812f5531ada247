"""``provision``, all or nothing: select, then write the mode into every host, conditionally.

The plan (pure, :func:`plan_provision`) is one :class:`~vhostcompat.hoststore.ModeWrite`
per host, each conditional on what the gather read there: the interface's
mode *and* the provisioning run that wrote it (``options:vhost-compat-provision-id``),
and, for a host that supports the version by content only, its published
versions (it publishes the version in the same transaction). Then:

1. Nothing to write when every host already has the mode (a re-run is idempotent).
2. Otherwise every host is written with this run's id, also those already in
   the mode: two runs that overlap always meet on some row and one of them
   conflicts. The first host in sorted order is written alone, first: of two
   runs that read the same state, exactly one wins it and the other stops
   there having written nothing.
3. The other hosts are written concurrently. If any fails, every host this
   run wrote is restored with the inverse write, conditional on what this run
   left there: a restore never clobbers a newer write by someone else; a
   restore that conflicts is said so, host by host.

Any failure is a :class:`ProvisionError` (exit 2) naming the host that failed
and why, and what was restored.

``provision_for_migration`` assigns on each destination the mode a migration
check names (``destination_version``), the same way: for a
``compatible-for-running-guest`` verdict that is the destination's own mode
covering the running guest.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vhostcompat.errors import HostError, InputError, VhostCompatError
from vhostcompat.hoststore import (
    NO_MODE,
    HostRecord,
    ModeState,
    ModeWrite,
    NotPublishedError,
    check_interface_name,
)
from vhostcompat.manager.hosts import (
    JsonObject,
    SelectionReport,
    default_source,
    published_profiles,
    select_from_records,
    version_contents,
)
from vhostcompat.manager.migration import TargetsReport, targets_from_records
from vhostcompat.manager.sources import (
    HostFailure,
    HostTimeoutError,
    ProgressCallback,
    RecordSource,
    failure_of,
)
from vhostcompat.profiles import Catalog, CompatProfile


class ProvisionError(HostError):
    """A host failed during provisioning; what this run wrote was restored (exit 2)."""

    def __init__(self, interface: str, failed: Sequence[HostFailure],
                 restored: Sequence[str], not_restored: Sequence[HostFailure]) -> None:
        self.interface = interface
        self.failed = tuple(failed)
        self.restored = tuple(restored)
        self.not_restored = tuple(not_restored)
        first = self.failed[0]
        text = f"provision {interface}: {first.reason}"
        if len(self.failed) > 1:
            text += f" (and {len(self.failed) - 1} more host(s) failed)"
        if self.restored:
            text += f"; restored {len(self.restored)} host(s) written before"
        elif not self.not_restored:
            text += "; no host was written"
        if self.not_restored:
            text += "; NOT restored: " + "; ".join(
                failure.reason for failure in self.not_restored)
        super().__init__(text)


@dataclass(frozen=True)
class PlannedWrite:
    """One host's write and its restore."""

    write: ModeWrite
    restore: ModeWrite


def new_provision_id() -> str:
    return uuid.uuid4().hex[:16]


def current_mode(host: HostRecord, interface: str) -> ModeState:
    record = host.interfaces.get(interface)
    return NO_MODE if record is None else record.mode_state


def plan_mode(host: HostRecord, interface: str, mode: str, provision_id: str,
              contents: CompatProfile | None) -> PlannedWrite:
    """The write that puts ``mode`` on ``host`` (publishing it first if needed)."""
    before = current_mode(host, interface)
    wanted = ModeState(mode, provision_id)
    if mode in host.versions:
        write = ModeWrite(interface, before, wanted, basis=host.basis)
        return PlannedWrite(write, write.inverse(None, None))
    if contents is None:
        raise NotPublishedError(host.address, f"does not publish {mode} and its contents "
                                "are unknown")
    unknown = [version for version in host.versions if host.profile(version) is None]
    if unknown:
        raise NotPublishedError(host.address, f"cannot add {mode} to its versions: no "
                                f"contents published for {', '.join(unknown)}")
    profiles = tuple(published_profiles(host))
    write = ModeWrite(interface, before, wanted, host.versions, (*profiles, contents),
                      basis=host.basis)
    return PlannedWrite(write, write.inverse(tuple(p.version for p in write.publish or ()),
                                             profiles))


def plan_provision(hosts: Sequence[HostRecord], interface: str, modes: Mapping[str, str],
                   provision_id: str, contents: Mapping[str, CompatProfile | None],
                   ) -> dict[str, PlannedWrite]:
    """Each host's write (host -> mode), or nothing when every host already has its mode."""
    if all(current_mode(host, interface).mode == modes[host.address]
           and modes[host.address] in host.versions for host in hosts):
        return {}
    return {host.address: plan_mode(host, interface, modes[host.address], provision_id,
                                    contents.get(modes[host.address])) for host in hosts}


async def apply_all_or_nothing(records: RecordSource, interface: str,
                               plan: Mapping[str, PlannedWrite],
                               progress: ProgressCallback | None = None) -> tuple[str, ...]:
    """Write the plan (first host alone, then the rest); on failure restore and raise."""
    order = sorted(plan)
    if not order:
        return ()
    first, rest = order[0], order[1:]
    outcome = await records.write({first: plan[first].write}, progress)
    if outcome[first] is None:
        outcome.update(await records.write(
            {address: plan[address].write for address in rest}, progress))
    failed = [_failure(address, error) for address in order
              if address in outcome and (error := outcome[address]) is not None]
    if not failed:
        return tuple(order)
    # Restore what this run wrote; a host whose write timed out may have been written
    # (its restore then applies, or conflicts because nothing was written there).
    undo = [address for address in outcome if outcome[address] is None
            or _may_have_written(outcome[address])]
    restored = await records.write({address: plan[address].restore for address in undo}) \
        if undo else {}
    done = [address for address in undo if restored[address] is None]
    not_restored = [_failure(address, error) for address in undo
                    if (error := restored[address]) is not None and outcome[address] is None]
    raise ProvisionError(interface, failed, done, not_restored)


def _may_have_written(error: VhostCompatError | None) -> bool:
    return isinstance(error, HostTimeoutError)


def _failure(address: str, error: VhostCompatError | None) -> HostFailure:
    assert error is not None
    return failure_of(address, error)


@dataclass(frozen=True)
class ProvisionReport:
    interface: str
    hosts: tuple[str, ...]
    modes: tuple[tuple[str, str], ...]
    """(host, mode) for every host, when provisioning went ahead."""
    written: tuple[str, ...] = ()
    selection: SelectionReport | None = None
    migration: TargetsReport | None = None
    provision_id: str | None = None

    @property
    def done(self) -> bool:
        return bool(self.modes)

    @property
    def version(self) -> str | None:
        """The version selected (or the one mode every destination got)."""
        if self.selection is not None:
            return self.selection.selection.version
        modes = {mode for _host, mode in self.modes}
        return modes.pop() if len(modes) == 1 else None

    def to_json(self) -> JsonObject:
        document: JsonObject = {}
        if self.selection is not None:
            document.update(self.selection.to_json())
        if self.migration is not None:
            document["targets"] = self.migration.to_json()["targets"]
        document.update({
            "interface": self.interface, "hosts": list(self.hosts),
            "assigned": [host for host, _mode in self.modes],
            "modes": dict(self.modes), "written": list(self.written),
            "unchanged": [host for host, _mode in self.modes if host not in self.written],
            "provision_id": self.provision_id})
        return document

    def lines(self) -> list[str]:
        if not self.done:
            if self.selection is not None:
                return self.selection.lines()
            assert self.migration is not None
            return ["nothing assigned: not every destination can take the guest",
                    *self.migration.lines()]
        if not self.written:
            return [f"{self.interface}: already {mode} on {host} (nothing written)"
                    for host, mode in self.modes]
        return [f"{self.interface}: {mode} assigned on {host}" for host, mode in self.modes]


async def provision(addresses: Sequence[str], interface: str, prefer: str | None = None, *,
                    records: RecordSource | None = None,
                    progress: ProgressCallback | None = None) -> ProvisionReport:
    """Select for every host the VM may run on, then assign on all of them or none."""
    check_interface_name(interface)
    async with default_source(records).holding() as source:
        gathered = await source.gather(addresses, progress, interfaces=(interface,))
        hosts = gathered.require_all(f"provision {interface}: nothing written")
        report = select_from_records(hosts, prefer)
        version = report.selection.version
        if version is None:
            return ProvisionReport(interface, tuple(addresses), (), selection=report)
        provision_id = new_provision_id()
        plan = plan_provision(hosts, interface, dict.fromkeys(report.hosts, version),
                              provision_id, {version: version_contents(hosts, version)})
        written = await apply_all_or_nothing(source, interface, plan, progress)
    return ProvisionReport(interface, tuple(addresses),
                           tuple((address, version) for address in addresses), written,
                           selection=report, provision_id=provision_id if written else None)


async def provision_for_migration(interface: str, origin: str, destinations: Sequence[str],
                                  catalog: Catalog | None = None, *, strict: bool = False,
                                  records: RecordSource | None = None,
                                  progress: ProgressCallback | None = None,
                                  ) -> ProvisionReport:
    """Assign on each destination the mode its migration verdict names, all or none.

    Nothing is written unless every destination can take the interface (any
    yes verdict; with ``strict`` only compatible / compatible-by-content).
    """
    check_interface_name(interface)
    if origin in destinations:
        raise InputError(f"host {origin} is both the source and a destination")
    async with default_source(records).holding() as source:
        gathered = await source.gather([origin, *destinations], progress,
                                       interfaces=(interface,))
        hosts = gathered.require_all(f"provision {interface}: nothing written")
        report = targets_from_records(interface, hosts[0], hosts[1:], catalog, strict)
        if len(report.compatible_hosts) != len(destinations):
            return ProvisionReport(interface, tuple(destinations), (), migration=report)
        modes = {target.host: target.check.destination_version for target in report.targets
                 if target.check is not None and target.check.destination_version is not None}
        provision_id = new_provision_id()
        plan = plan_provision(hosts[1:], interface, modes, provision_id, {})
        written = await apply_all_or_nothing(source, interface, plan, progress)
    return ProvisionReport(interface, tuple(destinations),
                           tuple((address, modes[address]) for address in destinations),
                           written, migration=report,
                           provision_id=provision_id if written else None)
