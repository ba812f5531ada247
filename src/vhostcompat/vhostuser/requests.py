"""vhost-user request codes, header flags and the declarative request table.

Every front-end request (main socket) and back-end request (the channel set
up by SET_BACKEND_REQ_FD) of QEMU's docs/interop/vhost-user.rst has one
:class:`RequestSpec` entry: its payload type and fd rule, the payloads and fd
rules a reply may carry, when a reply is owed, and the protocol feature that
must have been negotiated first. The codec and the session run this table
before any handler sees a message; nothing else decides these questions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from vhostcompat.features import ProtocolFeature
from vhostcompat.vhostuser.payloads import (
    U64,
    DeviceConfig,
    DeviceStateResult,
    DeviceStateTransfer,
    Empty,
    InflightDescription,
    IotlbMessage,
    LogDescription,
    MemoryTable,
    OpaquePayload,
    Payload,
    RarpMac,
    SharedObject,
    SingleMemoryRegion,
    VringAddress,
    VringArea,
    VringFile,
    VringState,
)

HEADER_SIZE = 12
# SCM_RIGHTS fds in one message (VHOST_MEMORY_BASELINE_NREGIONS).
MAX_FDS = 8


class HeaderFlags(enum.IntFlag, boundary=enum.KEEP):
    """The header's flags word. Bits 0-1 are the version (must be 1)."""

    VERSION_1 = 0x1
    REPLY = 0x4
    NEED_REPLY = 0x8


VERSION_MASK = 0x3


class FrontendRequest(enum.IntEnum):
    """Requests the front-end sends on the main socket (VHOST_USER_*)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21  # formerly SET_SLAVE_REQ_FD
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class BackendRequest(enum.IntEnum):
    """Requests the back-end sends on the back-end channel (VHOST_USER_BACKEND_*)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8


Request = FrontendRequest | BackendRequest


class Role(enum.Enum):
    """The two sides of a vhost-user connection."""

    FRONTEND = "front-end"
    BACKEND = "back-end"

    @property
    def peer(self) -> Role:
        return Role.BACKEND if self is Role.FRONTEND else Role.FRONTEND


class Channel(enum.Enum):
    """Which socket a message travels on, named after who sends its requests.

    FRONTEND is the main socket (front-end requests, back-end replies);
    BACKEND is the back-end channel (back-end requests, front-end replies).
    """

    FRONTEND = "main"
    BACKEND = "back-end channel"

    @property
    def requester(self) -> Role:
        return Role.FRONTEND if self is Channel.FRONTEND else Role.BACKEND

    @property
    def requests(self) -> type[FrontendRequest] | type[BackendRequest]:
        return FrontendRequest if self is Channel.FRONTEND else BackendRequest

    @classmethod
    def of(cls, request: Request) -> Channel:
        return cls.FRONTEND if isinstance(request, FrontendRequest) else cls.BACKEND


class FdKind(enum.Enum):
    """How many fds a message carries."""

    NONE = "no fd"
    EXACTLY = "exactly"
    UP_TO = "up to"
    PER_REGION = "one per memory region"
    UNLESS_NOFD = "one unless the NOFD flag is set"


@dataclass(frozen=True, slots=True)
class FdRule:
    """The fd count a payload allows (``count`` for EXACTLY / UP_TO)."""

    kind: FdKind
    count: int = 0

    def bounds(self, payload: Payload) -> tuple[int, int]:
        """Smallest and largest fd count allowed with this payload."""
        match self.kind:
            case FdKind.NONE:
                return 0, 0
            case FdKind.EXACTLY:
                return self.count, self.count
            case FdKind.UP_TO:
                return 0, self.count
            case FdKind.PER_REGION:
                regions = len(payload.regions) if isinstance(payload, MemoryTable) else 0
                return regions, regions
            case FdKind.UNLESS_NOFD:
                nofd = isinstance(payload, VringFile | VringArea | DeviceStateResult) and \
                    payload.invalid_fd
                return (0, 0) if nofd else (1, 1)
        raise AssertionError(self.kind)  # pragma: no cover

    def check(self, payload: Payload, count: int) -> str | None:
        """None if ``count`` fds fit, else the reason."""
        low, high = self.bounds(payload)
        if low <= count <= high:
            return None
        wanted = str(low) if low == high else f"{low} to {high}"
        return f"{count} fds received, {wanted} expected ({self.describe()})"

    def describe(self) -> str:
        if self.kind in (FdKind.EXACTLY, FdKind.UP_TO):
            return f"{self.kind.value} {self.count}"
        return str(self.kind.value)


