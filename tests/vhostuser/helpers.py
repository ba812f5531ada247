"""Helpers for the vhost-user core tests: fds, sample messages, strategies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from hypothesis import strategies as st

from vhostcompat.vhostuser import (
    BACKEND_SPECS,
    EMPTY,
    FRONTEND_SPECS,
    U64,
    Channel,
    DeviceConfig,
    DeviceStateResult,
    DeviceStateTransfer,
    Empty,
    HeaderFlags,
    InflightDescription,
    IotlbMessage,
    IotlbPermission,
    IotlbType,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    Message,
    MigrationPhase,
    OpaquePayload,
    Payload,
    PayloadRule,
    RarpMac,
    Request,
    Role,
    SharedObject,
    SingleMemoryRegion,
    TransferDirection,
    VringAddress,
    VringAddressFlags,
    VringArea,
    VringFile,
    VringState,
)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def new_fds(count: int) -> list[int]:
    """``count`` fresh fds (on /dev/null) owned by the caller."""
    return [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]


def close_all(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


REGION = MemoryRegion(0x0, 0x1000_0000, 0x7F00_0000_0000, 0)
REGION_HIGH = MemoryRegion(0x1_0000_0000, 0x1000_0000, 0x7F10_0000_0000, 0x1000_0000)

# One valid value of every payload type, used for the per-request round trips.
SAMPLES: dict[type[Payload], Payload] = {
    Empty: EMPTY,
    U64: U64(0x1_4000_0000),
    VringState: VringState(1, 256),
    VringAddress: VringAddress(1, VringAddressFlags.LOG, 0x7F00_0000_1000, 0x7F00_0000_3000,
                               0x7F00_0000_2000, 0x10_0000),
    VringFile: VringFile(1),
    MemoryTable: MemoryTable((REGION, REGION_HIGH)),
    SingleMemoryRegion: SingleMemoryRegion(REGION_HIGH),
    LogDescription: LogDescription(0x2000, 0),
    IotlbMessage: IotlbMessage(0x1000, 0x1000, 0x7F00_0000_0000, IotlbPermission.READ_WRITE,
                               IotlbType.UPDATE),
    DeviceConfig: DeviceConfig(0, DeviceConfig.WRITABLE, bytes(range(12))),
    VringArea: VringArea(2, False, 0x1000, 0),
    InflightDescription: InflightDescription(0x10000, 0, 2, 256),
    SharedObject: SharedObject(bytes(range(16))),
    DeviceStateTransfer: DeviceStateTransfer(TransferDirection.SAVE, MigrationPhase.STOPPED),
    DeviceStateResult: DeviceStateResult(0, False),
    RarpMac: RarpMac(bytes.fromhex("525400123456")),
    OpaquePayload: OpaquePayload(b"crypto session"),
}


@dataclass(frozen=True)
class Case:
    """One kind of message: a request or a reply, with one of its payload rules."""

    request: Request
    reply: bool
    rule: PayloadRule

    @property
    def channel(self) -> Channel:
        return Channel.of(self.request)

    @property
    def sender(self) -> Role:
        requester = self.channel.requester
        return requester.peer if self.reply else requester

    def __str__(self) -> str:
        kind = "reply" if self.reply else "request"
        return f"{self.request.name}-{kind}-{self.rule.payload.__name__}"


def all_cases() -> Iterator[Case]:
    """Every request and every reply alternative of the table."""
    for table in (FRONTEND_SPECS, BACKEND_SPECS):
        for spec in table.values():
            yield Case(spec.request, False, spec.payload)
            for rule in spec.replies:
                yield Case(spec.request, True, rule)


CASES = list(all_cases())


def fd_count_for(rule: PayloadRule, payload: Payload) -> int:
    """The largest fd count ``rule`` allows with ``payload``."""
    return rule.fds.bounds(payload)[1]


def sample_message(case: Case, fds: tuple[int, ...] | None = None,
                   payload: Payload | None = None) -> Message:
    """A valid message of ``case``; ``fds`` default to fake numbers never opened."""
    payload = SAMPLES[case.rule.payload] if payload is None else payload
    flags = HeaderFlags.VERSION_1 | (HeaderFlags.REPLY if case.reply else 0)
    if fds is None:
        fds = tuple(range(900, 900 + fd_count_for(case.rule, payload)))
    return Message(case.request, payload, flags, fds)


# -- hypothesis strategies -------------------------------------------------------------

_U8 = st.integers(0, 0xFF)
_U16 = st.integers(0, 0xFFFF)
_U32 = st.integers(0, 0xFFFF_FFFF)
_U64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
_REGIONS = st.builds(MemoryRegion, _U64, _U64, _U64, _U64)

PAYLOADS: dict[type[Payload], st.SearchStrategy[Payload]] = {
    Empty: st.just(EMPTY),
    U64: st.builds(U64, _U64),
    VringState: st.builds(VringState, _U32, _U32),
    VringAddress: st.builds(VringAddress, _U32, _U32.map(VringAddressFlags), _U64, _U64, _U64,
                            _U64),
    VringFile: st.builds(VringFile, _U8, st.booleans()),
    MemoryTable: st.builds(MemoryTable, st.lists(_REGIONS, max_size=8).map(tuple), _U32),
    SingleMemoryRegion: st.builds(SingleMemoryRegion, _REGIONS, _U64),
    LogDescription: st.builds(LogDescription, _U64, _U64),
    IotlbMessage: st.builds(IotlbMessage, _U64, _U64, _U64, st.sampled_from(IotlbPermission),
                            st.sampled_from(IotlbType), st.binary(min_size=6, max_size=6)),
    DeviceConfig: st.builds(DeviceConfig, _U32, _U32, st.binary(max_size=256)),
    VringArea: st.builds(VringArea, _U8, st.booleans(), _U64, _U64),
    InflightDescription: st.builds(InflightDescription, _U64, _U64, _U16, _U16,
                                   st.sampled_from([b"", bytes(4), b"\x01\x02\x03\x04"])),
    SharedObject: st.builds(SharedObject, st.binary(min_size=16, max_size=16)),
    DeviceStateTransfer: st.builds(DeviceStateTransfer, st.sampled_from(TransferDirection),
                                   st.sampled_from(MigrationPhase)),
    DeviceStateResult: st.builds(DeviceStateResult, _U8, st.booleans()),
    RarpMac: st.builds(RarpMac, st.binary(min_size=6, max_size=6),
                       st.binary(min_size=2, max_size=2)),
    OpaquePayload: st.builds(OpaquePayload, st.binary(max_size=300)),
}
