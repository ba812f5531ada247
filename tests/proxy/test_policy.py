"""The mode as a pure policy: offers, refusals, records; and the property over connections.

Properties (hypothesis, random back-end masks and profiles):
offered = backend ∩ profile, and no SET_FEATURES outside it is ever
forwarded, first on the pure policy, then through a real relay between a
fake front-end and a fake back-end.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proxy.fakes import NARROW, WAIT, F, FakeBackend, P, relayed
from vhostcompat.features import MASK64, ProtocolFeature, VirtioFeature
from vhostcompat.profiles import CompatProfile
from vhostcompat.proxy import RELAYABLE_PROTOCOL_FEATURES, ProxyPolicy, RelayOutcome
from vhostcompat.vhostuser import U64, FrontendRequest, Message, Role, Session, SessionLimits

masks = st.integers(min_value=0, max_value=MASK64)
# The bits every test frontend needs to talk at all.
BASE = F.VIRTIO_F_VERSION_1 | F.VHOST_USER_F_PROTOCOL_FEATURES


def profile_with(features: int, *, pairs: int | None = None, ring: int | None = None,
                 protocol: int | None = None) -> CompatProfile:
    return CompatProfile("test.random", VirtioFeature(features),
                         None if protocol is None else ProtocolFeature(protocol), pairs, ring)


@given(backend=masks, profile=masks)
def test_offer_is_backend_intersected_with_profile(backend: int, profile: int) -> None:
    policy = ProxyPolicy(profile_with(profile))
    offered = policy.offer_features(VirtioFeature(backend))
    assert int(offered) == backend & profile
    offer = policy.offer(FrontendRequest.GET_FEATURES, backend)
    assert offer.offered == backend & profile
    assert offer.withheld == backend & ~profile


@given(backend=masks, profile=masks, requested=masks)
def test_set_features_is_refused_exactly_when_it_leaves_the_offer(
        backend: int, profile: int, requested: int) -> None:
    policy = ProxyPolicy(profile_with(profile))
    offered = policy.offer_features(VirtioFeature(backend))
    refusal = policy.check_features(offered, VirtioFeature(requested))
    assert (refusal is None) == (requested & ~int(offered) == 0)
    if refusal is not None:
        assert refusal.request is FrontendRequest.SET_FEATURES
        assert "test.random" in refusal.reason or "not offered by the back-end" in refusal.reason


@given(backend=masks, profile=st.none() | masks)
def test_protocol_offer_never_exceeds_what_the_proxy_relays(backend: int,
                                                            profile: int | None) -> None:
    policy = ProxyPolicy(profile_with(0, protocol=profile))
    offered = int(policy.offer_protocol_features(ProtocolFeature(backend)))
    expected = backend & int(RELAYABLE_PROTOCOL_FEATURES)
    if profile is not None:
        expected &= profile
    assert offered == expected


@given(backend=st.integers(0, 1 << 16), pairs=st.none() | st.integers(1, 0x4000))
def test_queue_num_is_the_smaller(backend: int, pairs: int | None) -> None:
    policy = ProxyPolicy(profile_with(0, pairs=pairs))
    assert policy.queue_num(backend) == (backend if pairs is None else min(backend, pairs))


def test_refusals_name_the_feature_or_limit() -> None:
    policy = ProxyPolicy(NARROW)
    offered = policy.offer_features(VirtioFeature(0xD7C66FFCB))
    refusal = policy.check_features(offered, offered | F.VIRTIO_NET_F_HOST_TSO4)
    assert refusal is not None
    assert str(refusal).startswith("SET_FEATURES refused: acks VIRTIO_NET_F_HOST_TSO4 (bit 11) "
                                   "not in mode test.narrow")
    # In the profile but not offered by this back-end: said differently.
    lacking = policy.offer_features(VirtioFeature(0xD7C66FFCB) & ~F.VIRTIO_NET_F_CSUM)
    refusal = policy.check_features(lacking, lacking | F.VIRTIO_NET_F_CSUM)
    assert refusal is not None and "VIRTIO_NET_F_CSUM (bit 0) not offered by the back-end" \
        in refusal.reason
    assert policy.check_features(None, F(0)) is not None  # SET_FEATURES before GET_FEATURES
    ring = policy.check_ring_size(1, 512)
    assert ring is not None and str(ring) == (
        "SET_VRING_NUM (ring 1) refused: ring size 512 exceeds max_ring_size 256 of mode "
        "test.narrow")
    assert policy.check_ring_size(1, 256) is None
    index = policy.check_ring_index(FrontendRequest.SET_VRING_KICK, 4)
    assert index is not None and "ring 4 is beyond max_queue_pairs 2" in str(index)
    assert policy.check_ring_index(FrontendRequest.SET_VRING_KICK, 3) is None
    protocol = policy.check_protocol_features(P.MQ, P.MQ | P.STATUS)
    assert protocol is not None and "STATUS (bit 16)" in str(protocol)


def test_a_profile_without_limits_leaves_the_session_defaults() -> None:
    policy = ProxyPolicy(profile_with(int(BASE)))
    assert policy.session_limits() == SessionLimits()
    assert policy.check_ring_size(0, 32768) is None
    assert policy.check_ring_index(FrontendRequest.SET_VRING_NUM, 255) is None
    narrow = ProxyPolicy(NARROW).session_limits()
    assert (narrow.max_rings, narrow.max_ring_size) == (4, 256)


def test_migration_blockers_name_the_missing_bits() -> None:
    policy = ProxyPolicy(NARROW)
    assert policy.migration_blockers(F.VHOST_F_LOG_ALL, P.LOG_SHMFD) == []
    assert policy.migration_blockers(F(0), None) == ["VHOST_F_LOG_ALL (bit 26) is not offered"]
    assert policy.migration_blockers(None, P.MQ) == ["protocol feature LOG_SHMFD is not offered"]


def test_check_uses_the_session_offer() -> None:
    policy = ProxyPolicy(NARROW)
    session = Session(Role.BACKEND, offered_features=F.VIRTIO_F_VERSION_1)
    message = Message(FrontendRequest.SET_FEATURES,
                      U64(int(F.VIRTIO_F_VERSION_1 | F.VIRTIO_NET_F_CSUM)))
    refusal = policy.check(message, session)
    assert refusal is not None and "VIRTIO_NET_F_CSUM" in refusal.reason


# -- the same property through a real relay ------------------------------------------------

@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(backend=masks, profile=masks, requested=masks, within=st.booleans())
@pytest.mark.timeout(120)
def test_through_a_relay_offered_is_the_intersection_and_nothing_outside_is_forwarded(
        backend: int, profile: int, requested: int, within: bool) -> None:
    backend_features = VirtioFeature(backend | int(BASE))
    mode = profile_with(profile | int(BASE), protocol=int(P.MQ | P.REPLY_ACK))

    async def scenario() -> None:
        async with relayed(mode, FakeBackend(features=backend_features)) as link:
            offered = await link.frontend.value(FrontendRequest.GET_FEATURES)
            assert offered == int(backend_features) & int(mode.virtio_features)
            # Half the examples ack a subset of the offer, the others (mostly) do not.
            wanted = VirtioFeature((requested & offered if within else requested) | int(BASE))
            # A front-end that ignores the offer: its own session must not stop it.
            link.frontend.session.offered_features = VirtioFeature(
                int(wanted) | offered)
            await link.frontend.call(FrontendRequest.SET_FEATURES, U64(int(wanted)))
            if int(wanted) & ~offered:
                result = await link.result()
                assert result.outcome is RelayOutcome.REFUSED
                await asyncio.wait_for(link.backend.closed.wait(), WAIT)
                assert link.backend.requests(FrontendRequest.SET_FEATURES) == []
            else:
                await link.frontend.sync()  # the back-end has seen everything sent
                forwarded = link.backend.requests(FrontendRequest.SET_FEATURES)
                assert [seen.payload for seen in forwarded] == [U64(int(wanted))]

    asyncio.run(scenario())