NO_FD = FdRule(FdKind.NONE)
ONE_FD = FdRule(FdKind.EXACTLY, 1)
UP_TO_ONE_FD = FdRule(FdKind.UP_TO, 1)
FD_PER_REGION = FdRule(FdKind.PER_REGION)
FD_UNLESS_NOFD = FdRule(FdKind.UNLESS_NOFD)


@dataclass(frozen=True, slots=True)
class PayloadRule:
    """A payload type with the fds that come with it."""

    payload: type[Payload]
    fds: FdRule = NO_FD


ACK = PayloadRule(U64)


class ReplyWhen(enum.Enum):
    """When a request is answered whatever need_reply says."""

    ACK_ONLY = "only as a REPLY_ACK acknowledgement"
    ALWAYS = "always"
    WITH_PROTOCOL_FEATURE = "when reply_feature is negotiated"
    POSTCOPY = "after POSTCOPY_LISTEN"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything the table knows about one request.

    ``replies`` lists the payloads a reply may carry, tried in order (the
    first whose size rule fits the header's size is used); for requests that
    only get REPLY_ACK acknowledgements it is just the u64 ack.
    ``requires`` is the protocol feature that must have been negotiated;
    ``needs_protocol_features`` says the request is only legal when the
    back-end offered VHOST_USER_F_PROTOCOL_FEATURES. ``num_reserved`` marks
    vring state requests whose ``num`` is reserved and must be zero.
    """

    request: Request
    payload: PayloadRule
    replies: tuple[PayloadRule, ...] = (ACK,)
    reply_when: ReplyWhen = ReplyWhen.ACK_ONLY
    reply_feature: ProtocolFeature | None = None
    requires: ProtocolFeature | None = None
    needs_protocol_features: bool = False
    num_reserved: bool = False

    @property
    def name(self) -> str:
        return self.request.name


def _table(*specs: RequestSpec) -> Mapping[int, RequestSpec]:
    return MappingProxyType({spec.request: spec for spec in specs})


_F = FrontendRequest
_B = BackendRequest
_P = ProtocolFeature
_EMPTY = PayloadRule(Empty)
_U64 = PayloadRule(U64)
_STATE = PayloadRule(VringState)

FRONTEND_SPECS: Mapping[int, RequestSpec] = _table(
    RequestSpec(_F.GET_FEATURES, _EMPTY, (_U64,), ReplyWhen.ALWAYS),
    RequestSpec(_F.SET_FEATURES, _U64),
    RequestSpec(_F.SET_OWNER, _EMPTY),
    RequestSpec(_F.RESET_OWNER, _EMPTY),
    # Postcopy: the back-end answers with the regions it mapped.
    RequestSpec(_F.SET_MEM_TABLE, PayloadRule(MemoryTable, FD_PER_REGION),
                (ACK, PayloadRule(MemoryTable)), ReplyWhen.POSTCOPY),
    # DPDK replies with no payload, libvhost-user with a u64.
    RequestSpec(_F.SET_LOG_BASE, PayloadRule(LogDescription, UP_TO_ONE_FD),
                (_EMPTY, _U64), ReplyWhen.WITH_PROTOCOL_FEATURE, reply_feature=_P.LOG_SHMFD),
    RequestSpec(_F.SET_LOG_FD, PayloadRule(Empty, ONE_FD)),
    RequestSpec(_F.SET_VRING_NUM, _STATE),
    RequestSpec(_F.SET_VRING_ADDR, PayloadRule(VringAddress)),
    RequestSpec(_F.SET_VRING_BASE, _STATE),
    RequestSpec(_F.GET_VRING_BASE, _STATE, (_STATE,), ReplyWhen.ALWAYS, num_reserved=True),
    RequestSpec(_F.SET_VRING_KICK, PayloadRule(VringFile, FD_UNLESS_NOFD)),
    RequestSpec(_F.SET_VRING_CALL, PayloadRule(VringFile, FD_UNLESS_NOFD)),
    RequestSpec(_F.SET_VRING_ERR, PayloadRule(VringFile, FD_UNLESS_NOFD)),
    RequestSpec(_F.GET_PROTOCOL_FEATURES, _EMPTY, (_U64,), ReplyWhen.ALWAYS,
                needs_protocol_features=True),
    RequestSpec(_F.SET_PROTOCOL_FEATURES, _U64, needs_protocol_features=True),
    RequestSpec(_F.GET_QUEUE_NUM, _EMPTY, (_U64,), ReplyWhen.ALWAYS, requires=_P.MQ),
    RequestSpec(_F.SET_VRING_ENABLE, _STATE, needs_protocol_features=True),
    RequestSpec(_F.SEND_RARP, PayloadRule(RarpMac), requires=_P.RARP),
    RequestSpec(_F.NET_SET_MTU, _U64, requires=_P.MTU),
    RequestSpec(_F.SET_BACKEND_REQ_FD, PayloadRule(Empty, ONE_FD), requires=_P.BACKEND_REQ),
    RequestSpec(_F.IOTLB_MSG, PayloadRule(IotlbMessage), (_U64,), ReplyWhen.ALWAYS),
    RequestSpec(_F.SET_VRING_ENDIAN, _STATE, requires=_P.CROSS_ENDIAN),
    # An empty GET_CONFIG reply is the back-end's way of saying "error".
    RequestSpec(_F.GET_CONFIG, PayloadRule(DeviceConfig), (PayloadRule(DeviceConfig), _EMPTY),
                ReplyWhen.ALWAYS, requires=_P.CONFIG),
    RequestSpec(_F.SET_CONFIG, PayloadRule(DeviceConfig), requires=_P.CONFIG),
    RequestSpec(_F.CREATE_CRYPTO_SESSION, PayloadRule(OpaquePayload),
                (PayloadRule(OpaquePayload),), ReplyWhen.ALWAYS, requires=_P.CRYPTO_SESSION),
    RequestSpec(_F.CLOSE_CRYPTO_SESSION, _U64, requires=_P.CRYPTO_SESSION),
    RequestSpec(_F.POSTCOPY_ADVISE, _EMPTY, (PayloadRule(Empty, UP_TO_ONE_FD),),
                ReplyWhen.ALWAYS, requires=_P.PAGEFAULT),
    RequestSpec(_F.POSTCOPY_LISTEN, _EMPTY, requires=_P.PAGEFAULT),
    RequestSpec(_F.POSTCOPY_END, _EMPTY, (_U64,), ReplyWhen.ALWAYS, requires=_P.PAGEFAULT),
    # libvhost-user answers a failed GET_INFLIGHT_FD with a bare u64.
    RequestSpec(_F.GET_INFLIGHT_FD, PayloadRule(InflightDescription),
                (PayloadRule(InflightDescription, ONE_FD), _U64), ReplyWhen.ALWAYS,
                requires=_P.INFLIGHT_SHMFD),
    RequestSpec(_F.SET_INFLIGHT_FD, PayloadRule(InflightDescription, ONE_FD),
                requires=_P.INFLIGHT_SHMFD),
    RequestSpec(_F.GPU_SET_SOCKET, PayloadRule(Empty, ONE_FD)),
    RequestSpec(_F.RESET_DEVICE, _EMPTY, requires=_P.RESET_DEVICE),
    RequestSpec(_F.VRING_KICK, _STATE, requires=_P.INBAND_NOTIFICATIONS, num_reserved=True),
    RequestSpec(_F.GET_MAX_MEM_SLOTS, _EMPTY, (_U64,), ReplyWhen.ALWAYS,
                requires=_P.CONFIGURE_MEM_SLOTS),
    RequestSpec(_F.ADD_MEM_REG, PayloadRule(SingleMemoryRegion, ONE_FD),
                (ACK, PayloadRule(SingleMemoryRegion)), ReplyWhen.POSTCOPY,
                requires=_P.CONFIGURE_MEM_SLOTS),
    # The spec lets a back-end accept (and close) one stray fd here.
    RequestSpec(_F.REM_MEM_REG, PayloadRule(SingleMemoryRegion, UP_TO_ONE_FD),
                (ACK, PayloadRule(SingleMemoryRegion)), requires=_P.CONFIGURE_MEM_SLOTS),
    RequestSpec(_F.SET_STATUS, _U64, requires=_P.STATUS),
    RequestSpec(_F.GET_STATUS, _EMPTY, (_U64,), ReplyWhen.ALWAYS, requires=_P.STATUS),
    RequestSpec(_F.GET_SHARED_OBJECT, PayloadRule(SharedObject),
                (PayloadRule(U64, UP_TO_ONE_FD),), ReplyWhen.ALWAYS, requires=_P.SHARED_OBJECT),
    RequestSpec(_F.SET_DEVICE_STATE_FD, PayloadRule(DeviceStateTransfer, ONE_FD),
                (PayloadRule(DeviceStateResult, FD_UNLESS_NOFD),), ReplyWhen.ALWAYS,
                requires=_P.DEVICE_STATE),
    RequestSpec(_F.CHECK_DEVICE_STATE, _EMPTY, (_U64,), ReplyWhen.ALWAYS,
                requires=_P.DEVICE_STATE),
)

BACKEND_SPECS: Mapping[int, RequestSpec] = _table(
    RequestSpec(_B.IOTLB_MSG, PayloadRule(IotlbMessage)),
    RequestSpec(_B.CONFIG_CHANGE_MSG, _EMPTY, requires=_P.CONFIG),
    RequestSpec(_B.VRING_HOST_NOTIFIER_MSG, PayloadRule(VringArea, FD_UNLESS_NOFD),
                requires=_P.HOST_NOTIFIER),
    RequestSpec(_B.VRING_CALL, _STATE, requires=_P.INBAND_NOTIFICATIONS, num_reserved=True),
    RequestSpec(_B.VRING_ERR, _STATE, requires=_P.INBAND_NOTIFICATIONS, num_reserved=True),
    RequestSpec(_B.SHARED_OBJECT_ADD, PayloadRule(SharedObject), requires=_P.SHARED_OBJECT),
    RequestSpec(_B.SHARED_OBJECT_REMOVE, PayloadRule(SharedObject), requires=_P.SHARED_OBJECT),
    RequestSpec(_B.SHARED_OBJECT_LOOKUP, PayloadRule(SharedObject),
                (PayloadRule(U64, UP_TO_ONE_FD),), ReplyWhen.ALWAYS, requires=_P.SHARED_OBJECT),
)


def spec_for(request: Request) -> RequestSpec:
    """The table entry of a request."""
    table = FRONTEND_SPECS if isinstance(request, FrontendRequest) else BACKEND_SPECS
    return table[request]


def lookup(channel: Channel, code: int) -> RequestSpec | None:
    """The table entry for a raw request code on a channel, or None if unknown."""
    table = FRONTEND_SPECS if channel is Channel.FRONTEND else BACKEND_SPECS
    return table.get(code)
