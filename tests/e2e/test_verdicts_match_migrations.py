"""check-migration's verdict against the real migration, through the proxies (QEMU 7.2).

For each case the source host runs the interface in ``e2e.full`` behind
``vhostcompat proxy --db SOURCE --iface vhu0`` in front of the reference
backend (in this process); the qtest guest driver negotiates; the proxy
records what it negotiated in the source's store. The manager then judges
the destination from the stores alone, assigns the destination's mode
(``provision_for_migration`` for a yes, the destination's own version
otherwise), and only then does the destination host start, its proxy in
that mode, and QEMU migrate for real. "Served" means: the migration
completed, vhost started on the destination, its proxy reached RUNNING, and
a frame the adopted guest posts on its TX ring comes back used.

The verdict is a yes exactly when the guest is served afterwards:

=================  =====================  ==========================  ==========================
case               destination publishes  guest                       what really happens
=================  =====================  ==========================  ==========================
same version       e2e.full               acks indirect descriptors   served
unacked feature    e2e.no-indirect        never acks them             served (running-guest)
acked feature      e2e.no-indirect        acks them                   QEMU's load fails
bigger rings       e2e.short-rings        rings of 1024               "completed", NIC dead
more queue pairs   e2e.one-pair           2 queue pairs               destination cannot start
=================  =====================  ==========================  ==========================
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import require_tool, run_bounded
from vhostcompat import manager
from vhostcompat.backend import BackendConfig
from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import ProxyMode
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.hosts import host, reference_backend_in_process
from vhostcompat.lab.process import wait_until
from vhostcompat.lab.qtest import default_wanted
from vhostcompat.profiles import Catalog, Verdict, load_catalog
from vhostcompat.proxy import ProxyState

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

F = VirtioFeature
IFACE = "vhu0"
TIMEOUT = 15.0
FRAME = bytes(60)
BASE = ["VIRTIO_NET_F_CSUM", "VIRTIO_NET_F_MRG_RXBUF", "VIRTIO_NET_F_MQ", "VHOST_F_LOG_ALL",
        "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_F_VERSION_1"]


def _profile(version: str, indirect: bool, pairs: int, ring: int) -> str:
    features = ", ".join(f'"{name}"' for name in
                         [*BASE, *(["VIRTIO_RING_F_INDIRECT_DESC"] if indirect else [])])
    return (f'[[profile]]\nversion = "{version}"\nvirtio_features = [{features}]\n'
            'protocol_features = ["MQ", "LOG_SHMFD", "RARP", "REPLY_ACK"]\n'
            f"max_queue_pairs = {pairs}\nmax_ring_size = {ring}\n")


CATALOG = (_profile("e2e.full", True, 2, 1024) + _profile("e2e.no-indirect", False, 2, 1024)
           + _profile("e2e.short-rings", True, 2, 256) + _profile("e2e.one-pair", True, 1, 1024))


@dataclass(frozen=True)
class Case:
    destination: str
    vm: dict[str, Any] = field(default_factory=dict)
    indirect: bool = True
    verdict: Verdict = Verdict.INCOMPATIBLE
    outcome: str = "served"
    evidence: str = ""
    """A line that must be in what the failed side said (QEMU's log, the proxy's refusal)."""


CASES = {
    "same-version": Case("e2e.full", verdict=Verdict.COMPATIBLE),
    "unacked-feature": Case("e2e.no-indirect", indirect=False,
                            verdict=Verdict.COMPATIBLE_FOR_RUNNING_GUEST),
    "acked-feature": Case("e2e.no-indirect", outcome="load failed",
                          evidence="unsupported. Allowed features"),
    "bigger-rings": Case("e2e.short-rings", {"rx_queue_size": 1024, "tx_queue_size": 1024},
                         outcome="completed, not served",
                         evidence="ring size 1024 exceeds max_ring_size 256 of mode "
                                  "e2e.short-rings"),
    "more-queue-pairs": Case("e2e.one-pair", {"queues": 2},
                             outcome="destination cannot start",
                             evidence="more queues than supported"),
}


async def recorded(address: str) -> bool:
    """The source's proxy has written what the guest negotiated into the store."""
    record = (await manager.read_host(address)).interfaces.get(IFACE)
    return record is not None and record.negotiated.ring_size is not None and \
        record.negotiated.acked_features is not None


