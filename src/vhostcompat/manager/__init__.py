"""The orchestrator side, as a library: the same verbs as the CLI, returning reports.

An orchestrator (Nova's role in the upstream proposal, or the libvirt hook)
imports this module instead of running ``vhostcompat``::

    from vhostcompat import manager

    hosts = ["unix:/run/openvswitch/db.sock", "tcp:192.0.2.7:6640", ...]
    report = await manager.provision(hosts, "vhu-vm1")        # all or nothing
    verdict = await manager.check_migration("vhu-vm1", hosts[0], hosts[1])
    if verdict.compatible: ...                                # verdict.check.destination_version
    where = await manager.targets("vhu-vm1", hosts[0], hosts[1:])

Every verb is ``async`` and is two steps (so another record source plugs in
without touching the verbs):

1. *gather*: a :class:`RecordSource` turns addresses into a :class:`Gathered`
   (records and per-host :class:`HostFailure`\\ s). The default,
   :class:`HostStores`, asks each host's own store concurrently
   (``concurrency``, default 64) with a per-host ``timeout`` (default 5 s).
   Pass ``records=HostStores(concurrency=..., timeout=...)`` or a source of
   your own; ``progress=`` is called ``(address, done, total)`` per host.
2. *compute*: pure functions over records: :func:`select_from_records`,
   :func:`check_from_records`, :func:`targets_from_records`,
   :func:`matrix_from_records`, :func:`plan_provision`.

Verbs and their reports (each has ``lines()`` for people and ``to_json()``
for programs; the CLI prints exactly these):

* :func:`versions` -> :class:`VersionsReport`: each host's versions (and failures);
* :func:`select` -> :class:`SelectionReport`: the first common version;
* :func:`provision` -> :class:`ProvisionReport`: select, then assign on every
  host or on none (:mod:`.provision`);
* :func:`provision_for_migration` -> :class:`ProvisionReport`: assign each
  destination the mode its migration verdict names;
* :func:`check_migration` -> :class:`MigrationReport`: one destination's verdict;
* :func:`targets` -> :class:`TargetsReport`: every candidate's verdict, static and live;
* :func:`matrix` -> :class:`MatrixReport`: ordered pairs and migration domains
  (:func:`matrix_svg` draws it);
* :func:`baseline` -> :class:`BaselineReport`: the hosts' common profile.

Errors (all :class:`~vhostcompat.errors.VhostCompatError`, one line):
:class:`FleetError` (a host could not be read: exit 2), :class:`ProvisionError`
(a host failed while provisioning; what was written is restored: exit 2),
``InputError`` (a host listed twice, an unknown version: exit 2).

From synchronous code, :func:`run` runs a verb on the loop the CLI uses
(uvloop: a fleet query's loop bookkeeping in C)::

    report = manager.run(manager.provision(hosts, "vhu-vm1"))
"""

from vhostcompat.manager.hosts import (
    BaselineReport,
    NothingHonouredError,
    SelectionReport,
    VersionsReport,
    assign,
    baseline,
    publish,
    publish_verified,
    published_profiles,
    read_host,
    read_hosts,
    select,
    select_from_records,
    versions,
)
from vhostcompat.manager.loop import run
from vhostcompat.manager.matrix import (
    Domain,
    MatrixCell,
    MatrixReport,
    matrix,
    matrix_from_records,
    maximal_cliques,
    migration_domains,
)
from vhostcompat.manager.migration import (
    MigrationReport,
    Target,
    TargetsReport,
    check_from_records,
    check_migration,
    required_profile,
    targets,
    targets_from_records,
)
from vhostcompat.manager.provision import (
    ProvisionError,
    ProvisionReport,
    apply_all_or_nothing,
    plan_provision,
    provision,
    provision_for_migration,
)
from vhostcompat.manager.sources import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    FleetError,
    Gathered,
    HostFailure,
    HostStores,
    HostTimeoutError,
    ProgressCallback,
    RecordSource,
    check_addresses,
)
from vhostcompat.manager.svg import matrix_svg

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "BaselineReport",
    "Domain",
    "FleetError",
    "Gathered",
    "HostFailure",
    "HostStores",
    "HostTimeoutError",
    "MatrixCell",
    "MatrixReport",
    "MigrationReport",
    "NothingHonouredError",
    "ProgressCallback",
    "ProvisionError",
    "ProvisionReport",
    "RecordSource",
    "SelectionReport",
    "Target",
    "TargetsReport",
    "VersionsReport",
    "apply_all_or_nothing",
    "assign",
    "baseline",
    "check_addresses",
    "check_from_records",
    "check_migration",
    "matrix",
    "matrix_from_records",
    "matrix_svg",
    "maximal_cliques",
    "migration_domains",
    "plan_provision",
    "provision",
    "provision_for_migration",
    "publish",
    "publish_verified",
    "published_profiles",
    "read_host",
    "read_hosts",
    "required_profile",
    "run",
    "select",
    "select_from_records",
    "targets",
    "targets_from_records",
    "versions",
]
