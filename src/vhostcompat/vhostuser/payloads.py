"""vhost-user message payloads: one frozen dataclass per wire layout.

Each payload type knows its size rule (:class:`SizeRule`), packs itself into
bytes and unpacks bytes into a validated instance. Layouts follow QEMU's
docs/interop/vhost-user.rst ("Payload" section); numbers are in the machine's
native byte order, structures are packed except where C padding is part of
what real peers send (IOTLB message, inflight description), which is kept.

Reserved and padding fields are kept verbatim, so that a decoded message
re-encodes to the very same bytes: a proxy forwarding messages must not
change what it does not mean to change.

Constructors validate their fields and raise :class:`PayloadError` (a
:class:`~vhostcompat.errors.LocalProtocolError`); ``unpack`` raises the same
error for bytes that do not form the payload, and the decoder turns that into
a :class:`~vhostcompat.vhostuser.errors.RemoteMessageError` naming the request.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Self
from uuid import UUID

from vhostcompat.vhostuser.errors import PayloadError

# Largest payload the codec accepts for any request; each request's own size
# rule is tighter (only opaque crypto session descriptions come near it).
MAX_PAYLOAD_SIZE = 4096
# VHOST_MEMORY_BASELINE_NREGIONS: regions in one SET_MEM_TABLE, and fds per message.
MAX_MEMORY_REGIONS = 8
# VHOST_USER_MAX_CONFIG_SIZE: bytes of device config space in one message.
MAX_CONFIG_SIZE = 256
# Bits 0-7 of a vring file/area u64 hold the ring index, bit 8 says "no fd".
VRING_INDEX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8

_U64 = struct.Struct("=Q")
_U32_PAIR = struct.Struct("=II")
_VRING_ADDRESS = struct.Struct("=IIQQQQ")
_REGION = struct.Struct("=QQQQ")
_LOG = struct.Struct("=QQ")
_IOTLB = struct.Struct("=QQQBB6s")
_CONFIG_HEADER = struct.Struct("=III")
_VRING_AREA = struct.Struct("=QQQ")
_INFLIGHT = struct.Struct("=QQHH")


@dataclass(frozen=True, slots=True)
class SizeRule:
    """Which payload sizes (in bytes) a payload type can have.

    Either a set of exact sizes, or a range ``minimum..maximum`` for variable
    payloads whose ``unpack`` checks the inner consistency.
    """

    exact: frozenset[int] = frozenset()
    minimum: int = 0
    maximum: int = -1

    @classmethod
    def of(cls, *sizes: int) -> SizeRule:
        return cls(exact=frozenset(sizes))

    @classmethod
    def between(cls, minimum: int, maximum: int) -> SizeRule:
        return cls(minimum=minimum, maximum=maximum)

    def allows(self, size: int) -> bool:
        if self.exact:
            return size in self.exact
        return self.minimum <= size <= self.maximum

    @property
    def largest(self) -> int:
        return max(self.exact) if self.exact else self.maximum

    def describe(self) -> str:
        if self.exact:
            return " or ".join(str(size) for size in sorted(self.exact)) + " bytes"
        return f"{self.minimum} to {self.maximum} bytes"


# Decoded payloads of the commonest requests are built without calling their
# constructor: the wire layout already bounds every field (struct's unsigned
# formats, the masks below), which is all the constructor's checks check, and
# a message relayed after an idle spell runs each function it calls cold (a
# few microseconds each on this kind of machine): three fewer per message.
_new = object.__new__
_set = object.__setattr__


def _check_uint(field: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or value < 0 or value >> bits:
        raise PayloadError(f"{field} {value!r} is not a {bits}-bit unsigned value")


def _check_bytes(field: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise PayloadError(f"{field} must be {length} bytes, not {value!r}")


def _check_size(cls: type[Payload], data: bytes) -> None:
    if not cls.SIZE.allows(len(data)):
        raise PayloadError(
            f"{cls.__name__} payload of {len(data)} bytes (expected {cls.SIZE.describe()})")


class Payload:
    """Base of every payload type."""

    __slots__ = ()
    SIZE: ClassVar[SizeRule]

    def pack(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        """The payload these bytes hold; :class:`PayloadError` if they hold none."""
        _check_size(cls, data)
        return cls.unpack_body(data)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        """:meth:`unpack` for bytes whose size :attr:`SIZE` allows (the decoder
        checked it against the header before waiting for them)."""
        raise NotImplementedError

    @property
    def ring_index(self) -> int | None:
        """The ring (virtqueue) index this payload addresses, if any."""
        return None


@dataclass(frozen=True, slots=True)
class Empty(Payload):
    """No payload (size 0)."""

    SIZE: ClassVar[SizeRule] = SizeRule.of(0)

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        return _new(cls)

    def __str__(self) -> str:
        return "-"


EMPTY = Empty()


@dataclass(frozen=True, slots=True)
class U64(Payload):
    """A single 64-bit integer: features, counts, status, acks."""

    value: int
    SIZE: ClassVar[SizeRule] = SizeRule.of(8)

    def __post_init__(self) -> None:
        _check_uint("u64", self.value, 64)

    def pack(self) -> bytes:
        return _U64.pack(self.value)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        payload = _new(cls)
        _set(payload, "value", _U64.unpack(data)[0])
        return payload

    def __str__(self) -> str:
        return f"u64={self.value:#x}"


@dataclass(frozen=True, slots=True)
class VringState(Payload):
    """A vring state description: u32 index, u32 num.

    ``num`` is the ring size (SET_VRING_NUM), the enable flag
    (SET_VRING_ENABLE), the endianness (SET_VRING_ENDIAN) or the ring base
    (SET/GET_VRING_BASE). For a packed ring the base packs four fields; see
    :meth:`packed_base` and the ``avail_*``/``used_*`` properties.
    """

    index: int
    num: int
    SIZE: ClassVar[SizeRule] = SizeRule.of(8)

    def __post_init__(self) -> None:
        _check_uint("vring index", self.index, 32)
        _check_uint("vring num", self.num, 32)

    def pack(self) -> bytes:
        return _U32_PAIR.pack(self.index, self.num)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        index, num = _U32_PAIR.unpack(data)
        payload = _new(cls)
        _set(payload, "index", index)
        _set(payload, "num", num)
        return payload

    @property
    def ring_index(self) -> int | None:
        return self.index

    @classmethod
    def packed_base(cls, index: int, avail_index: int, avail_wrap: bool,
                    used_index: int, used_wrap: bool) -> VringState:
        """The SET_VRING_BASE payload of a packed ring."""
        for field, value in (("avail index", avail_index), ("used index", used_index)):
            _check_uint(field, value, 15)
        num = avail_index | avail_wrap << 15 | used_index << 16 | used_wrap << 31
        return cls(index, num)

    @property
    def avail_index(self) -> int:
        """Packed ring base: next available descriptor index (bits 0-14)."""
        return self.num & 0x7FFF

    @property
    def avail_wrap(self) -> bool:
        """Packed ring base: driver ring wrap counter (bit 15)."""
        return bool(self.num >> 15 & 1)

    @property
    def used_index(self) -> int:
        """Packed ring base: next used descriptor index (bits 16-30)."""
        return self.num >> 16 & 0x7FFF

    @property
    def used_wrap(self) -> bool:
        """Packed ring base: device ring wrap counter (bit 31)."""
        return bool(self.num >> 31 & 1)


class VringAddressFlags(enum.IntFlag, boundary=enum.KEEP):
    """Flags of a vring address description."""

    LOG = 1 << 0  # VHOST_VRING_F_LOG: log writes to the used ring


@dataclass(frozen=True, slots=True)
class VringAddress(Payload):
    """A vring address description (SET_VRING_ADDR)."""

    index: int
    flags: VringAddressFlags
    descriptor: int
    used: int
    available: int
    log: int
    SIZE: ClassVar[SizeRule] = SizeRule.of(_VRING_ADDRESS.size)

    def __post_init__(self) -> None:
        _check_uint("vring index", self.index, 32)
        _check_uint("vring address flags", self.flags, 32)
        for field in ("descriptor", "used", "available", "log"):
            _check_uint(f"{field} address", getattr(self, field), 64)

    def pack(self) -> bytes:
        return _VRING_ADDRESS.pack(self.index, self.flags, self.descriptor, self.used,
                                   self.available, self.log)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        index, flags, descriptor, used, available, log = _VRING_ADDRESS.unpack(data)
        return cls(index, VringAddressFlags(flags), descriptor, used, available, log)

    @property
    def ring_index(self) -> int | None:
        return self.index


@dataclass(frozen=True, slots=True)
class VringFile(Payload):
    """The u64 of SET_VRING_KICK/CALL/ERR: ring index (bits 0-7), NOFD (bit 8).

    With ``invalid_fd`` set no fd comes with the message (polling); otherwise
    exactly one. Bits 9-63 are reserved and refused when set.
    """

    index: int
    invalid_fd: bool = False
    SIZE: ClassVar[SizeRule] = SizeRule.of(8)

    def __post_init__(self) -> None:
        _check_uint("vring index", self.index, 8)

    def pack(self) -> bytes:
        return _U64.pack(self.index | (VRING_NOFD_MASK if self.invalid_fd else 0))

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        value: int = _U64.unpack(data)[0]
        if value & ~(VRING_INDEX_MASK | VRING_NOFD_MASK):
            raise PayloadError(f"reserved bits set in vring file value {value:#x}")
        payload = _new(cls)
        _set(payload, "index", value & VRING_INDEX_MASK)
        _set(payload, "invalid_fd", bool(value & VRING_NOFD_MASK))
        return payload

    @property
    def ring_index(self) -> int | None:
        return self.index


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """One memory region: guest physical address, size, user address, mmap offset."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    WIRE_SIZE: ClassVar[int] = _REGION.size

    def __post_init__(self) -> None:
        _check_uint("guest address", self.guest_phys_addr, 64)
        _check_uint("region size", self.memory_size, 64)
        _check_uint("user address", self.userspace_addr, 64)
        _check_uint("mmap offset", self.mmap_offset, 64)

    def pack(self) -> bytes:
        return _REGION.pack(self.guest_phys_addr, self.memory_size, self.userspace_addr,
                            self.mmap_offset)

    @classmethod
    def unpack_from(cls, data: bytes, offset: int) -> MemoryRegion:
        return cls(*_REGION.unpack_from(data, offset))

    @property
    def guest_end(self) -> int:
        """First guest physical address after the region (may exceed 64 bits)."""
        return self.guest_phys_addr + self.memory_size

    def __str__(self) -> str:
        return (f"[gpa {self.guest_phys_addr:#x} size {self.memory_size:#x} "
                f"uva {self.userspace_addr:#x} off {self.mmap_offset:#x}]")