async def migrate_and_observe(lab_dir: Path, source_qemu: Any, destination_store: str,
                              backend: BackendConfig, vm: dict[str, Any]) -> tuple[str, str]:
    """Start the destination in its assigned mode, migrate; what happened and the evidence."""
    uri = f"unix:{lab_dir / 'migration.sock'}"
    try:
        async with contextlib.AsyncExitStack() as stack:
            destination = await stack.enter_async_context(host(
                lab_dir, "b", reference_backend_in_process(backend),
                proxy=ProxyMode(db=destination_store, iface=IFACE),
                vm_options={**vm, "incoming": uri}))
            result = await qmp.migrate(source_qemu, destination.qemu, uri)
            if result["status"] != "completed":
                await destination.qemu.wait_exit(TIMEOUT)
                assert await qmp.run_state(source_qemu) == "running"
                return "load failed", destination.qemu.process.log_text()
            assert destination.proxy is not None
            status = await destination.proxy.wait_for(
                lambda status: status.state in (ProxyState.RUNNING, ProxyState.REFUSED,
                                                ProxyState.FAILED), TIMEOUT, "vhost start")
            if status.state is not ProxyState.RUNNING:
                return "completed, not served", "\n".join(status.refusals)
            await qmp.wait_for_vhost_started(destination.qemu, TIMEOUT)
            driver = destination.qemu.driver()
            await driver.attach()
            await driver.transmit(FRAME)
            return "served", ""
    except LabError as error:
        if "more queues than supported" in str(error):
            return "destination cannot start", str(error)
        raise


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_verdict_is_yes_exactly_when_the_guest_is_served_after_migrating(
        lab_dir: Path, name: str) -> None:
    require_tool("qemu-system-x86_64")
    case = CASES[name]

    async def scenario() -> None:
        (lab_dir / "modes.toml").write_text(CATALOG)
        catalog: Catalog = load_catalog([lab_dir / "modes.toml"])
        source_store, destination_store = str(lab_dir / "host-a"), str(lab_dir / "host-b")
        await manager.publish(source_store, catalog, ["e2e.full"])
        await manager.publish(destination_store, catalog, [case.destination])
        await manager.assign(source_store, IFACE, "e2e.full")
        backend = BackendConfig.from_profile(catalog.get("e2e.full"))
        async with host(lab_dir, "a", reference_backend_in_process(backend),
                        proxy=ProxyMode(db=source_store, iface=IFACE),
                        vm_options=case.vm) as source:
            driver = source.qemu.driver()
            wanted = None if case.indirect else default_wanted(~F.VIRTIO_RING_F_INDIRECT_DESC)
            negotiation = await driver.initialise(wanted)
            assert bool(negotiation.acked & F.VIRTIO_RING_F_INDIRECT_DESC) is case.indirect
            await qmp.wait_for_vhost_started(source.qemu, TIMEOUT)
            await wait_until(lambda: recorded(source_store), TIMEOUT,
                             "the proxy to record the negotiated state")

            report = await manager.check_migration(IFACE, source_store, destination_store)
            assert report.check.verdict is case.verdict, report.lines()
            if report.compatible:
                provisioned = await manager.provision_for_migration(
                    IFACE, source_store, [destination_store])
                assert provisioned.modes == ((destination_store, case.destination),)
            else:
                await manager.assign(destination_store, IFACE, case.destination)

            outcome, evidence = await migrate_and_observe(lab_dir, source.qemu,
                                                          destination_store, backend, case.vm)
        assert outcome == case.outcome, (name, outcome, evidence, report.lines())
        assert case.evidence in evidence, evidence
        assert report.compatible is (outcome == "served")

    run_bounded(scenario(), 100.0)
