"""A compatibility mode as a pure policy: what the proxy offers, refuses and records.

The proxy sits on the vhost-user control channel between a front-end (QEMU)
and an unmodified back-end. Everything it decides about the mode lives here,
without I/O, so that it can be tested exhaustively:

* **offer**: the GET_FEATURES answer becomes backend ∩ profile, the
  GET_PROTOCOL_FEATURES answer backend ∩ profile ∩ what the proxy can relay,
  the GET_QUEUE_NUM answer min(backend, profile's max_queue_pairs);
* **refuse**: a SET_FEATURES (or SET_PROTOCOL_FEATURES) carrying bits outside
  what was offered, a SET_VRING_NUM above the profile's max_ring_size, a ring
  index beyond the profile's queue pairs; each :class:`Refusal` names the
  feature or the limit in one line;
* **record**: what the guest actually acked, the queue pairs and ring sizes in
  use, read from the front-end session (:func:`negotiated_from`).

The bits vhost itself needs for migration (VHOST_F_LOG_ALL, the
LOG_SHMFD protocol feature) are ordinary bits here: kept when both the
back-end and the profile have them, withheld otherwise, and
:meth:`ProxyPolicy.migration_blockers` says when a mode leaves QEMU unable to
migrate.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

from vhostcompat.features import ProtocolFeature, VirtioFeature, format_mask, outside
from vhostcompat.profiles import CompatProfile, feature_labels
from vhostcompat.vhostuser import (
    U64,
    FrontendRequest,
    HeaderFlags,
    Message,
    SessionLimits,
    VringState,
)
from vhostcompat.vhostuser.session import MAX_QUEUE_SIZE, Session

# Protocol features whose messages the proxy can decode and relay. XEN_MMAP
# changes the memory region layout (the core refuses it), and bits the request
# table does not know could enable messages nobody here can check.
RELAYABLE_PROTOCOL_FEATURES = functools.reduce(
    operator.or_, (member for member in ProtocolFeature
                   if member is not ProtocolFeature.XEN_MMAP), ProtocolFeature(0))

# Front-end requests whose payload addresses a ring: checked against the
# profile's queue pairs before anything reaches the back-end.
RING_REQUESTS = frozenset({
    FrontendRequest.SET_VRING_NUM, FrontendRequest.SET_VRING_ADDR,
    FrontendRequest.SET_VRING_BASE, FrontendRequest.GET_VRING_BASE,
    FrontendRequest.SET_VRING_KICK, FrontendRequest.SET_VRING_CALL,
    FrontendRequest.SET_VRING_ERR, FrontendRequest.SET_VRING_ENABLE,
    FrontendRequest.SET_VRING_ENDIAN, FrontendRequest.VRING_KICK,
})


_REPLY = int(HeaderFlags.REPLY)
_LOG_ALL = int(VirtioFeature.VHOST_F_LOG_ALL)
_LOG_SHMFD = int(ProtocolFeature.LOG_SHMFD)


def _labels(value: VirtioFeature | ProtocolFeature) -> str:
    return ", ".join(feature_labels(value)) or "none"



@dataclass(frozen=True)
class Refusal:
    """A front-end request the mode refuses, with the reason in one line."""

    request: FrontendRequest
    reason: str
    ring: int | None = None

    def __str__(self) -> str:
        where = f" (ring {self.ring})" if self.ring is not None else ""
        return f"{self.request.name}{where} refused: {self.reason}"


@dataclass(frozen=True)
class Offer:
    """What one GET_* answer became: the back-end's value and ours."""

    request: FrontendRequest
    backend: int
    offered: int

    @property
    def withheld(self) -> int:
        return outside(self.backend, self.offered) if self.request is not \
            FrontendRequest.GET_QUEUE_NUM else 0

    def describe(self, version: str) -> str:
        """One log line: the back-end's answer, the mode, ours."""
        if self.request is FrontendRequest.GET_QUEUE_NUM:
            limited = " (the mode's max_queue_pairs)" if self.offered < self.backend else ""
            return (f"GET_QUEUE_NUM: back-end {self.backend}, mode {version}: "
                    f"answering {self.offered}{limited}")
        kind = VirtioFeature if self.request is FrontendRequest.GET_FEATURES else \
            ProtocolFeature
        withheld = kind(self.withheld)
        line = (f"{self.request.name}: back-end {int(self.backend):#x}, mode {version}: "
                f"offering {int(self.offered):#x}")
        return line + (f", withholding {_labels(withheld)}" if withheld else "")


