"""Pin the frontend from a profile: QEMU ``virtio-net-pci`` properties.

A backend in a compatibility mode offers only its profile's features; QEMU can
be told the same thing from the other side, so that the guest is never even
offered what the profile lacks (FIELD-NOTES: with ``indirect_desc=off`` on both
devices the indirect-descriptor migration completes). :func:`pin_frontend` is
a pure function from a :class:`~vhostcompat.profiles.CompatProfile` to the
properties to append to an existing ``-device virtio-net-pci,...``, plus notes
on everything QEMU has no property for.

The table below is QEMU 7.2's (Debian 12), checked against the installed
binary's ``-device virtio-net-pci,help`` by tests/test_qemuargs.py; newer
QEMUs add properties (:data:`NEWER_PROPERTIES`: USO in 8.2, ...). Given a
:class:`QemuTarget` (:func:`qemu_target`: a real binary and machine type,
asked), only the properties that binary has are used, with the defaults its
machine type sets (QEMU 10.0 turns USO off on ``pc-q35-7.2``), and the
pinning names the machine type to run: the newest the profile allows and the
binary has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vhostcompat.features import VirtioFeature, names
from vhostcompat.profiles.baseline import newest_machine_type
from vhostcompat.profiles.model import CompatProfile
from vhostcompat.qemuinfo import QemuBinaryError, binary_facts, device_facts

DEVICE = "virtio-net-pci"

# QEMU 7.2 virtio-net-pci boolean property -> (feature bit, default).
FEATURE_PROPERTIES: Mapping[str, tuple[VirtioFeature, bool]] = {
    "csum": (VirtioFeature.VIRTIO_NET_F_CSUM, True),
    "guest_csum": (VirtioFeature.VIRTIO_NET_F_GUEST_CSUM, True),
    "ctrl_guest_offloads": (VirtioFeature.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, True),
    "gso": (VirtioFeature.VIRTIO_NET_F_GSO, True),
    "guest_tso4": (VirtioFeature.VIRTIO_NET_F_GUEST_TSO4, True),
    "guest_tso6": (VirtioFeature.VIRTIO_NET_F_GUEST_TSO6, True),
    "guest_ecn": (VirtioFeature.VIRTIO_NET_F_GUEST_ECN, True),
    "guest_ufo": (VirtioFeature.VIRTIO_NET_F_GUEST_UFO, True),
    "host_tso4": (VirtioFeature.VIRTIO_NET_F_HOST_TSO4, True),
    "host_tso6": (VirtioFeature.VIRTIO_NET_F_HOST_TSO6, True),
    "host_ecn": (VirtioFeature.VIRTIO_NET_F_HOST_ECN, True),
    "host_ufo": (VirtioFeature.VIRTIO_NET_F_HOST_UFO, True),
    "mrg_rxbuf": (VirtioFeature.VIRTIO_NET_F_MRG_RXBUF, True),
    "status": (VirtioFeature.VIRTIO_NET_F_STATUS, True),
    "ctrl_vq": (VirtioFeature.VIRTIO_NET_F_CTRL_VQ, True),
    "ctrl_rx": (VirtioFeature.VIRTIO_NET_F_CTRL_RX, True),
    "ctrl_vlan": (VirtioFeature.VIRTIO_NET_F_CTRL_VLAN, True),
    "ctrl_rx_extra": (VirtioFeature.VIRTIO_NET_F_CTRL_RX_EXTRA, True),
    "guest_announce": (VirtioFeature.VIRTIO_NET_F_GUEST_ANNOUNCE, True),
    "mq": (VirtioFeature.VIRTIO_NET_F_MQ, False),
    "ctrl_mac_addr": (VirtioFeature.VIRTIO_NET_F_CTRL_MAC_ADDR, True),
    "notify_on_empty": (VirtioFeature.VIRTIO_F_NOTIFY_ON_EMPTY, True),
    "any_layout": (VirtioFeature.VIRTIO_F_ANY_LAYOUT, True),
    "indirect_desc": (VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC, True),
    "event_idx": (VirtioFeature.VIRTIO_RING_F_EVENT_IDX, True),
    "iommu_platform": (VirtioFeature.VIRTIO_F_ACCESS_PLATFORM, False),
    "packed": (VirtioFeature.VIRTIO_F_RING_PACKED, False),
    "queue_reset": (VirtioFeature.VIRTIO_F_RING_RESET, True),
    "hash": (VirtioFeature.VIRTIO_NET_F_HASH_REPORT, False),
    "rss": (VirtioFeature.VIRTIO_NET_F_RSS, False),
    "guest_rsc_ext": (VirtioFeature.VIRTIO_NET_F_RSC_EXT, False),
    "failover": (VirtioFeature.VIRTIO_NET_F_STANDBY, False),
}

# Properties newer QEMUs have (7.2 has none of them; defaults as in QEMU 10.0's
# own q35, before any machine-type compat). Only used with a QemuTarget.
NEWER_PROPERTIES: Mapping[str, tuple[VirtioFeature, bool]] = {
    "guest_uso4": (VirtioFeature.VIRTIO_NET_F_GUEST_USO4, True),
    "guest_uso6": (VirtioFeature.VIRTIO_NET_F_GUEST_USO6, True),
    "host_uso": (VirtioFeature.VIRTIO_NET_F_HOST_USO, True),
    "in_order": (VirtioFeature.VIRTIO_F_IN_ORDER, False),
}
ALL_PROPERTIES: Mapping[str, tuple[VirtioFeature, bool]] = {**FEATURE_PROPERTIES,
                                                            **NEWER_PROPERTIES}

# Bits QEMU 7.2 offers whatever the properties say, although the backend
# controls them: no device property keeps the guest from seeing them.
ALWAYS_OFFERED: Mapping[VirtioFeature, str] = {
    VirtioFeature.VIRTIO_F_VERSION_1: "QEMU offers it on modern devices; only "
                                      "disable-modern=on (a legacy-only device) removes it",
}

# Bits QEMU's virtio-net emulates itself with a vhost-user backend (they are
# not in QEMU's vhost_net user_feature_bits): the backend never sees them, so a
# backend profile does not constrain them and their properties stay as they are.
QEMU_EMULATED = (
    VirtioFeature.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS | VirtioFeature.VIRTIO_NET_F_STATUS
    | VirtioFeature.VIRTIO_NET_F_CTRL_VQ | VirtioFeature.VIRTIO_NET_F_CTRL_RX
    | VirtioFeature.VIRTIO_NET_F_CTRL_VLAN | VirtioFeature.VIRTIO_NET_F_CTRL_RX_EXTRA
    | VirtioFeature.VIRTIO_NET_F_CTRL_MAC_ADDR | VirtioFeature.VIRTIO_NET_F_STANDBY
    | VirtioFeature.VIRTIO_NET_F_RSC_EXT
)
# Emulated bits without any property: QEMU always offers them.
EMULATED_WITHOUT_PROPERTY = VirtioFeature.VIRTIO_NET_F_MAC | VirtioFeature.VIRTIO_NET_F_SPEED_DUPLEX

# Bits that travel between QEMU and the backend only, never offered to a guest.
VHOST_ONLY = (VirtioFeature.VHOST_F_LOG_ALL | VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES)

# host_mtu=N (N > 0) offers VIRTIO_NET_F_MTU; the default 0 does not.
MTU_PROPERTY = "host_mtu"

# rx_queue_size / tx_queue_size: powers of two between 256 and 1024 in QEMU 7.2
# (VIRTQUEUE_MAX_SIZE; tx above 256 only with a vhost-user peer).
QUEUE_SIZE_MIN = 256
QUEUE_SIZE_MAX = 1024
QUEUE_SIZE_DEFAULT = 256


@dataclass(frozen=True)
class QemuTarget:
    """One real QEMU binary on one machine type: its properties and their defaults."""

    binary: str
    version: str
    machine: str
    """The versioned machine type to run."""
    defaults: Mapping[str, bool]
    """Every boolean virtio-net-pci property the binary has, as that machine sets it."""
    machine_reason: str = ""


@dataclass(frozen=True)
class FrontendPinning:
    """Device properties that keep QEMU within a profile, and what they cannot do."""

    version: str
    properties: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    unpinnable: VirtioFeature
    satisfiable: bool
    machine: str | None = None
    qemu: str | None = None

    def argument(self) -> str:
        """``virtio-net-pci,prop=val,...``: to merge into an existing -device."""
        return ",".join([DEVICE, *(f"{name}={value}" for name, value in self.properties)])

    def to_json(self) -> dict[str, object]:
        return {"profile": self.version, "device": DEVICE, "argument": self.argument(),
                "properties": dict(self.properties), "notes": list(self.notes),
                "unpinnable": names(self.unpinnable, VirtioFeature),
                "satisfiable": self.satisfiable, "machine": self.machine,
                "qemu": self.qemu}


def _largest_power_of_two(limit: int) -> int:
    return 1 << (limit.bit_length() - 1)


def _property_table(target: QemuTarget | None) -> dict[str, tuple[VirtioFeature, bool]]:
    """Property -> (bit, default): QEMU 7.2's table, or what the target really has."""
    if target is None:
        return dict(FEATURE_PROPERTIES)
    return {prop: (bit, target.defaults[prop]) for prop, (bit, _default) in
            ALL_PROPERTIES.items() if prop in target.defaults}


