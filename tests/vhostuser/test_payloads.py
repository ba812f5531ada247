"""Payload layouts pinned byte for byte, and payload validation."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vhostuser.helpers import CASES, PAYLOADS, SAMPLES
from vhostcompat.errors import LocalProtocolError
from vhostcompat.vhostuser import (
    EMPTY,
    U64,
    DeviceConfig,
    DeviceStateResult,
    DeviceStateTransfer,
    InflightDescription,
    IotlbMessage,
    IotlbPermission,
    IotlbType,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    MigrationPhase,
    Payload,
    PayloadError,
    RarpMac,
    SharedObject,
    SingleMemoryRegion,
    TransferDirection,
    VringAddress,
    VringAddressFlags,
    VringArea,
    VringFile,
    VringState,
)

pytestmark = pytest.mark.skipif(sys.byteorder != "little",
                                reason="wire bytes pinned for a little-endian host")

REGION = MemoryRegion(0x1000, 0x2000, 0x7F00_0000_0000, 0x10)
REGION_BYTES = struct.pack("<QQQQ", 0x1000, 0x2000, 0x7F00_0000_0000, 0x10)

# (payload, its exact wire bytes), written from the spec's tables, not from the code.
PINNED: list[tuple[Payload, bytes]] = [
    (EMPTY, b""),
    (U64(0x1_4000_0000), bytes.fromhex("0000004001000000")),
    (VringState(1, 256), bytes.fromhex("01000000" "00010000")),
    (VringAddress(2, VringAddressFlags.LOG, 0x10, 0x20, 0x30, 0x40),
     struct.pack("<IIQQQQ", 2, 1, 0x10, 0x20, 0x30, 0x40)),
    (VringFile(3), bytes.fromhex("0300000000000000")),
    (VringFile(3, invalid_fd=True), bytes.fromhex("0301000000000000")),
    (MemoryTable((REGION,)), struct.pack("<II", 1, 0) + REGION_BYTES),
    (MemoryTable(()), bytes(8)),
    (SingleMemoryRegion(REGION), bytes(8) + REGION_BYTES),
    (LogDescription(0x4000, 0x8), struct.pack("<QQ", 0x4000, 0x8)),
    (IotlbMessage(0x1000, 0x200, 0x7F00, IotlbPermission.READ, IotlbType.MISS),
     struct.pack("<QQQBB", 0x1000, 0x200, 0x7F00, 1, 1) + bytes(6)),
    (DeviceConfig(4, DeviceConfig.MIGRATION, b"\xaa\xbb"),
     struct.pack("<III", 4, 2, 1) + b"\xaa\xbb"),
    (VringArea(5, True, 0x1000, 0x2000), struct.pack("<QQQ", 0x105, 0x1000, 0x2000)),
    (InflightDescription(0x1000, 0, 2, 256), struct.pack("<QQHH", 0x1000, 0, 2, 256) + bytes(4)),
    (InflightDescription(0x1000, 0, 2, 256, b""), struct.pack("<QQHH", 0x1000, 0, 2, 256)),
    (SharedObject(bytes(range(16))), bytes(range(16))),
    (DeviceStateTransfer(TransferDirection.LOAD, MigrationPhase.STOPPED),
     struct.pack("<II", 1, 0)),
    (DeviceStateResult(0, True), struct.pack("<Q", 0x100)),
    (RarpMac(bytes.fromhex("525400123456")), bytes.fromhex("5254001234560000")),
]


@pytest.mark.parametrize(("payload", "wire"), PINNED, ids=lambda value: type(value).__name__)
def test_wire_layout_is_pinned(payload: Payload, wire: bytes) -> None:
    assert payload.pack() == wire
    assert type(payload).unpack(wire) == payload
    assert type(payload).SIZE.allows(len(wire))


def test_every_payload_type_has_a_sample_and_a_strategy() -> None:
    # By name: dataclass(slots=True) leaves the pre-slots class among the subclasses.
    kinds = {kind.__name__ for kind in Payload.__subclasses__()}
    used = {case.rule.payload for case in CASES}
    assert kinds == {kind.__name__ for kind in SAMPLES}
    assert used <= set(SAMPLES) == set(PAYLOADS)


@given(st.sampled_from(sorted(PAYLOADS, key=lambda kind: kind.__name__)), st.data())
def test_every_payload_round_trips(kind: type[Payload], data: st.DataObject) -> None:
    payload = data.draw(PAYLOADS[kind])
    wire = payload.pack()
    assert kind.SIZE.allows(len(wire))
    assert kind.unpack(wire) == payload
    assert kind.unpack(wire).pack() == wire


def test_packed_ring_base_fields() -> None:
    state = VringState.packed_base(0, avail_index=0x1234, avail_wrap=True,
                                   used_index=0x0FED, used_wrap=False)
    assert state.num == 0x1234 | 1 << 15 | 0x0FED << 16
    assert (state.avail_index, state.avail_wrap, state.used_index, state.used_wrap) == (
        0x1234, True, 0x0FED, False)


@pytest.mark.parametrize("build", [
    lambda: VringState(-1, 0),
    lambda: VringState(0, 1 << 32),
    lambda: U64(1 << 64),
    lambda: VringFile(256),
    lambda: MemoryTable((REGION,) * 9),
    lambda: DeviceConfig(0, 0, bytes(257)),
    lambda: SharedObject(b"short"),
    lambda: RarpMac(b"\x00" * 7),
    lambda: InflightDescription(0, 0, 1 << 16, 0),
])
def test_constructors_refuse_out_of_range_fields(build: object) -> None:
    assert callable(build)
    with pytest.raises(PayloadError):
        build()


@pytest.mark.parametrize(("kind", "wire", "fragment"), [
    (VringState, bytes(7), "7 bytes"),
    (VringFile, struct.pack("<Q", 0x201), "reserved bits"),
    (VringArea, struct.pack("<QQQ", 1 << 40, 0, 0), "reserved bits"),
    (MemoryTable, struct.pack("<II", 2, 0) + REGION_BYTES, "2 regions is 72 bytes, not 40"),
    (MemoryTable, struct.pack("<II", 9, 0) + REGION_BYTES * 7, "9 memory regions"),
    (DeviceConfig, struct.pack("<III", 0, 4, 0) + b"\x01", "size field 4 but 1 bytes"),
    (IotlbMessage, struct.pack("<QQQBB", 0, 0, 0, 1, 9) + bytes(6), "IOTLB"),
    (IotlbMessage, struct.pack("<QQQBB", 0, 0, 0, 4, 1) + bytes(6), "IOTLB"),
    (DeviceStateTransfer, struct.pack("<II", 2, 0), "transfer"),
    (DeviceStateResult, struct.pack("<Q", 1 << 9), "reserved bits"),
    (InflightDescription, bytes(22), "22 bytes"),
])
def test_unpack_refuses_malformed_bytes(kind: type[Payload], wire: bytes, fragment: str) -> None:
    with pytest.raises(PayloadError, match=fragment):
        kind.unpack(wire)


def test_payload_errors_are_local_protocol_errors() -> None:
    # The decoder turns them into remote errors; built by us they are our fault.
    assert issubclass(PayloadError, LocalProtocolError)
