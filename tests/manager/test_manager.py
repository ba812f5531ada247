"""manager: selection, provisioning, migration checks and the matrix over embedded hosts."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import run_bounded
from vhostcompat import manager
from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature
from vhostcompat.hoststore import (
    HOST_FILE,
    HostStoreCorruptError,
    HostStoreMissingError,
    NotPublishedError,
    open_host,
)
from vhostcompat.profiles import Catalog, NegotiatedState, Verdict, load_catalog
from vhostcompat.profiles.catalog import merge_entries, shipped_catalog_entries

T = TypeVar("T")
V27, V26, FC26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6", "fc26.ovs-dpdk.v2.6"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return run_bounded(coroutine, 30.0)


@pytest.fixture
def catalog() -> Catalog:
    return merge_entries(shipped_catalog_entries())


@pytest.fixture
def hosts(tmp_path: Path, catalog: Catalog) -> tuple[str, str]:
    """host-a publishes every shipped version, host-b only upstream 2.6."""
    host_a, host_b = str(tmp_path / "host-a"), str(tmp_path / "host-b")
    run(manager.publish(host_a, catalog))
    run(manager.publish(host_b, catalog, [V26]))
    return host_a, host_b


def test_select_over_the_two_hosts(hosts: tuple[str, str]) -> None:
    report = run(manager.select(hosts))
    assert report.selection.version == V26
    assert report.lines() == [V26]
    assert report.to_json()["version"] == V26


def test_pinning_a_version_one_host_lacks_is_refused(hosts: tuple[str, str]) -> None:
    report = run(manager.select(hosts, prefer=V27))
    assert report.selection.version is None
    assert report.to_json()["lacking"] == {hosts[1]: [V27]}


def test_provision_assigns_on_every_host(hosts: tuple[str, str]) -> None:
    report = run(manager.provision(hosts, "vhu0"))
    assert report.version == V26
    for host in hosts:
        assert run(manager.read_host(host)).interface("vhu0").version == V26


def test_provision_without_a_common_version_writes_nothing(tmp_path: Path,
                                                           catalog: Catalog) -> None:
    # Disjoint by version and by content: fc26 has MTU, v2.7 indirect descriptors.
    host_a, host_b = str(tmp_path / "a"), str(tmp_path / "b")
    run(manager.publish(host_a, catalog, [V27]))
    run(manager.publish(host_b, catalog, ["fc26.ovs-dpdk.v2.6"]))
    report = run(manager.provision([host_a, host_b], "vhu0"))
    assert not report.done
    assert run(manager.read_host(host_a)).interfaces == {}


def test_v27_interface_cannot_move_to_the_v26_host(hosts: tuple[str, str]) -> None:
    host_a, host_b = hosts
    run(manager.assign(host_a, "vhu0", V27))
    report = run(manager.check_migration("vhu0", host_a, host_b))
    assert not report.compatible
    assert report.lines()[0] == "INCOMPATIBLE"
    assert ("upstream.ovs-dpdk.v2.6: destination lacks VIRTIO_RING_F_INDIRECT_DESC (bit 28) "
            "required by upstream.ovs-dpdk.v2.7") in report.lines()
    document = report.to_json()
    assert document["compatible"] is False
    reasons = document["reasons"]
    assert isinstance(reasons, list)
    assert any("VIRTIO_RING_F_INDIRECT_DESC" in reason for reason in reasons)


def test_v26_interface_moves_both_ways(hosts: tuple[str, str]) -> None:
    run(manager.provision(hosts, "vhu0"))
    for source, destination in (hosts, reversed(hosts)):
        report = run(manager.check_migration("vhu0", source, destination))
        assert report.compatible
        assert report.lines()[0] == "compatible"


def test_negotiated_state_beyond_the_destination_is_refused(hosts: tuple[str, str]) -> None:
    host_a, host_b = hosts
    run(manager.provision(hosts, "vhu0"))

    async def record() -> None:
        async with open_host(host_a) as store:
            await store.record_negotiated("vhu0", NegotiatedState(ring_size=4096))

    run(record())
    report = run(manager.check_migration("vhu0", host_a, host_b))
    assert not report.compatible
    assert any("4096 in use by the guest" in reason for reason in report.check.reasons)


def test_compatible_by_content_across_differently_named_versions(
        tmp_path: Path, hosts: tuple[str, str], catalog: Catalog) -> None:
    host_a, _ = hosts
    host_c = str(tmp_path / "host-c")
    run(manager.publish(host_c, catalog, [FC26]))
    run(manager.assign(host_a, "vhu0", V26))
    report = run(manager.check_migration("vhu0", host_a, host_c))
    assert report.check.verdict is Verdict.COMPATIBLE_BY_CONTENT
    assert report.lines()[0].startswith("compatible by content")
    assert report.to_json()["destination_version"] == FC26


def test_contents_come_from_the_catalog_when_the_source_lacks_them(
        tmp_path: Path, catalog: Catalog) -> None:
    # A source that published version strings only (as plain ovs-vsctl would).
    source = tmp_path / "bare"
    source.mkdir()
    (source / HOST_FILE).write_text(json.dumps({
        "Open_vSwitch": {"external_ids": {"vhost-compat-versions": V26}},
        "Interface": {"vhu0": {"options": {"vhost-compat-version": V26},
                               "external_ids": {}}}}))
    destination = str(tmp_path / "c")
    run(manager.publish(destination, catalog, [FC26]))
    without = run(manager.check_migration("vhu0", str(source), destination))
    assert not without.compatible
    with_catalog = run(manager.check_migration("vhu0", str(source), destination, catalog))
    assert with_catalog.check.verdict is Verdict.COMPATIBLE_BY_CONTENT
    assert any("from the catalog" in note for note in with_catalog.notes)


def test_unknown_interface_and_unassigned_interface_are_bad_input(
        hosts: tuple[str, str]) -> None:
    host_a, host_b = hosts
    with pytest.raises(NotPublishedError, match="no interface 'nope'"):
        run(manager.check_migration("nope", host_a, host_b))

    async def record() -> None:
        async with open_host(host_a) as store:
            await store.record_negotiated("vhu9", NegotiatedState(queue_pairs=1))

    run(record())
    with pytest.raises(NotPublishedError, match="no compatibility version assigned"):
        run(manager.check_migration("vhu9", host_a, host_b))


def test_unreachable_destination_is_an_error_not_an_answer(
        tmp_path: Path, hosts: tuple[str, str]) -> None:
    host_a, _ = hosts
    run(manager.assign(host_a, "vhu0", V26))
    with pytest.raises(HostStoreMissingError):
        run(manager.check_migration("vhu0", host_a, str(tmp_path / "gone")))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / HOST_FILE).write_text("[]")
    with pytest.raises(HostStoreCorruptError):
        run(manager.check_migration("vhu0", host_a, str(corrupt)))


def test_same_host_twice_is_bad_input(hosts: tuple[str, str]) -> None:
    with pytest.raises(InputError):
        run(manager.select([hosts[0], hosts[0]]))
    with pytest.raises(InputError):
        run(manager.check_migration("vhu0", hosts[0], hosts[0]))


def test_matrix_of_three_hosts(tmp_path: Path, hosts: tuple[str, str],
                               catalog: Catalog) -> None:
    host_a, host_b = hosts
    host_c = str(tmp_path / "host-c")
    run(manager.publish(host_c, catalog, [FC26]))
    v26 = run(manager.matrix([host_a, host_b, host_c], V26, catalog))
    assert v26.cell(host_a, host_b).symbol == "yes"
    assert v26.cell(host_b, host_c).symbol == "content"
    # host-c runs V26 by content (its FC26 satisfies it): provision would publish it there.
    assert v26.cell(host_c, host_a).symbol == "yes"
    assert v26.all_compatible
    assert [domain.hosts for domain in v26.domains] == [(host_a, host_b, host_c)]
    v27 = run(manager.matrix([host_a, host_b, host_c], V27, catalog))
    assert v27.cell(host_a, host_b).symbol == "no"
    assert not v27.all_compatible
    headers, rows = v27.table()
    assert headers == ["from \\ to", host_a, host_b, host_c]
    assert rows[0] == [host_a, "-", "no", "no"]
    pairs = v27.to_json()["pairs"]
    assert isinstance(pairs, list) and len(pairs) == 6


def test_matrix_where_nobody_runs_the_version_is_not_all_compatible(
        hosts: tuple[str, str], tmp_path: Path) -> None:
    extra = tmp_path / "x.toml"
    extra.write_text('[[profile]]\nversion = "nobody"\nvirtio_features = []\n')
    report = run(manager.matrix(hosts, "nobody", load_catalog([extra])))
    assert {cell.symbol for cell in report.cells} == {"n/a"}
    assert not report.all_compatible


def test_ovs_status_that_disagrees_is_said_and_checked_too(hosts: tuple[str, str]) -> None:
    """OVS saw INDIRECT_DESC acked where the proxy recorded less: the check honours both."""
    host_a, host_b = hosts
    run(manager.assign(host_a, "vhu0", V26))
    run(open_host(host_a).record_negotiated("vhu0", NegotiatedState(
        acked_features=VirtioFeature.VIRTIO_F_VERSION_1)))
    assert run(manager.check_migration("vhu0", host_a, host_b)).compatible
    path = Path(host_a) / HOST_FILE
    document = json.loads(path.read_text())
    seen = VirtioFeature.VIRTIO_F_VERSION_1 | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
    document["Interface"]["vhu0"]["status"] = {"features": f"{int(seen):#x}"}
    path.write_text(json.dumps(document))
    report = run(manager.check_migration("vhu0", host_a, host_b))
    assert not report.compatible
    assert report.ovs_status_disagreements == (
        f"OVS status features={int(seen):#x} but the proxy recorded acked features "
        f"{int(VirtioFeature.VIRTIO_F_VERSION_1):#x}",)
    assert any(line.startswith("note: OVS status features=") for line in report.lines())
    assert report.to_json()["ovs_status_disagreements"] == list(
        report.ovs_status_disagreements)
    assert any("VIRTIO_RING_F_INDIRECT_DESC" in reason for reason in report.check.reasons)