def pin_frontend(profile: CompatProfile, target: QemuTarget | None = None) -> FrontendPinning:
    """The ``virtio-net-pci`` properties that never offer what ``profile`` lacks.

    Without ``target``: QEMU 7.2's table. With it: that binary's properties and
    its machine type's defaults, and the machine type to run.
    """
    allowed = profile.virtio_features
    properties: list[tuple[str, str]] = []
    notes: list[str] = []
    default_off: list[str] = []
    emulated: list[str] = []
    table = _property_table(target)
    where = "QEMU 7.2" if target is None else f"QEMU {target.version} on {target.machine}"
    if target is not None:
        absent = [f"{names(bit, VirtioFeature)[0]} ({prop})"
                  for prop, (bit, _default) in ALL_PROPERTIES.items()
                  if prop not in table and not bit & allowed]
        if absent:
            notes.append(f"QEMU {target.version} has no such property and never offers: "
                         + ", ".join(absent))
    for prop, (bit, default) in table.items():
        if bit & QEMU_EMULATED and not bit & allowed:
            if default:
                emulated.append(f"{names(bit, VirtioFeature)[0]} ({prop})")
            continue
        if bit & allowed:
            if not default:
                notes.append(f"{prop}=on is allowed by the profile "
                             f"({names(bit, VirtioFeature)[0]}) but QEMU leaves it off by "
                             "default; left off")
            continue
        if default:
            properties.append((prop, "off"))
        else:
            default_off.append(names(bit, VirtioFeature)[0])
    if not allowed & VirtioFeature.VIRTIO_NET_F_MTU:
        default_off.append("VIRTIO_NET_F_MTU (host_mtu=0)")
    emulated.extend(f"{name} (no property)" for name in
                    names(EMULATED_WITHOUT_PROPERTY & ~allowed, VirtioFeature))
    if emulated:
        notes.append("emulated by QEMU, the backend never sees them, left as they are: "
                     + ", ".join(emulated))
    if default_off:
        notes.append(f"off by default in {where}, nothing needed: " + ", ".join(default_off))
    unpinnable = VirtioFeature(0)
    for bit, why in ALWAYS_OFFERED.items():
        if not bit & allowed:
            unpinnable |= bit
            notes.append(f"no property removes {names(bit, VirtioFeature)[0]}: {why}")
    vhost_only = VHOST_ONLY & ~allowed
    if vhost_only:
        notes.append("negotiated between QEMU and the backend only, never offered to the "
                     "guest: " + ", ".join(names(vhost_only, VirtioFeature)))
    satisfiable = _queue_properties(profile, properties, notes)
    notes.append("protocol features have no device property: the backend (or the "
                 "enforcement proxy) limits them")
    if target is None and profile.machine_types is not None:
        newest = newest_machine_type(profile.machine_types)
        notes.append(f"the profile allows machine types up to {newest or 'none of q35'}: "
                     "give --qemu BINARY to check the binary has it and pin its defaults")
    if target is not None:
        if profile.machine_types is not None and target.machine not in profile.machine_types:
            satisfiable = False
            notes.append(f"machine type {target.machine} is not among the profile's: a "
                         "destination may refuse to load the VM")
        notes.append(f"run -machine {target.machine}" + (f" ({target.machine_reason})"
                                                        if target.machine_reason else ""))
    return FrontendPinning(profile.version, tuple(properties), tuple(notes), unpinnable,
                           satisfiable, None if target is None else target.machine,
                           None if target is None else target.binary)


