"""Per-connection vhost-user session state (no I/O).

A :class:`Session` plays one role (front-end or back-end) and is shown every
message of its connection: :meth:`Session.receive` for what the peer sent,
:meth:`Session.send` for what we are about to send. It knows what was
negotiated (features offered and acked, protocol features, REPLY_ACK, owner),
the rings (size, base, addresses, kick/call/err, enabled, started), the
memory table and the replies still owed, and refuses what the spec or the
configured :class:`SessionLimits` forbid.

Checks run in two steps, the generic one from the request table first (the
peer's direction, protocol feature prerequisites, ring index range, reserved
fields), then the request's own rule from :data:`_REQUEST_RULES`. A rule
validates everything before it changes any state, so a refused message
leaves the session as it was.

A message the peer sent that breaks a rule raises
:class:`~vhostcompat.vhostuser.errors.RemoteMessageError`, closes the
message's fds and latches the session BROKEN: every later call raises the
same error. A message we were about to send raises
:class:`~vhostcompat.vhostuser.errors.LocalMessageError` and changes nothing
(its fds stay ours).

Whether a reply is owed is :meth:`Session.reply_expected`: a back-end and a
proxy share that rule instead of each guessing.

A proxy shows every relayed message to two sessions, so this runs for each
message twice: the per-request facts are looked up once, in a plan per
request (:class:`_Plan`) built from the table, feature words are tested as
plain ints (an IntFlag operator runs Python code and builds a member), and
rings are kept as mutable records, their :class:`RingState` snapshots made
only when someone reads :attr:`Session.rings`.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from vhostcompat.errors import LocalProtocolError, RemoteProtocolError
from vhostcompat.features import ProtocolFeature, VirtioFeature, names, outside
from vhostcompat.vhostuser.codec import SENDERS, Message, close_fds
from vhostcompat.vhostuser.errors import LocalMessageError, RemoteMessageError
from vhostcompat.vhostuser.payloads import (
    MAX_CONFIG_SIZE,
    U64,
    DeviceConfig,
    InflightDescription,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    Payload,
    SingleMemoryRegion,
    VringAddress,
    VringAddressFlags,
    VringFile,
    VringState,
)
from vhostcompat.vhostuser.requests import (
    BACKEND_SPECS,
    FRONTEND_SPECS,
    Channel,
    FrontendRequest,
    ReplyWhen,
    Request,
    RequestSpec,
    Role,
)

_F = FrontendRequest
_P = TypeVar("_P", bound=Payload)
_Features = TypeVar("_Features", VirtioFeature, ProtocolFeature)
_LIMIT_64 = 1 << 64
# Virtio's largest queue size (split rings must also be a power of two).
MAX_QUEUE_SIZE = 32768
# The bits the generic checks test, as plain ints (see the module docstring).
_REPLY = 0x4
_NEED_REPLY = 0x8
_int_and = int.__and__
_PROTOCOL_FEATURES_BIT = int(VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES)
_RING_PACKED_BIT = int(VirtioFeature.VIRTIO_F_RING_PACKED)
_BACKEND_REQ_BIT = int(ProtocolFeature.BACKEND_REQ)
_BACKEND_SEND_FD_BIT = int(ProtocolFeature.BACKEND_SEND_FD)
_REPLY_ACK_BIT = int(ProtocolFeature.REPLY_ACK)
_INBAND_NOTIFICATIONS_BIT = int(ProtocolFeature.INBAND_NOTIFICATIONS)
_XEN_MMAP_BIT = int(ProtocolFeature.XEN_MMAP)


class ReplyAckPolicy(enum.Enum):
    """When a request with need_reply set is owed an acknowledgement."""

    # What DPDK and libvhost-user do: ack whenever the flag is set.
    WHEN_REQUESTED = "whenever need_reply is set"
    # The spec's letter: the flag only means something once REPLY_ACK is negotiated.
    WHEN_NEGOTIATED = "when need_reply is set and REPLY_ACK was negotiated"


class SessionState(enum.Enum):
    ACTIVE = "active"
    BROKEN = "broken"


class FdState(enum.Enum):
    """What SET_VRING_KICK/CALL/ERR set for a ring."""

    UNSET = "unset"
    FD = "fd"
    POLLING = "no fd (NOFD flag)"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Limits a session enforces on top of the spec (the profile's, typically)."""

    max_rings: int = 256            # ring indices 0 .. max_rings-1
    max_ring_size: int = MAX_QUEUE_SIZE
    max_memory_regions: int = 8     # regions in one SET_MEM_TABLE
    max_memory_slots: int = 509     # regions via ADD_MEM_REG, unless GET_MAX_MEM_SLOTS said less


