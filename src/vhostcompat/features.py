"""Virtio and vhost-user feature bits: names, aliases, parsing and formatting.

Two flag types cover everything a vhost-user net device negotiates:

* :class:`VirtioFeature`: the 64-bit virtio feature word (GET_FEATURES /
  SET_FEATURES), holding the net device bits (0-23, 50-63), the transport bits
  (24-41) and the two vhost-only bits (VHOST_F_LOG_ALL 26 and
  VHOST_USER_F_PROTOCOL_FEATURES 30).
* :class:`ProtocolFeature`: the vhost-user protocol feature word
  (GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES).

Members are masks (``1 << bit``), never bit numbers: a bit number mistaken
for a mask is a classic vhost-user bug, so nothing outside this module should
shift or compare raw integers. Bits we do not know stay in the value
(``boundary=KEEP``) and are formatted as ``bit N``.

Numbers follow the virtio specification (1.3, "Feature Bits" and "Network
Device") and QEMU's docs/interop/vhost-user.rst.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import TypeVar

from vhostcompat.errors import FeatureNameError

MASK64 = (1 << 64) - 1


_Word = TypeVar("_Word", bound=enum.IntFlag)


def _invert_64(self: _Word) -> _Word:
    """``~`` over all 64 bits.

    enum.Flag's own ``~`` only inverts the bits the enum defines, so
    ``value & ~offered`` would silently drop a peer's unknown bits: exactly the
    bits a checker must see. (EnumType re-installs Flag's operators on every
    Flag class unless the class body defines them, hence one assignment per
    class below rather than a shared base.)
    """
    return type(self)(MASK64 ^ int(self))


class VirtioFeature(enum.IntFlag, boundary=enum.KEEP):
    """The virtio feature word of a net device, as masks."""

    __invert__ = _invert_64

    VIRTIO_NET_F_CSUM = 1 << 0
    VIRTIO_NET_F_GUEST_CSUM = 1 << 1
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 1 << 2
    VIRTIO_NET_F_MTU = 1 << 3
    VIRTIO_NET_F_MAC = 1 << 5
    VIRTIO_NET_F_GSO = 1 << 6  # legacy only; DPDK still offers it
    VIRTIO_NET_F_GUEST_TSO4 = 1 << 7
    VIRTIO_NET_F_GUEST_TSO6 = 1 << 8
    VIRTIO_NET_F_GUEST_ECN = 1 << 9
    VIRTIO_NET_F_GUEST_UFO = 1 << 10
    VIRTIO_NET_F_HOST_TSO4 = 1 << 11
    VIRTIO_NET_F_HOST_TSO6 = 1 << 12
    VIRTIO_NET_F_HOST_ECN = 1 << 13
    VIRTIO_NET_F_HOST_UFO = 1 << 14
    VIRTIO_NET_F_MRG_RXBUF = 1 << 15
    VIRTIO_NET_F_STATUS = 1 << 16
    VIRTIO_NET_F_CTRL_VQ = 1 << 17
    VIRTIO_NET_F_CTRL_RX = 1 << 18
    VIRTIO_NET_F_CTRL_VLAN = 1 << 19
    VIRTIO_NET_F_CTRL_RX_EXTRA = 1 << 20
    VIRTIO_NET_F_GUEST_ANNOUNCE = 1 << 21
    VIRTIO_NET_F_MQ = 1 << 22
    VIRTIO_NET_F_CTRL_MAC_ADDR = 1 << 23
    VIRTIO_F_NOTIFY_ON_EMPTY = 1 << 24
    VHOST_F_LOG_ALL = 1 << 26
    VIRTIO_F_ANY_LAYOUT = 1 << 27
    VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
    VIRTIO_RING_F_EVENT_IDX = 1 << 29
    VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
    VIRTIO_F_VERSION_1 = 1 << 32
    VIRTIO_F_ACCESS_PLATFORM = 1 << 33
    VIRTIO_F_RING_PACKED = 1 << 34
    VIRTIO_F_IN_ORDER = 1 << 35
    VIRTIO_F_ORDER_PLATFORM = 1 << 36
    VIRTIO_F_SR_IOV = 1 << 37
    VIRTIO_F_NOTIFICATION_DATA = 1 << 38
    VIRTIO_F_NOTIF_CONFIG_DATA = 1 << 39
    VIRTIO_F_RING_RESET = 1 << 40
    VIRTIO_F_ADMIN_VQ = 1 << 41
    VIRTIO_NET_F_DEVICE_STATS = 1 << 50
    VIRTIO_NET_F_VQ_NOTF_COAL = 1 << 52
    VIRTIO_NET_F_NOTF_COAL = 1 << 53
    VIRTIO_NET_F_GUEST_USO4 = 1 << 54
    VIRTIO_NET_F_GUEST_USO6 = 1 << 55
    VIRTIO_NET_F_HOST_USO = 1 << 56
    VIRTIO_NET_F_HASH_REPORT = 1 << 57
    VIRTIO_NET_F_GUEST_HDRLEN = 1 << 59
    VIRTIO_NET_F_RSS = 1 << 60
    VIRTIO_NET_F_RSC_EXT = 1 << 61
    VIRTIO_NET_F_STANDBY = 1 << 62
    VIRTIO_NET_F_SPEED_DUPLEX = 1 << 63


class ProtocolFeature(enum.IntFlag, boundary=enum.KEEP):
    """vhost-user protocol features (VHOST_USER_PROTOCOL_F_*), as masks."""

    __invert__ = _invert_64

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16
    XEN_MMAP = 1 << 17
    SHARED_OBJECT = 1 << 18
    DEVICE_STATE = 1 << 19


# Other spellings found in the virtio spec, Linux, QEMU and DPDK headers.
VIRTIO_ALIASES: dict[str, VirtioFeature] = {
    "VIRTIO_F_INDIRECT_DESC": VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC,
    "VIRTIO_F_RING_INDIRECT_DESC": VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC,
    "VIRTIO_F_EVENT_IDX": VirtioFeature.VIRTIO_RING_F_EVENT_IDX,
    "VIRTIO_F_RING_EVENT_IDX": VirtioFeature.VIRTIO_RING_F_EVENT_IDX,
    "VIRTIO_F_IOMMU_PLATFORM": VirtioFeature.VIRTIO_F_ACCESS_PLATFORM,
    "VIRTIO_NET_F_GUEST_RSC4": VirtioFeature.VIRTIO_NET_F_GUEST_TSO4,
    "VIRTIO_NET_F_GUEST_RSC6": VirtioFeature.VIRTIO_NET_F_GUEST_TSO6,
    "VIRTIO_NET_F_CTRL_RX_MODE": VirtioFeature.VIRTIO_NET_F_CTRL_RX,
    "VIRTIO_F_VERSION1": VirtioFeature.VIRTIO_F_VERSION_1,
    "VIRTIO_F_PACKED_RING": VirtioFeature.VIRTIO_F_RING_PACKED,
    "VHOST_USER_F_PROTOCOL_FEATURE": VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES,
}

PROTOCOL_ALIASES: dict[str, ProtocolFeature] = {
    "NET_MTU": ProtocolFeature.MTU,
    "SLAVE_REQ": ProtocolFeature.BACKEND_REQ,
    "SLAVE_SEND_FD": ProtocolFeature.BACKEND_SEND_FD,
}

PROTOCOL_PREFIX = "VHOST_USER_PROTOCOL_F_"

Flag = TypeVar("Flag", VirtioFeature, ProtocolFeature)

_HEX = re.compile(r"0[xX][0-9a-fA-F]{1,16}")
_BIT = re.compile(r"bit\s*([0-9]{1,2})")


def outside(value: int, allowed: int) -> int:
    """The bits of ``value`` not in ``allowed``, unknown bits included.

    Plain 64-bit ints, so it serves any flag type (feature words, ring address
    flags) whatever bits its enum defines.
    """
    return int(value) & ~int(allowed) & MASK64


def bit_numbers(value: int) -> list[int]:
    """The bit numbers set in a 64-bit value, lowest first."""
    return [bit for bit in range(64) if value >> bit & 1]


def _lookup(kind: type[Flag], name: str) -> Flag:
    key = name.strip()
    upper = key.upper()
    if kind is ProtocolFeature and upper.startswith(PROTOCOL_PREFIX):
        upper = upper[len(PROTOCOL_PREFIX):]
    member = kind.__members__.get(upper)
    if member is not None:
        return member
    aliases: dict[str, Flag] = (
        VIRTIO_ALIASES if kind is VirtioFeature else PROTOCOL_ALIASES  # type: ignore[assignment]
    )
    if upper in aliases:
        return aliases[upper]
    if _HEX.fullmatch(key):
        return kind(int(key, 16))
    bit = _BIT.fullmatch(key)
    if bit and int(bit.group(1)) < 64:
        return kind(1 << int(bit.group(1)))
    raise FeatureNameError(f"unknown {_kind_label(kind)} {name!r}")


def _kind_label(kind: type[VirtioFeature] | type[ProtocolFeature]) -> str:
    return "virtio feature" if kind is VirtioFeature else "vhost-user protocol feature"


def parse(kind: type[Flag], spec: str | int | Iterable[str]) -> Flag:
    """Parse names, aliases, ``bit N`` or ``0x...`` hex into a flag value.

    A string may hold several items separated by commas, ``|`` or spaces.
    """
    if isinstance(spec, bool):
        raise FeatureNameError(f"a {_kind_label(kind)} set cannot be a boolean")
    if isinstance(spec, int):
        if not 0 <= spec <= MASK64:
            raise FeatureNameError(f"{_kind_label(kind)} mask {spec:#x} is not a 64-bit value")
        return kind(spec)
    items: list[str]
    if isinstance(spec, str):
        items = [part for part in re.split(r"[,|\s]+(?!\d)", spec) if part]
    else:
        items = []
        for item in spec:
            if not isinstance(item, str):
                raise FeatureNameError(
                    f"{_kind_label(kind)} {item!r} is not a string")
            items.append(item)
    value = kind(0)
    for item in items:
        value |= _lookup(kind, item)
    return value


def names(value: int, kind: type[Flag]) -> list[str]:
    """Every bit of ``value`` by canonical name; unknown bits as ``bit N``."""
    known = {member.value: name for name, member in kind.__members__.items()}
    return [known.get(1 << bit, f"bit {bit}") for bit in bit_numbers(value)]


def format_mask(value: int, kind: type[Flag]) -> str:
    """``0x... (NAME|NAME|bit N)``, the form used in logs and reports."""
    listed = "|".join(names(value, kind)) or "none"
    return f"{value:#x} ({listed})"


def parse_virtio(spec: str | int | Iterable[str]) -> VirtioFeature:
    """Shorthand for ``parse(VirtioFeature, spec)``."""
    return parse(VirtioFeature, spec)


def parse_protocol(spec: str | int | Iterable[str]) -> ProtocolFeature:
    """Shorthand for ``parse(ProtocolFeature, spec)``."""
    return parse(ProtocolFeature, spec)
