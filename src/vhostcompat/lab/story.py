"""The upstream story played for real, once: a VM migrated from a newer to an older back-end.

Host A runs DPDK testpmd with ``tso=1`` (the newer back-end), host B testpmd
with default options (the older one). A qtest guest on A negotiates, then
QEMU migrates it to B. :func:`play_migration` does that either directly (no
compatibility mode: the guest takes what A offers, and the load fails on B)
or with both interfaces behind ``vhostcompat proxy`` in a mode (read from
each host's store when ``hosts`` are given), and returns what happened as a
:class:`MigrationRun`. ``vhostcompat demo`` prints it; the e2e tests check
the same story with their own, finer assertions.

:func:`ovs_migration` plays it on real OVS-DPDK: host A's OVS with
``userspace-tso-enable=true``, host B's without, QEMU as the vhost-user
server on each (``dpdkvhostuserclient`` ports), and, with a mode, the
interface assigned with ``ovs-vsctl set`` and run by each host's agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import ProxyMode
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.hosts import dpdk_testpmd, source_and_destination
from vhostcompat.lab.ovs import RunningOvs
from vhostcompat.lab.process import wait_until
from vhostcompat.lab.qemu import QemuVm, RunningQemu, run_qemu

VHOST_TIMEOUT = 10.0
DESTINATION_EXIT_TIMEOUT = 10.0
_LOAD_ERROR = re.compile(r"Features 0x[0-9a-f]+ unsupported\. Allowed features: 0x[0-9a-f]+")


@dataclasses.dataclass(frozen=True)
class Migration:
    """What one migration from A to B showed, whatever the back-ends."""

    mode: str | None
    offered: VirtioFeature
    """What QEMU on A was offered on its vhost-user socket (the back-end's, or the proxy's)."""
    host_features: VirtioFeature
    """What QEMU's device on A offered its guest (QMP ``host-features``)."""
    acked: VirtioFeature
    """What the guest on A acked."""
    status: str
    """The migration's final status on A (``completed``, ``failed``)."""
    downtime_ms: int | None
    destination_error: str | None
    """QEMU's load error on B, when it refused the guest."""
    destination_acked: VirtioFeature | None
    """The guest's features on B once vhost runs there (after a completed migration)."""


@dataclasses.dataclass(frozen=True)
class MigrationRun(Migration):
    """The testpmd story's migration, with host A's testpmd offer."""

    backend_features: VirtioFeature
    """Host A's testpmd, asked directly."""


async def migrate_guest(source: RunningQemu, destination: RunningQemu, uri: str,
                        mode: str | None) -> Migration:
    """Bring the guest on ``source`` up, migrate it, and see how ``destination`` took it."""
    negotiation = await source.driver().initialise()
    before = await qmp.wait_for_vhost_started(source, VHOST_TIMEOUT)
    assert before.vhost_dev is not None  # wait_for_vhost_started guarantees it
    result = await qmp.migrate(source, destination, uri)
    status = str(result.get("status"))
    destination_error = None
    destination_acked = None
    if status == "completed":
        after = await qmp.wait_for_vhost_started(destination, VHOST_TIMEOUT)
        destination_acked = after.guest_features
    else:
        await destination.wait_exit(DESTINATION_EXIT_TIMEOUT)
        found = _LOAD_ERROR.search(destination.process.log_text())
        destination_error = found.group(0) if found else destination.process.log_tail(3)
    downtime = result.get("downtime")
    return Migration(mode=mode, offered=before.vhost_dev.features,
                     host_features=before.host_features, acked=negotiation.acked,
                     status=status, downtime_ms=downtime if isinstance(downtime, int) else None,
                     destination_error=destination_error, destination_acked=destination_acked)


async def play_migration(run_dir: Path, *, mode: str | None = None,
                         hosts: tuple[str, str] | None = None,
                         iface: str | None = None,
                         vm_options: Mapping[str, Any] | None = None,
                         source_options: Mapping[str, Any] | None = None) -> MigrationRun:
    """Migrate a guest from A (testpmd tso=1) to B (testpmd default) and say what happened.

    Without ``mode`` and ``hosts`` the interfaces are direct. ``hosts`` (A's
    and B's store) with ``iface``: each proxy reads the interface's mode
    from its own store and records what was negotiated there.
    ``vm_options`` go to both QEMUs (a machine type), ``source_options`` to
    A's only (another QEMU binary).
    """
    uri = f"unix:{run_dir / 'migration.sock'}"
    proxies: tuple[ProxyMode | None, ProxyMode | None] = (None, None)
    if hosts is not None:
        proxies = (ProxyMode(mode, db=hosts[0], iface=iface),
                   ProxyMode(mode, db=hosts[1], iface=iface))
    elif mode is not None:
        proxies = (ProxyMode(mode), ProxyMode(mode))
    async with source_and_destination(run_dir, uri, dpdk_testpmd(tso=True), dpdk_testpmd(),
                                       source_proxy=proxies[0],
                                       destination_proxy=proxies[1], vm_options=vm_options,
                                       source_options=source_options) as (host_a, host_b):
        # The mode the proxy actually ran (read from the store when hosts were given).
        proxy_mode = host_a.proxy.status().profile if host_a.proxy is not None else None
        run = await migrate_guest(host_a.qemu, host_b.qemu, uri, proxy_mode)
        return MigrationRun(**dataclasses.asdict(run),
                            backend_features=host_a.backend.features or VirtioFeature(0))


