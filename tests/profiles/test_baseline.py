"""baseline: the common ground of hosts' offers; machine types; the catalog entry it prints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhostcompat.errors import InputError
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.profiles import (
    CompatProfile,
    ExtraKey,
    NegotiatedState,
    Rule,
    check_destination,
    check_negotiated,
    compare_profiles,
    parse_catalog_text,
    select_version,
)
from vhostcompat.profiles.baseline import baseline_profile, machine_version, newest_machine_type
from vhostcompat.profiles.catalog import catalog_entry_text

F = VirtioFeature
USO = F.VIRTIO_NET_F_GUEST_USO4 | F.VIRTIO_NET_F_GUEST_USO6 | F.VIRTIO_NET_F_HOST_USO
BASE = F.VIRTIO_F_VERSION_1 | F.VIRTIO_NET_F_CSUM | F.VIRTIO_RING_F_INDIRECT_DESC
QEMU10 = CompatProfile("lab.qemu-10.0", BASE | USO, machine_types=frozenset(
    {"pc-q35-7.2", "pc-q35-9.2", "pc-q35-10.0", "pc-i440fx-10.0"}))
QEMU72 = CompatProfile("lab.qemu-7.2", BASE, machine_types=frozenset(
    {"pc-q35-7.1", "pc-q35-7.2", "pc-i440fx-7.2"}))


def test_newest_machine_type_orders_versions_numerically() -> None:
    assert newest_machine_type({"pc-q35-7.2", "pc-q35-10.0", "pc-q35-9.2", "q35"}) == \
        "pc-q35-10.0"
    assert newest_machine_type({"pc-i440fx-10.0", "pc-q35-2.12"}) == "pc-q35-2.12"
    assert newest_machine_type({"q35", "microvm"}) is None
    assert machine_version("pc-q35-10.0") == ("pc-q35", (10, 0))
    assert machine_version("q35") is None


def test_baseline_intersects_features_and_machine_types() -> None:
    result = baseline_profile("lab.common", [("a", QEMU10), ("b", QEMU72)])
    assert result.profile.virtio_features == BASE
    assert result.profile.machine_types == frozenset({"pc-q35-7.2"})
    assert result.machine_type == "pc-q35-7.2"
    assert result.notes == ()


def test_baseline_takes_the_smallest_limits_and_leaves_out_undeclared_keys() -> None:
    a = CompatProfile("a", BASE, ProtocolFeature.MQ | ProtocolFeature.LOG_SHMFD, 8, 1024,
                      extra=(ExtraKey("max_mtu", Rule.AT_MOST, 9000),))
    b = CompatProfile("b", BASE, ProtocolFeature.LOG_SHMFD, 4, None,
                      extra=(ExtraKey("max_mtu", Rule.AT_MOST, 1500),))
    result = baseline_profile("common", [("a", a), ("b", b)])
    assert result.profile.protocol_features == ProtocolFeature.LOG_SHMFD
    assert result.profile.max_queue_pairs == 4
    assert result.profile.max_ring_size is None
    assert result.profile.extra == (ExtraKey("max_mtu", Rule.AT_MOST, 1500),)
    assert result.notes == ("max_ring_size left out: b declare(s) no max_ring_size",)
    # Every host satisfies its baseline.
    for offer in (a, b):
        assert check_destination("common", result.profile, [offer.version],
                                 {offer.version: offer}).verdict.value == \
            "compatible-by-content"


def test_equal_keys_that_differ_have_no_baseline() -> None:
    a = CompatProfile("a", BASE, extra=(ExtraKey("vendor", Rule.EQUAL, "x"),))
    b = CompatProfile("b", BASE, extra=(ExtraKey("vendor", Rule.EQUAL, "y"),))
    with pytest.raises(InputError, match="vendor have no common value"):
        baseline_profile("common", [("a", a), ("b", b)])


def test_the_catalog_entry_reads_back_to_the_same_profile() -> None:
    a = CompatProfile("a", BASE | F(1 << 51), machine_types=frozenset({"pc-q35-7.2"}),
                      extra=(ExtraKey("max_mtu", Rule.AT_MOST, 9000),), description="d")
    text = catalog_entry_text(a, ["a comment"])
    assert text.startswith("# a comment\n[rules]\nmax_mtu = \"at_most\"\n")
    (entry,) = parse_catalog_text(text, "<test>")
    assert entry.profile == a


def test_selection_meets_on_a_version_one_host_satisfies_by_content() -> None:
    common = baseline_profile("lab.common", [("a", QEMU10), ("b", QEMU72)]).profile
    published = {"a": [QEMU10.version, common.version], "b": [QEMU72.version]}
    assert select_version(published).version is None  # by version: nothing
    selection = select_version(published, profiles={"a": [QEMU10, common], "b": [QEMU72]})
    assert selection.version == "lab.common"
    assert "b satisfies lab.common by content (its lab.qemu-7.2)" in selection.reasons
    # QEMU 10's own profile: b lacks USO and pc-q35-10.0, so it never counts.
    pinned = select_version(published, prefer=QEMU10.version,
                            profiles={"a": [QEMU10, common], "b": [QEMU72]})
    assert pinned.version is None


def test_a_recorded_machine_type_must_be_among_the_destinations() -> None:
    state = NegotiatedState(acked_features=BASE, machine_type="pc-q35-10.0")
    (shortfall,) = check_negotiated(state, QEMU72)
    assert shortfall.key == "machine_types"
    assert "'pc-q35-10.0'" in shortfall.reason
    assert check_negotiated(NegotiatedState(machine_type="pc-q35-7.2"), QEMU72) == ()


machine_names = st.sampled_from([f"pc-q35-{major}.{minor}" for major in (2, 7, 9, 10)
                                 for minor in (0, 2)])
offers = st.builds(
    CompatProfile, st.just("offer"), st.integers(0, (1 << 64) - 1).map(F),
    st.none() | st.integers(0, (1 << 20) - 1).map(ProtocolFeature),
    st.none() | st.integers(1, 64), st.none() | st.integers(1, 32768),
    machine_types=st.none() | st.frozensets(machine_names, max_size=6))


@given(st.lists(offers, min_size=1, max_size=4))
def test_every_host_satisfies_its_baseline(profiles: list[CompatProfile]) -> None:
    result = baseline_profile("common", [(f"h{index}", profile)
                                         for index, profile in enumerate(profiles)])
    for profile in profiles:
        assert compare_profiles(result.profile, profile) == ()
    if result.machine_type is not None:
        assert all(profile.machine_types is not None and
                   result.machine_type in profile.machine_types for profile in profiles)