@dataclass(frozen=True, slots=True)
class MemoryTable(Payload):
    """Multiple memory regions (SET_MEM_TABLE): u32 nregions, u32 padding, regions.

    The peer sends one fd per region, in the same order.
    """

    regions: tuple[MemoryRegion, ...]
    padding: int = 0
    SIZE: ClassVar[SizeRule] = SizeRule.between(
        8, 8 + MAX_MEMORY_REGIONS * MemoryRegion.WIRE_SIZE)

    def __post_init__(self) -> None:
        if not isinstance(self.regions, tuple) or not all(
                isinstance(region, MemoryRegion) for region in self.regions):
            raise PayloadError("memory table regions must be a tuple of MemoryRegion")
        if len(self.regions) > MAX_MEMORY_REGIONS:
            raise PayloadError(
                f"{len(self.regions)} memory regions (at most {MAX_MEMORY_REGIONS})")
        _check_uint("memory table padding", self.padding, 32)

    def pack(self) -> bytes:
        return _U32_PAIR.pack(len(self.regions), self.padding) + b"".join(
            region.pack() for region in self.regions)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        count, padding = _U32_PAIR.unpack_from(data)
        if count > MAX_MEMORY_REGIONS:
            raise PayloadError(f"{count} memory regions (at most {MAX_MEMORY_REGIONS})")
        expected = 8 + count * MemoryRegion.WIRE_SIZE
        if len(data) != expected:
            raise PayloadError(
                f"memory table of {count} regions is {expected} bytes, not {len(data)}")
        regions = tuple(MemoryRegion.unpack_from(data, 8 + i * MemoryRegion.WIRE_SIZE)
                        for i in range(count))
        return cls(regions, padding)

    def __str__(self) -> str:
        return f"{len(self.regions)} regions " + " ".join(map(str, self.regions))


