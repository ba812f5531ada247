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
