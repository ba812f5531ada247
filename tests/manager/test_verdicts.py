"""check-migration verdicts from everything known: version, contents, what the guest uses.

Embedded hosts: the source runs vhu0 in test.big; destinations publish the
same version, the same contents under another name, big without indirect
descriptors (and shorter rings), or the smaller mode (one queue pair too).
Each verdict through the library and through the CLI (exit status and JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.manager.helpers import (
    BIG,
    BIG_RENAMED,
    IFACE,
    NO_INDIRECT,
    SMALL,
    SMALL_ACKED,
    F,
    guest,
    publish_modes,
    record,
    run,
    write_catalog,
)
from vhostcompat import manager
from vhostcompat.hoststore import HOST_FILE
from vhostcompat.profiles import Verdict


@pytest.fixture
def hosts(tmp_path: Path) -> dict[str, str]:
    catalog = write_catalog(tmp_path)
    names = {name: str(tmp_path / name)
             for name in ("source", "same", "renamed", "no-indirect", "small")}
    run(publish_modes(catalog, {names["source"]: [BIG, SMALL], names["same"]: [BIG],
                                names["renamed"]: [BIG_RENAMED],
                                names["no-indirect"]: [NO_INDIRECT], names["small"]: [SMALL]}))
    run(manager.assign(names["source"], IFACE, BIG))
    return names


def check(hosts: dict[str, str], destination: str, strict: bool = False
          ) -> manager.MigrationReport:
    return run(manager.check_migration(IFACE, hosts["source"], hosts[destination],
                                       strict=strict))


def test_same_version_and_same_contents_by_another_name(hosts: dict[str, str]) -> None:
    assert check(hosts, "same").check.verdict is Verdict.COMPATIBLE
    renamed = check(hosts, "renamed")
    assert renamed.check.verdict is Verdict.COMPATIBLE_BY_CONTENT
    assert renamed.check.destination_version == BIG_RENAMED
    assert renamed.exit_status == 0 and check(hosts, "renamed", strict=True).compatible


def test_before_the_guest_ran_the_smaller_mode_is_refused_naming_every_item(
        hosts: dict[str, str]) -> None:
    report = check(hosts, "small")
    assert report.check.verdict is Verdict.INCOMPATIBLE and report.exit_status == 1
    text = "\n".join(report.check.reasons)
    assert "VIRTIO_RING_F_INDIRECT_DESC (bit 28)" in text
    assert "max_queue_pairs = 1, below the 2" in text
    assert "max_ring_size = 256, below the 1024" in text


def test_a_guest_that_fits_the_smaller_mode_may_go_there(hosts: dict[str, str]) -> None:
    """Mode test.big, but the guest never acked INDIRECT_DESC and set rings of 256."""
    run(record(hosts["source"], guest()))
    report = check(hosts, "no-indirect")
    assert report.check.verdict is Verdict.COMPATIBLE_FOR_RUNNING_GUEST
    assert report.check.destination_version == NO_INDIRECT
    assert report.exit_status == 0
    assert report.to_json()["verdict"] == "compatible-for-running-guest"
    assert report.lines()[0].startswith("compatible for the running guest (in the "
                                        "destination's test.no-indirect")
    # One queue pair is not enough even for a guest that enabled one: QEMU checks the
    # VM's configured queue count (up to the mode's 2) at the destination's start.
    one_pair = check(hosts, "small")
    assert one_pair.check.verdict is Verdict.INCOMPATIBLE
    assert any("max_queue_pairs = 1, below the 2 in use" in reason
               for reason in one_pair.check.reasons)
    strict = check(hosts, "no-indirect", strict=True)
    assert not strict.compatible and strict.exit_status == 1
    assert strict.lines()[0].startswith("INCOMPATIBLE (strict;")
    # The same guest still gets the stronger answers where they hold.
    assert check(hosts, "same").check.verdict is Verdict.COMPATIBLE


@pytest.mark.parametrize(("state", "blocking"), [
    (guest(SMALL_ACKED | F.VIRTIO_RING_F_INDIRECT_DESC),
     "lacks VIRTIO_RING_F_INDIRECT_DESC (bit 28) in use by the guest"),
    (guest(ring_size=1024), "max_ring_size = 256, below the 1024 in use by the guest"),
    (guest(queue_pairs=2), "max_queue_pairs = 1, below the 2 in use by the guest"),
], ids=["acked-feature", "bigger-rings", "more-queue-pairs"])
def test_what_the_guest_uses_beyond_the_destination_blocks(
        hosts: dict[str, str], state: object, blocking: str) -> None:
    assert isinstance(state, type(guest()))
    run(record(hosts["source"], state))
    report = check(hosts, "small")
    assert report.check.verdict is Verdict.INCOMPATIBLE and report.exit_status == 1
    assert any(blocking in reason for reason in report.check.reasons), report.check.reasons
    if "ring" in blocking:
        assert any("QEMU never checks ring sizes" in reason for reason in report.check.reasons)


def test_a_version_whose_contents_nobody_knows_is_unknown_exit_2(
        hosts: dict[str, str]) -> None:
    path = Path(hosts["source"]) / HOST_FILE
    document = json.loads(path.read_text())
    document["Open_vSwitch"]["external_ids"]["vhost-compat-versions"] = f"test.ghost,{BIG}"
    document["Interface"][IFACE]["options"]["vhost-compat-version"] = "test.ghost"
    path.write_text(json.dumps(document))
    report = check(hosts, "small")
    assert report.check.verdict is Verdict.UNKNOWN and report.exit_status == 2
    assert not report.compatible


def test_the_cli_exit_statuses_and_json(cli: Cli, hosts: dict[str, str]) -> None:
    def verdict(destination: str, *options: str) -> tuple[int, str, object]:
        result = cli("check-migration", "--iface", IFACE, "--from", hosts["source"], "--to",
                     hosts[destination], "--json", *options)
        document = json.loads(result.stdout)
        return result.status, document["verdict"], document["destination_version"]

    assert verdict("same") == (0, "compatible", BIG)
    assert verdict("renamed") == (0, "compatible-by-content", BIG_RENAMED)
    assert verdict("small") == (1, "incompatible", None)
    run(record(hosts["source"], guest()))
    assert verdict("no-indirect") == (0, "compatible-for-running-guest", NO_INDIRECT)
    assert verdict("no-indirect", "--strict")[0] == 1


def test_targets_lists_static_and_live_verdicts(cli: Cli, hosts: dict[str, str],
                                                tmp_path: Path) -> None:
    run(record(hosts["source"], guest()))
    gone = str(tmp_path / "gone")
    result = cli("targets", "--iface", IFACE, "--from", hosts["source"], hosts["same"],
                 hosts["no-indirect"], gone, "--json")
    assert result.status == 0
    document = json.loads(result.stdout)
    by_host = {target["host"]: target for target in document["targets"]}
    assert set(by_host[hosts["same"]]) >= {"host", "compatible", "verdict", "reasons"}
    assert by_host[hosts["same"]]["verdict"] == "compatible"
    small = by_host[hosts["no-indirect"]]
    assert (small["compatible"], small["verdict"]) == (True, "compatible-for-running-guest")
    assert small["static"]["verdict"] == "incompatible"
    assert by_host[gone]["compatible"] is False and by_host[gone]["verdict"] == "unreachable"
    assert "no such host store" in by_host[gone]["reasons"][0]
    assert result.stderr.splitlines() == [f"vhostcompat: {by_host[gone]['reasons'][0]}"]
    # Only unreachable or refusing candidates: never a yes; unsure wins over no.
    assert cli("targets", "--iface", IFACE, "--from", hosts["source"], gone).status == 2
    assert cli("targets", "--iface", IFACE, "--from", hosts["source"], hosts["no-indirect"],
               "--strict").status == 1
