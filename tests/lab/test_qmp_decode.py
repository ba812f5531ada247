"""QMP feature lists are decoded by us: QEMU 10.0.2's GUEST_USO6 label is wrong."""

from __future__ import annotations

import pytest

from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import QmpCommandError
from vhostcompat.lab.qmp import parse_virtio_features

F = VirtioFeature
# As QEMU 10.0.2 prints them (x-query-virtio-status host-features, abridged).
QEMU_10_0_2 = {
    "dev-features": [
        "VIRTIO_NET_F_HOST_USO: Device can receive USO",
        "VIRTIO_NET_F_GUEST_USO4: Driver can receive USOv6",
        "VIRTIO_NET_F_GUEST_USO4: Driver can receive USOv4",
        "VIRTIO_NET_F_CSUM: Device handling packets with partial checksum supported",
    ],
    "transports": ["VIRTIO_F_VERSION_1: Device compliant for v1 spec (legacy)"],
}


def test_the_mislabelled_uso6_is_decoded_by_its_description() -> None:
    assert parse_virtio_features(QEMU_10_0_2) == (
        F.VIRTIO_NET_F_HOST_USO | F.VIRTIO_NET_F_GUEST_USO6 | F.VIRTIO_NET_F_GUEST_USO4
        | F.VIRTIO_NET_F_CSUM | F.VIRTIO_F_VERSION_1)


def test_a_bit_printed_twice_is_refused_not_guessed() -> None:
    twice = {"dev-features": ["VIRTIO_NET_F_CSUM: a", "VIRTIO_NET_F_CSUM: b"]}
    with pytest.raises(QmpCommandError, match="VIRTIO_NET_F_CSUM twice"):
        parse_virtio_features(twice)


def test_unknown_bits_come_as_a_number() -> None:
    assert parse_virtio_features({"dev-features": [], "unknown-dev-features": 1 << 51}) == F(
        1 << 51)


# Every name QEMU 10.0.2's virtio-net-pci prints with every optional feature on
# (rss, hash, in_order, packed, mq, guest_rsc_ext, host_mtu, speed/duplex,
# iommu_platform, failover), as seen on this project's machine.
QEMU_10_0_2_ALL = [
    "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_NET_F_GSO", "VIRTIO_NET_F_SPEED_DUPLEX",
    "VIRTIO_NET_F_STANDBY", "VIRTIO_NET_F_RSC_EXT", "VIRTIO_NET_F_RSS",
    "VIRTIO_NET_F_HASH_REPORT", "VIRTIO_NET_F_HOST_USO", "VIRTIO_NET_F_CTRL_MAC_ADDR",
    "VIRTIO_NET_F_MQ", "VIRTIO_NET_F_GUEST_ANNOUNCE", "VIRTIO_NET_F_CTRL_RX_EXTRA",
    "VIRTIO_NET_F_CTRL_VLAN", "VIRTIO_NET_F_CTRL_RX", "VIRTIO_NET_F_CTRL_VQ",
    "VIRTIO_NET_F_STATUS", "VIRTIO_NET_F_MRG_RXBUF", "VIRTIO_NET_F_HOST_UFO",
    "VIRTIO_NET_F_HOST_ECN", "VIRTIO_NET_F_HOST_TSO6", "VIRTIO_NET_F_HOST_TSO4",
    "VIRTIO_NET_F_GUEST_UFO", "VIRTIO_NET_F_GUEST_ECN", "VIRTIO_NET_F_GUEST_TSO6",
    "VIRTIO_NET_F_GUEST_TSO4", "VIRTIO_NET_F_MAC", "VIRTIO_NET_F_MTU",
    "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS", "VIRTIO_NET_F_GUEST_CSUM", "VIRTIO_NET_F_CSUM",
    "VIRTIO_RING_F_EVENT_IDX", "VIRTIO_RING_F_INDIRECT_DESC", "VIRTIO_F_RING_RESET",
    "VIRTIO_F_IN_ORDER", "VIRTIO_F_RING_PACKED", "VIRTIO_F_IOMMU_PLATFORM",
    "VIRTIO_F_VERSION_1", "VIRTIO_F_ANY_LAYOUT", "VIRTIO_F_NOTIFY_ON_EMPTY",
]


def test_every_name_qemu_10_prints_is_known() -> None:
    entries = [f"{name}: description" for name in QEMU_10_0_2_ALL]
    entries += ["VIRTIO_NET_F_GUEST_USO4: Driver can receive USOv6",
                "VIRTIO_NET_F_GUEST_USO4: Driver can receive USOv4"]
    assert parse_virtio_features({"dev-features": entries}) == F(0xF3C0010F79FFFFEF)