# --- the same story on real OVS-DPDK, with the host agents ----------------------------

FRONTEND_PATH_KEY = "vhost-compat-frontend-path"
REDIRECT_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class OvsMigrationRun(Migration):
    """The OVS-DPDK story's migration, with what host B's database says after it."""

    iface: str
    destination_external_ids: str
    """``ovs-vsctl get Interface IFACE external_ids`` on B."""
    destination_ovs_features: str | None
    """OVS B's own ``Interface status:features`` (what it negotiated)."""


def qemu_socket(run_dir: Path, host: RunningOvs, iface: str) -> Path:
    """Where QEMU (the vhost-user server) listens for host ``host``'s interface."""
    return run_dir / f"{host.config.name}-{iface}.sock"


async def _vsctl_or_none(host: RunningOvs, *arguments: str) -> str | None:
    try:
        return await host.vsctl(*arguments)
    except LabError:
        return None  # the row is being re-created, or the key is absent


async def wait_redirected(host: RunningOvs, iface: str, qemu_path: Path,
                          timeout: float = REDIRECT_TIMEOUT) -> None:
    """Wait until the agent pointed OVS away from QEMU's socket (and kept QEMU's path)."""
    async def redirected() -> bool:
        server = await _vsctl_or_none(host, "get", "Interface", iface,
                                      "options:vhost-server-path")
        kept = await _vsctl_or_none(host, "get", "Interface", iface,
                                    f"external_ids:{FRONTEND_PATH_KEY}")
        return (server is not None and server.strip('"') != str(qemu_path)
                and kept is not None and kept.strip('"') == str(qemu_path))

    await wait_until(redirected, timeout, f"{host.config.name}'s agent to redirect {iface}",
                     interval=0.05)


async def add_qemu_port(run_dir: Path, host: RunningOvs, iface: str,
                        mode: str | None) -> Path:
    """A dpdkvhostuserclient port on QEMU's socket; then its mode, as an operator sets it."""
    path = qemu_socket(run_dir, host, iface)
    await host.add_vhost_client_port(iface, path)
    if mode is not None:
        await host.vsctl("set", "Interface", iface, f"options:vhost-compat-version={mode}")
        await wait_redirected(host, iface, path)
    return path


@contextlib.asynccontextmanager
async def ovs_migration(run_dir: Path, source: RunningOvs, destination: RunningOvs,
                        iface: str, mode: str | None = None,
                        ) -> AsyncIterator[tuple[OvsMigrationRun, RunningQemu, RunningQemu]]:
    """Migrate a guest from QEMU on ``source`` to QEMU on ``destination`` over OVS-DPDK.

    Without ``mode`` QEMU and OVS meet directly. With it, the interface is
    assigned ``mode`` on both hosts (``ovs-vsctl set``), whose agents must be
    running: they redirect OVS to their proxies before QEMU starts. Yields
    what happened and both QEMUs (B still running after a completed
    migration); the ports stay for the caller to inspect.
    """
    uri = f"unix:{run_dir / f'{iface}-migration.sock'}"
    paths = [await add_qemu_port(run_dir, host, iface, mode)
             for host in (source, destination)]
    vm_a = QemuVm(paths[0], chardev_server=True)
    vm_b = QemuVm(paths[1], chardev_server=True, incoming=uri, qtest=False)
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as group:
            started_a = group.create_task(stack.enter_async_context(
                run_qemu(vm_a, run_dir, f"{source.config.name}-{iface}-qemu")))
            started_b = group.create_task(stack.enter_async_context(
                run_qemu(vm_b, run_dir, f"{destination.config.name}-{iface}-qemu")))
        qemu_a, qemu_b = started_a.result(), started_b.result()
        migration = await migrate_guest(qemu_a, qemu_b, uri, mode)
        if migration.status == "completed":
            await wait_until(lambda: _ovs_connected(destination, iface), VHOST_TIMEOUT,
                             f"OVS {destination.config.name} to run {iface}", interval=0.05)
        run = OvsMigrationRun(
            **dataclasses.asdict(migration), iface=iface,
            destination_external_ids=await destination.get("Interface", iface, "external_ids"),
            destination_ovs_features=await _vsctl_or_none(
                destination, "get", "Interface", iface, "status:features"))
        yield run, qemu_a, qemu_b


async def _ovs_connected(host: RunningOvs, iface: str) -> bool:
    status = await _vsctl_or_none(host, "get", "Interface", iface, "status:status")
    return status == "connected"
