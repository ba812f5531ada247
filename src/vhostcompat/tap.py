"""What the host kernel's tap (and vhost-net) backend accepts, asked through ioctls.

A tap netdev's offloads decide what QEMU may offer a guest: QEMU asks the
kernel (TUNSETOFFLOAD) and offers, for instance, the USO bits only where the
kernel takes TUN_F_USO4|TUN_F_USO6. :func:`probe_tap_offloads` asks the same
questions on a fresh tap (``/dev/net/tun``, TUNSETIFF with
IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; the device disappears when the descriptor is
closed), honouring the kernel's dependencies between flags: every offload
needs TUN_F_CSUM, TUN_F_TSO_ECN needs TSO4 or TSO6, and USO4/USO6 are
accepted only as a pair (CSUM|USO4|USO6 = 0x61 is QEMU's own probe). Asking
for one flag alone reports "unsupported" on a kernel that supports it.

:func:`probe_vhost_net` says whether ``/dev/vhost-net`` exists and, where it
does, what VHOST_GET_FEATURES answers.

Paths are parameters so that tests can point them elsewhere (no
``/dev/net/tun``); creating a tap needs CAP_NET_ADMIN, and its absence is a
:class:`TapProbeError` naming it.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature

TUN_PATH = Path("/dev/net/tun")
VHOST_NET_PATH = Path("/dev/vhost-net")

# <linux/if_tun.h>: _IOW('T', 202, int), _IOW('T', 208, unsigned int).
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
# <linux/vhost.h>: _IOR(VHOST_VIRTIO 0xAF, 0x00, __u64).
VHOST_GET_FEATURES = 0x8008AF00


class TunOffload(enum.IntFlag):
    """TUN_F_* offload flags of TUNSETOFFLOAD (<linux/if_tun.h>)."""

    TUN_F_CSUM = 0x01
    TUN_F_TSO4 = 0x02
    TUN_F_TSO6 = 0x04
    TUN_F_TSO_ECN = 0x08
    TUN_F_UFO = 0x10
    TUN_F_USO4 = 0x20
    TUN_F_USO6 = 0x40


_O = TunOffload
# What to ask, in order: each set already holds what it depends on.
# TSO_ECN is asked with both TSOs (the kernel needs at least one of them).
OFFLOAD_QUESTIONS: tuple[TunOffload, ...] = (
    _O.TUN_F_CSUM,
    _O.TUN_F_CSUM | _O.TUN_F_TSO4,
    _O.TUN_F_CSUM | _O.TUN_F_TSO6,
    _O.TUN_F_CSUM | _O.TUN_F_TSO4 | _O.TUN_F_TSO6 | _O.TUN_F_TSO_ECN,
    _O.TUN_F_CSUM | _O.TUN_F_UFO,
    _O.TUN_F_CSUM | _O.TUN_F_USO4 | _O.TUN_F_USO6,
)

# The guest-side virtio-net bits each tap offload lets QEMU offer (QEMU
# offers GUEST_* receive offloads only where the tap takes them).
VIRTIO_FOR_OFFLOAD: dict[TunOffload, VirtioFeature] = {
    _O.TUN_F_CSUM: VirtioFeature.VIRTIO_NET_F_GUEST_CSUM,
    _O.TUN_F_TSO4: VirtioFeature.VIRTIO_NET_F_GUEST_TSO4,
    _O.TUN_F_TSO6: VirtioFeature.VIRTIO_NET_F_GUEST_TSO6,
    _O.TUN_F_TSO_ECN: VirtioFeature.VIRTIO_NET_F_GUEST_ECN,
    _O.TUN_F_UFO: VirtioFeature.VIRTIO_NET_F_GUEST_UFO,
    _O.TUN_F_USO4: VirtioFeature.VIRTIO_NET_F_GUEST_USO4,
    _O.TUN_F_USO6: VirtioFeature.VIRTIO_NET_F_GUEST_USO6,
}


class TapProbeError(InputError):
    """The kernel's tap backend could not be asked: names the device and why."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"tap probe: {what}: {reason}")


def offload_names(offloads: int) -> list[str]:
    return [flag.name or "" for flag in TunOffload if flag & offloads]


def accepted_offloads(answers: Sequence[tuple[TunOffload, bool]]) -> TunOffload:
    """What the kernel accepts, from the answers to :data:`OFFLOAD_QUESTIONS`."""
    accepted = TunOffload(0)
    for asked, ok in answers:
        if ok:
            accepted |= asked
    return accepted


@dataclass(frozen=True)
class TapOffloads:
    """The tap offloads the kernel accepted, and the guest bits they allow."""

    accepted: TunOffload
    tun_path: str

    @property
    def guest_features(self) -> VirtioFeature:
        features = VirtioFeature(0)
        for flag, bit in VIRTIO_FOR_OFFLOAD.items():
            if flag & self.accepted:
                features |= bit
        return features

    def to_json(self) -> dict[str, object]:
        return {"device": self.tun_path, "mask": f"{int(self.accepted):#x}",
                "names": offload_names(self.accepted)}


def _open_tap(tun_path: Path) -> int:
    try:
        fd = os.open(tun_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TapProbeError(str(tun_path), "no such device (no tun/tap support: "
                            "load the tun module)") from None
    except OSError as error:
        raise TapProbeError(str(tun_path), f"cannot open: {error.strerror}") from None
    request = struct.pack(f"{IFNAMSIZ}sH", b"", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, request.ljust(40, b"\0"))
    except OSError as error:
        os.close(fd)
        if error.errno == errno.EPERM:
            raise TapProbeError(str(tun_path), "TUNSETIFF: creating a tap needs "
                                "CAP_NET_ADMIN (run as root)") from None
        raise TapProbeError(str(tun_path), f"TUNSETIFF: {error.strerror}") from None
    return fd


def probe_tap_offloads(tun_path: Path = TUN_PATH) -> TapOffloads:
    """Ask a fresh, transient tap which offload combinations the kernel accepts."""
    fd = _open_tap(tun_path)
    answers: list[tuple[TunOffload, bool]] = []
    try:
        for asked in OFFLOAD_QUESTIONS:
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, int(asked))
                answers.append((asked, True))
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise TapProbeError(str(tun_path), f"TUNSETOFFLOAD "
                                        f"{int(asked):#x}: {error.strerror}") from None
                answers.append((asked, False))
    finally:
        os.close(fd)
    return TapOffloads(accepted_offloads(answers), str(tun_path))


@dataclass(frozen=True)
class VhostNet:
    """Whether the kernel's vhost-net exists, and its VHOST_GET_FEATURES answer."""

    path: str
    present: bool
    features: VirtioFeature | None
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"device": self.path, "present": self.present,
                "features": None if self.features is None
                else {"mask": f"{int(self.features):#x}"},
                "error": self.error}


def probe_vhost_net(path: Path = VHOST_NET_PATH) -> VhostNet:
    """``/dev/vhost-net``'s features, or why there are none (never raises)."""
    if not path.exists():
        return VhostNet(str(path), False, None)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return VhostNet(str(path), True, None, f"cannot open: {error.strerror}")
    try:
        answer = bytearray(8)
        fcntl.ioctl(fd, VHOST_GET_FEATURES, answer)
        return VhostNet(str(path), True, VirtioFeature(struct.unpack("<Q", answer)[0]))
    except OSError as error:
        return VhostNet(str(path), True, None, f"VHOST_GET_FEATURES: {error.strerror}")
    finally:
        os.close(fd)
