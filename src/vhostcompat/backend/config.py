"""What the reference backend offers: features, protocol features and limits.

A :class:`BackendConfig` is built either from a compatibility profile
(:meth:`BackendConfig.from_profile`) or from explicit options
(:meth:`BackendConfig.from_options`), and the backend then advertises exactly
that, so tests can play an "old host" and a "new host".

How an offer is composed (the same rule for both sources):

* the virtio features are the profile's (or the option's) as given: the
  shipped catalogs list the vhost-only bits a real backend offers
  (VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES) among their virtio
  features, so nothing is added behind the user's back;
* one exception: protocol features can only be offered behind
  VHOST_USER_F_PROTOCOL_FEATURES, so a non-empty protocol feature set adds
  that bit, with a warning naming it;
* no protocol features given means none offered;
* queue pairs (the GET_QUEUE_NUM answer, which QEMU and DPDK read as queue
  pairs for a net device) default to 1; the ring size limit to the virtio
  maximum, 32768.

:meth:`BackendConfig.warnings` names what a frontend will miss, in
particular what blocks live migration (see :func:`vhostcompat.probe.migration_blockers`).
"""

from __future__ import annotations

import dataclasses

from vhostcompat.errors import InputError
from vhostcompat.features import ProtocolFeature, VirtioFeature, format_mask
from vhostcompat.probe import migration_blockers
from vhostcompat.profiles import CompatProfile
from vhostcompat.vhostuser.session import MAX_QUEUE_SIZE, SessionLimits

DEFAULT_QUEUE_PAIRS = 1
NO_PROTOCOL_FEATURES = ProtocolFeature(0)
# The spec lets a net device have at most 0x8000 virtqueues; the session's
# ring indices are a u8 in SET_VRING_KICK/CALL/ERR, so 128 pairs is the real cap.
MAX_QUEUE_PAIRS = 128
# Regions a frontend may add one by one with ADD_MEM_REG (GET_MAX_MEM_SLOTS).
MAX_MEMORY_SLOTS = 32

# Protocol features whose front-end requests the reference backend serves
# (or that need no request at all). Others may be offered, as told, but a
# frontend that uses their requests is disconnected with the reason.
SERVED_PROTOCOL_FEATURES = (
    ProtocolFeature.MQ | ProtocolFeature.LOG_SHMFD | ProtocolFeature.RARP
    | ProtocolFeature.REPLY_ACK | ProtocolFeature.MTU | ProtocolFeature.BACKEND_REQ
    | ProtocolFeature.BACKEND_SEND_FD | ProtocolFeature.CROSS_ENDIAN
    | ProtocolFeature.HOST_NOTIFIER | ProtocolFeature.RESET_DEVICE
    | ProtocolFeature.CONFIGURE_MEM_SLOTS | ProtocolFeature.STATUS
)
# Offered by DPDK's vhost library whatever the device, used by crypto
# frontends only: offering it to a net frontend is harmless, so no warning.
UNUSED_BY_NET_FRONTENDS = ProtocolFeature.CRYPTO_SESSION


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """The offer of one reference backend; every connection gets the same."""

    features: VirtioFeature
    protocol_features: ProtocolFeature = NO_PROTOCOL_FEATURES
    queue_pairs: int = DEFAULT_QUEUE_PAIRS
    max_ring_size: int = MAX_QUEUE_SIZE
    version: str | None = None
    notes: tuple[str, ...] = ()
    """What composing the offer changed (e.g. a bit it had to add)."""

    def __post_init__(self) -> None:
        if not 1 <= self.queue_pairs <= MAX_QUEUE_PAIRS:
            raise InputError(f"queue pairs must be 1..{MAX_QUEUE_PAIRS}, not {self.queue_pairs}")
        if not 1 <= self.max_ring_size <= MAX_QUEUE_SIZE:
            raise InputError(f"max ring size must be 1..{MAX_QUEUE_SIZE}, "
                             f"not {self.max_ring_size}")
        if self.protocol_features and \
                VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES not in self.features:
            raise InputError("protocol features are offered only with "
                             "VHOST_USER_F_PROTOCOL_FEATURES among the virtio features")

    @classmethod
    def compose(cls, features: VirtioFeature, protocol_features: ProtocolFeature | None,
                *, queue_pairs: int | None = None, max_ring_size: int | None = None,
                version: str | None = None) -> BackendConfig:
        """Apply the composition rule of the module docstring."""
        notes: list[str] = []
        protocol = protocol_features or ProtocolFeature(0)
        gate = VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES
        if protocol and gate not in features:
            features |= gate
            notes.append(f"added {gate.name}: protocol features "
                         f"{format_mask(protocol, ProtocolFeature)} need it")
        return cls(features, protocol,
                   DEFAULT_QUEUE_PAIRS if queue_pairs is None else queue_pairs,
                   MAX_QUEUE_SIZE if max_ring_size is None else max_ring_size,
                   version, tuple(notes))

    @classmethod
    def from_profile(cls, profile: CompatProfile) -> BackendConfig:
        """The offer of a backend running in ``profile``'s compatibility mode."""
        return cls.compose(profile.virtio_features, profile.protocol_features,
                           queue_pairs=profile.max_queue_pairs,
                           max_ring_size=profile.max_ring_size, version=profile.version)

    @classmethod
    def from_options(cls, features: VirtioFeature,
                     protocol_features: ProtocolFeature | None = None, *,
                     queue_pairs: int | None = None,
                     max_ring_size: int | None = None) -> BackendConfig:
        """The offer given feature by feature (``--features`` and friends)."""
        return cls.compose(features, protocol_features, queue_pairs=queue_pairs,
                           max_ring_size=max_ring_size)

    @property
    def max_rings(self) -> int:
        """Ring indices a frontend may use: two per queue pair (RX, TX).

        The control queue of a net device stays in the frontend.
        """
        return 2 * self.queue_pairs

    def session_limits(self) -> SessionLimits:
        return SessionLimits(max_rings=self.max_rings, max_ring_size=self.max_ring_size,
                             max_memory_slots=MAX_MEMORY_SLOTS)

    def warnings(self) -> list[str]:
        """What a frontend will miss with this offer, one sentence each."""
        found = list(self.notes)
        found.extend(f"migration blocked: {reason}"
                     for reason in migration_blockers(self.features, self.protocol_features))
        if self.features & VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES and \
                not self.protocol_features:
            found.append("VHOST_USER_F_PROTOCOL_FEATURES offered with no protocol feature")
        if self.queue_pairs > 1 and ProtocolFeature.MQ not in self.protocol_features:
            found.append(f"{self.queue_pairs} queue pairs but no MQ protocol feature: "
                         "a frontend cannot ask GET_QUEUE_NUM")
        unserved = self.protocol_features & ~(SERVED_PROTOCOL_FEATURES | UNUSED_BY_NET_FRONTENDS)
        if unserved:
            found.append(f"offers {format_mask(unserved, ProtocolFeature)} without serving "
                         "their requests: a frontend that uses them is disconnected")
        return found

    def describe(self) -> str:
        """One line for logs."""
        label = f"profile {self.version}: " if self.version else ""
        return (f"{label}features {format_mask(self.features, VirtioFeature)}, "
                f"protocol features {format_mask(self.protocol_features, ProtocolFeature)}, "
                f"{self.queue_pairs} queue pair(s), rings up to {self.max_ring_size}")