@dataclass(frozen=True, slots=True)
class SingleMemoryRegion(Payload):
    """Single memory region description (ADD/REM_MEM_REG): u64 padding, region."""

    region: MemoryRegion
    padding: int = 0
    SIZE: ClassVar[SizeRule] = SizeRule.of(8 + MemoryRegion.WIRE_SIZE)

    def __post_init__(self) -> None:
        if not isinstance(self.region, MemoryRegion):
            raise PayloadError("single memory region needs a MemoryRegion")
        _check_uint("region padding", self.padding, 64)

    def pack(self) -> bytes:
        return _U64.pack(self.padding) + self.region.pack()

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        return cls(MemoryRegion.unpack_from(data, 8), _U64.unpack_from(data)[0])


@dataclass(frozen=True, slots=True)
class LogDescription(Payload):
    """Log description (SET_LOG_BASE): size and offset of the dirty log in its fd."""

    mmap_size: int
    mmap_offset: int
    SIZE: ClassVar[SizeRule] = SizeRule.of(_LOG.size)

    def __post_init__(self) -> None:
        _check_uint("log size", self.mmap_size, 64)
        _check_uint("log offset", self.mmap_offset, 64)

    def pack(self) -> bytes:
        return _LOG.pack(self.mmap_size, self.mmap_offset)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        return cls(*_LOG.unpack(data))


