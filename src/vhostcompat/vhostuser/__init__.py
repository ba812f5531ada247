"""The vhost-user protocol without I/O: messages, codec and session state.

Bytes and fds go in, validated messages come out; messages go in, bytes and
fds come out. Sockets live in :mod:`vhostcompat.transport`.

How to use
==========

Requests and the table (``requests``)::

    FrontendRequest.GET_FEATURES ... CHECK_DEVICE_STATE   (IntEnum, spec codes 1-43)
    BackendRequest.IOTLB_MSG ... SHARED_OBJECT_LOOKUP     (IntEnum, spec codes 1-8)
    HeaderFlags.VERSION_1 | REPLY | NEED_REPLY            (IntFlag)
    Role.FRONTEND / Role.BACKEND (.peer)
    Channel.FRONTEND (main socket) / Channel.BACKEND (SET_BACKEND_REQ_FD channel)
    spec_for(request) -> RequestSpec   payload rule, reply rules, reply_when,
                                       requires (protocol feature), fd rules

Payloads (``payloads``; frozen dataclasses, ``pack()`` / ``unpack(bytes)``)::

    Empty (EMPTY), U64(value), VringState(index, num), VringAddress(index, flags,
    descriptor, used, available, log), VringFile(index, invalid_fd),
    MemoryTable(regions: tuple[MemoryRegion, ...]), MemoryRegion(guest_phys_addr,
    memory_size, userspace_addr, mmap_offset), SingleMemoryRegion(region),
    LogDescription(mmap_size, mmap_offset), IotlbMessage, DeviceConfig(offset,
    flags, data), VringArea, InflightDescription, SharedObject(uuid),
    DeviceStateTransfer, DeviceStateResult, RarpMac(mac), OpaquePayload(data)

Messages and codec (``codec``)::

    Message(request, payload=EMPTY, flags=HeaderFlags.VERSION_1, fds=())
        .is_reply  .need_reply  .channel  .sender  .spec
        dataclasses.replace(message, payload=U64(new)) for a changed copy
    make_reply(request_message, payload, fds=()) -> Message
    make_ack(request_message, success=True) -> Message      (REPLY_ACK u64)
    encode(message) -> tuple[bytes, tuple[int, ...]]       (fds not closed)
    decoder = Decoder(Channel.FRONTEND, sender=Role.FRONTEND)  # requests from a front-end
    decoder = Decoder(Channel.FRONTEND, sender=Role.BACKEND)   # replies from a back-end
    decoder.feed(data, fds)         # the decoder owns fds from here
    decoder.next_message() -> Message | None   (None: need more bytes); or iterate
    decoder.end_of_stream()         # at EOF: refuses a message cut short
    decoder.close()                 # closes fds still held

    Decoded messages own their fds: the caller closes or forwards them.
    Re-encoding a decoded message gives the very same bytes.

Session (``session``)::

    session = Session(Role.BACKEND, limits=SessionLimits(max_rings=4,
                      max_ring_size=1024), reply_ack_policy=ReplyAckPolicy.WHEN_REQUESTED)
    session.receive(message)   # from the peer: RemoteMessageError, fds closed, BROKEN latch
    session.send(message)      # ours: LocalMessageError, nothing changed
                               # (both -> bool: a request whose reply is now owed)
    session.reply_expected(request_message) -> bool
    session.offered_features / acked_features (VirtioFeature | None),
    offered_protocol_features / acked_protocol_features / protocol_features,
    reply_ack, owner, queue_num, rings (Mapping[int, RingState], a snapshot), memory_regions,
    started_rings(), enabled_rings(), awaiting_reply(channel), state, error

Sockets (``vhostcompat.transport``, asyncio, fds via SCM_RIGHTS)::

    listener = await listen(path, on_connection)    # on_connection(FdConnection) coroutine
    conn = await connect(path, retry_for=5.0)       # client role, backoff 0.05 s doubling to 1 s
    data, fds = await conn.recv()                   # b"" at EOF; fds are the caller's
    await conn.send(data, fds)                      # fds stay the caller's
    mc = MessageConnection(conn, Channel.FRONTEND, Role.BACKEND)
    message = await mc.recv_message()               # None at clean EOF
    await mc.send_message(make_ack(message))

Errors: RemoteMessageError (peer's fault, a RemoteProtocolError), LocalMessageError
and PayloadError (ours, LocalProtocolError); all carry ``request``, ``ring``,
``reason`` (PayloadError only a message) and print as one line.
"""

from vhostcompat.vhostuser.codec import (
    Decoder,
    Message,
    close_fds,
    encode,
    make_ack,
    make_reply,
)
from vhostcompat.vhostuser.errors import LocalMessageError, PayloadError, RemoteMessageError
from vhostcompat.vhostuser.payloads import (
    EMPTY,
    MAX_CONFIG_SIZE,
    MAX_MEMORY_REGIONS,
    MAX_PAYLOAD_SIZE,
    U64,
    DeviceConfig,
    DeviceStateResult,
    DeviceStateTransfer,
    Empty,
    InflightDescription,
    IotlbMessage,
    IotlbPermission,
    IotlbType,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    MigrationPhase,
    OpaquePayload,
    Payload,
    RarpMac,
    SharedObject,
    SingleMemoryRegion,
    SizeRule,
    TransferDirection,
    VringAddress,
    VringAddressFlags,
    VringArea,
    VringFile,
    VringState,
)
from vhostcompat.vhostuser.requests import (
    BACKEND_SPECS,
    FRONTEND_SPECS,
    HEADER_SIZE,
    MAX_FDS,
    BackendRequest,
    Channel,
    FdKind,
    FdRule,
    FrontendRequest,
    HeaderFlags,
    PayloadRule,
    ReplyWhen,
    Request,
    RequestSpec,
    Role,
    spec_for,
)
from vhostcompat.vhostuser.session import (
    FdState,
    ReplyAckPolicy,
    RingState,
    Session,
    SessionLimits,
    SessionState,
)

__all__ = [
    "BACKEND_SPECS",
    "EMPTY",
    "FRONTEND_SPECS",
    "HEADER_SIZE",
    "MAX_CONFIG_SIZE",
    "MAX_FDS",
    "MAX_MEMORY_REGIONS",
    "MAX_PAYLOAD_SIZE",
    "U64",
    "BackendRequest",
    "Channel",
    "Decoder",
    "DeviceConfig",
    "DeviceStateResult",
    "DeviceStateTransfer",
    "Empty",
    "FdKind",
    "FdRule",
    "FdState",
    "FrontendRequest",
    "HeaderFlags",
    "InflightDescription",
    "IotlbMessage",
    "IotlbPermission",
    "IotlbType",
    "LocalMessageError",
    "LogDescription",
    "MemoryRegion",
    "MemoryTable",
    "Message",
    "MigrationPhase",
    "OpaquePayload",
    "Payload",
    "PayloadError",
    "PayloadRule",
    "RarpMac",
    "RemoteMessageError",
    "ReplyAckPolicy",
    "ReplyWhen",
    "Request",
    "RequestSpec",
    "RingState",
    "Role",
    "Session",
    "SessionLimits",
    "SessionState",
    "SharedObject",
    "SingleMemoryRegion",
    "SizeRule",
    "TransferDirection",
    "VringAddress",
    "VringAddressFlags",
    "VringArea",
    "VringFile",
    "VringState",
    "close_fds",
    "encode",
    "make_ack",
    "make_reply",
    "spec_for",
]
