"""``vhostcompat probe`` against DPDK testpmd's vhost PMD, and against the reference backend.

testpmd (Debian's DPDK 22.11) is a third-party backend: the probe must
report its offer by name (FIELD-NOTES measured 0xd7c66e7cb, 0xd7c66ffcb
with ``tso=1``, protocol features 0x10cbf, 128 queue pairs), agree with the
lab's independent GET_FEATURES probe, and leave it unconfigured: QEMU can
still start on it afterwards. A reference backend started with the catalog
profile written from those measurements answers the probe identically.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import require_tool
from tests.helpers import run_bounded as run
from vhostcompat.features import ProtocolFeature, VirtioFeature, names
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import run_reference_backend
from vhostcompat.lab.process import start_process
from vhostcompat.lab.qemu import QemuVm, run_qemu
from vhostcompat.lab.testpmd import TestpmdConfig, run_testpmd
from vhostcompat.probe import probe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

F = VirtioFeature
TESTPMD_FEATURES = F(0xD7C66E7CB)
TESTPMD_TSO_FEATURES = F(0xD7C66FFCB)
TESTPMD_PROTOCOL = ProtocolFeature(0x10CBF)
TESTPMD_QUEUE_PAIRS = 128  # whatever queues= says (FIELD-NOTES)
DPDK_PROFILE = "debian12.dpdk-vhost.v22.11"




async def probe_command(run_dir: Path, socket_path: Path, *options: str) -> tuple[int, str]:
    """``vhostcompat probe SOCKET OPTIONS`` as a user runs it: exit status and stdout."""
    argv = [sys.executable, "-m", "vhostcompat.cli", "probe", str(socket_path), *options]
    process = await start_process("probe", argv, run_dir)
    status = await process.wait(20)
    return status, process.log_text()


@pytest.mark.parametrize("tso", [False, True], ids=["tso0", "tso1"])
def test_probe_reports_testpmd_by_name_and_leaves_it_unconfigured(lab_dir: Path,
                                                                  tso: bool) -> None:
    require_tool("dpdk-testpmd", "qemu-system-x86_64")
    expected = TESTPMD_TSO_FEATURES if tso else TESTPMD_FEATURES

    async def scenario() -> None:
        config = TestpmdConfig(lab_dir / "pmd.sock", tso=tso)
        async with run_testpmd(config, lab_dir) as testpmd:
            result = await probe(testpmd.socket_path, timeout=10)
            assert result.features == expected
            # The lab's own raw GET_FEATURES, code shared with nothing of ours, agrees.
            assert testpmd.features == result.features
            assert result.protocol_features == TESTPMD_PROTOCOL
            assert result.queue_pairs == TESTPMD_QUEUE_PAIRS
            assert result.migration_blockers == []

            status, output = await probe_command(lab_dir, testpmd.socket_path, "--json")
            assert status == 0, output
            document = json.loads(output)
            assert document["features"] == {"mask": f"{int(expected):#x}",
                                             "names": names(expected, F)}
            assert "VIRTIO_RING_F_INDIRECT_DESC" in document["features"]["names"]
            assert ("VIRTIO_NET_F_HOST_TSO4" in document["features"]["names"]) is tso
            assert document["protocol_features"]["mask"] == "0x10cbf"
            assert document["migration"] == {"ready": True, "blockers": []}

            # Two probes later, testpmd still serves a QEMU as if nothing happened.
            async with run_qemu(QemuVm(testpmd.socket_path), lab_dir, "qemu") as qemu:
                await qemu.driver().initialise()
                started = await qmp.wait_for_vhost_started(qemu, 10)
                assert started.vhost_dev is not None
                assert started.vhost_dev.features == expected

    run(scenario())


def test_the_reference_backend_in_the_dpdk_profile_probes_like_testpmd(lab_dir: Path) -> None:
    require_tool("dpdk-testpmd")

    async def scenario() -> None:
        async with run_testpmd(TestpmdConfig(lab_dir / "pmd.sock"), lab_dir) as testpmd, \
                run_reference_backend(lab_dir, "ref", ["--profile", DPDK_PROFILE]) as reference:
            from_testpmd = await probe(testpmd.socket_path, timeout=10)
            from_reference = await probe(reference.socket_path, timeout=10)
            status, text = await probe_command(lab_dir, reference.socket_path)
        assert (from_reference.features, from_reference.protocol_features,
                from_reference.queue_pairs) == (from_testpmd.features,
                                                from_testpmd.protocol_features,
                                                from_testpmd.queue_pairs)
        assert status == 0
        lines = text.splitlines()
        assert f"features: {int(TESTPMD_FEATURES):#x}" in lines
        assert "  VIRTIO_RING_F_INDIRECT_DESC (bit 28)" in lines
        assert "protocol features: 0x10cbf" in lines
        assert "queue pairs: 128" in lines
        assert lines[-1] == "migration: ready"

    run(scenario())