class IotlbPermission(enum.IntEnum):
    """Permission flags of an IOTLB message."""

    NONE = 0
    READ = 1
    WRITE = 2
    READ_WRITE = 3


class IotlbType(enum.IntEnum):
    """Type of an IOTLB message."""

    MISS = 1
    UPDATE = 2
    INVALIDATE = 3
    ACCESS_FAIL = 4


@dataclass(frozen=True, slots=True)
class IotlbMessage(Payload):
    """struct vhost_iotlb_msg: iova, size, user address, u8 perm, u8 type, 6 pad bytes."""

    iova: int
    size: int
    userspace_addr: int
    permissions: IotlbPermission
    type: IotlbType
    padding: bytes = bytes(6)
    SIZE: ClassVar[SizeRule] = SizeRule.of(_IOTLB.size)

    def __post_init__(self) -> None:
        _check_uint("iova", self.iova, 64)
        _check_uint("iotlb size", self.size, 64)
        _check_uint("user address", self.userspace_addr, 64)
        if not isinstance(self.permissions, IotlbPermission):
            raise PayloadError(f"unknown IOTLB permissions {self.permissions!r}")
        if not isinstance(self.type, IotlbType):
            raise PayloadError(f"unknown IOTLB message type {self.type!r}")
        _check_bytes("IOTLB padding", self.padding, 6)

    def pack(self) -> bytes:
        return _IOTLB.pack(self.iova, self.size, self.userspace_addr, self.permissions,
                           self.type, self.padding)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        iova, size, userspace_addr, permissions, kind, padding = _IOTLB.unpack(data)
        try:
            return cls(iova, size, userspace_addr, IotlbPermission(permissions),
                       IotlbType(kind), padding)
        except ValueError as error:
            raise PayloadError(f"IOTLB message: {error}") from None


