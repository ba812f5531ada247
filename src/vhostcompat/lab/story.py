"""The upstream story played for real, once: a VM migrated from a newer to an older back-end.

Host A runs DPDK testpmd with ``tso=1`` (the newer back-end), host B testpmd
with default options (the older one). A qtest guest on A negotiates, then
QEMU migrates it to B. :func:`play_migration` does that either directly (no
compatibility mode: the guest takes what A offers, and the load fails on B)
or with both interfaces behind ``vhostcompat proxy`` in a mode (read from
each host's store when ``hosts`` are given), and returns what happened as a
:class:`MigrationRun`. ``vhostcompat demo`` prints it; the e2e tests check
the same story with their own, finer assertions.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import ProxyMode
from vhostcompat.lab.hosts import dpdk_testpmd, source_and_destination

VHOST_TIMEOUT = 10.0
DESTINATION_EXIT_TIMEOUT = 10.0
_LOAD_ERROR = re.compile(r"Features 0x[0-9a-f]+ unsupported\. Allowed features: 0x[0-9a-f]+")


@dataclasses.dataclass(frozen=True)
class MigrationRun:
    """What one migration from host A to host B showed."""

    mode: str | None
    backend_features: VirtioFeature
    """Host A's testpmd, asked directly."""
    offered: VirtioFeature
    """What QEMU on A was offered on its vhost-user socket (testpmd's, or the proxy's)."""
    acked: VirtioFeature
    """What the guest on A acked."""
    status: str
    """The migration's final status on A (``completed``, ``failed``)."""
    downtime_ms: int | None
    destination_error: str | None
    """QEMU's load error on B, when it refused the guest."""
    destination_acked: VirtioFeature | None
    """The guest's features on B after a completed migration."""


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
        negotiation = await host_a.qemu.driver().initialise()
        before = await qmp.wait_for_vhost_started(host_a.qemu, VHOST_TIMEOUT)
        assert before.vhost_dev is not None  # wait_for_vhost_started guarantees it
        result = await qmp.migrate(host_a.qemu, host_b.qemu, uri)
        status = str(result.get("status"))
        destination_error = None
        destination_acked = None
        if status == "completed":
            after = await qmp.wait_for_vhost_started(host_b.qemu, VHOST_TIMEOUT)
            destination_acked = after.guest_features
        else:
            await host_b.qemu.wait_exit(DESTINATION_EXIT_TIMEOUT)
            found = _LOAD_ERROR.search(host_b.qemu.process.log_text())
            destination_error = found.group(0) if found else host_b.qemu.process.log_tail(3)
        downtime = result.get("downtime")
        # The mode the proxy actually ran (read from the store when hosts were given).
        proxy_mode = host_a.proxy.status().profile if host_a.proxy is not None else None
        return MigrationRun(
            mode=proxy_mode,
            backend_features=host_a.backend.features or VirtioFeature(0),
            offered=before.vhost_dev.features,
            acked=negotiation.acked,
            status=status,
            downtime_ms=downtime if isinstance(downtime, int) else None,
            destination_error=destination_error,
            destination_acked=destination_acked,
        )
