"""The lab against real programs: QEMU 7.2 as frontend, DPDK testpmd as backend.

What these tests prove, with no component of ours on the vhost-user path:
the qtest driver makes QEMU negotiate with a real backend and start vhost;
QMP reports exactly what the driver acked; QEMU migrates between two hosts
with the same backend; and the upstream failure reproduces when the source
backend offered more (testpmd ``tso=1``) than the destination's.

testpmd's GET_FEATURES answer (DPDK 22.11, ``net_vhost``) is the one fact
taken from outside: it is asked from testpmd directly (lab.probe), read back
from QEMU's vhost-dev view, and both are compared with the mask FIELD-NOTES
measured, so a DPDK upgrade that changes it fails here loudly rather than
silently changing the other tests' meaning.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.helpers import migrate_into_a_failed_load
from tests.helpers import require_tool
from tests.helpers import run_bounded as run
from vhostcompat.features import ProtocolFeature, VirtioFeature, format_mask
from vhostcompat.lab import qmp
from vhostcompat.lab.errors import ProcessExitedError, VirtioDriverError
from vhostcompat.lab.hosts import dpdk_testpmd, host, source_and_destination
from vhostcompat.lab.process import wait_until
from vhostcompat.lab.qemu import LEGACY_ONLY, QemuVm, device_offer, run_qemu
from vhostcompat.lab.qtest import QTEST_DRIVER_UNSUPPORTED, Negotiation, default_wanted
from vhostcompat.lab.testpmd import RunningTestpmd, TestpmdConfig, run_testpmd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

VHOST_TIMEOUT = 10.0

F = VirtioFeature

# testpmd's GET_FEATURES answers (FIELD-NOTES, DPDK 22.11): tso=1 adds HOST_TSO4/6.
TESTPMD_FEATURES = F(0xD7C66E7CB)
TESTPMD_TSO_FEATURES = TESTPMD_FEATURES | F.VIRTIO_NET_F_HOST_TSO4 | F.VIRTIO_NET_F_HOST_TSO6

# DPDK 22.11's protocol features, as QEMU 7.2 negotiated them (FIELD-NOTES: 0x10cbf).
TESTPMD_PROTOCOL = ProtocolFeature(0x10CBF)


def require_lab() -> None:
    require_tool("qemu-system-x86_64", "dpdk-testpmd")


async def backend_got_its_rings(testpmd: RunningTestpmd) -> None:
    # DPDK logs this once every ring is set and the device is started.
    await wait_until(lambda: "virtio is now ready for processing" in testpmd.process.log_text(),
                     VHOST_TIMEOUT, "testpmd to report its device ready",
                     watch=[testpmd.process])


def assert_backend_view(status: qmp.VirtioStatus, testpmd_features: VirtioFeature) -> None:
    assert status.vhost_dev is not None
    assert status.vhost_dev.features == testpmd_features, (
        f"testpmd offered {format_mask(status.vhost_dev.features, F)}")
    expected = device_offer(testpmd_features)
    assert status.backend_features == expected, (
        f"backend-features {format_mask(status.backend_features, F)}, "
        f"expected {format_mask(expected, F)}")
    assert status.vhost_dev.protocol_features == TESTPMD_PROTOCOL


def assert_driver_view(negotiation: Negotiation, status: qmp.VirtioStatus) -> None:
    # What the driver read from the device is what QEMU says it offers.
    assert negotiation.offered == status.backend_features & ~LEGACY_ONLY
    # What the driver acked is what QEMU records as the guest's features.
    assert status.guest_features == negotiation.acked
    # vhost got the acked bits it handles, plus the vhost-user protocol bit.
    assert status.vhost_dev is not None
    vhost_acked = status.vhost_dev.acked_features
    assert vhost_acked & ~F.VHOST_USER_F_PROTOCOL_FEATURES <= negotiation.acked
    assert F.VHOST_USER_F_PROTOCOL_FEATURES in vhost_acked
    assert F.VIRTIO_F_VERSION_1 in vhost_acked


@pytest.mark.parametrize("tso", [False, True], ids=["tso0", "tso1"])
def test_qtest_driver_negotiates_with_testpmd(lab_dir: Path, tso: bool) -> None:
    require_lab()
    testpmd_features = TESTPMD_TSO_FEATURES if tso else TESTPMD_FEATURES

    async def scenario() -> None:
        async with host(lab_dir, "a", dpdk_testpmd(tso=tso)) as a:
            testpmd, qemu = a.backend, a.qemu
            before = await qmp.virtio_status(qemu)
            assert not before.vhost_started and before.vhost_dev is None

            negotiation = await qemu.driver().initialise()
            status = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
            await backend_got_its_rings(testpmd)

            # testpmd's own answer, asked directly, is what QEMU saw.
            assert testpmd.features == testpmd_features
            assert_backend_view(status, testpmd_features)
            assert_driver_view(negotiation, status)
            # By default the driver acks all it is offered and can honour.
            assert negotiation.acked == default_wanted(negotiation.offered)
            assert negotiation.acked == negotiation.offered & ~QTEST_DRIVER_UNSUPPORTED
            tso_bits = F.VIRTIO_NET_F_HOST_TSO4 | F.VIRTIO_NET_F_HOST_TSO6
            assert (negotiation.acked & tso_bits == tso_bits) is tso
            assert negotiation.mac == qemu.vm.mac
            assert negotiation.queue_pairs == 1
            assert [ring.size for ring in negotiation.rings] == [256, 256]

    run(scenario())


def test_frontend_pinning_and_a_narrower_driver(lab_dir: Path) -> None:
    """indirect_desc=off hides the bit from the guest; the driver declines EVENT_IDX."""
    require_lab()

    async def scenario() -> None:
        options = {"device_properties": {"indirect_desc": "off"}}
        async with host(lab_dir, "a", dpdk_testpmd(), vm_options=options) as a:
            qemu = a.qemu
            wanted = ~F.VIRTIO_RING_F_EVENT_IDX & ~QTEST_DRIVER_UNSUPPORTED
            with pytest.raises(VirtioDriverError):
                await qemu.driver().initialise(wanted & ~F.VIRTIO_F_VERSION_1)
            negotiation = await qemu.driver().initialise(wanted)
            status = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)

            assert F.VIRTIO_RING_F_INDIRECT_DESC not in negotiation.offered
            assert F.VIRTIO_RING_F_EVENT_IDX in negotiation.offered
            assert negotiation.acked == negotiation.offered & wanted
            assert status.guest_features == negotiation.acked
            assert status.vhost_dev is not None
            declined = F.VIRTIO_RING_F_INDIRECT_DESC | F.VIRTIO_RING_F_EVENT_IDX
            assert not status.vhost_dev.acked_features & declined
            # The backend itself still offers both: the pinning is QEMU's.
            assert status.vhost_dev.features & declined == declined

    run(scenario())


def test_two_queue_pairs_and_larger_rings(lab_dir: Path) -> None:
    require_lab()

    async def scenario() -> None:
        options = {"queues": 2, "rx_queue_size": 1024, "tx_queue_size": 512}
        async with host(lab_dir, "a", dpdk_testpmd(queues=2), vm_options=options) as a:
            testpmd, qemu = a.backend, a.qemu
            negotiation = await qemu.driver().initialise()
            status = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
            await backend_got_its_rings(testpmd)

            assert F.VIRTIO_NET_F_MQ in negotiation.acked
            assert (negotiation.max_queue_pairs, negotiation.queue_pairs) == (2, 2)
            assert [ring.size for ring in negotiation.rings] == [1024, 512, 1024, 512]
            assert negotiation.control_ring is not None
            assert status.raw["num-vqs"] == 2 * 2 + 1
            # testpmd saw the second pair's rings (index 3 is its TX ring).
            assert "vring kick idx:3" in testpmd.process.log_text()

    run(scenario())


def test_migration_between_two_testpmd_hosts_completes(lab_dir: Path) -> None:
    require_lab()

    async def scenario() -> None:
        uri = f"unix:{lab_dir / 'migration.sock'}"
        async with source_and_destination(lab_dir, uri, dpdk_testpmd(),
                                          dpdk_testpmd()) as (a, b):
            source, destination = a.qemu, b.qemu
            negotiation = await source.driver().initialise()
            before = await qmp.wait_for_vhost_started(source, VHOST_TIMEOUT)

            result = await qmp.migrate(source, destination, uri)

            assert result["status"] == "completed", result
            assert isinstance(result["total-time"], int)
            assert isinstance(result["downtime"], int)
            assert await qmp.run_state(source) == "postmigrate"
            assert await qmp.run_state(destination) == "running"
            after = await qmp.wait_for_vhost_started(destination, VHOST_TIMEOUT)
            assert after.guest_features == before.guest_features == negotiation.acked
            await backend_got_its_rings(b.backend)

    run(scenario())


def test_upstream_failure_tso_source_to_default_destination(lab_dir: Path) -> None:
    """Source testpmd tso=1, destination default: QEMU refuses the load."""
    require_lab()

    async def scenario() -> None:
        uri = f"unix:{lab_dir / 'migration.sock'}"
        async with source_and_destination(lab_dir, uri, dpdk_testpmd(tso=True),
                                          dpdk_testpmd()) as (a, b):
            source, destination = a.qemu, b.qemu
            negotiation = await source.driver().initialise()
            tso_bits = F.VIRTIO_NET_F_HOST_TSO4 | F.VIRTIO_NET_F_HOST_TSO6
            assert negotiation.acked & tso_bits == tso_bits
            await qmp.wait_for_vhost_started(source, VHOST_TIMEOUT)
            allowed = (await qmp.virtio_status(destination)).host_features
            assert not allowed & tso_bits

            await migrate_into_a_failed_load(source, destination, uri, negotiation.acked,
                                             allowed)
            still = await qmp.virtio_status(source)
            assert still.guest_features == negotiation.acked
            assert still.vhost_started

    run(scenario())


def test_testpmd_as_client_of_a_listening_qemu(lab_dir: Path) -> None:
    """client=1 with QEMU's chardev server=on: the roles swapped work the same."""
    require_lab()

    async def scenario() -> None:
        config = TestpmdConfig(lab_dir / "a.sock", client=True)
        async with run_testpmd(config, lab_dir, "a-testpmd") as testpmd, \
                run_qemu(QemuVm(config.socket_path, chardev_server=True), lab_dir,
                         "a-qemu") as qemu:
            negotiation = await qemu.driver().initialise()
            status = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
            await backend_got_its_rings(testpmd)
            assert_backend_view(status, TESTPMD_FEATURES)
            assert_driver_view(negotiation, status)

    run(scenario())


def test_qemu_without_a_backend_fails_fast_with_its_reason(lab_dir: Path) -> None:
    """QEMU as socket client with nobody listening exits; we say why, at once."""
    require_tool("qemu-system-x86_64")

    async def scenario() -> None:
        vm = QemuVm(lab_dir / "nobody.sock")
        with pytest.raises(ProcessExitedError) as caught:
            async with run_qemu(vm, lab_dir, "lonely", start_timeout=20):
                pytest.fail("QEMU started without its vhost-user backend")
        assert caught.value.returncode != 0
        assert "nobody.sock" in caught.value.log_tail
        assert not (lab_dir / "lonely.qtest").exists()

    started = time.monotonic()
    run(scenario())
    # Well before start_timeout: the exit ended the wait, not the clock.
    assert time.monotonic() - started < 10