@dataclass(frozen=True, slots=True)
class DeviceConfig(Payload):
    """Virtio device config space: u32 offset, u32 size, u32 flags, ``size`` bytes."""

    offset: int
    flags: int
    data: bytes
    SIZE: ClassVar[SizeRule] = SizeRule.between(
        _CONFIG_HEADER.size, _CONFIG_HEADER.size + MAX_CONFIG_SIZE)

    # Values of ``flags``.
    WRITABLE: ClassVar[int] = 0
    MIGRATION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_uint("config offset", self.offset, 32)
        _check_uint("config flags", self.flags, 32)
        if not isinstance(self.data, bytes) or len(self.data) > MAX_CONFIG_SIZE:
            raise PayloadError(f"config data must be at most {MAX_CONFIG_SIZE} bytes")

    def pack(self) -> bytes:
        return _CONFIG_HEADER.pack(self.offset, len(self.data), self.flags) + self.data

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        offset, size, flags = _CONFIG_HEADER.unpack_from(data)
        body = bytes(data[_CONFIG_HEADER.size:])
        if size != len(body):
            raise PayloadError(f"config size field {size} but {len(body)} bytes follow")
        return cls(offset, flags, body)


@dataclass(frozen=True, slots=True)
class VringArea(Payload):
    """Vring area description (VRING_HOST_NOTIFIER_MSG): u64 index/NOFD, size, offset."""

    index: int
    invalid_fd: bool
    size: int
    offset: int
    SIZE: ClassVar[SizeRule] = SizeRule.of(_VRING_AREA.size)

    def __post_init__(self) -> None:
        _check_uint("vring index", self.index, 8)
        _check_uint("area size", self.size, 64)
        _check_uint("area offset", self.offset, 64)

    def pack(self) -> bytes:
        value = self.index | (VRING_NOFD_MASK if self.invalid_fd else 0)
        return _VRING_AREA.pack(value, self.size, self.offset)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        value, size, offset = _VRING_AREA.unpack(data)
        if value & ~(VRING_INDEX_MASK | VRING_NOFD_MASK):
            raise PayloadError(f"reserved bits set in vring area value {value:#x}")
        return cls(value & VRING_INDEX_MASK, bool(value & VRING_NOFD_MASK), size, offset)

    @property
    def ring_index(self) -> int | None:
        return self.index


@dataclass(frozen=True, slots=True)
class InflightDescription(Payload):
    """Inflight description: u64 mmap size/offset, u16 queues, u16 queue size.

    QEMU, DPDK and rust-vmm send the C struct with its 4 trailing padding
    bytes (24 bytes); the packed 20-byte form is accepted too.
    """

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int
    padding: bytes = bytes(4)
    SIZE: ClassVar[SizeRule] = SizeRule.of(_INFLIGHT.size, _INFLIGHT.size + 4)

    def __post_init__(self) -> None:
        _check_uint("inflight mmap size", self.mmap_size, 64)
        _check_uint("inflight mmap offset", self.mmap_offset, 64)
        _check_uint("inflight queue count", self.num_queues, 16)
        _check_uint("inflight queue size", self.queue_size, 16)
        if not isinstance(self.padding, bytes) or len(self.padding) not in (0, 4):
            raise PayloadError("inflight padding must be 0 or 4 bytes")

    def pack(self) -> bytes:
        return _INFLIGHT.pack(self.mmap_size, self.mmap_offset, self.num_queues,
                              self.queue_size) + self.padding

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        mmap_size, mmap_offset, num_queues, queue_size = _INFLIGHT.unpack_from(data)
        return cls(mmap_size, mmap_offset, num_queues, queue_size, bytes(data[_INFLIGHT.size:]))


