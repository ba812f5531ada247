"""The upstream story, end to end, with the enforcement proxy (real QEMU, real DPDK).

Two "hosts" on one machine, each a QEMU and a real DPDK testpmd back-end: host
A runs the newer back-end (testpmd ``tso=1``), host B the older one (default
options). Both publish their versions from the shipped DPDK catalog into
embedded host stores, and the manager's selection picks the first common
version, exactly as an orchestrator would.

* without a compatibility mode the guest negotiates what A's back-end offers
  (TSO) and the migration to B fails inside QEMU, as upstream reported;
* with both interfaces behind ``vhostcompat proxy`` in the selected version
  (read by each proxy from its host store), the guest negotiates only that
  version's features, the same migration completes, and the destination's
  guest features equal the source's; the proxies recorded the negotiated
  state, so ``check-migration`` agrees;
* an interface whose QEMU asks for more queue pairs or bigger rings than its
  mode allows is refused at start, the limit named;
* a back-end restart (an upgrade) is survived: QEMU reconnects through the
  proxy and the device comes back in the same mode;
* QEMU as the socket server with the back-end as client (OVS
  dpdkvhostuserclient) works through the proxy too.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import migrate_into_a_failed_load
from tests.helpers import require_tool, run_bounded
from vhostcompat import manager
from vhostcompat.demo import Act, act_real_story, run_demo
from vhostcompat.features import VirtioFeature, format_mask
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import ProxyConfig, ProxyMode, run_proxy
from vhostcompat.lab.firmware import write_halt_firmware
from vhostcompat.lab.hosts import dpdk_testpmd, host, source_and_destination
from vhostcompat.lab.process import managed_process, wait_until
from vhostcompat.lab.qemu import QemuPaths, QemuVm, qemu_argv, run_qemu
from vhostcompat.lab.testpmd import RunningTestpmd, TestpmdConfig, run_testpmd
from vhostcompat.profiles import Verdict, load_default_catalog
from vhostcompat.proxy import ProxyState

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

F = VirtioFeature
TSO_VERSION = "debian12.dpdk-vhost.v22.11-tso"
DEFAULT_VERSION = "debian12.dpdk-vhost.v22.11"
TSO = F.VIRTIO_NET_F_HOST_TSO4 | F.VIRTIO_NET_F_HOST_TSO6
IFACE = "vhu-vm1"
VHOST_TIMEOUT = 10.0
SCENARIO_TIMEOUT = 90.0

SMALL_CATALOG = """
[[profile]]
version = "test.one-pair-256"
description = "one queue pair, rings of at most 256"
virtio_features = ["VIRTIO_NET_F_CSUM", "VIRTIO_NET_F_MRG_RXBUF", "VIRTIO_NET_F_MQ",
                   "VHOST_F_LOG_ALL", "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_F_VERSION_1"]
