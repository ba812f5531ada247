"""The USO story end to end: QEMU 10.0 and QEMU 7.2 on tap devices (and over vhost-user).

* ``probe --tap`` reports exactly what QEMU offers a guest, for each QEMU and
  machine type (q35 on 10.0, pc-q35-7.2 on 10.0, q35 on 7.2): the qtest
  driver reads the same mask from the device;
* the IONOS failure, reproduced: QEMU 10 on a tap with USO on, the qtest
  guest acks it, migrated to QEMU 7.2 ``-incoming`` on its own tap: the
  destination refuses the load with the exact "Features 0x... unsupported"
  line (and ``check-migration`` says so beforehand, from what ``record
  --qmp`` read from the source);
* then prevented: both hosts probed and published, nothing in common by
  version, ``baseline`` computes the common profile (no USO, newest common
  machine type pc-q35-7.2), selection picks it, ``qemu-args`` pins QEMU 10
  from it, and the same migration completes with the guest running on the
  destination (DRIVER_OK, same features, a TX ring still kicked and served);
* QEMU 10 to 7.2 over vhost-user behind the proxies completes;
* bad input: one line, exit 2.

QEMU 10.0 is the wrapper scripts/qemu10.sh writes (``$VHOSTCOMPAT_QEMU10``
overrides it); tap devices need root. Both fail these tests under CI=true.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.helpers import require_root, require_tool, run_bounded, run_cli
from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.qemu import LEGACY_ONLY, QemuVm, RunningQemu, qemu10_binary, run_qemu
from vhostcompat.lab.qtest import DeviceStatus
from vhostcompat.lab.story import play_migration
from vhostcompat.lab.tap import tap_device
from vhostcompat.lab.uso import TapSide, play_tap_migration

pytestmark = pytest.mark.e2e

QEMU72 = "qemu-system-x86_64"
USO = (VirtioFeature.VIRTIO_NET_F_GUEST_USO4 | VirtioFeature.VIRTIO_NET_F_GUEST_USO6
       | VirtioFeature.VIRTIO_NET_F_HOST_USO)
USO_ON = {"host_uso": "on", "guest_uso4": "on", "guest_uso6": "on"}
COMMON = "lab.tap-common"
SCENARIO_TIMEOUT = 120.0


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return functools.partial(run_cli, capsys)


@pytest.fixture
def qemu10() -> str:
    binary = qemu10_binary()
    require_tool(QEMU72, binary)
    return binary


@pytest.fixture
def taps(qemu10: str) -> str:
    require_tool("ip")
    require_root()
    return qemu10


def probe_json(cli: Cli, binary: str, machine: str) -> dict[str, object]:
    result = cli("probe", "--tap", "--qemu", binary, "--machine", machine, "--json")
    assert result.status == 0, result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def mask(document: dict[str, object], key: str) -> VirtioFeature:
    block = document[key]
    assert isinstance(block, dict)
    return VirtioFeature(int(block["mask"], 16))


async def offered_by_qemu(run_dir: Path, binary: str, machine: str) -> tuple[
        VirtioFeature, VirtioFeature]:
    """(host-features over QMP, what the qtest driver reads from the device) on a tap."""
    async with tap_device() as tap, run_qemu(QemuVm(None, tap=tap, binary=binary,
                                                    machine=machine), run_dir, "q") as qemu:
        status = await qmp.virtio_status(qemu)
        negotiation = await qemu.driver().initialise()
        return status.host_features, negotiation.offered


def test_probe_reports_what_each_qemu_and_machine_type_offers(
        cli: Cli, taps: str, lab_dir: Path) -> None:
    cases = [(taps, "q35", "pc-q35-10.0"), (taps, "pc-q35-7.2", "pc-q35-7.2"),
             (QEMU72, "q35", "pc-q35-7.2")]
    for binary, machine, resolved in cases:
        document = probe_json(cli, binary, machine)
        assert document["machine"] == resolved
        host, driver = run_bounded(offered_by_qemu(lab_dir, binary, resolved))
        assert mask(document, "features") == host, (binary, machine)
        assert mask(document, "driver_offer") == driver == host & ~LEGACY_ONLY
        has_uso = binary == taps and machine == "q35"
        assert (host & USO == USO) is has_uso, (binary, machine, hex(host))
        offloads = document["tap_offloads"]
        assert isinstance(offloads, dict)
        # QEMU offers guest USO only where the kernel's tap takes USO4|USO6 (0x60).
        assert not has_uso or int(offloads["mask"], 16) & 0x60 == 0x60
        machine_types = document["machine_types"]
        assert isinstance(machine_types, list) and "pc-q35-7.2" in machine_types
        assert ("pc-q35-10.0" in machine_types) is (binary == taps)


def write_captured(cli: Cli, path: Path, binary: str, version: str) -> None:
    result = cli("probe", "--tap", "--qemu", binary, "--as-profile", version)
    assert result.status == 0, result.stderr
    path.write_text(result.stdout)


def test_the_uso_failure_reproduced_then_prevented(cli: Cli, taps: str, lab_dir: Path,
                                                   tmp_path: Path) -> None:
    qemu10 = taps
    host_a, host_b = str(tmp_path / "host-a"), str(tmp_path / "host-b")
    catalog_a, catalog_b = tmp_path / "a.toml", tmp_path / "b.toml"
    common = tmp_path / "common.toml"

    # Both hosts probe and publish what they really offer; nothing is common by version.
    write_captured(cli, catalog_a, qemu10, "lab.qemu-10.0")
    write_captured(cli, catalog_b, QEMU72, "lab.qemu-7.2")
    assert cli("publish", "--db", host_a, "--catalog", str(catalog_a)).status == 0
    assert cli("publish", "--db", host_b, "--catalog", str(catalog_b)).status == 0
    assert cli("select", host_a, host_b).status == 1

    # The baseline: QEMU 7.2's features, the machine types both have, pc-q35-7.2 newest.
    result = cli("baseline", host_a, host_b, "--name", COMMON, "--json")
    assert result.status == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["machine_type"] == "pc-q35-7.2"
    baseline_features = VirtioFeature(int(document["profile"]["virtio_features"], 16))
    assert not baseline_features & USO
    assert "pc-q35-10.0" not in document["profile"]["machine_types"]
    common.write_text(cli("baseline", host_a, host_b, "--name", COMMON).stdout)

    # Host A publishes the baseline too; host B satisfies it by content.
    assert cli("publish", "--db", host_a, "--catalog", str(catalog_a),
               "--catalog", str(common)).status == 0
    selection = json.loads(cli("select", "--json", host_a, host_b).stdout)
    assert selection["version"] == COMMON
    assert selection["machine_type"] == "pc-q35-7.2"
    assert f"{host_b} satisfies {COMMON} by content (its lab.qemu-7.2)" in selection["reasons"]
    assert cli("provision", host_a, host_b, "--iface", "tap-vm").status == 0
    assert cli("assign", "--db", host_a, "--iface", "tap-uso",
               "--version", "lab.qemu-10.0").status == 0

    # The source pinned from the common profile, for QEMU 10 on its machine type.
    result = cli("qemu-args", "--catalog", str(common), "--profile", COMMON,
                 "--qemu", qemu10, "--json")
    assert result.status == 0, result.stderr
    pinning = json.loads(result.stdout)
    assert pinning["machine"] == "pc-q35-7.2"
    pinned = {str(name): str(value) for name, value in pinning["properties"].items()}

    checks: dict[str, tuple[int, str]] = {}

    def recorder(iface: str) -> Callable[[RunningQemu], Awaitable[None]]:
        async def record_and_check(source: RunningQemu) -> None:
            socket = str(source.paths.management_qmp)
            recorded = await asyncio.to_thread(cli, "record", "--qmp", socket, "--db", host_a,
                                               "--iface", iface)
            assert recorded.status == 0, recorded.stderr
            checked = await asyncio.to_thread(cli, "check-migration", "--iface", iface,
                                              "--from", host_a, "--to", host_b)
            checks[iface] = (checked.status, checked.stdout)
        return record_and_check

    destination = TapSide(QEMU72, "pc-q35-7.2")
    failed = run_bounded(play_tap_migration(
        lab_dir, TapSide(qemu10, "pc-q35-7.2", USO_ON), destination,
        before_migration=recorder("tap-uso")), SCENARIO_TIMEOUT)
    (lab_dir / "prevented").mkdir()
    passed = run_bounded(play_tap_migration(
        lab_dir / "prevented", TapSide(qemu10, pinning["machine"], pinned), destination,
        before_migration=recorder("tap-vm")), SCENARIO_TIMEOUT)

    # Reproduced: the guest acked USO, QEMU 7.2 refuses the load, byte for byte.
    assert failed.acked & USO == USO
    assert failed.status == "failed"
    assert failed.destination_error == (f"Features {int(failed.acked):#x} unsupported. "
                                        f"Allowed features: {int(failed.destination_allowed):#x}")
    status, text = checks["tap-uso"]
    assert status == 1 and text.startswith("INCOMPATIBLE")
    assert "VIRTIO_NET_F_GUEST_USO4 (bit 54)" in text and "VIRTIO_NET_F_HOST_USO (bit 56)" in text

    # Prevented: no USO offered, checked compatible, migrated, still running there.
    assert not passed.offered & USO
    status, text = checks["tap-vm"]
    assert status == 0, text
    assert passed.status == "completed", passed
    assert passed.destination_features == passed.acked
    assert passed.destination_device is not None
    assert DeviceStatus.DRIVER_OK in passed.destination_device
    assert passed.destination_run_state == "running"
    assert passed.transmitted


def test_qemu10_to_qemu72_over_vhost_user_behind_the_proxies(qemu10: str,
                                                             lab_dir: Path) -> None:
    require_tool("dpdk-testpmd")
    mode = "debian12.dpdk-vhost.v22.11"
    run = run_bounded(play_migration(lab_dir, mode=mode, vm_options={"machine": "pc-q35-7.2"},
                                     source_options={"binary": qemu10}), SCENARIO_TIMEOUT)
    assert run.mode == mode
    assert run.status == "completed", run
    assert run.destination_acked == run.acked
    assert not run.acked & (VirtioFeature.VIRTIO_NET_F_HOST_TSO4 | USO)


@pytest.mark.parametrize(("argv", "message"), [
    (["--qemu", "/nonexistent/qemu"], "QEMU /nonexistent/qemu: no such file"),
    (["--qemu", "/bin/true"], "QEMU /bin/true: not QEMU"),
    (["--qemu", QEMU72, "--machine", "pc-q35-10.0"],
     f"QEMU {QEMU72}: has no machine type 'pc-q35-10.0'"),
    (["--qemu", QEMU72, "--tun", "/nonexistent/tun"],
     "tap probe: /nonexistent/tun: no such device"),
])
def test_bad_input_is_one_line_and_exit_2(cli: Cli, argv: list[str], message: str) -> None:
    require_tool(QEMU72)
    result = cli("probe", "--tap", *argv)
    assert result.status == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_without_cap_net_admin_the_tap_probe_says_so() -> None:
    require_tool(QEMU72, "setpriv")
    require_root()
    # Root without CAP_NET_ADMIN, in a child process: TUNSETIFF answers EPERM.
    result = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable,
         "-m", "vhostcompat.cli", "probe", "--tap", "--qemu", QEMU72],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    assert result.stderr == ("vhostcompat: tap probe: /dev/net/tun: TUNSETIFF: creating a "
                             "tap needs CAP_NET_ADMIN (run as root)\n")
