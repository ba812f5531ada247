"""profiles, profile show/diff and qemu-args from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import FC26, V26, V27, Cli


def test_profiles_lists_newest_first(cli: Cli) -> None:
    result = cli("profiles")
    assert result.status == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["VERSION", "VIRTIO"]
    versions = [line.split()[0] for line in lines[1:]]
    assert versions.index(V27) < versions.index(V26)
    document = json.loads(cli("profiles", "--json").stdout)
    assert [entry["version"] for entry in document["profiles"]] == versions


def test_profile_show(cli: Cli) -> None:
    result = cli("profile", "show", V27)
    assert result.status == 0
    assert "  VIRTIO_RING_F_INDIRECT_DESC (bit 28)" in result.stdout.splitlines()
    document = json.loads(cli("profile", "show", "--json", V27).stdout)
    assert "VIRTIO_RING_F_INDIRECT_DESC" in document["virtio_feature_names"]
    assert document["max_queue_pairs"] == 8


def test_profile_diff_exit_status(cli: Cli) -> None:
    result = cli("profile", "diff", V27, V26)
    assert result.status == 1
    assert "only in the first: VIRTIO_RING_F_INDIRECT_DESC (bit 28)" in result.stdout
    assert cli("profile", "diff", V26, V26).status == 0
    document = json.loads(cli("profile", "diff", "--json", V26, FC26).stdout)
    assert document["identical"] is False


def test_qemu_args(cli: Cli) -> None:
    result = cli("qemu-args", "--profile", V26)
    assert result.status == 0
    (line,) = result.stdout.splitlines()
    assert line.startswith("virtio-net-pci,")
    assert "indirect_desc=off" in line.split(",")
    assert all(note.startswith("note: ") for note in result.stderr.splitlines())
    document = json.loads(cli("qemu-args", "--json", "--profile", V26).stdout)
    assert document["properties"]["indirect_desc"] == "off"


def test_qemu_args_exit_1_when_qemu_cannot_honour_the_profile(cli: Cli, tmp_path: Path) -> None:
    catalog = tmp_path / "small.toml"
    catalog.write_text('[[profile]]\nversion = "tiny"\nvirtio_features = []\n'
                       "max_ring_size = 64\n")
    result = cli("qemu-args", "--profile", "tiny", "--catalog", str(catalog))
    assert result.status == 1
    assert "below QEMU's minimum" in result.stderr