protocol_features = ["MQ", "LOG_SHMFD", "RARP", "REPLY_ACK"]
max_queue_pairs = 1
max_ring_size = 256
"""


def require_lab() -> None:
    require_tool("qemu-system-x86_64", "dpdk-testpmd")


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, SCENARIO_TIMEOUT)


async def publish_and_select(lab_dir: Path) -> tuple[str, str, str]:
    """Host A publishes both testpmd versions (newest first), host B the default one;
    the manager selects the first common version and assigns it to the interface."""
    catalog = load_default_catalog()
    host_a, host_b = str(lab_dir / "host-a"), str(lab_dir / "host-b")
    await manager.publish(host_a, catalog, [TSO_VERSION, DEFAULT_VERSION])
    await manager.publish(host_b, catalog, [DEFAULT_VERSION])
    report = await manager.provision([host_a, host_b], IFACE)
    assert report.version is not None
    return host_a, host_b, report.version


def proxy_of_host_a(lab_dir: Path, mode: ProxyMode, *,
                    roles: tuple[str, str] = ("", "")) -> ProxyConfig:
    """Host a's proxy between QEMU's socket ``a.sock`` and testpmd's ``a-pmd.sock``.

    ``roles``: the endpoint suffixes (``:client``, ``:server``) when the proxy's
    roles are not the default ones (listening for QEMU, connecting to testpmd).
    """
    frontend_role, backend_role = roles
    return ProxyConfig(frontend=f"{lab_dir / 'a.sock'}{frontend_role}",
                       backend=f"{lab_dir / 'a-pmd.sock'}{backend_role}",
                       status_file=lab_dir / "a-proxy.json", mode=mode)


async def backend_ready(testpmd: RunningTestpmd, occurrences: int = 1) -> None:
    # DPDK logs this once every ring is set and the device started.
    await wait_until(
        lambda: testpmd.process.log_text().count("virtio is now ready for processing")
        >= occurrences, VHOST_TIMEOUT, "testpmd to report its device ready",
        watch=[testpmd.process])


def test_selection_picks_the_older_hosts_version(lab_dir: Path) -> None:
    async def scenario() -> None:
        host_a, host_b, version = await publish_and_select(lab_dir)
        assert version == DEFAULT_VERSION
        for address in (host_a, host_b):
            record = await manager.read_host(address)
            assert record.interface(IFACE).version == DEFAULT_VERSION

    run(scenario())


def test_without_a_mode_the_guest_takes_tso_and_migration_fails(lab_dir: Path) -> None:
    require_lab()

    async def scenario() -> None:
        uri = f"unix:{lab_dir / 'migration.sock'}"
        async with source_and_destination(lab_dir, uri, dpdk_testpmd(tso=True),
                                          dpdk_testpmd()) as (source, destination):
            negotiation = await source.qemu.driver().initialise()
            assert negotiation.acked & TSO == TSO
            await qmp.wait_for_vhost_started(source.qemu, VHOST_TIMEOUT)
            allowed = (await qmp.virtio_status(destination.qemu)).host_features

            await migrate_into_a_failed_load(source.qemu, destination.qemu, uri,
                                             negotiation.acked, allowed)

    run(scenario())


def test_with_both_interfaces_in_the_common_mode_migration_completes(lab_dir: Path) -> None:
    require_lab()

    async def scenario() -> None:
        host_a, host_b, version = await publish_and_select(lab_dir)
        profile = load_default_catalog().get(version)
        uri = f"unix:{lab_dir / 'migration.sock'}"
        # Each proxy reads the interface's mode from its own host store.
        async with source_and_destination(
                lab_dir, uri, dpdk_testpmd(tso=True), dpdk_testpmd(),
                source_proxy=ProxyMode(db=host_a, iface=IFACE),
                destination_proxy=ProxyMode(db=host_b, iface=IFACE)) as (source, destination):
            assert source.proxy is not None and destination.proxy is not None
            negotiation = await source.qemu.driver().initialise()
            before = await qmp.wait_for_vhost_started(source.qemu, VHOST_TIMEOUT)
            await backend_ready(source.backend)

            # The guest was offered, and took, only the mode's features.
            assert before.vhost_dev is not None
            offered_by_proxy = before.vhost_dev.features
            assert source.backend.features is not None and source.backend.features >= TSO
            assert offered_by_proxy == source.backend.features & profile.virtio_features
            assert not negotiation.acked & TSO, format_mask(negotiation.acked, F)
            assert before.vhost_dev.acked_features & ~profile.virtio_features == 0
            status = await source.proxy.wait_for_state(ProxyState.RUNNING, VHOST_TIMEOUT)
            assert status.profile == version
            assert status.acked_features == before.vhost_dev.acked_features
            assert status.offered_features == offered_by_proxy
            assert (status.queue_pairs, dict(status.ring_sizes)) == (1, {0: 256, 1: 256})

            result = await qmp.migrate(source.qemu, destination.qemu, uri)

            assert result["status"] == "completed", result
            assert await qmp.run_state(destination.qemu) == "running"
            after = await qmp.wait_for_vhost_started(destination.qemu, VHOST_TIMEOUT)
            assert after.guest_features == before.guest_features == negotiation.acked
            await backend_ready(destination.backend)
            landed = await destination.proxy.wait_for_state(ProxyState.RUNNING, VHOST_TIMEOUT)
            assert landed.acked_features == status.acked_features
            # What the proxies recorded is what check-migration reads: it agrees.
            check = await manager.check_migration(IFACE, host_a, host_b,
                                                  load_default_catalog())
            assert check.compatible, check.lines()
            assert check.check.verdict is Verdict.COMPATIBLE

    run(scenario())


def test_more_queue_pairs_than_the_mode_allows_is_refused_at_start(lab_dir: Path) -> None:
    """QEMU asks for 2 queue pairs, the mode allows 1: QEMU never starts, the limit named."""
    require_lab()

    async def scenario() -> None:
        catalog = lab_dir / "small.toml"
        catalog.write_text(SMALL_CATALOG)
        pmd_socket, proxy_socket = lab_dir / "a-pmd.sock", lab_dir / "a.sock"
        proxy_config = proxy_of_host_a(lab_dir, ProxyMode("test.one-pair-256",
                                                          catalogs=(catalog,)))
        vm = QemuVm(proxy_socket, queues=2, qtest=False)
        paths = QemuPaths.in_directory(lab_dir, "a-qemu")
        write_halt_firmware(paths.firmware)
        async with run_testpmd(TestpmdConfig(pmd_socket, queues=2), lab_dir, "a-testpmd"), \
                run_proxy(proxy_config, lab_dir, "a-proxy") as proxy, \
                managed_process("a-qemu", qemu_argv(vm, paths), lab_dir) as qemu:
            refused = await proxy.wait_for_state(ProxyState.REFUSED, VHOST_TIMEOUT)
            await wait_until(lambda: "more queues than supported: 1" in qemu.log_text(),
                             VHOST_TIMEOUT, "QEMU to refuse its queues", watch=[qemu])
            assert "max_queue_pairs 1 of mode test.one-pair-256" in refused.detail
            assert "back-end offers 128" in refused.detail
            # QEMU retries at once; the proxy slows the retries down instead of spinning.
            assert refused.connections <= 10
        log = (lab_dir / "a-proxy.log").read_text().splitlines()
        assert any("ERROR" in line and "GET_QUEUE_NUM refused" in line for line in log)

    run(scenario())


def test_bigger_rings_than_the_mode_allows_are_refused_at_device_start(lab_dir: Path) -> None:
    require_lab()

    async def scenario() -> None:
        catalog = lab_dir / "small.toml"
        catalog.write_text(SMALL_CATALOG)
        mode = ProxyMode("test.one-pair-256", catalogs=(catalog,))
        async with host(lab_dir, "a", dpdk_testpmd(), proxy=mode,
                        vm_options={"rx_queue_size": 1024}) as a:
            assert a.proxy is not None
            await a.qemu.driver().initialise()  # the guest driver starts the device
            refused = await a.proxy.wait_for_state(ProxyState.REFUSED, VHOST_TIMEOUT)
            assert refused.detail == ("SET_VRING_NUM (ring 0) refused: ring size 1024 exceeds "
                                      "max_ring_size 256 of mode test.one-pair-256")
            status = await qmp.virtio_status(a.qemu)
            assert not status.vhost_started
            assert "ring size 1024" not in a.backend.process.log_text()
            assert "SET_VRING_NUM" not in a.backend.process.log_text()

    run(scenario())


def test_a_backend_restart_brings_the_device_back_in_the_same_mode(lab_dir: Path) -> None:
    """testpmd stops and a new one starts on the same socket: QEMU reconnects via the proxy."""
    require_lab()

    async def scenario() -> None:
        pmd_socket, proxy_socket = lab_dir / "a-pmd.sock", lab_dir / "a.sock"
        proxy_config = proxy_of_host_a(lab_dir, ProxyMode(DEFAULT_VERSION))
        testpmd_config = TestpmdConfig(pmd_socket, tso=True)
        async with contextlib.AsyncExitStack() as first:
            first_pmd = await first.enter_async_context(
                run_testpmd(testpmd_config, lab_dir, "a-testpmd-1"))
            async with run_proxy(proxy_config, lab_dir, "a-proxy") as proxy, \
                    run_qemu(QemuVm(proxy_socket, reconnect=1), lab_dir, "a-qemu") as qemu:
                negotiation = await qemu.driver().initialise()
                before = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
                await backend_ready(first_pmd)
                assert not negotiation.acked & TSO

                await first.aclose()  # the upgrade: the old back-end goes away
                await proxy.wait_for_state(ProxyState.BACKEND_LOST, VHOST_TIMEOUT)
                pmd_socket.unlink(missing_ok=True)
                async with run_testpmd(testpmd_config, lab_dir, "a-testpmd-2") as second_pmd:
                    await backend_ready(second_pmd)
                    after = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
                    status = await proxy.wait_for_state(ProxyState.RUNNING, VHOST_TIMEOUT)

                    assert after.guest_features == before.guest_features
                    assert after.vhost_dev is not None and before.vhost_dev is not None
                    assert after.vhost_dev.features == before.vhost_dev.features
                    assert after.vhost_dev.acked_features == before.vhost_dev.acked_features
                    assert status.connections == 2
                    assert status.acked_features == before.vhost_dev.acked_features

    run(scenario())


def test_qemu_as_server_and_the_backend_as_client_through_the_proxy(lab_dir: Path) -> None:
    """OVS dpdkvhostuserclient style: the proxy connects to QEMU and listens for DPDK."""
    require_lab()

    async def scenario() -> None:
        qemu_socket, proxy_backend = lab_dir / "a.sock", lab_dir / "a-pmd.sock"
        proxy_config = proxy_of_host_a(lab_dir, ProxyMode(DEFAULT_VERSION),
                                       roles=(":client", ":server"))
        async with run_proxy(proxy_config, lab_dir, "a-proxy") as proxy, \
                run_testpmd(TestpmdConfig(proxy_backend, client=True, tso=True), lab_dir,
                            "a-testpmd") as testpmd, \
                run_qemu(QemuVm(qemu_socket, chardev_server=True), lab_dir, "a-qemu") as qemu:
            negotiation = await qemu.driver().initialise()
            status = await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
            await backend_ready(testpmd)
            assert not negotiation.acked & TSO
            assert status.vhost_dev is not None and not status.vhost_dev.features & TSO
            running = await proxy.wait_for_state(ProxyState.RUNNING, VHOST_TIMEOUT)
            assert running.backend_features is not None and running.backend_features >= TSO

    run(scenario())


def test_the_demo_plays_this_story_for_real(tmp_path: Path) -> None:
    """The README's first command: its last act runs the story above and says what happened."""
    require_lab()
    out = io.StringIO()
    status = run_demo([Act("real", act_real_story)], out=out, workdir=tmp_path / "demo")
    text = out.getvalue()
    assert status == 0, text
    assert f"vhu-vm3: {DEFAULT_VERSION} assigned on lab-a" in text
    assert "migration lab-a -> lab-b: failed" in text
    assert "lab-b's QEMU: Features 0x" in text and "unsupported" in text
    assert f"behind vhostcompat proxy in {DEFAULT_VERSION}" in text
    assert "(withheld: VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6)" in text
    assert "migration lab-a -> lab-b: completed, downtime" in text
    assert "(the same)" in text