async def qemu_target(binary: str, profile: CompatProfile,
                      machine: str | None = None) -> QemuTarget:
    """Ask ``binary`` its properties and, on the machine type to run, their defaults.

    The machine type: ``machine`` if given, else the newest q35 type both the
    profile (``machine_types``) and the binary have, else the binary's ``q35``.
    """
    facts = await binary_facts(binary)
    reason = "as asked"
    if machine is None:
        have = facts.machines.versioned
        if profile.machine_types is not None:
            machine = newest_machine_type(have & profile.machine_types)
            if machine is None:
                raise QemuBinaryError(binary, f"has none of profile {profile.version}'s "
                                      "q35 machine types")
            reason = f"the newest q35 machine type {profile.version} allows and QEMU has"
        else:
            machine = facts.resolve_machine("q35")
            reason = f"the profile names no machine types: QEMU {facts.version}'s q35"
    device = await device_facts(facts, machine)
    return QemuTarget(binary, facts.version, device.machine, device.property_values, reason)


def _queue_properties(profile: CompatProfile, properties: list[tuple[str, str]],
                      notes: list[str]) -> bool:
    """Ring sizes and queue pairs; False when QEMU cannot stay within the profile."""
    satisfiable = True
    if profile.max_ring_size is None:
        notes.append("the profile declares no max_ring_size: ring sizes left at QEMU's "
                     f"default ({QUEUE_SIZE_DEFAULT})")
    elif profile.max_ring_size < QUEUE_SIZE_MIN:
        satisfiable = False
        notes.append(f"the profile allows rings of at most {profile.max_ring_size} entries, "
                     f"below QEMU's minimum of {QUEUE_SIZE_MIN}: QEMU cannot be pinned to it")
    else:
        size = _largest_power_of_two(min(profile.max_ring_size, QUEUE_SIZE_MAX))
        properties.extend((("rx_queue_size", str(size)), ("tx_queue_size", str(size))))
        if profile.max_ring_size > QUEUE_SIZE_MAX:
            notes.append(f"ring size {size}: QEMU 7.2's maximum (the profile allows "
                         f"{profile.max_ring_size})")
        notes.append(f"tx_queue_size={size} needs a vhost-user netdev (other peers allow "
                     f"{QUEUE_SIZE_DEFAULT} at most)" if size > QUEUE_SIZE_DEFAULT
                     else f"ring size {size}")
    pairs = profile.max_queue_pairs
    if profile.virtio_features & VirtioFeature.VIRTIO_NET_F_MQ and pairs and pairs > 1:
        notes.append(f"multiqueue: up to {pairs} queue pairs; use mq=on, vectors=2*N+2 and "
                     f"-netdev vhost-user,queues=N with N <= {pairs}")
    else:
        notes.append("one queue pair: keep mq off and -netdev vhost-user queues=1")
    return satisfiable
