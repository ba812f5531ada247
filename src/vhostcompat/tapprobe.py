"""``vhostcompat probe --tap``: what this host offers a guest on a tap netdev.

Three questions, each asked of the real thing:

1. the kernel: which tap offloads TUNSETOFFLOAD accepts (:mod:`vhostcompat.tap`,
   with the flag dependencies), and whether ``/dev/vhost-net`` exists;
2. the QEMU binary: its version, machine types, and ``virtio-net-pci``
   properties (:mod:`vhostcompat.qemuinfo`);
3. QEMU on that machine type with a tap netdev, paused (``-S``): the
   ``host-features`` it offers, read over QMP and decoded by us (QEMU 10.0.2
   mislabels GUEST_USO6), and the property values the machine type sets.

The result's ``features`` is QEMU's ``host-features``: what its device
offers and what its migration load checks a guest's features against
("Allowed features: 0x..."). A modern driver sees those minus the
legacy-only bits (``driver_offer``; the qtest driver reads exactly that mask
from the device). :meth:`as_profile` turns the offer, with the binary's
machine types, into a catalog entry so that a host publishes what it really
offers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.features import VirtioFeature, names
from vhostcompat.lab.tap import unique_tap_name
from vhostcompat.profiles import CompatProfile, feature_labels
from vhostcompat.qemuinfo import (
    BinaryFacts,
    DeviceFacts,
    binary_facts,
    device_facts,
)
from vhostcompat.tap import (
    TUN_PATH,
    VHOST_NET_PATH,
    TapOffloads,
    VhostNet,
    offload_names,
    probe_tap_offloads,
    probe_vhost_net,
)

DEFAULT_MACHINE = "q35"


@dataclass(frozen=True)
class TapProbeResult:
    """What the kernel and one QEMU binary + machine type offer a guest on a tap."""

    binary: BinaryFacts
    machine_requested: str
    device: DeviceFacts
    offloads: TapOffloads
    vhost_net: VhostNet
    seconds: float

    @property
    def features(self) -> VirtioFeature:
        return self.device.host_features

    @property
    def driver_offer(self) -> VirtioFeature:
        return self.device.guest_offer

    @property
    def machine(self) -> str:
        return self.device.machine

    def as_profile(self, version: str) -> CompatProfile:
        """This host's offer as a profile: features and machine types."""
        return CompatProfile(
            version=version, virtio_features=self.features,
            machine_types=self.binary.machines.versioned,
            description=f"QEMU {self.binary.version} machine {self.machine} on a tap "
                        f"(kernel offloads {int(self.offloads.accepted):#x}), captured "
                        "by vhostcompat probe --tap")

    def comments(self) -> list[str]:
        return [f"captured by `vhostcompat probe --tap --qemu {self.binary.binary} "
                f"--machine {self.machine_requested}`",
                f"QEMU {self.binary.version}, machine {self.machine}; tap offloads "
                f"{', '.join(offload_names(self.offloads.accepted)) or 'none'}"]

    def lines(self) -> list[str]:
        out = [f"qemu: {self.binary.binary} (QEMU {self.binary.version})",
               f"machine: {self.machine}"
               + (f" (from {self.machine_requested})"
                  if self.machine_requested != self.machine else ""),
               f"tap offloads ({self.offloads.tun_path}): {int(self.offloads.accepted):#x} "
               f"({', '.join(offload_names(self.offloads.accepted)) or 'none'})"]
        if self.vhost_net.present:
            detail = (f"features {int(self.vhost_net.features):#x}"
                      if self.vhost_net.features is not None else self.vhost_net.error)
            out.append(f"vhost-net: {self.vhost_net.path} ({detail})")
        else:
            out.append(f"vhost-net: {self.vhost_net.path} does not exist (QEMU runs "
                       "virtio-net in userspace on the tap)")
        out.append(f"features offered to a guest: {int(self.features):#x}")
        out += [f"  {label}" for label in feature_labels(self.features)]
        out.append(f"a modern (virtio 1.x) driver sees: {int(self.driver_offer):#x} "
                   "(legacy-only bits hidden)")
        out.append(f"machine types: {len(self.binary.machines.versioned)} versioned "
                   f"(q35 is {self.binary.machines.aliases.get('q35', '?')})")
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "backend": "tap",
            "qemu": {"binary": self.binary.binary, "version": self.binary.version},
            "machine": self.machine, "machine_requested": self.machine_requested,
            "machine_types": sorted(self.binary.machines.versioned),
            "features": {"mask": f"{int(self.features):#x}",
                         "names": names(self.features, VirtioFeature)},
            "driver_offer": {"mask": f"{int(self.driver_offer):#x}",
                             "names": names(self.driver_offer, VirtioFeature)},
            "tap_offloads": self.offloads.to_json(),
            "vhost_net": self.vhost_net.to_json(),
            "properties": dict(self.device.property_values),
            "seconds": round(self.seconds, 3),
        }


async def probe_tap(binary: str, machine: str = DEFAULT_MACHINE, *,
                    tun_path: Path = TUN_PATH,
                    vhost_net_path: Path = VHOST_NET_PATH) -> TapProbeResult:
    """Probe the kernel's tap backend, then ``binary`` on ``machine`` with a tap.

    The binary and machine type are checked first (no root needed to be told
    they are wrong), then the kernel: without a tap (no /dev/net/tun, no
    CAP_NET_ADMIN) QEMU could not open one either, and the kernel's error is
    the clear one. Only then is QEMU started.
    """
    started = time.monotonic()
    facts = await binary_facts(binary)
    facts.resolve_machine(machine)
    offloads = probe_tap_offloads(tun_path)
    vhost_net = probe_vhost_net(vhost_net_path)
    # QEMU creates this transient tap and it goes when QEMU exits.
    device = await device_facts(facts, machine, tap=unique_tap_name("vcp"))
    return TapProbeResult(facts, machine, device, offloads, vhost_net,
                          time.monotonic() - started)