@dataclass(frozen=True, slots=True)
class SharedObject(Payload):
    """VhostUserShared: a 16-byte UUID (first fields big endian, as uuid.UUID.bytes)."""

    uuid: bytes
    SIZE: ClassVar[SizeRule] = SizeRule.of(16)

    def __post_init__(self) -> None:
        _check_bytes("shared object UUID", self.uuid, 16)

    def pack(self) -> bytes:
        return self.uuid

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        return cls(bytes(data))

    def as_uuid(self) -> UUID:
        return UUID(bytes=self.uuid)


class TransferDirection(enum.IntEnum):
    """Direction of a device state transfer."""

    SAVE = 0
    LOAD = 1


class MigrationPhase(enum.IntEnum):
    """Migration phase of a device state transfer."""

    STOPPED = 0


@dataclass(frozen=True, slots=True)
class DeviceStateTransfer(Payload):
    """Device state transfer parameters (SET_DEVICE_STATE_FD): u32 direction, u32 phase."""

    direction: TransferDirection
    phase: MigrationPhase
    SIZE: ClassVar[SizeRule] = SizeRule.of(8)

    def __post_init__(self) -> None:
        if not isinstance(self.direction, TransferDirection):
            raise PayloadError(f"unknown transfer direction {self.direction!r}")
        if not isinstance(self.phase, MigrationPhase):
            raise PayloadError(f"unknown migration phase {self.phase!r}")

    def pack(self) -> bytes:
        return _U32_PAIR.pack(self.direction, self.phase)

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        direction, phase = _U32_PAIR.unpack(data)
        try:
            return cls(TransferDirection(direction), MigrationPhase(phase))
        except ValueError as error:
            raise PayloadError(f"device state transfer: {error}") from None


@dataclass(frozen=True, slots=True)
class DeviceStateResult(Payload):
    """Reply u64 of SET_DEVICE_STATE_FD: result (bits 0-7, 0 = success), NOFD (bit 8)."""

    result: int
    invalid_fd: bool
    SIZE: ClassVar[SizeRule] = SizeRule.of(8)

    def __post_init__(self) -> None:
        _check_uint("device state result", self.result, 8)

    def pack(self) -> bytes:
        return _U64.pack(self.result | (VRING_NOFD_MASK if self.invalid_fd else 0))

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        value: int = _U64.unpack(data)[0]
        if value & ~(0xFF | VRING_NOFD_MASK):
            raise PayloadError(f"reserved bits set in device state result {value:#x}")
        return cls(value & 0xFF, bool(value & VRING_NOFD_MASK))


@dataclass(frozen=True, slots=True)
class RarpMac(Payload):
    """SEND_RARP's u64: the guest MAC address in the first 6 bytes."""

    mac: bytes
    padding: bytes = bytes(2)
    SIZE: ClassVar[SizeRule] = SizeRule.of(8)

    def __post_init__(self) -> None:
        _check_bytes("MAC address", self.mac, 6)
        _check_bytes("MAC padding", self.padding, 2)

    def pack(self) -> bytes:
        return self.mac + self.padding

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        return cls(bytes(data[:6]), bytes(data[6:]))

    def __str__(self) -> str:
        return "mac=" + ":".join(f"{byte:02x}" for byte in self.mac)


@dataclass(frozen=True, slots=True)
class OpaquePayload(Payload):
    """Bytes the core carries without interpreting (crypto session descriptions)."""

    data: bytes
    SIZE: ClassVar[SizeRule] = SizeRule.between(0, MAX_PAYLOAD_SIZE)

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes) or len(self.data) > MAX_PAYLOAD_SIZE:
            raise PayloadError(f"opaque payload must be at most {MAX_PAYLOAD_SIZE} bytes")

    def pack(self) -> bytes:
        return self.data

    @classmethod
    def unpack_body(cls, data: bytes) -> Self:
        return cls(bytes(data))

    def __str__(self) -> str:
        return f"{len(self.data)} opaque bytes"
