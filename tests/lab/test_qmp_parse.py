"""Decoding x-query-virtio-status answers (names as QEMU 7.2 prints them)."""

from __future__ import annotations

from typing import Any

import pytest

from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.lab.errors import QmpCommandError
from vhostcompat.lab.qmp import (
    VirtioStatus,
    parse_protocol_features,
    parse_virtio_features,
)


def qemu_names(value: VirtioFeature, names: dict[VirtioFeature, str]) -> list[str]:
    """QEMU's "NAME: description" spelling for each bit of value."""
    return [f"{names.get(member, member.name)}: some description"
            for member in VirtioFeature if member in value]


TRANSPORTS = VirtioFeature.VIRTIO_F_VERSION_1 | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
DEVICE = (VirtioFeature.VIRTIO_NET_F_MAC | VirtioFeature.VIRTIO_NET_F_HOST_TSO4
          | VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES)


def block(transports: VirtioFeature, device: VirtioFeature, unknown: int | None = None,
          ) -> dict[str, Any]:
    answer: dict[str, Any] = {"transports": qemu_names(transports, {}),
                              "dev-features": qemu_names(device, {})}
    if unknown is not None:
        answer["unknown-dev-features"] = unknown
    return answer


def test_names_and_unknown_bits_combine() -> None:
    unknown = 1 << 45
    value = parse_virtio_features(block(TRANSPORTS, DEVICE, unknown))
    assert value == TRANSPORTS | DEVICE | VirtioFeature(unknown)


def test_qemu_spellings_that_differ_from_ours_are_understood() -> None:
    answer = {"transports": ["VIRTIO_F_IOMMU_PLATFORM: Device can be used on IOMMU platform"],
              "dev-features": []}
    assert parse_virtio_features(answer) == VirtioFeature.VIRTIO_F_ACCESS_PLATFORM


def test_protocol_names_with_old_spellings() -> None:
    answer = {"protocols": [
        "VHOST_USER_PROTOCOL_F_SLAVE_REQ: Socket fd for back-end initiated requests supported",
        "VHOST_USER_PROTOCOL_F_NET_MTU: Expose host MTU to guest supported",
        "VHOST_USER_PROTOCOL_F_MQ: Multiqueue protocol supported",
    ], "unknown-protocols": int(ProtocolFeature.STATUS)}
    assert parse_protocol_features(answer) == (
        ProtocolFeature.BACKEND_REQ | ProtocolFeature.MTU | ProtocolFeature.MQ
        | ProtocolFeature.STATUS)


def test_a_name_we_cannot_map_is_an_error_not_a_silent_zero() -> None:
    with pytest.raises(QmpCommandError) as caught:
        parse_virtio_features({"transports": ["VIRTIO_F_FROM_THE_FUTURE: new"]})
    assert "VIRTIO_F_FROM_THE_FUTURE" in str(caught.value)


def test_unknown_bits_must_be_a_number() -> None:
    with pytest.raises(QmpCommandError):
        parse_virtio_features({"transports": [], "unknown-dev-features": "0x1"})


def status_answer(vhost: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "host-features": block(TRANSPORTS, DEVICE),
        "backend-features": block(TRANSPORTS, DEVICE),
        "guest-features": block(TRANSPORTS, VirtioFeature.VIRTIO_NET_F_MAC),
        "vhost-started": vhost,
    }
    if vhost:
        answer["vhost-dev"] = {
            "features": block(TRANSPORTS, DEVICE | VirtioFeature.VHOST_F_LOG_ALL),
            "acked-features": block(TRANSPORTS, VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES),
            "backend-features": block(VirtioFeature(0),
                                      VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES),
            "protocol-features": {"protocols": ["VHOST_USER_PROTOCOL_F_MQ: Multiqueue"]},
            "max-queues": 128,
            "nvqs": 2,
        }
    return answer


def test_status_before_vhost_started() -> None:
    status = VirtioStatus.from_qmp("/p", status_answer(vhost=False))
    assert status.guest_features == TRANSPORTS | VirtioFeature.VIRTIO_NET_F_MAC
    assert status.host_features == status.backend_features == TRANSPORTS | DEVICE
    assert not status.vhost_started
    assert status.vhost_dev is None


def test_status_with_vhost_dev() -> None:
    status = VirtioStatus.from_qmp("/p", status_answer(vhost=True))
    assert status.vhost_started
    assert status.vhost_dev is not None
    assert status.vhost_dev.features == TRANSPORTS | DEVICE | VirtioFeature.VHOST_F_LOG_ALL
    assert status.vhost_dev.acked_features == (
        TRANSPORTS | VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES)
    assert status.vhost_dev.protocol_features == ProtocolFeature.MQ
    assert (status.vhost_dev.max_queues, status.vhost_dev.nvqs) == (128, 2)


def test_a_truncated_status_is_refused() -> None:
    answer = status_answer(vhost=False)
    del answer["guest-features"]
    with pytest.raises(QmpCommandError):
        VirtioStatus.from_qmp("/p", answer)
