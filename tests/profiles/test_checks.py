"""profiles.checks: profile comparisons, negotiated state, the destination check, diff."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vhostcompat.features import MASK64, ProtocolFeature, VirtioFeature
from vhostcompat.profiles import (
    CompatProfile,
    ExtraKey,
    NegotiatedState,
    Rule,
    Verdict,
    check_destination,
    check_negotiated,
    compare_profiles,
    diff_profiles,
)

INDIRECT = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
VERSION_1 = VirtioFeature.VIRTIO_F_VERSION_1
TSO = VirtioFeature.VIRTIO_NET_F_HOST_TSO4 | VirtioFeature.VIRTIO_NET_F_HOST_TSO6

V27 = CompatProfile("upstream.ovs-dpdk.v2.7", VERSION_1 | INDIRECT, ProtocolFeature.MQ, 8, 1024)
V26 = CompatProfile("upstream.ovs-dpdk.v2.6", VERSION_1, ProtocolFeature.MQ, 8, 1024)


def test_missing_feature_reason_names_feature_bit_and_version() -> None:
    (shortfall,) = compare_profiles(V27, V26)
    assert shortfall.reason == ("destination lacks VIRTIO_RING_F_INDIRECT_DESC (bit 28) "
                                "required by upstream.ovs-dpdk.v2.7")
    assert compare_profiles(V26, V27) == ()


def test_each_missing_feature_is_one_reason() -> None:
    wide = CompatProfile("wide", VERSION_1 | INDIRECT | TSO)
    reasons = [shortfall.reason for shortfall in compare_profiles(wide, V26)]
    assert len(reasons) == 3
    assert any("VIRTIO_NET_F_HOST_TSO4 (bit 11)" in reason for reason in reasons)


def test_limits_and_protocol_features() -> None:
    small = CompatProfile("small", VERSION_1 | INDIRECT, ProtocolFeature(0), 4, 256)
    reasons = " | ".join(shortfall.reason for shortfall in compare_profiles(V27, small))
    assert "protocol feature MQ (bit 0)" in reasons
    assert "max_queue_pairs = 4, below the 8 required by upstream.ovs-dpdk.v2.7" in reasons
    assert "max_ring_size = 256, below the 1024" in reasons


def test_undeclared_key_on_the_destination_is_a_shortfall() -> None:
    bare = CompatProfile("bare", VERSION_1 | INDIRECT)
    keys = {shortfall.key for shortfall in compare_profiles(V27, bare)}
    assert keys == {"protocol_features", "max_queue_pairs", "max_ring_size"}
    # ...but a requirement the interface's profile does not declare is no requirement.
    assert compare_profiles(bare, V27) == ()


def test_declared_keys_are_checked_by_their_rule() -> None:
    def with_extra(version: str, *keys: ExtraKey) -> CompatProfile:
        return CompatProfile(version, VERSION_1, extra=keys)

    need = with_extra("need", ExtraKey("max_mtu", Rule.AT_MOST, 9000),
                      ExtraKey("min_ring", Rule.AT_LEAST, 64),
                      ExtraKey("mode", Rule.EQUAL, "split"),
                      ExtraKey("offloads", Rule.SUBSET, frozenset({"a", "b"})))
    good = with_extra("good", ExtraKey("max_mtu", Rule.AT_MOST, 9000),
                      ExtraKey("min_ring", Rule.AT_LEAST, 32),
                      ExtraKey("mode", Rule.EQUAL, "split"),
                      ExtraKey("offloads", Rule.SUBSET, frozenset({"a", "b", "c"})))
    bad = with_extra("bad", ExtraKey("max_mtu", Rule.AT_MOST, 1500),
                     ExtraKey("min_ring", Rule.AT_LEAST, 128),
                     ExtraKey("mode", Rule.EQUAL, "packed"),
                     ExtraKey("offloads", Rule.SUBSET, frozenset({"a"})))
    assert compare_profiles(need, good) == ()
    assert {shortfall.key for shortfall in compare_profiles(need, bad)} == {
        "max_mtu", "min_ring", "mode", "offloads"}


def test_rule_mismatch_is_a_shortfall() -> None:
    need = CompatProfile("need", VERSION_1, extra=(ExtraKey("k", Rule.AT_MOST, 1),))
    other = CompatProfile("other", VERSION_1, extra=(ExtraKey("k", Rule.AT_LEAST, 1),))
    (shortfall,) = compare_profiles(need, other)
    assert "by rule at_least" in shortfall.reason


def test_equal_rule_distinguishes_types() -> None:
    need = CompatProfile("need", VERSION_1, extra=(ExtraKey("k", Rule.EQUAL, 1),))
    other = CompatProfile("other", VERSION_1, extra=(ExtraKey("k", Rule.EQUAL, True),))
    assert compare_profiles(need, other) != ()


def test_negotiated_state_is_checked_against_the_destination() -> None:
    state = NegotiatedState(acked_features=VERSION_1 | INDIRECT, queue_pairs=9, ring_size=2048)
    reasons = [shortfall.reason for shortfall in check_negotiated(state, V26)]
    assert "destination lacks VIRTIO_RING_F_INDIRECT_DESC (bit 28) in use by the guest" in reasons
    assert len(reasons) == 3
    assert check_negotiated(NegotiatedState(acked_features=VERSION_1, queue_pairs=1), V26) == ()


def test_destination_publishing_the_version_is_compatible() -> None:
    check = check_destination(V26.version, V26, [V27.version, V26.version],
                              {V26.version: V26, V27.version: V27})
    assert check.verdict is Verdict.COMPATIBLE
    assert check.headline() == "compatible"


def test_destination_lacking_the_version_is_incompatible_with_reasons() -> None:
    check = check_destination(V27.version, V27, [V26.version], {V26.version: V26})
    assert check.verdict is Verdict.INCOMPATIBLE
    assert check.headline() == "INCOMPATIBLE"
    assert check.reasons[0].startswith("destination does not publish upstream.ovs-dpdk.v2.7")
    assert any("VIRTIO_RING_F_INDIRECT_DESC" in reason for reason in check.reasons)


def test_compatible_by_content_says_so() -> None:
    renamed = CompatProfile("fc26.ovs-dpdk.v2.6", V26.virtio_features | TSO,
                            ProtocolFeature.MQ, 8, 1024)
    check = check_destination(V26.version, V26, [renamed.version], {renamed.version: renamed})
    assert check.verdict is Verdict.COMPATIBLE_BY_CONTENT
    assert check.destination_version == renamed.version
    assert check.headline().startswith("compatible by content")
    assert "fc26.ovs-dpdk.v2.6" in check.headline()


def test_unknown_contents_never_match_by_content() -> None:
    check = check_destination("mystery", None, [V26.version], {V26.version: V26})
    assert check.verdict is Verdict.UNKNOWN
    assert not check.compatible and check.headline() == "UNKNOWN"


def test_same_name_different_content_is_incompatible() -> None:
    impostor = CompatProfile(V27.version, VERSION_1, ProtocolFeature.MQ, 8, 1024)
    check = check_destination(V27.version, V27, [V27.version], {V27.version: impostor})
    assert check.verdict is Verdict.INCOMPATIBLE
    assert any("differ" in reason for reason in check.reasons)


def test_version_string_alone_is_compatible_but_not_with_unverifiable_state() -> None:
    assert check_destination("v", None, ["v"], {}).compatible
    state = NegotiatedState(acked_features=INDIRECT)
    assert not check_destination("v", None, ["v"], {}, state).compatible


def test_negotiated_state_beyond_the_destination_is_incompatible() -> None:
    state = NegotiatedState(acked_features=VERSION_1, ring_size=4096)
    check = check_destination(V26.version, V26, [V26.version], {V26.version: V26}, state)
    assert not check.compatible
    assert any("max_ring_size = 1024, below the 4096 in use" in reason
               for reason in check.reasons)


def test_diff_lists_features_each_side_and_changed_limits() -> None:
    other = CompatProfile("o", VERSION_1 | TSO, None, 4, 1024)
    differences = {item.key: item for item in diff_profiles(V27, other)}
    assert differences["virtio_features"].only_first == ("VIRTIO_RING_F_INDIRECT_DESC (bit 28)",)
    assert len(differences["virtio_features"].only_second) == 2
    assert differences["protocol_features"].second is None
    assert "8" in (differences["max_queue_pairs"].first or "")
    assert "max_ring_size" not in differences
    assert diff_profiles(V26, CompatProfile("same", V26.virtio_features, ProtocolFeature.MQ,
                                            8, 1024)) == ()


# --- property: never "compatible" when the destination lacks a feature or limit

masks = st.integers(0, MASK64)
limits = st.one_of(st.none(), st.integers(1, 64))


@st.composite
def profiles(draw: st.DrawFn, version: str) -> CompatProfile:
    return CompatProfile(version, VirtioFeature(draw(masks)),
                         draw(st.one_of(st.none(), masks.map(ProtocolFeature))),
                         draw(limits), draw(limits))


def covers(required: CompatProfile, offered: CompatProfile) -> bool:
    """The definition, written out independently of the checker."""
    if required.virtio_features & ~offered.virtio_features:
        return False
    if required.protocol_features is not None and (
            offered.protocol_features is None
            or required.protocol_features & ~offered.protocol_features):
        return False
    for need, have in ((required.max_queue_pairs, offered.max_queue_pairs),
                       (required.max_ring_size, offered.max_ring_size)):
        if need is not None and (have is None or need > have):
            return False
    return True


def in_use_fits(state: NegotiatedState, offered: CompatProfile) -> bool:
    if state.acked_features is not None and state.acked_features & ~offered.virtio_features:
        return False
    for used, limit in ((state.queue_pairs, offered.max_queue_pairs),
                        (state.ring_size, offered.max_ring_size)):
        if used is not None and (limit is None or used > limit):
            return False
    return True


states = st.builds(NegotiatedState, acked_features=st.one_of(st.none(),
                                                             masks.map(VirtioFeature)),
                   queue_pairs=limits, ring_size=limits)


@given(profiles("interface"), st.lists(profiles("x"), max_size=3), st.booleans(), states)
def test_check_never_says_compatible_when_something_is_missing(
        required: CompatProfile, candidates: list[CompatProfile], publish_same: bool,
        state: NegotiatedState) -> None:
    offered = {f"dest.{index}": CompatProfile(f"dest.{index}", profile.virtio_features,
                                              profile.protocol_features,
                                              profile.max_queue_pairs, profile.max_ring_size)
               for index, profile in enumerate(candidates)}
    if publish_same and candidates:
        first = candidates[0]
        offered = {required.version: CompatProfile(
            required.version, first.virtio_features, first.protocol_features,
            first.max_queue_pairs, first.max_ring_size), **offered}
    check = check_destination(required.version, required, list(offered), offered, state)
    if not check.compatible:
        assert check.reasons
        return
    assert check.destination_version is not None
    chosen = offered[check.destination_version]
    assert covers(required, chosen)
    assert in_use_fits(state, chosen)
    if check.verdict is Verdict.COMPATIBLE_BY_CONTENT:
        assert required.version not in offered


@given(profiles("a"), profiles("b"))
def test_compare_agrees_with_the_definition(required: CompatProfile,
                                            offered: CompatProfile) -> None:
    assert (compare_profiles(required, offered) == ()) == covers(required, offered)


@given(profiles("interface"), masks, st.integers(0, 63), st.sampled_from(
    ["feature", "queue_pairs", "ring_size"]))
def test_taking_away_one_thing_from_a_covering_destination_is_refused(
        required: CompatProfile, extra: int, bit: int, what: str) -> None:
    pairs = required.max_queue_pairs
    ring = required.max_ring_size
    superset = CompatProfile("dest", VirtioFeature(required.virtio_features | extra),
                             required.protocol_features, pairs, ring)
    assert check_destination(required.version, required, ["dest"],
                             {"dest": superset}).compatible
    if what == "feature":
        if not required.virtio_features >> bit & 1:
            return
        weaker = CompatProfile("dest", VirtioFeature(superset.virtio_features & ~(1 << bit)),
                               required.protocol_features, pairs, ring)
    elif what == "queue_pairs":
        if pairs is None:
            return
        weaker = CompatProfile("dest", superset.virtio_features, required.protocol_features,
                               None if pairs == 1 else pairs - 1, ring)
    else:
        if ring is None:
            return
        weaker = CompatProfile("dest", superset.virtio_features, required.protocol_features,
                               pairs, None if ring == 1 else ring - 1)
    check = check_destination(required.version, required, ["dest"], {"dest": weaker})
    assert check.verdict is Verdict.INCOMPATIBLE
