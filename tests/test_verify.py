"""verify: what a probed backend honours, decided by the profiles' own key rules."""

from __future__ import annotations

from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.probe import ProbeResult
from vhostcompat.profiles import CompatProfile, ExtraKey, Rule
from vhostcompat.verify import DPDK_MAX_RING_SIZE, offered_profile, verify

F = VirtioFeature
BASE = F.VIRTIO_F_VERSION_1 | F.VHOST_F_LOG_ALL | F.VHOST_USER_F_PROTOCOL_FEATURES
TSO = F.VIRTIO_NET_F_HOST_TSO4 | F.VIRTIO_NET_F_HOST_TSO6
PROTOCOL = ProtocolFeature.MQ | ProtocolFeature.LOG_SHMFD
RESULT = ProbeResult("/run/x.sock", BASE, PROTOCOL, 128)


def test_the_offer_is_what_the_backend_answered_and_the_stated_ring_limit() -> None:
    offer = offered_profile(RESULT, DPDK_MAX_RING_SIZE)
    assert (offer.virtio_features, offer.protocol_features, offer.max_queue_pairs,
            offer.max_ring_size) == (BASE, PROTOCOL, 128, 32768)
    bare = offered_profile(ProbeResult("s", F.VIRTIO_F_VERSION_1, None, None), None)
    assert (bare.protocol_features, bare.max_queue_pairs, bare.max_ring_size) == (
        ProtocolFeature(0), 1, None)


def test_only_profiles_the_backend_honours_are_published_in_catalog_order() -> None:
    tso = CompatProfile("lab.tso", BASE | TSO, PROTOCOL, 8, 1024)
    plain = CompatProfile("lab.plain", BASE, PROTOCOL, 8, 1024)
    many = CompatProfile("lab.many-queues", BASE, PROTOCOL, 256, 1024)
    outcome = verify([tso, plain, many], offered_profile(RESULT, 32768))
    assert [profile.version for profile in outcome.published] == ["lab.plain"]
    dropped = {entry.version: entry for entry in outcome.dropped}
    assert dropped["lab.tso"].missing == ["VIRTIO_NET_F_HOST_TSO4 (bit 11)",
                                          "VIRTIO_NET_F_HOST_TSO6 (bit 12)"]
    assert dropped["lab.many-queues"].missing == ["max_queue_pairs"]
    assert outcome.to_json()["published"] == ["lab.plain"]
    assert any("dropped lab.tso: the running backend lacks VIRTIO_NET_F_HOST_TSO4" in line
               for line in outcome.lines())


def test_what_the_probe_cannot_check_is_never_promised() -> None:
    ring = CompatProfile("lab.ring", BASE, PROTOCOL, 8, 1024)
    mtu = CompatProfile("lab.mtu", BASE, extra=(ExtraKey("max_mtu", Rule.AT_MOST, 9000),))
    outcome = verify([ring, mtu], offered_profile(RESULT, None))  # ring limit not stated
    assert outcome.published == ()
    assert [entry.missing for entry in outcome.dropped] == [["max_ring_size"], ["max_mtu"]]
