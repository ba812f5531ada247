"""The reference backend against real QEMU 7.2: start, migration, and the upstream failure.

What these tests prove:

* started with a profile, the backend is what QEMU sees: the ``vhost-dev``
  features are exactly the profile's, and the device's offer is the
  profile's changed only by what QEMU itself drops and adds (stated once in
  :mod:`vhostcompat.lab.qemu`);
* a migration between two QEMUs on two reference backends with the same
  profile completes, carrying the TX ring's position: the guest transmits
  through qtest, the backend drains the ring, reports where it stopped in
  GET_VRING_BASE, and the destination backend resumes there (QEMU's own
  load would refuse an index inconsistent with the used ring);
* with the destination backend lacking VIRTIO_RING_F_INDIRECT_DESC and the
  guest having acked it, QEMU's load fails (``Features 0x... unsupported``):
  the upstream proposal's failure, reproduced with our backend;
* a ring larger than the backend's limit is refused with a line naming the
  limit (QEMU itself never checks ring sizes on migration);
* ``vhostcompat backend`` as a process carries QEMU to a running vhost device,
  and the start-up bench measures it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from bench.bench_start import BUILTIN_BACKENDS, measure_once
from bench.bench_start_backends import reference_backend

from tests.e2e.helpers import migrate_into_a_failed_load
from tests.helpers import SCENARIO_TIMEOUT, require_tool
from tests.helpers import run_bounded as run
from vhostcompat.backend import BackendConfig, BackendServer, NetDevice
from vhostcompat.features import VirtioFeature, format_mask
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import run_reference_backend
from vhostcompat.lab.hosts import (
    BackendFactory,
    host,
    reference_backend_in_process,
    source_and_destination,
)
from vhostcompat.lab.process import wait_until
from vhostcompat.lab.qemu import LEGACY_ONLY, QemuVm, RunningQemu, device_offer, run_qemu
from vhostcompat.lab.qtest import (
    COMMON_QUEUE_SELECT,
    PCI_BAR0,
    QTEST_DRIVER_UNSUPPORTED,
    Negotiation,
    VirtioPciCapType,
)
from vhostcompat.profiles import load_catalog, load_default_catalog

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

F = VirtioFeature
VHOST_TIMEOUT = 10.0
V27, V26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6"
CATALOG = load_default_catalog()

# struct virtio_pci_common_cfg: queue_notify_off (le16) of the selected queue.
COMMON_QUEUE_NOTIFY_OFF = 0x1E
PCI_BAR_64BIT = 0x4
PACKET_ADDRESS = 0x40_0000  # guest RAM well above the qtest driver's rings
PACKET = bytes(12 + 60)     # a virtio-net header and a minimal frame
TX_RING = 1


def require_qemu() -> None:
    require_tool("qemu-system-x86_64")


def reference(version: str) -> BackendFactory[BackendServer]:
    return reference_backend_in_process(BackendConfig.from_profile(CATALOG.get(version)))


def only_device(backend: BackendServer) -> NetDevice:
    devices = list(backend.devices.values())
    assert len(devices) == 1, devices
    return devices[0]


# -- a guest transmitting through qtest ------------------------------------------------

async def _bar_address(qemu: RunningQemu, negotiation: Negotiation, bar: int) -> int:
    driver = qemu.driver()
    low = await driver.config_read(negotiation.pci, PCI_BAR0 + 4 * bar, 4)
    high = 0
    if low & PCI_BAR_64BIT:
        high = await driver.config_read(negotiation.pci, PCI_BAR0 + 4 * bar + 4, 4)
    return (low & ~0xF) | high << 32


async def notify_address(qemu: RunningQemu, negotiation: Negotiation, queue: int) -> int:
    """Where the driver writes to notify ``queue`` (virtio-pci "Notification structure")."""
    caps = await qemu.driver().read_capabilities(negotiation.pci)
    common = caps[VirtioPciCapType.COMMON_CFG]
    notify = caps[VirtioPciCapType.NOTIFY_CFG]
    common_base = await _bar_address(qemu, negotiation, common.bar) + common.offset
    await qemu.qtest.writew(common_base + COMMON_QUEUE_SELECT, queue)
    offset = await qemu.qtest.readw(common_base + COMMON_QUEUE_NOTIFY_OFF)
    notify_base = await _bar_address(qemu, negotiation, notify.bar) + notify.offset
    return notify_base + offset * notify.notify_off_multiplier


async def transmit(qemu: RunningQemu, negotiation: Negotiation, count: int) -> int:
    """Post ``count`` packets on the TX ring, notify, wait until all are used.

    Returns the available index after them. Under TCG QEMU signals the
    ring's ioeventfd itself, which is the kick eventfd the backend watches.
    """
    qtest, ring = qemu.qtest, negotiation.rings[TX_RING]
    await qtest.write(PACKET_ADDRESS, PACKET)
    start = await qtest.readw(ring.avail + 2)
    for number in range(count):
        slot = (start + number) % ring.size
        descriptor = ring.desc + 16 * slot
        await qtest.writeq(descriptor, PACKET_ADDRESS)
        await qtest.writel(descriptor + 8, len(PACKET))
        await qtest.writew(descriptor + 12, 0)
        await qtest.writew(ring.avail + 4 + 2 * slot, slot)
    end = (start + count) % 65536
    await qtest.writew(ring.avail + 2, end)
    await qtest.writew(await notify_address(qemu, negotiation, TX_RING), TX_RING)

    async def all_used() -> bool:
        return bool(await qtest.readw(ring.used + 2) == end)

    await wait_until(all_used, VHOST_TIMEOUT, "the backend to use the TX buffers",
                     watch=[qemu.process])
    return end


# -- the tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [V27, "fc26.ovs-dpdk.v2.6", "debian12.dpdk-vhost.v22.11"])
def test_qemu_sees_exactly_the_profile(lab_dir: Path, version: str) -> None:
    require_qemu()
    profile = CATALOG.get(version)

    async def scenario() -> None:
        async with host(lab_dir, "a", reference(version)) as a:
            negotiation = await a.qemu.driver().initialise()
            status = await qmp.wait_for_vhost_started(a.qemu, VHOST_TIMEOUT)

            assert status.vhost_dev is not None
            assert status.vhost_dev.features == profile.virtio_features, format_mask(
                status.vhost_dev.features, F)
            expected = device_offer(profile.virtio_features)
            assert status.backend_features == expected, (
                f"backend-features {format_mask(status.backend_features, F)}, "
                f"expected {format_mask(expected, F)}")
            assert negotiation.offered == expected & ~LEGACY_ONLY
            assert status.guest_features == negotiation.acked
            # QEMU 7.2 knows every protocol feature these profiles offer and acks them all.
            assert status.vhost_dev.protocol_features == profile.protocol_features
            assert status.vhost_dev.max_queues == profile.max_queue_pairs

            # The backend's own account matches QEMU's.
            device = only_device(a.backend)
            assert device.acked_features == status.vhost_dev.acked_features
            assert device.session.owner
            assert device.session.started_rings() == (0, 1)
            assert [device.session.rings[index].num for index in (0, 1)] == [256, 256]
            assert 0 < device.memory.total_size <= a.qemu.vm.memory_mib << 20

    run(scenario())


def test_two_queue_pairs_within_the_profile(lab_dir: Path) -> None:
    require_qemu()

    async def scenario() -> None:
        # V27: MQ, 8 queue pairs
        async with host(lab_dir, "a", reference(V27), vm_options={"queues": 2}) as a:
            negotiation = await a.qemu.driver().initialise()
            status = await qmp.wait_for_vhost_started(a.qemu, VHOST_TIMEOUT)
            assert negotiation.queue_pairs == 2
            assert status.vhost_dev is not None and status.vhost_dev.max_queues == 8
            # One connection carries both pairs' rings.
            assert only_device(a.backend).session.started_rings() == (0, 1, 2, 3)

    run(scenario())


def test_migration_between_two_reference_backends_completes(lab_dir: Path) -> None:
    require_qemu()

    async def scenario() -> None:
        uri = f"unix:{lab_dir / 'migration.sock'}"
        async with source_and_destination(lab_dir, uri, reference(V27),
                                          reference(V27)) as (source, destination):
            # Without GUEST_ANNOUNCE the guest cannot announce itself: QEMU
            # asks the destination backend to (SEND_RARP).
            wanted = ~F.VIRTIO_NET_F_GUEST_ANNOUNCE & ~QTEST_DRIVER_UNSUPPORTED
            negotiation = await source.qemu.driver().initialise(wanted)
            await qmp.wait_for_vhost_started(source.qemu, VHOST_TIMEOUT)
            sent = await transmit(source.qemu, negotiation, 5)
            source_device = only_device(source.backend)
            assert source_device.queues[TX_RING].buffers == 5

            result = await qmp.migrate(source.qemu, destination.qemu, uri)

            assert result["status"] == "completed", result
            assert await qmp.run_state(destination.qemu) == "running"
            after = await qmp.wait_for_vhost_started(destination.qemu, VHOST_TIMEOUT)
            assert after.guest_features == negotiation.acked
            # The source logged dirty pages (LOG_ALL, SET_LOG_BASE) and
            # reported where each ring stopped ...
            assert source_device.dirty_log is not None
            assert source_device.reported_bases == {0: 0, TX_RING: sent}
            # ... and the destination resumed exactly there.
            destination_device = only_device(destination.backend)
            rings = destination_device.session.rings
            assert {index: rings[index].base for index in (0, 1)} == {0: 0, TX_RING: sent}
            assert destination_device.queues[TX_RING].last_avail == sent

            await wait_until(lambda: bool(destination_device.rarp_macs), VHOST_TIMEOUT,
                             "SEND_RARP on the destination backend",
                             watch=[destination.qemu.process])
            assert destination_device.rarp_macs[0] == bytes.fromhex(
                source.qemu.vm.mac.replace(":", ""))
            # Downtime stays a lab figure: printed by -s, asserted only as present.
            print(f"migration: total {result['total-time']} ms, "
                  f"downtime {result['downtime']} ms")

    run(scenario())


def test_destination_without_indirect_descriptors_fails_qemus_load(lab_dir: Path) -> None:
    """The upstream proposal's failure: v2.7 source, v2.6 destination, guest uses indirect."""
    require_qemu()

    async def scenario() -> None:
        uri = f"unix:{lab_dir / 'migration.sock'}"
        async with source_and_destination(lab_dir, uri, reference(V27),
                                          reference(V26)) as (source, destination):
            negotiation = await source.qemu.driver().initialise()
            assert F.VIRTIO_RING_F_INDIRECT_DESC in negotiation.acked
            await qmp.wait_for_vhost_started(source.qemu, VHOST_TIMEOUT)
            allowed = (await qmp.virtio_status(destination.qemu)).host_features
            assert allowed == device_offer(CATALOG.get(V26).virtio_features)
            # The one bit the guest uses that the destination lacks.
            assert negotiation.acked & ~allowed == F.VIRTIO_RING_F_INDIRECT_DESC

            await migrate_into_a_failed_load(source.qemu, destination.qemu, uri,
                                             negotiation.acked, allowed)
            # The source keeps running on its backend.
            still = await qmp.virtio_status(source.qemu)
            assert still.vhost_started and still.guest_features == negotiation.acked
            assert only_device(source.backend).session.started_rings() == (0, 1)

    run(scenario())