@dataclass(frozen=True, slots=True)
class RingState:
    """What the session knows about one ring (virtqueue)."""

    index: int
    num: int | None = None
    base: int | None = None
    address: VringAddress | None = None
    kick: FdState = FdState.UNSET
    call: FdState = FdState.UNSET
    err: FdState = FdState.UNSET
    enabled: bool = False
    started: bool = False


class _Ring:
    """One ring as the session changes it; :meth:`state` is its :class:`RingState`."""

    __slots__ = ("address", "base", "call", "enabled", "err", "index", "kick", "num",
                 "started")

    def __init__(self, index: int, enabled: bool) -> None:
        self.index = index
        self.num: int | None = None
        self.base: int | None = None
        self.address: VringAddress | None = None
        self.kick = self.call = self.err = FdState.UNSET
        self.enabled = enabled
        self.started = False

    def state(self) -> RingState:
        return RingState(self.index, self.num, self.base, self.address, self.kick, self.call,
                         self.err, self.enabled, self.started)


class _Violation(Exception):
    """A rule broken by a message; turned into a Local or Remote error."""

    def __init__(self, reason: str, ring: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ring = ring


def _names(value: int, kind: type[_Features]) -> str:
    return "|".join(names(value, kind)) or "none"


class Session:
    """The vhost-user state of one connection, seen from ``role``."""

    def __init__(self, role: Role, *, limits: SessionLimits | None = None,
                 reply_ack_policy: ReplyAckPolicy = ReplyAckPolicy.WHEN_REQUESTED,
                 offered_features: VirtioFeature | None = None,
                 offered_protocol_features: ProtocolFeature | None = None) -> None:
        self.role = role
        self._peer = role.peer
        self.limits = limits or SessionLimits()
        self._max_rings = self.limits.max_rings
        self.reply_ack_policy = reply_ack_policy
        self._ack_when_requested = reply_ack_policy is ReplyAckPolicy.WHEN_REQUESTED
        self.state = SessionState.ACTIVE
        self.error: RemoteProtocolError | None = None
        # Learned from the GET_FEATURES / GET_PROTOCOL_FEATURES replies seen,
        # or given when the session starts after them.
        # The feature words as ints (None: not known yet); the properties make
        # the flags when read. A peer's value is never made an IntFlag while
        # relaying: the first IntFlag of a new value costs ~30 us (the enum
        # builds and caches a pseudo-member), and QEMU acks a set the warmed-up
        # proxy never saw in the middle of a migration's downtime.
        self._offered: int | None = None
        self._offered_protocol: int | None = None
        self._acked: int | None = None
        self._acked_protocol: int | None = None
        self._offers_protocol_features = False
        self._packed = False
        self._protocol = 0  # the acked protocol features, 0 before any
        self.offered_features = offered_features
        self.offered_protocol_features = offered_protocol_features
        self.owner = False
        self.queue_num: int | None = None
        self.max_memory_slots: int | None = None
        self.status: int | None = None
        self.log: LogDescription | None = None
        self.backend_channel = False
        self.postcopy_listening = False
        self._regions: list[MemoryRegion] = []
        self._rings: dict[int, _Ring] = {}
        self._ring_states: Mapping[int, RingState] | None = None  # the snapshot, if current
        # Without VHOST_USER_F_PROTOCOL_FEATURES acked, rings start enabled.
        self._rings_enabled_by_default = False
        # Requests whose reply is owed: on the main socket, on the back-end channel.
        self._awaiting: tuple[deque[Message], deque[Message]] = (deque(), deque())

    # -- the feature words, kept as ints too (the checks test bits per message) --------

    @property
    def offered_features(self) -> VirtioFeature | None:
        return None if self._offered is None else VirtioFeature(self._offered)

    @offered_features.setter
    def offered_features(self, value: int | None) -> None:
        self._offered = None if value is None else int(value)
        self._offers_protocol_features = bool(
            value is not None and _int_and(value, _PROTOCOL_FEATURES_BIT))

    @property
    def offered_protocol_features(self) -> ProtocolFeature | None:
        return None if self._offered_protocol is None else ProtocolFeature(
            self._offered_protocol)

    @offered_protocol_features.setter
    def offered_protocol_features(self, value: int | None) -> None:
        self._offered_protocol = None if value is None else int(value)

    @property
    def acked_features(self) -> VirtioFeature | None:
        return None if self._acked is None else VirtioFeature(self._acked)

    @acked_features.setter
    def acked_features(self, value: int | None) -> None:
        self._acked = None if value is None else int(value)
        self._packed = bool(value is not None and _int_and(value, _RING_PACKED_BIT))

    @property
    def acked_protocol_features(self) -> ProtocolFeature | None:
        return None if self._acked_protocol is None else ProtocolFeature(self._acked_protocol)

    @acked_protocol_features.setter
    def acked_protocol_features(self, value: int | None) -> None:
        self._acked_protocol = None if value is None else int(value)
        self._protocol = 0 if value is None else int(value)

    # -- what the session knows ------------------------------------------------

    @property
    def rings(self) -> Mapping[int, RingState]:
        """Every ring the session has seen, as of now (a snapshot)."""
        if self._ring_states is None:
            self._ring_states = MappingProxyType(
                {index: ring.state() for index, ring in self._rings.items()})
        return self._ring_states

    @property
    def memory_regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(self._regions)

    @property
    def protocol_features(self) -> ProtocolFeature:
        """The negotiated protocol features (none before SET_PROTOCOL_FEATURES)."""
        return ProtocolFeature(self._protocol)

    @property
    def reply_ack(self) -> bool:
        return bool(self._protocol & _REPLY_ACK_BIT)

    @property
    def packed_ring(self) -> bool:
        return self._packed

    def started_rings(self) -> tuple[int, ...]:
        return tuple(index for index, ring in sorted(self._rings.items()) if ring.started)

    def enabled_rings(self) -> tuple[int, ...]:
        return tuple(index for index, ring in sorted(self._rings.items()) if ring.enabled)

    def awaiting_reply(self, channel: Channel = Channel.FRONTEND) -> Request | None:
        """The request whose reply is owed next on ``channel``, if any."""
        awaiting = self._awaiting[channel is Channel.BACKEND]
        return awaiting[0].request if awaiting else None

    def reply_expected(self, message: Message) -> bool:
        """Whether the request ``message`` must be answered (its reply or an ack)."""
        return self._reply_expected(message, _plan(message.request))

    def _reply_expected(self, message: Message, plan: _Plan) -> bool:
        when = plan.reply_when
        if when is ReplyWhen.ALWAYS:
            return True
        ack = bool(_int_and(message.flags, _NEED_REPLY)) and (
            self._ack_when_requested or bool(self._protocol & _REPLY_ACK_BIT))
        if when is ReplyWhen.ACK_ONLY:
            return ack
        if when is ReplyWhen.WITH_PROTOCOL_FEATURE:
            return bool(self._protocol & plan.reply_feature) or ack
        if when is ReplyWhen.POSTCOPY:
            return self.postcopy_listening or ack
        raise AssertionError(when)  # pragma: no cover

    # -- feeding messages ----------------------------------------------------------

    def receive(self, message: Message) -> bool:
        """Check and apply a message the peer sent; whether it is a request we now owe
        a reply to (:meth:`reply_expected`).

        On a violation the message's fds are closed, the session is latched
        BROKEN and :class:`RemoteMessageError` is raised.
        """
        if self.error is not None:
            close_fds(message.fds)
            raise self.error
        try:
            return self._process(message, self._peer)
        except _Violation as violation:
            close_fds(message.fds)
            self.error = RemoteMessageError(violation.reason, request=message.request,
                                            ring=violation.ring)
            self.state = SessionState.BROKEN
            raise self.error from None

    def send(self, message: Message) -> bool:
        """Check and apply a message we are about to send (LocalMessageError if refused);
        whether it is a request the peer now owes a reply to (:meth:`reply_expected`)."""
        if self.error is not None:
            raise LocalProtocolError(f"session is broken: {self.error}")
        try:
            return self._process(message, self.role)
        except _Violation as violation:
            raise LocalMessageError(violation.reason, request=message.request,
                                    ring=violation.ring) from None

    def _process(self, message: Message, sender: Role) -> bool:
        request = message.request
        kind = type(request)
        plan = (_FRONTEND_PLANS if kind is FrontendRequest else _BACKEND_PLANS)[request]
        flags = message.flags
        reply = bool(_int_and(flags, _REPLY))
        if SENDERS[kind, reply] is not sender:
            what = "reply" if reply else "request"
            raise _Violation(f"a {sender.value} never sends this {what} on the "
                             f"{message.channel.value} socket")
        if reply:
            self._process_reply(message, plan)
            return False
        self._check_generic(message, plan)
        rule = plan.rule
        if rule is not None:
            rule(self, message)
        # Most requests are answered always, or only when asked (need_reply).
        when = plan.reply_when
        if when is ReplyWhen.ALWAYS:
            expected = True
        elif when is ReplyWhen.ACK_ONLY and not _int_and(flags, _NEED_REPLY):
            expected = False
        else:
            expected = self._reply_expected(message, plan)
        if expected:
            self._awaiting[plan.backend_channel].append(message)
        return expected

    def _process_reply(self, message: Message, plan: _Plan) -> None:
        awaiting = self._awaiting[plan.backend_channel]
        if not awaiting:
            raise _Violation("reply to a request that expects none")
        request = awaiting[0]
        if request.request is not message.request:
            raise _Violation(f"reply while the reply to {request.request.name} is owed")
        rule = plan.reply_rule
        if rule is not None:
            rule(self, request, message)
        awaiting.popleft()

    def _check_generic(self, message: Message, plan: _Plan) -> None:
        protocol = self._protocol
        if plan.backend_channel:
            if not protocol & _BACKEND_REQ_BIT:
                raise _Violation("back-end channel message but BACKEND_REQ is not negotiated")
            if message.fds and not protocol & _BACKEND_SEND_FD_BIT:
                raise _Violation("fds on the back-end channel but BACKEND_SEND_FD is not "
                                 "negotiated")
        if plan.needs_protocol_features and not self._offers_protocol_features:
            raise _Violation("VHOST_USER_F_PROTOCOL_FEATURES was not offered")
        if plan.requires and not protocol & plan.requires:
            assert plan.spec.requires is not None
            raise _Violation(f"protocol feature {plan.spec.requires.name} is not negotiated")
        payload = message.payload
        ring = payload.ring_index
        if ring is not None and ring >= self._max_rings:
            raise _Violation(f"ring index {ring} out of range "
                             f"(at most {self._max_rings} rings)", ring)
        if plan.num_reserved and isinstance(payload, VringState) and payload.num != 0:
            raise _Violation(f"reserved num field is {payload.num}, must be 0", ring)

    # -- helpers for the rules -------------------------------------------------------

    def _ring(self, index: int) -> _Ring:
        """Ring ``index`` to change (made if new); call it once the message is valid."""
        self._ring_states = None
        ring = self._rings.get(index)
        if ring is None:
            ring = self._rings[index] = _Ring(index, self._rings_enabled_by_default)
        return ring

    def _each_ring(self) -> Iterator[_Ring]:
        """Every ring, to change."""
        self._ring_states = None
        return iter(self._rings.values())

    def _forget_rings(self) -> None:
        self._ring_states = None
        self._rings.clear()


# -- per-request rules (validate everything, then apply) ------------------------------

def _payload(message: Message, kind: type[_P]) -> _P:
    payload = message.payload
    if not isinstance(payload, kind):
        raise _Violation(f"{type(payload).__name__} payload, expected {kind.__name__}")
    return payload


def _acked_within_offer(message: Message, kind: type[_Features], offered: int | None,
                        offer_request: FrontendRequest, what: str) -> int:
    """What a SET_FEATURES / SET_PROTOCOL_FEATURES acks: refused before the back-end
    answered ``offer_request``, and when it acks a bit that answer did not offer."""
    features = _payload(message, U64).value
    if offered is None:
        raise _Violation(f"{message.request.name} before any {offer_request.name} reply")
    unoffered = outside(features, offered)
    if unoffered:
        raise _Violation(f"acks {what} the back-end did not offer: "
                         f"{_names(unoffered, kind)} (offered {offered:#x})")
    return features


def _set_features(session: Session, message: Message) -> None:
    features = _acked_within_offer(message, VirtioFeature, session._offered,
                                   _F.GET_FEATURES, "features")
    running = session.started_rings()
    previous = session._acked
    if running and previous is not None:
        # Only dirty logging may change under running rings (migration).
        changed = outside(features ^ previous, VirtioFeature.VHOST_F_LOG_ALL)
        if changed:
            raise _Violation(f"changes {_names(changed, VirtioFeature)} while rings "
                             f"{list(running)} are running")
    session.acked_features = features
    if not _int_and(features, _PROTOCOL_FEATURES_BIT):
        session._rings_enabled_by_default = True
        for ring in session._each_ring():
            ring.enabled = True


def _set_protocol_features(session: Session, message: Message) -> None:
    features = _acked_within_offer(message, ProtocolFeature, session._offered_protocol,
                                   _F.GET_PROTOCOL_FEATURES, "protocol features")
    inband_needs = _BACKEND_REQ_BIT | _REPLY_ACK_BIT
    if features & _INBAND_NOTIFICATIONS_BIT and features & inband_needs != inband_needs:
        raise _Violation("INBAND_NOTIFICATIONS needs BACKEND_REQ and REPLY_ACK")
    if features & _XEN_MMAP_BIT:
        raise _Violation("XEN_MMAP memory region layout is not supported")
    session.acked_protocol_features = features


def _set_owner(session: Session, message: Message) -> None:
    session.owner = True


def _stop_all_rings(session: Session) -> None:
    for ring in session._each_ring():
        ring.started = ring.enabled = False


def _reset_owner(session: Session, message: Message) -> None:
    # Deprecated; the spec recommends treating it as "disable all rings".
    _stop_all_rings(session)
    session.owner = False


def _reset_device(session: Session, message: Message) -> None:
    session._forget_rings()
    session._regions.clear()
    session.acked_features = None
    session._rings_enabled_by_default = False
    session.log = None
    session.status = None


def _check_region(region: MemoryRegion, what: str) -> None:
    if region.memory_size == 0:
        raise _Violation(f"{what} has size 0")
    for field, start in (("guest address", region.guest_phys_addr),
                         ("user address", region.userspace_addr),
                         ("mmap offset", region.mmap_offset)):
        if start + region.memory_size > _LIMIT_64:
            raise _Violation(f"{what}: {field} {start:#x} + size {region.memory_size:#x} "
                             "is out of the 64-bit address space")


def _check_no_overlap(regions: list[MemoryRegion]) -> None:
    ordered = sorted(regions, key=lambda region: region.guest_phys_addr)
    for before, after in itertools.pairwise(ordered):
        if before.guest_end > after.guest_phys_addr:
            raise _Violation(f"memory regions {before} and {after} overlap in guest "
                             "physical space")


def _set_mem_table(session: Session, message: Message) -> None:
    table = _payload(message, MemoryTable)
    limit = session.limits.max_memory_regions
    if len(table.regions) > limit:
        raise _Violation(f"{len(table.regions)} memory regions (at most {limit})")
    for number, region in enumerate(table.regions):
        _check_region(region, f"memory region {number}")
    regions = list(table.regions)
    _check_no_overlap(regions)
    session._regions = regions


def _add_mem_reg(session: Session, message: Message) -> None:
    region = _payload(message, SingleMemoryRegion).region
    limit = min(session.max_memory_slots or session.limits.max_memory_slots,
                session.limits.max_memory_slots)
    if len(session._regions) >= limit:
        raise _Violation(f"memory slots full ({limit} regions)")
    _check_region(region, "memory region")
    regions = [*session._regions, region]
    _check_no_overlap(regions)
    session._regions = regions


def _rem_mem_reg(session: Session, message: Message) -> None:
    region = _payload(message, SingleMemoryRegion).region
    # The spec identifies the region by guest address, user address and size.
    for number, known in enumerate(session._regions):
        if (known.guest_phys_addr, known.userspace_addr, known.memory_size) == (
                region.guest_phys_addr, region.userspace_addr, region.memory_size):
            del session._regions[number]
            return
    raise _Violation(f"no memory region {region} to remove")


def _set_log_base(session: Session, message: Message) -> None:
    log = _payload(message, LogDescription)
    if log.mmap_offset + log.mmap_size > _LIMIT_64:
        raise _Violation(f"log offset {log.mmap_offset:#x} + size {log.mmap_size:#x} "
                         "is out of the 64-bit range")
    if session.protocol_features & ProtocolFeature.LOG_SHMFD and len(message.fds) != 1:
        raise _Violation(f"{len(message.fds)} fds, LOG_SHMFD needs the log fd")
    session.log = log


def _set_vring_num(session: Session, message: Message) -> None:
    state = _payload(message, VringState)
    num, limit = state.num, session.limits.max_ring_size
    if num == 0 or num > limit:
        raise _Violation(f"ring size {num} out of range (1 to {limit})", state.index)
    # Packed rings may have any size; split rings need a power of two.
    if not session._packed and num & (num - 1):
        raise _Violation(f"ring size {num} is not a power of two", state.index)
    session._ring(state.index).num = num


def _set_vring_addr(session: Session, message: Message) -> None:
    address = _payload(message, VringAddress)
    unknown = outside(address.flags, VringAddressFlags.LOG)
    if unknown:
        raise _Violation(f"unknown vring address flags {unknown:#x}", address.index)
    # Virtio's alignment rules: split rings 16/2/4, packed rings 16/4/4.
    alignments = (("descriptor", address.descriptor, 16),
                  ("available", address.available, 4 if session._packed else 2),
                  ("used", address.used, 4))
    for field, value, alignment in alignments:
        if value % alignment:
            raise _Violation(f"{field} ring address {value:#x} is not {alignment}-byte "
                             "aligned", address.index)
    session._ring(address.index).address = address


def _set_vring_base(session: Session, message: Message) -> None:
    state = _payload(message, VringState)
    if not session._packed and state.num > 0xFFFF:
        raise _Violation(f"split ring base {state.num:#x} has reserved bits 16-31 set",
                         state.index)
    session._ring(state.index).base = state.num


def _get_vring_base(session: Session, message: Message) -> None:
    # The spec: GET_VRING_BASE stops the ring.
    session._ring(_payload(message, VringState).index).started = False


def _vring_file(field: str, starts: bool) -> Callable[[Session, Message], None]:
    def rule(session: Session, message: Message) -> None:
        file = _payload(message, VringFile)
        ring = session._ring(file.index)
        setattr(ring, field, FdState.POLLING if file.invalid_fd else FdState.FD)
        if starts:
            ring.started = True
    return rule


def _set_vring_enable(session: Session, message: Message) -> None:
    state = _payload(message, VringState)
    if state.num not in (0, 1):
        raise _Violation(f"enable value {state.num} is neither 0 nor 1", state.index)
    session._ring(state.index).enabled = bool(state.num)


def _set_vring_endian(session: Session, message: Message) -> None:
    state = _payload(message, VringState)
    if state.num not in (0, 1):
        raise _Violation(f"endianness {state.num} is neither 0 (little) nor 1 (big)",
                         state.index)


def _vring_kick(session: Session, message: Message) -> None:
    session._ring(_payload(message, VringState).index).started = True


def _config(session: Session, message: Message) -> None:
    config = _payload(message, DeviceConfig)
    if config.flags not in (DeviceConfig.WRITABLE, DeviceConfig.MIGRATION):
        raise _Violation(f"unknown config flags {config.flags:#x}")
    if config.offset + len(config.data) > MAX_CONFIG_SIZE:
        raise _Violation(f"config offset {config.offset} + size {len(config.data)} exceeds "
                         f"{MAX_CONFIG_SIZE} bytes")


def _inflight(session: Session, message: Message) -> None:
    inflight = _payload(message, InflightDescription)
    if inflight.num_queues > session.limits.max_rings:
        raise _Violation(f"{inflight.num_queues} inflight queues "
                         f"(at most {session.limits.max_rings})")
    if inflight.queue_size > session.limits.max_ring_size:
        raise _Violation(f"inflight queue size {inflight.queue_size} "
                         f"(at most {session.limits.max_ring_size})")


def _set_status(session: Session, message: Message) -> None:
    status = _payload(message, U64).value
    if status > 0xFF:
        raise _Violation(f"device status {status:#x} does not fit 8 bits")
    session.status = status


def _set_backend_req_fd(session: Session, message: Message) -> None:
    session.backend_channel = True


def _postcopy(listening: bool) -> Callable[[Session, Message], None]:
    def rule(session: Session, message: Message) -> None:
        session.postcopy_listening = listening
    return rule


_REQUEST_RULES: Mapping[Request, Callable[[Session, Message], None]] = MappingProxyType({
    _F.SET_FEATURES: _set_features,
    _F.SET_PROTOCOL_FEATURES: _set_protocol_features,
    _F.SET_OWNER: _set_owner,
    _F.RESET_OWNER: _reset_owner,
    _F.RESET_DEVICE: _reset_device,
    _F.SET_MEM_TABLE: _set_mem_table,
    _F.ADD_MEM_REG: _add_mem_reg,
    _F.REM_MEM_REG: _rem_mem_reg,
    _F.SET_LOG_BASE: _set_log_base,
    _F.SET_VRING_NUM: _set_vring_num,
    _F.SET_VRING_ADDR: _set_vring_addr,
    _F.SET_VRING_BASE: _set_vring_base,
    _F.GET_VRING_BASE: _get_vring_base,
    _F.SET_VRING_KICK: _vring_file("kick", starts=True),
    _F.SET_VRING_CALL: _vring_file("call", starts=False),
    _F.SET_VRING_ERR: _vring_file("err", starts=False),
    _F.SET_VRING_ENABLE: _set_vring_enable,
    _F.SET_VRING_ENDIAN: _set_vring_endian,
    _F.VRING_KICK: _vring_kick,
    _F.GET_CONFIG: _config,
    _F.SET_CONFIG: _config,
    _F.GET_INFLIGHT_FD: _inflight,
    _F.SET_INFLIGHT_FD: _inflight,
    _F.SET_STATUS: _set_status,
    _F.SET_BACKEND_REQ_FD: _set_backend_req_fd,
    _F.POSTCOPY_LISTEN: _postcopy(True),
    _F.POSTCOPY_END: _postcopy(False),
})


# -- reply rules: (session, request, reply) --------------------------------------------

def _features_reply(session: Session, request: Message, reply: Message) -> None:
    session.offered_features = _payload(reply, U64).value


def _protocol_features_reply(session: Session, request: Message, reply: Message) -> None:
    session.offered_protocol_features = _payload(reply, U64).value


def _queue_num_reply(session: Session, request: Message, reply: Message) -> None:
    session.queue_num = _payload(reply, U64).value


def _max_mem_slots_reply(session: Session, request: Message, reply: Message) -> None:
    session.max_memory_slots = _payload(reply, U64).value


def _status_reply(session: Session, request: Message, reply: Message) -> None:
    session.status = _payload(reply, U64).value


def _vring_base_reply(session: Session, request: Message, reply: Message) -> None:
    asked = _payload(request, VringState).index
    state = _payload(reply, VringState)
    if state.index != asked:
        raise _Violation(f"GET_VRING_BASE reply for ring {state.index}, asked for ring {asked}",
                         asked)
    session._ring(asked).base = state.num


_REPLY_RULES: Mapping[Request, Callable[[Session, Message, Message], None]] = MappingProxyType({
    _F.GET_FEATURES: _features_reply,
    _F.GET_PROTOCOL_FEATURES: _protocol_features_reply,
    _F.GET_QUEUE_NUM: _queue_num_reply,
    _F.GET_MAX_MEM_SLOTS: _max_mem_slots_reply,
    _F.GET_STATUS: _status_reply,
    _F.GET_VRING_BASE: _vring_base_reply,
})



# -- one plan per request: the table's facts and the rules, looked up once per message --

@dataclass(frozen=True, slots=True)
class _Plan:
    """What the session needs of one request (see the module docstring)."""

    spec: RequestSpec
    backend_channel: bool
    needs_protocol_features: bool
    requires: int  # the protocol feature bit, 0 for none
    num_reserved: bool
    reply_when: ReplyWhen
    reply_feature: int
    rule: Callable[[Session, Message], None] | None
    reply_rule: Callable[[Session, Message, Message], None] | None


def _plans(specs: Mapping[int, RequestSpec], backend_channel: bool) -> dict[int, _Plan]:
    # The rules are the front-end requests': a back-end request of the same
    # code (IntEnum members compare as their ints) is another request.
    rules = {} if backend_channel else _REQUEST_RULES
    reply_rules = {} if backend_channel else _REPLY_RULES
    return {code: _Plan(spec, backend_channel, spec.needs_protocol_features,
                        int(spec.requires or 0), spec.num_reserved, spec.reply_when,
                        int(spec.reply_feature or 0), rules.get(spec.request),
                        reply_rules.get(spec.request))
            for code, spec in specs.items()}


_FRONTEND_PLANS = _plans(FRONTEND_SPECS, backend_channel=False)
_BACKEND_PLANS = _plans(BACKEND_SPECS, backend_channel=True)


def _plan(request: Request) -> _Plan:
    return (_FRONTEND_PLANS if type(request) is FrontendRequest else _BACKEND_PLANS)[request]
