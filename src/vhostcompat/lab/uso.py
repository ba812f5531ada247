"""The USO story played for real: a tap VM migrated from QEMU 10.0 to QEMU 7.2.

The most reported virtio-net migration failures of 2024-2026 (KubeVirt 16386,
IONOS on qemu-devel, Proxmox) are a guest that acked UDP segmentation offload
(bits 54-56) because its source's QEMU (8.2+) and kernel (6.2+) offered it on
a tap, moved to a destination whose QEMU or kernel cannot: "Features 0x...
unsupported". :func:`play_tap_migration` runs that pair on this machine: each
side a QEMU of its own binary on its own tap device (made by the lab: down,
no address, deleted afterwards), the qtest guest driver on the source acking
what it is offered, then a live migration; on success the driver adopts the
device on the destination and kicks a TX ring to show it still runs.

``before_migration`` is called with the source once the guest negotiated
(record what it acked, check the destination ...). The result says what
happened, for ``vhostcompat demo`` and the e2e tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.qemu import QemuVm, RunningQemu, run_qemu
from vhostcompat.lab.qtest import DeviceStatus
from vhostcompat.lab.tap import tap_device

DESTINATION_EXIT_TIMEOUT = 10.0
_LOAD_ERROR = re.compile(r"Features 0x[0-9a-f]+ unsupported\. Allowed features: 0x[0-9a-f]+")
_MACHINE_ERROR = re.compile(r"Machine type received is '[^']*' and local is '[^']*'")
# A broadcast frame of a local experimental EtherType (IEEE 802 0x88B5), 60 bytes.
TEST_FRAME = bytes.fromhex("ffffffffffff525400123456" "88b5") + bytes(46)


@dataclasses.dataclass(frozen=True)
class TapSide:
    """One side of the migration: which QEMU, which machine type, which device properties."""

    binary: str
    machine: str
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TapMigrationRun:
    """What one migration from the source QEMU to the destination QEMU showed."""

    offered: VirtioFeature
    """What the source's device offered the guest driver."""
    acked: VirtioFeature
    destination_allowed: VirtioFeature
    """The destination's ``host-features`` before the migration (what its load allows)."""
    status: str
    downtime_ms: int | None
    destination_error: str | None
    """The destination's load error line, when it refused the guest."""
    destination_features: VirtioFeature | None
    """The guest's features on the destination after a completed migration."""
    destination_device: DeviceStatus | None
    destination_run_state: str | None
    transmitted: bool
    """A frame posted on the destination's TX ring came back used."""


async def play_tap_migration(
        run_dir: Path, source: TapSide, destination: TapSide, *,
        before_migration: Callable[[RunningQemu], Awaitable[None]] | None = None,
        ) -> TapMigrationRun:
    """Migrate a qtest guest on ``source`` (a tap) to ``destination`` (another tap)."""
    uri = f"unix:{run_dir / 'tap-migration.sock'}"
    async with contextlib.AsyncExitStack() as stack:
        source_tap = await stack.enter_async_context(tap_device())
        destination_tap = await stack.enter_async_context(tap_device())
        target = await stack.enter_async_context(run_qemu(QemuVm(
            None, tap=destination_tap, binary=destination.binary,
            machine=destination.machine, device_properties=destination.properties,
            incoming=uri), run_dir, "b-qemu"))
        origin = await stack.enter_async_context(run_qemu(QemuVm(
            None, tap=source_tap, binary=source.binary, machine=source.machine,
            device_properties=source.properties), run_dir, "a-qemu"))
        negotiation = await origin.driver().initialise()
        allowed = (await qmp.virtio_status(target)).host_features
        if before_migration is not None:
            await before_migration(origin)
        result = await qmp.migrate(origin, target, uri)
        status = str(result.get("status"))
        downtime = result.get("downtime")
        run = TapMigrationRun(negotiation.offered, negotiation.acked, allowed, status,
                              downtime if isinstance(downtime, int) else None,
                              None, None, None, None, False)
        if status != "completed":
            await target.wait_exit(DESTINATION_EXIT_TIMEOUT)
            log = target.process.log_text()
            found = _LOAD_ERROR.search(log) or _MACHINE_ERROR.search(log)
            return dataclasses.replace(run, destination_error=found.group(0) if found
                                       else target.process.log_tail(3))
        landed = await qmp.virtio_status(target)
        driver = target.driver()
        device = await driver.attach()
        await driver.transmit(TEST_FRAME)
        return dataclasses.replace(
            run, destination_features=landed.guest_features, destination_device=device,
            destination_run_state=await qmp.run_state(target), transmitted=True)
    raise AssertionError("unreachable")  # pragma: no cover (the stack never swallows)
