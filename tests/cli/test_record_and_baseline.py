"""record (machine type and guest features on the interface row) and baseline, without QEMU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import V26, V27, Cli
from tests.helpers import run_bounded
from vhostcompat.features import VirtioFeature
from vhostcompat.hoststore import HOST_FILE, MACHINE_TYPE_KEY, open_host
from vhostcompat.lab.errors import QmpCommandError
from vhostcompat.profiles import NegotiatedState
from vhostcompat.record import driver_ok, machine_type_from_qom


def test_machine_type_round_trips_through_the_interface_row(tmp_path: Path, cli: Cli) -> None:
    host = str(tmp_path / "h")
    assert cli("publish", "--db", host, "--only", V26).status == 0
    state = NegotiatedState(acked_features=VirtioFeature.VIRTIO_F_VERSION_1,
                            machine_type="pc-q35-7.2", status="running")

    async def record_and_read() -> NegotiatedState:
        async with open_host(host) as store:
            await store.record_negotiated("tap0", state)
            return (await store.read()).interface("tap0").negotiated

    assert run_bounded(record_and_read()) == state
    rows = json.loads((Path(host) / HOST_FILE).read_text())
    assert rows["Interface"]["tap0"]["external_ids"][MACHINE_TYPE_KEY] == "pc-q35-7.2"


def test_qom_machine_type_and_driver_status() -> None:
    assert machine_type_from_qom("pc-q35-10.0-machine") == "pc-q35-10.0"
    with pytest.raises(QmpCommandError):
        machine_type_from_qom("q35")
    assert driver_ok({"status": {"statuses": ["VIRTIO_CONFIG_S_DRIVER_OK: Driver setup"]}})
    assert not driver_ok({"status": {"statuses": ["VIRTIO_CONFIG_S_DRIVER: x"]}})


def test_record_from_a_socket_nobody_listens_on_is_one_line(tmp_path: Path, cli: Cli) -> None:
    host = str(tmp_path / "h")
    assert cli("publish", "--db", host, "--only", V26).status == 0
    result = cli("record", "--qmp", str(tmp_path / "none.qmp"), "--db", host, "--iface", "t")
    assert result.status == 2
    assert result.stderr.startswith(f"vhostcompat: QMP {tmp_path / 'none.qmp'}: ")
    assert result.stderr.count("\n") == 1


def test_baseline_prints_a_catalog_entry_every_host_satisfies(tmp_path: Path, cli: Cli) -> None:
    host_a, host_b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli("publish", "--db", host_a, "--only", V27).status == 0
    assert cli("publish", "--db", host_b, "--only", "fc26.ovs-dpdk.v2.6").status == 0
    assert cli("select", host_a, host_b).status == 1
    result = cli("baseline", host_a, host_b, "--name", "common.v1")
    assert result.status == 0, result.stderr
    catalog = tmp_path / "common.toml"
    catalog.write_text(result.stdout)
    assert result.stdout.startswith(f"# baseline of {host_a} ({V27})\n")
    # Published on host a, host b meets it by content: now there is a common version.
    assert cli("publish", "--db", host_a, "--catalog", str(catalog)).status == 0
    assert cli("select", host_a, host_b).stdout.strip() == "common.v1"
    assert cli("profile", "diff", "--catalog", str(catalog), "common.v1",
               "common.v1").status == 0
    bad = cli("baseline", host_a, host_b, "--name", "has space")
    assert bad.status == 2 and "invalid version string" in bad.stderr


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give a vhost-user SOCKET to probe, or --tap"),
    (["/tmp/x.sock", "--machine", "q35"], "--machine only go with --tap"),
    (["--tap", "/tmp/x.sock"], "--tap probes the tap backend: no SOCKET, no --set-owner"),
    (["--tap", "--as-profile", "a b"], "--as-profile: invalid version string 'a b'"),
])
def test_probe_options_that_do_not_go_together(cli: Cli, argv: list[str],
                                               message: str) -> None:
    result = cli("probe", *argv)
    assert result.status == 2
    assert result.stderr == f"vhostcompat: {message}\n"
