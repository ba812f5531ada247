"""select, provision, check-migration and matrix from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import FC26, V26, V27, Cli


def test_select_prints_the_common_version(cli: Cli, two_hosts: tuple[str, str]) -> None:
    result = cli("select", *two_hosts)
    assert (result.status, result.stdout, result.stderr) == (0, f"{V26}\n", "")


def test_select_json_reports_version(cli: Cli, two_hosts: tuple[str, str]) -> None:
    result = cli("select", "--json", *two_hosts)
    assert result.status == 0
    assert json.loads(result.stdout)["version"] == V26


def test_pinned_version_missing_on_a_host_exits_1(cli: Cli, two_hosts: tuple[str, str]) -> None:
    result = cli("select", *two_hosts, "--prefer", V27)
    assert result.status == 1
    assert f"{two_hosts[1]} does not publish {V27}" in result.stdout
    document = json.loads(cli("select", "--json", *two_hosts, "--prefer", V27).stdout)
    assert document["version"] is None


def test_no_common_version_says_what_each_host_lacks(cli: Cli, tmp_path: Path) -> None:
    # v2.7 lacks fc26's MTU, fc26 lacks v2.7's indirect descriptors: no common
    # ground, by version or by content.
    host_a, host_b = str(tmp_path / "a"), str(tmp_path / "b")
    cli("publish", "--db", host_a, "--only", V27)
    cli("publish", "--db", host_b, "--only", FC26)
    result = cli("select", host_a, host_b)
    assert result.status == 1
    assert result.stdout.splitlines()[0] == "no common version"
    assert f"{host_a} lacks: {FC26}" in result.stdout
    assert f"{host_b} lacks: {V27}" in result.stdout


def test_a_host_satisfying_a_version_by_content_counts(cli: Cli, tmp_path: Path) -> None:
    # Each host publishes only its own profile; v2.7 is a superset of v2.6.
    host_a, host_b = str(tmp_path / "a"), str(tmp_path / "b")
    cli("publish", "--db", host_a, "--only", V27)
    cli("publish", "--db", host_b, "--only", V26)
    document = json.loads(cli("select", "--json", host_a, host_b).stdout)
    assert document["version"] == V26
    assert f"{host_a} satisfies {V26} by content (its {V27})" in document["reasons"]
    # Provisioning publishes the selected version where it was met by content.
    assert cli("provision", host_a, host_b, "--iface", "vhu0").status == 0
    assert cli("versions", host_a).stdout.strip() == f"{host_a}: {V27}, {V26}"


def test_v27_interface_to_the_v26_host_is_refused(cli: Cli, two_hosts: tuple[str, str]) -> None:
    host_a, host_b = two_hosts
    assert cli("assign", "--db", host_a, "--iface", "vhu0", "--version", V27).status == 0
    result = cli("check-migration", "--iface", "vhu0", "--from", host_a, "--to", host_b)
    assert result.status == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "INCOMPATIBLE"
    assert ("upstream.ovs-dpdk.v2.6: destination lacks VIRTIO_RING_F_INDIRECT_DESC (bit 28) "
            "required by upstream.ovs-dpdk.v2.7") in lines
    document = json.loads(cli("check-migration", "--json", "--iface", "vhu0",
                              "--from", host_a, "--to", host_b).stdout)
    assert document["compatible"] is False
    assert any("VIRTIO_RING_F_INDIRECT_DESC" in reason for reason in document["reasons"])


def test_v26_interface_to_the_v26_host_passes(cli: Cli, two_hosts: tuple[str, str]) -> None:
    host_a, host_b = two_hosts
    assert cli("assign", "--db", host_a, "--iface", "vhu1", "--version", V26).status == 0
    result = cli("check-migration", "--iface", "vhu1", "--from", host_a, "--to", host_b)
    assert result.status == 0
    assert result.stdout.splitlines()[0] == "compatible"
    document = json.loads(cli("check-migration", "--json", "--iface", "vhu1",
                              "--from", host_a, "--to", host_b).stdout)
    assert document["compatible"] is True
    assert document["reasons"]


def test_compatible_by_content_is_explicit(cli: Cli, two_hosts: tuple[str, str],
                                           tmp_path: Path) -> None:
    host_a, _ = two_hosts
    host_c = str(tmp_path / "host-c")
    cli("publish", "--db", host_c, "--only", FC26)
    cli("assign", "--db", host_a, "--iface", "vhu1", "--version", V26)
    result = cli("check-migration", "--iface", "vhu1", "--from", host_a, "--to", host_c)
    assert result.status == 0
    assert result.stdout.startswith(f"compatible by content (destination does not publish "
                                    f"{V26}; its {FC26} satisfies it")
    document = json.loads(cli("check-migration", "--json", "--iface", "vhu1",
                              "--from", host_a, "--to", host_c).stdout)
    assert document["verdict"] == "compatible-by-content"


def test_provision_then_check(cli: Cli, two_hosts: tuple[str, str]) -> None:
    result = cli("provision", *two_hosts, "--iface", "vhu2")
    assert result.status == 0
    assert result.stdout.count(f"vhu2: {V26} assigned on") == 2
    assert cli("check-migration", "--iface", "vhu2", "--from", two_hosts[1],
               "--to", two_hosts[0]).status == 0


def test_matrix(cli: Cli, two_hosts: tuple[str, str]) -> None:
    result = cli("matrix", *two_hosts, "--version", V27)
    assert result.status == 1
    assert any(line.split() == [two_hosts[0], "-", "no"] for line in result.stdout.splitlines())
    result = cli("matrix", "--json", *two_hosts, "--version", V26)
    assert result.status == 0
    document = json.loads(result.stdout)
    assert {pair["status"] for pair in document["pairs"]} == {"yes"}


def test_installed_command_gives_exit_statuses_and_no_traceback(
        cli: Cli, two_hosts: tuple[str, str], tmp_path: Path) -> None:
    host_a, host_b = two_hosts
    cli("assign", "--db", host_a, "--iface", "vhu0", "--version", V27)
    environment = {**os.environ, "VHOSTCOMPAT_SYSTEM_CATALOG_DIR": str(tmp_path / "none")}

    def real(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vhostcompat.cli", *argv],
                              capture_output=True, text=True, timeout=60, env=environment,
                              check=False)

    assert real("select", host_a, host_b).stdout == f"{V26}\n"
    refused = real("check-migration", "--iface", "vhu0", "--from", host_a, "--to", host_b)
    assert refused.returncode == 1
    assert "VIRTIO_RING_F_INDIRECT_DESC" in refused.stdout
    missing = real("check-migration", "--iface", "vhu0", "--from", host_a,
                   "--to", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1
    assert "Traceback" not in missing.stderr