def test_a_ring_beyond_the_backend_limit_is_refused_with_the_limit_named(
        lab_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_qemu()
    catalog_file = lab_dir / "old-host.toml"
    catalog_file.write_text(
        '[[profile]]\nversion = "old.host.small-rings"\n'
        f'virtio_features = "{int(CATALOG.get(V27).virtio_features):#x}"\n'
        'protocol_features = ["MQ", "LOG_SHMFD", "RARP"]\nmax_ring_size = 256\n')
    profile = load_catalog([catalog_file]).get("old.host.small-rings")
    backend = reference_backend_in_process(BackendConfig.from_profile(profile))
    caplog.set_level(logging.INFO, logger="vhostcompat.backend")

    async def scenario() -> None:
        options = {"rx_queue_size": 1024, "tx_queue_size": 1024}
        async with host(lab_dir, "a", backend, vm_options=options) as a:
            await a.qemu.driver().initialise()
            server = a.backend
            await wait_until(lambda: bool(server.closed), VHOST_TIMEOUT,
                             "the backend to refuse the ring", watch=[a.qemu.process])
            reason = server.closed[0].reason
            assert reason is not None
            assert "SET_VRING_NUM (ring 0): ring size 1024 out of range (1 to 256)" in reason
            assert server.closed[0].device.closed
            status = await qmp.virtio_status(a.qemu)
            assert not status.vhost_started

    run(scenario())
    # The backend's errors only: qemu.qmp logs its own when a connect races QEMU's listen().
    errors = [record.getMessage() for record in caplog.records
              if record.levelno >= logging.ERROR and record.name.startswith("vhostcompat.")]
    assert len(errors) == 1 and "ring size 1024 out of range (1 to 256)" in errors[0]


def test_the_backend_command_carries_qemu_to_a_running_device(lab_dir: Path) -> None:
    require_qemu()
    profile = CATALOG.get(V27)

    async def scenario() -> None:
        async with run_reference_backend(lab_dir, "a-backend", ["--profile", V27]) as backend:
            async with run_qemu(QemuVm(backend.socket_path), lab_dir, "a-qemu") as qemu:
                await qemu.driver().initialise()
                status = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
                assert status.vhost_dev is not None
                assert status.vhost_dev.features == profile.virtio_features
            assert await backend.process.stop() == 0
            log = backend.process.log_text()
            # Device lines name QEMU's connection: the first on a-backend.sock.
            assert "INFO: a-backend_sock#1: features acked:" in log
            assert "INFO: a-backend_sock#1: memory table:" in log
            assert "ERROR" not in log and "Traceback" not in log
            assert not backend.socket_path.exists()

    run(scenario())


def test_the_start_bench_measures_the_reference_backend() -> None:
    require_qemu()
    assert BUILTIN_BACKENDS["reference"] is reference_backend
    sample = asyncio.run(measure_once(reference_backend))
    assert 0 < sample.qmp_ready <= sample.driver_ok <= sample.vhost_started < SCENARIO_TIMEOUT
