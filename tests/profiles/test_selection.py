"""profiles.selection: the first common version, pins, and per-host explanations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhostcompat.errors import InputError
from vhostcompat.profiles import preference_order, select_version

V27, V26, FC26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6", "fc26.ovs-dpdk.v2.6"


def test_first_common_version_in_the_first_hosts_order() -> None:
    selection = select_version({"a": [V27, V26, FC26], "b": [V26]})
    assert selection.version == V26
    assert not selection.pinned
    assert "not everywhere: upstream.ovs-dpdk.v2.7" in selection.reasons[0]


def test_newest_common_version_wins() -> None:
    assert select_version({"a": [V27, V26], "b": [V27, V26]}).version == V27


def test_explicit_preference_order_overrides_the_first_host() -> None:
    assert select_version({"a": [V26, V27], "b": [V27, V26]}).version == V26
    assert select_version({"a": [V26, V27], "b": [V27, V26]},
                          preference=[V27, V26]).version == V27


def test_pin_is_selected_when_every_host_has_it() -> None:
    selection = select_version({"a": [V27, V26], "b": [V27, V26]}, prefer=V26)
    assert (selection.version, selection.pinned) == (V26, True)


def test_pin_is_refused_with_the_hosts_that_lack_it() -> None:
    selection = select_version({"a": [V27, V26], "b": [V26]}, prefer=V27)
    assert selection.version is None
    assert selection.lacking == (("b", (V27,)),)
    assert selection.reasons == (f"b does not publish {V27} (it publishes: {V26})",)


def test_no_common_version_says_what_each_host_lacks() -> None:
    selection = select_version({"a": [V27], "b": [V26], "c": []})
    assert selection.version is None
    assert dict(selection.lacking) == {"a": (V26,), "b": (V27,), "c": (V27, V26)}
    assert f"c lacks: {V27}, {V26}" in selection.reasons


def test_no_hosts_is_bad_input() -> None:
    with pytest.raises(InputError):
        select_version({})


version_names = st.sampled_from([f"v{index}" for index in range(8)])
host_lists = st.lists(version_names, unique=True, max_size=6)


@given(st.dictionaries(st.sampled_from("abcde"), host_lists, min_size=1),
       st.one_of(st.none(), version_names))
def test_selection_properties(published: dict[str, list[str]], prefer: str | None) -> None:
    selection = select_version(published, prefer)
    common = set.intersection(*(set(versions) for versions in published.values()))
    order = preference_order(published, next(iter(published.values())))
    if selection.version is not None:
        # A version every host supports...
        assert all(selection.version in versions for versions in published.values())
        if prefer is None:
            # ...and no more preferred common version was skipped.
            skipped = order[:order.index(selection.version)]
            assert not common.intersection(skipped)
        else:
            assert selection.version == prefer
    elif prefer is None:
        assert not common
        for host, missing in selection.lacking:
            assert set(missing) == set(order) - set(published[host])
    else:
        assert prefer not in common
        assert {host for host, _ in selection.lacking} == {
            host for host, versions in published.items() if prefer not in versions}
