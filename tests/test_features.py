"""Feature bits: numbers pinned to the specs, parse/format round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhostcompat.errors import FeatureNameError
from vhostcompat.features import (
    ProtocolFeature,
    VirtioFeature,
    bit_numbers,
    format_mask,
    names,
    outside,
    parse,
    parse_protocol,
    parse_virtio,
)

# Bit numbers from the virtio specification and QEMU's vhost-user.rst, written
# out once more here so that a typo in the module cannot hide.
PINNED_VIRTIO = {
    "VIRTIO_NET_F_CSUM": 0, "VIRTIO_NET_F_MAC": 5, "VIRTIO_NET_F_GUEST_TSO4": 7,
    "VIRTIO_NET_F_HOST_TSO4": 11, "VIRTIO_NET_F_HOST_TSO6": 12, "VIRTIO_NET_F_MRG_RXBUF": 15,
    "VIRTIO_NET_F_CTRL_VQ": 17, "VIRTIO_NET_F_MQ": 22, "VIRTIO_F_NOTIFY_ON_EMPTY": 24,
    "VHOST_F_LOG_ALL": 26, "VIRTIO_F_ANY_LAYOUT": 27, "VIRTIO_RING_F_INDIRECT_DESC": 28,
    "VIRTIO_RING_F_EVENT_IDX": 29, "VHOST_USER_F_PROTOCOL_FEATURES": 30,
    "VIRTIO_F_VERSION_1": 32, "VIRTIO_F_ACCESS_PLATFORM": 33, "VIRTIO_F_RING_PACKED": 34,
    "VIRTIO_F_IN_ORDER": 35, "VIRTIO_F_ORDER_PLATFORM": 36, "VIRTIO_F_SR_IOV": 37,
    "VIRTIO_F_NOTIFICATION_DATA": 38, "VIRTIO_F_RING_RESET": 40,
    "VIRTIO_NET_F_GUEST_USO4": 54, "VIRTIO_NET_F_HOST_USO": 56, "VIRTIO_NET_F_HASH_REPORT": 57,
    "VIRTIO_NET_F_RSS": 60, "VIRTIO_NET_F_SPEED_DUPLEX": 63,
}
PINNED_PROTOCOL = {
    "MQ": 0, "LOG_SHMFD": 1, "RARP": 2, "REPLY_ACK": 3, "MTU": 4, "BACKEND_REQ": 5,
    "CONFIG": 9, "BACKEND_SEND_FD": 10, "HOST_NOTIFIER": 11, "INFLIGHT_SHMFD": 12,
    "CONFIGURE_MEM_SLOTS": 15, "STATUS": 16, "DEVICE_STATE": 19,
}


@pytest.mark.parametrize(("name", "bit"), sorted(PINNED_VIRTIO.items()))
def test_virtio_bit_numbers_match_the_spec(name: str, bit: int) -> None:
    assert VirtioFeature[name] == 1 << bit


@pytest.mark.parametrize(("name", "bit"), sorted(PINNED_PROTOCOL.items()))
def test_protocol_bit_numbers_match_the_spec(name: str, bit: int) -> None:
    assert ProtocolFeature[name] == 1 << bit


@pytest.mark.parametrize("alias", ["VIRTIO_F_INDIRECT_DESC", "VIRTIO_F_RING_INDIRECT_DESC",
                                   "VIRTIO_RING_F_INDIRECT_DESC", "virtio_f_indirect_desc",
                                   "0x10000000", "bit 28"])
def test_indirect_descriptor_aliases_are_one_bit(alias: str) -> None:
    assert parse_virtio(alias) == VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC


def test_protocol_names_accept_prefix_and_old_spellings() -> None:
    assert parse_protocol("VHOST_USER_PROTOCOL_F_MQ, NET_MTU SLAVE_REQ") == (
        ProtocolFeature.MQ | ProtocolFeature.MTU | ProtocolFeature.BACKEND_REQ)


def test_dpdk_testpmd_default_mask_is_fully_named() -> None:
    assert "bit" not in " ".join(names(0xD7C66E7CB, VirtioFeature))
    assert "bit" not in " ".join(names(0x10CBF, ProtocolFeature))


def test_unknown_bits_format_as_bit_n() -> None:
    assert names(1 << 45 | 1, VirtioFeature) == ["VIRTIO_NET_F_CSUM", "bit 45"]
    assert format_mask(0, ProtocolFeature) == "0x0 (none)"


@pytest.mark.parametrize("bad", ["VIRTIO_NET_F_NOPE", "0x1ffffffffffffffff", "bit 64", "", ])
def test_bad_names_are_refused_with_the_name(bad: str) -> None:
    if bad == "":
        assert parse_virtio(bad) == 0
        return
    with pytest.raises(FeatureNameError, match="unknown virtio feature"):
        parse_virtio(bad)


def test_non_string_items_are_refused() -> None:
    with pytest.raises(FeatureNameError):
        parse_virtio([3])  # type: ignore[list-item]
    with pytest.raises(FeatureNameError):
        parse_virtio(-1)


@given(st.integers(min_value=0, max_value=63))
def test_every_bit_round_trips_through_its_name(bit: int) -> None:
    (virtio_name,) = names(1 << bit, VirtioFeature)
    assert parse(VirtioFeature, virtio_name) == 1 << bit
    (protocol_name,) = names(1 << bit, ProtocolFeature)
    assert parse(ProtocolFeature, protocol_name) == 1 << bit


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_any_mask_round_trips_through_names_and_hex(mask: int) -> None:
    assert parse_virtio(names(mask, VirtioFeature)) == mask
    assert parse_virtio(",".join(names(mask, VirtioFeature))) == mask
    assert parse_protocol(names(mask, ProtocolFeature)) == mask
    assert parse_protocol(f"{mask:#x}") == mask
    assert bit_numbers(mask) == [b for b in range(64) if mask & (1 << b)]


@given(st.integers(min_value=0, max_value=(1 << 64) - 1),
       st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_complement_keeps_unknown_bits(value: int, offered: int) -> None:
    assert int(VirtioFeature(value) & ~VirtioFeature(offered)) == value & ~offered
    assert int(ProtocolFeature(value) & ~ProtocolFeature(offered)) == value & ~offered


@given(st.integers(min_value=0, max_value=(1 << 64) - 1),
       st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_outside_is_the_bits_not_allowed(value: int, allowed: int) -> None:
    assert outside(value, allowed) == value & ~allowed
    assert outside(VirtioFeature(value), ProtocolFeature(allowed)) == value & ~allowed