@dataclass(frozen=True)
class ProxyPolicy:
    """The compatibility mode of one interface, from its profile."""

    profile: CompatProfile

    @property
    def version(self) -> str:
        return self.profile.version

    # -- what to offer -------------------------------------------------------------

    def offer_features(self, backend: VirtioFeature) -> VirtioFeature:
        """The GET_FEATURES answer: backend ∩ profile."""
        return VirtioFeature(self.offer(FrontendRequest.GET_FEATURES, backend).offered)

    def offer_protocol_features(self, backend: ProtocolFeature) -> ProtocolFeature:
        """The GET_PROTOCOL_FEATURES answer: backend ∩ profile ∩ relayable.

        A profile that declares no protocol features leaves the back-end's
        (minus what the proxy cannot relay).
        """
        return ProtocolFeature(self.offer(FrontendRequest.GET_PROTOCOL_FEATURES, backend).offered)

    def queue_num(self, backend: int) -> int:
        """The GET_QUEUE_NUM answer: min(backend, the profile's max_queue_pairs)."""
        if self.profile.max_queue_pairs is None:
            return backend
        return min(backend, self.profile.max_queue_pairs)

    def offer(self, request: FrontendRequest, backend: int) -> Offer:
        """The answer to a GET_FEATURES / GET_PROTOCOL_FEATURES / GET_QUEUE_NUM reply
        (in ints: the back-end's word is not made an IntFlag while relaying)."""
        if request is FrontendRequest.GET_FEATURES:
            return Offer(request, backend, int(backend) & self._virtio_allowed)
        if request is FrontendRequest.GET_PROTOCOL_FEATURES:
            return Offer(request, backend, int(backend) & self._protocol_allowed)
        if request is FrontendRequest.GET_QUEUE_NUM:
            return Offer(request, backend, self.queue_num(backend))
        raise ValueError(f"{request.name} is not an answer the mode changes")

    @functools.cached_property
    def _virtio_allowed(self) -> int:
        return int(self.profile.virtio_features)

    @functools.cached_property
    def _protocol_allowed(self) -> int:
        allowed = int(RELAYABLE_PROTOCOL_FEATURES)
        if self.profile.protocol_features is not None:
            allowed &= int(self.profile.protocol_features)
        return allowed

    @functools.cached_property
    def max_rings(self) -> int | None:
        """Ring indices the mode allows (two per queue pair; QEMU keeps the
        control queue to itself), or None when the profile sets no limit."""
        pairs = self.profile.max_queue_pairs
        return None if pairs is None else 2 * pairs

    def session_limits(self) -> SessionLimits:
        """The profile's limits for the front-end session (a second line of defence)."""
        defaults = SessionLimits()
        return SessionLimits(
            max_rings=self.max_rings if self.max_rings is not None else defaults.max_rings,
            max_ring_size=min(self.profile.max_ring_size or MAX_QUEUE_SIZE, MAX_QUEUE_SIZE),
        )

    def migration_blockers(self, offered: int | None, protocol: int | None) -> list[str]:
        """Why QEMU would refuse to migrate a device offered this (feature words, or
        their flags; either part may be unknown yet: None)."""
        blockers = []
        if offered is not None and not int(offered) & _LOG_ALL:
            blockers.append("VHOST_F_LOG_ALL (bit 26) is not offered")
        if protocol is not None and not int(protocol) & _LOG_SHMFD:
            blockers.append("protocol feature LOG_SHMFD is not offered")
        return blockers

    # -- what to refuse -----------------------------------------------------------

    def check(self, message: Message, session: Session) -> Refusal | None:
        """The mode's verdict on a front-end request, before the session sees it."""
        request = message.request
        if type(request) is not FrontendRequest or int(message.flags) & _REPLY:
            return None
        payload = message.payload
        if request is FrontendRequest.SET_FEATURES and isinstance(payload, U64):
            # The acked word stays an int: see the Session's feature words.
            return self.check_features(session.offered_features, payload.value)
        if request is FrontendRequest.SET_PROTOCOL_FEATURES and isinstance(payload, U64):
            return self.check_protocol_features(session.offered_protocol_features,
                                                payload.value)
        if request in RING_REQUESTS:
            index = payload.ring_index
            limit = self.max_rings
            if index is not None and limit is not None and index >= limit:
                return self.check_ring_index(request, index)
            if request is FrontendRequest.SET_VRING_NUM and isinstance(payload, VringState):
                return self.check_ring_size(payload.index, payload.num)
        return None

    def check_features(self, offered: VirtioFeature | None,
                       requested: int) -> Refusal | None:
        """SET_FEATURES: every bit must be one we offered."""
        request = FrontendRequest.SET_FEATURES
        if offered is None:
            return Refusal(request, "no GET_FEATURES was answered on this connection yet")
        extra = outside(requested, offered)
        if not extra:
            return None
        not_in_profile = VirtioFeature(outside(extra, self.profile.virtio_features))
        not_offered = VirtioFeature(extra & ~int(not_in_profile))
        reasons = []
        if not_in_profile:
            reasons.append(f"{_labels(not_in_profile)} not in mode {self.version}")
        if not_offered:
            reasons.append(f"{_labels(not_offered)} not offered by the back-end")
        return Refusal(request, f"acks {'; '.join(reasons)} "
                                f"(offered {format_mask(offered, VirtioFeature)})")

    def check_protocol_features(self, offered: ProtocolFeature | None,
                                requested: int) -> Refusal | None:
        """SET_PROTOCOL_FEATURES: every bit must be one we offered."""
        request = FrontendRequest.SET_PROTOCOL_FEATURES
        if offered is None:
            return Refusal(request, "no GET_PROTOCOL_FEATURES was answered on this connection")
        extra = outside(requested, offered)
        if not extra:
            return None
        return Refusal(request, f"acks protocol features {_labels(ProtocolFeature(extra))} "
                                f"outside mode "
                                f"{self.version}'s offer ({int(offered):#x})")

    def check_ring_index(self, request: FrontendRequest, index: int) -> Refusal | None:
        limit = self.max_rings
        if limit is None or index < limit:
            return None
        return Refusal(request, f"ring {index} is beyond max_queue_pairs "
                                f"{self.profile.max_queue_pairs} of mode {self.version} "
                                f"(rings 0-{limit - 1})", index)

    def check_ring_size(self, index: int, num: int) -> Refusal | None:
        limit = self.profile.max_ring_size
        if limit is None or num <= limit:
            return None
        return Refusal(FrontendRequest.SET_VRING_NUM,
                       f"ring size {num} exceeds max_ring_size {limit} of mode "
                       f"{self.version}", index)


# -- what to record ----------------------------------------------------------------

@dataclass(frozen=True)
class Negotiated:
    """What one connection negotiated, as the front-end session saw it."""

    acked_features: VirtioFeature | None
    acked_protocol_features: ProtocolFeature | None
    queue_pairs: int | None
    ring_sizes: tuple[tuple[int, int], ...]
    running: bool
    dirty_logging: bool = False

    @property
    def ring_size(self) -> int | None:
        """The largest ring size in use."""
        return max((size for _, size in self.ring_sizes), default=None)


def negotiated_from(session: Session) -> Negotiated:
    """Acked features, queue pairs (from the rings started) and ring sizes in use.

    VHOST_F_LOG_ALL is left out of the acked features: QEMU sets it only
    while it migrates (dirty logging), it is no part of what the guest
    negotiated; ``dirty_logging`` says whether it is on.
    """
    started = session.started_rings()
    sized = tuple((index, ring.num) for index, ring in sorted(session.rings.items())
                  if ring.num is not None)
    acked = session.acked_features
    logging = acked is not None and VirtioFeature.VHOST_F_LOG_ALL in acked
    return Negotiated(
        acked_features=None if acked is None else VirtioFeature(
            outside(acked, VirtioFeature.VHOST_F_LOG_ALL)),
        acked_protocol_features=session.acked_protocol_features,
        # Rings 2i and 2i+1 are queue pair i; QEMU starts every pair it uses.
        queue_pairs=max(started) // 2 + 1 if started else None,
        ring_sizes=sized,
        running=bool(started),
        dirty_logging=logging,
    )
