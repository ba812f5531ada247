"""A qtest client and a small modern virtio-pci driver for QEMU's virtio-net.

QEMU started with ``-qtest unix:PATH`` connects to a socket we listen on and
then obeys a line protocol: ``outl 0xcf8 0x80000000`` answers ``OK``,
``readl 0xe0000000`` answers ``OK 0x...``; lines starting with ``IRQ`` are
asynchronous notices, skipped here. With the halt firmware of
:mod:`vhostcompat.lab.firmware` no guest code runs, and this module plays the
guest's virtio-net driver: it is what makes QEMU negotiate features with the
vhost-user backend and start vhost, cheaply and in a couple of milliseconds.

The driver follows the virtio 1.x PCI transport ("Virtio Over PCI Bus" in
the virtio specification): find the device through the PCI configuration
ports 0xCF8/0xCFC, walk its vendor capabilities, assign its BARs, then
reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, split rings, DRIVER_OK.

What a qtest driver cannot honour, and therefore never acks by default
(:data:`QTEST_DRIVER_UNSUPPORTED`): the packed ring layout (it builds split
rings only), notification data, per-queue reset, admin and SR-IOV, and
ACCESS_PLATFORM (there is no IOMMU: rings are at guest physical addresses).
Everything else is only a promise about buffers the driver never posts, so
it can be acked honestly; a caller may pass any narrower mask.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import struct
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from vhostcompat.features import VirtioFeature, format_mask
from vhostcompat.lab.errors import QtestError, VirtioDriverError
from vhostcompat.lab.process import ChildProcess, wait_until

logger = logging.getLogger(__name__)

QTEST_TIMEOUT = 10.0

# --- the qtest text protocol ----------------------------------------------


def parse_reply(command: str, line: str) -> list[str]:
    """The words after ``OK`` of one reply line; refuses ``FAIL``/``ERR``."""
    words = line.split()
    if not words or words[0] != "OK":
        raise QtestError(command, line)
    return words[1:]


def parse_int_reply(command: str, line: str) -> int:
    """An ``OK 0x...`` reply as an integer."""
    words = parse_reply(command, line)
    if len(words) != 1:
        raise QtestError(command, line)
    try:
        return int(words[0], 0)
    except ValueError:
        raise QtestError(command, line) from None


class QtestClient:
    """One qtest connection; commands are serialised (one reply per command)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float = QTEST_TIMEOUT) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._lock = asyncio.Lock()

    async def command(self, line: str) -> list[str]:
        """Send one command line; return the reply's words after ``OK``."""
        return parse_reply(line, await self._exchange(line))

    async def _exchange(self, line: str) -> str:
        async with self._lock:
            self._writer.write(line.encode("ascii") + b"\n")
            try:
                async with asyncio.timeout(self._timeout):
                    await self._writer.drain()
                    while True:
                        raw = await self._reader.readline()
                        if not raw:
                            raise QtestError(line, "connection closed by QEMU")
                        reply = raw.decode("ascii", errors="replace").strip()
                        # IRQ notices arrive between replies; they are not ours.
                        if not reply.startswith("IRQ"):
                            return reply
            except TimeoutError:
                raise QtestError(line, f"no reply within {self._timeout:g}s") from None
            except OSError as error:
                # QEMU exited or closed qtest: the command's fate is unknown.
                raise QtestError(line, f"connection lost: {error}") from error

    async def _int_command(self, line: str) -> int:
        return parse_int_reply(line, await self._exchange(line))

    # Port I/O
    async def outb(self, port: int, value: int) -> None:
        await self.command(f"outb {port:#x} {value:#x}")

    async def outw(self, port: int, value: int) -> None:
        await self.command(f"outw {port:#x} {value:#x}")

    async def outl(self, port: int, value: int) -> None:
        await self.command(f"outl {port:#x} {value:#x}")

    async def inb(self, port: int) -> int:
        return await self._int_command(f"inb {port:#x}")

    async def inw(self, port: int) -> int:
        return await self._int_command(f"inw {port:#x}")

    async def inl(self, port: int) -> int:
        return await self._int_command(f"inl {port:#x}")

    # Guest physical memory (RAM and MMIO alike)
    async def readb(self, address: int) -> int:
        return await self._int_command(f"readb {address:#x}")

    async def readw(self, address: int) -> int:
        return await self._int_command(f"readw {address:#x}")

    async def readl(self, address: int) -> int:
        return await self._int_command(f"readl {address:#x}")

    async def readq(self, address: int) -> int:
        return await self._int_command(f"readq {address:#x}")

    async def writeb(self, address: int, value: int) -> None:
        await self.command(f"writeb {address:#x} {value:#x}")

    async def writew(self, address: int, value: int) -> None:
        await self.command(f"writew {address:#x} {value:#x}")

    async def writel(self, address: int, value: int) -> None:
        await self.command(f"writel {address:#x} {value:#x}")

    async def writeq(self, address: int, value: int) -> None:
        await self.command(f"writeq {address:#x} {value:#x}")

    async def memset(self, address: int, size: int, pattern: int = 0) -> None:
        await self.command(f"memset {address:#x} {size:#x} {pattern:#x}")

    async def write(self, address: int, data: bytes) -> None:
        await self.command(f"write {address:#x} {len(data):#x} 0x{data.hex()}")

    async def read(self, address: int, size: int) -> bytes:
        line = f"read {address:#x} {size:#x}"
        words = await self.command(line)
        if len(words) != 1 or not words[0].startswith("0x"):
            raise QtestError(line, " ".join(["OK", *words]))
        try:
            data = bytes.fromhex(words[0][2:])
        except ValueError:
            raise QtestError(line, " ".join(["OK", *words])) from None
        if len(data) != size:
            raise QtestError(line, f"{len(data)} bytes instead of {size}")
        return data

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            # QEMU may already be gone; the socket is closed either way.
            await self._writer.wait_closed()


class QtestListener:
    """The socket QEMU's ``-qtest unix:PATH`` connects to (QEMU is the client)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: asyncio.Future[QtestClient] | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._connection = loop.create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert self._connection is not None
            if self._connection.done():
                # A second qtest peer is not ours: refuse it.
                writer.close()
                return
            self._connection.set_result(QtestClient(reader, writer))

        self._server = await asyncio.start_unix_server(on_connect, path=str(self.path))

    async def accept(self, timeout: float, *, watch: Iterable[ChildProcess] = ()) -> QtestClient:
        """The connection from QEMU, waiting at most ``timeout`` seconds."""
        connection = self._connection
        assert connection is not None, "start() first"
        await wait_until(connection.done, timeout, f"QEMU to connect to qtest {self.path}",
                         watch=watch)
        return connection.result()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@contextlib.asynccontextmanager
async def qtest_listener(path: Path) -> AsyncIterator[QtestListener]:
    """Listen on ``path`` for QEMU's qtest connection; closed when the block exits."""
    listener = QtestListener(path)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()


# --- PCI configuration space ---------------------------------------------

PCI_CONFIG_ADDRESS_PORT = 0xCF8
PCI_CONFIG_DATA_PORT = 0xCFC
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_BAR0 = 0x10
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_STATUS_CAP_LIST = 0x10
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_CAP_ID_VENDOR = 0x09
PCI_BAR_IO = 0x1
PCI_BAR_MEM_TYPE_64 = 0x4
PCI_BAR_MEM_MASK = ~0xF & 0xFFFFFFFF
PCI_SLOTS = 32
PCI_NO_DEVICE = 0xFFFF

VIRTIO_PCI_VENDOR = 0x1AF4
VIRTIO_NET_MODERN_DEVICE_ID = 0x1041  # 0x1040 + virtio device id 1 (net)
VIRTIO_TRANSITIONAL_NET_DEVICE_ID = 0x1000
VIRTIO_ID_NET = 1


@dataclasses.dataclass(frozen=True, order=True)
class PciAddress:
    """bus:slot.function of a PCI function."""

    bus: int
    slot: int
    function: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.bus < 256 and 0 <= self.slot < PCI_SLOTS and 0 <= self.function < 8):
            raise VirtioDriverError(
                "discovery", f"not a PCI address: {self.bus}:{self.slot}.{self.function}")

    def config_address(self, offset: int) -> int:
        """The CONFIG_ADDRESS (port 0xCF8) value selecting ``offset``'s dword."""
        return (0x80000000 | self.bus << 16 | self.slot << 11 | self.function << 8
                | offset & 0xFC)

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.slot:02x}.{self.function}"


class VirtioPciCapType(enum.IntEnum):
    """``cfg_type`` of a virtio vendor capability."""

    COMMON_CFG = 1
    NOTIFY_CFG = 2
    ISR_CFG = 3
    DEVICE_CFG = 4
    PCI_CFG = 5


_REGION_CAP_TYPES = frozenset({VirtioPciCapType.COMMON_CFG, VirtioPciCapType.NOTIFY_CFG,
                               VirtioPciCapType.ISR_CFG, VirtioPciCapType.DEVICE_CFG})

VIRTIO_CAP_LENGTH = 16
VIRTIO_NOTIFY_CAP_LENGTH = 20


@dataclasses.dataclass(frozen=True)
class VirtioCapability:
    """One ``struct virtio_pci_cap`` (plus the notify multiplier for NOTIFY_CFG)."""

    cfg_type: int
    bar: int
    offset: int
    length: int
    notify_off_multiplier: int = 0


def parse_virtio_capability(raw: bytes) -> VirtioCapability:
    """Decode a virtio vendor capability from its bytes (starting at cap_vndr)."""
    if len(raw) < VIRTIO_CAP_LENGTH:
        raise VirtioDriverError("capabilities", f"capability of {len(raw)} bytes is too short")
    cap_vndr, _next, cap_len, cfg_type, bar = struct.unpack_from("<BBBBB", raw, 0)
    if cap_vndr != PCI_CAP_ID_VENDOR:
        raise VirtioDriverError("capabilities", f"capability id {cap_vndr:#x} is not vendor")
    offset, length = struct.unpack_from("<II", raw, 8)
    multiplier = 0
    if cfg_type == VirtioPciCapType.NOTIFY_CFG:
        if cap_len < VIRTIO_NOTIFY_CAP_LENGTH or len(raw) < VIRTIO_NOTIFY_CAP_LENGTH:
            raise VirtioDriverError("capabilities", "notify capability lacks its multiplier")
        (multiplier,) = struct.unpack_from("<I", raw, 16)
    return VirtioCapability(cfg_type, bar, offset, length, multiplier)


def bar_size(readback_low: int, readback_high: int | None = None) -> int:
    """A memory BAR's size from what it reads after writing all ones.

    ``readback_high`` is the upper half of a 64-bit BAR.
    """
    mask = readback_low & PCI_BAR_MEM_MASK
    if readback_high is not None:
        mask |= readback_high << 32
        width_mask = (1 << 64) - 1
    else:
        width_mask = 0xFFFFFFFF
    if mask == 0:
        return 0
    return ((~mask) & width_mask) + 1


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


# --- split virtqueues -------------------------------------------------------

RING_ALIGN = 4096  # page-aligned parts keep every ring within one guest page run
DESC_SIZE = 16


@dataclasses.dataclass(frozen=True)
class SplitRingLayout:
    """Guest-physical addresses of one split virtqueue (virtio 1.x "Split Virtqueues")."""

    size: int
    desc: int
    avail: int
    used: int
    end: int

    @classmethod
    def place(cls, base: int, size: int) -> SplitRingLayout:
        """Lay a ring of ``size`` entries out from ``base`` (page-aligned parts)."""
        if size <= 0 or size & (size - 1) or size > 32768:
            raise VirtioDriverError("queues", f"queue size {size} is not a power of 2 <= 32768")
        desc = align_up(base, RING_ALIGN)
        avail = align_up(desc + DESC_SIZE * size, RING_ALIGN)
        # flags, idx, ring[size], used_event: all le16
        used = align_up(avail + 2 * (3 + size), RING_ALIGN)
        # flags, idx, ring[size] of (id le32, len le32), avail_event
        end = align_up(used + 2 * 3 + 8 * size, RING_ALIGN)
        return cls(size, desc, avail, used, end)


# --- the virtio-pci transport and the net device ------------------------


class DeviceStatus(enum.IntFlag):
    """The device_status field (virtio 1.x "Device Status Field")."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


# struct virtio_pci_common_cfg offsets
COMMON_DEVICE_FEATURE_SELECT = 0x00
COMMON_DEVICE_FEATURE = 0x04
COMMON_DRIVER_FEATURE_SELECT = 0x08
COMMON_DRIVER_FEATURE = 0x0C
COMMON_NUM_QUEUES = 0x12
COMMON_DEVICE_STATUS = 0x14
COMMON_QUEUE_SELECT = 0x16
COMMON_QUEUE_SIZE = 0x18
COMMON_QUEUE_ENABLE = 0x1C
COMMON_QUEUE_NOTIFY_OFF = 0x1E
COMMON_QUEUE_DESC = 0x20
COMMON_QUEUE_DRIVER = 0x28
COMMON_QUEUE_DEVICE = 0x30

# struct virtio_net_config offsets
NET_CONFIG_MAC = 0
NET_CONFIG_MAX_VIRTQUEUE_PAIRS = 8

QTEST_DRIVER_UNSUPPORTED = (
    VirtioFeature.VIRTIO_F_RING_PACKED
    | VirtioFeature.VIRTIO_F_NOTIFICATION_DATA
    | VirtioFeature.VIRTIO_F_RING_RESET
    | VirtioFeature.VIRTIO_F_ADMIN_VQ
    | VirtioFeature.VIRTIO_F_SR_IOV
    | VirtioFeature.VIRTIO_F_ACCESS_PLATFORM
)
"""Features the qtest driver never acks by default; see the module docstring."""

DEFAULT_MMIO_BASE = 0xE000_0000  # inside q35's 32-bit PCI hole, above MMCONFIG
DEFAULT_RING_BASE = 0x0010_0000  # 1 MiB: guest RAM above the legacy BIOS area
RESET_TIMEOUT = 2.0
TRANSMIT_TIMEOUT = 10.0
# A scratch guest buffer for transmitted frames: far above the rings, inside
# the lab's smallest useful guest RAM (64 MiB + a page).
TRANSMIT_BUFFER = 0x0400_0000
# struct virtio_net_hdr_v1 (VIRTIO_F_VERSION_1): 12 bytes, no offload requested.
VIRTIO_NET_HDR_V1 = bytes(12)
TX_QUEUE = 1


def default_wanted(offered: VirtioFeature) -> VirtioFeature:
    """What the driver acks when the caller names nothing: all it can honour."""
    return offered & ~QTEST_DRIVER_UNSUPPORTED


@dataclasses.dataclass(frozen=True)
class Negotiation:
    """What the driver saw and did; features as :class:`VirtioFeature` values."""

    pci: PciAddress
    offered: VirtioFeature
    acked: VirtioFeature
    mac: str
    max_queue_pairs: int
    queue_pairs: int
    rings: tuple[SplitRingLayout, ...]
    control_ring: SplitRingLayout | None

    def __str__(self) -> str:
        return (f"virtio-net at {self.pci}: offered {format_mask(self.offered, VirtioFeature)}, "
                f"acked {format_mask(self.acked, VirtioFeature)}, {self.queue_pairs} queue pair(s)")


class VirtioNetPciDriver:
    """A modern (virtio 1.x) virtio-net PCI driver speaking through qtest.

    It brings the device up to DRIVER_OK (:meth:`initialise`), which is
    enough for QEMU to start vhost; :meth:`transmit` posts one frame and
    kicks a TX ring, and :meth:`attach` adopts a device already brought up
    (on a migration's destination), to show the device still runs there.
    """

    def __init__(self, qtest: QtestClient, *, mmio_base: int = DEFAULT_MMIO_BASE,
                 ring_base: int = DEFAULT_RING_BASE) -> None:
        self.qtest = qtest
        self._mmio_next = mmio_base
        self._ring_next = ring_base
        self._bars: dict[int, int] = {}
        self._caps: dict[int, VirtioCapability] = {}

    # PCI configuration space through CONFIG_ADDRESS / CONFIG_DATA
    async def config_read(self, pci: PciAddress, offset: int, size: int) -> int:
        await self.qtest.outl(PCI_CONFIG_ADDRESS_PORT, pci.config_address(offset))
        port = PCI_CONFIG_DATA_PORT + (offset & 3)
        if size == 1:
            return await self.qtest.inb(port)
        if size == 2:
            return await self.qtest.inw(port)
        return await self.qtest.inl(port)

    async def config_write(self, pci: PciAddress, offset: int, size: int, value: int) -> None:
        await self.qtest.outl(PCI_CONFIG_ADDRESS_PORT, pci.config_address(offset))
        port = PCI_CONFIG_DATA_PORT + (offset & 3)
        if size == 1:
            await self.qtest.outb(port, value)
        elif size == 2:
            await self.qtest.outw(port, value)
        else:
            await self.qtest.outl(port, value)

    async def find_devices(self, bus: int = 0) -> list[PciAddress]:
        """Every virtio-net function on ``bus`` (function 0 of each slot)."""
        found = []
        for slot in range(PCI_SLOTS):
            pci = PciAddress(bus, slot)
            vendor = await self.config_read(pci, PCI_VENDOR_ID, 2)
            if vendor != VIRTIO_PCI_VENDOR:
                continue
            device = await self.config_read(pci, PCI_DEVICE_ID, 2)
            if device == VIRTIO_NET_MODERN_DEVICE_ID or (
                    device == VIRTIO_TRANSITIONAL_NET_DEVICE_ID
                    and await self.config_read(pci, PCI_SUBSYSTEM_ID, 2) == VIRTIO_ID_NET):
                found.append(pci)
        return found

    async def read_capabilities(self, pci: PciAddress) -> dict[int, VirtioCapability]:
        """The first virtio capability of each type, by cfg_type."""
        status = await self.config_read(pci, PCI_STATUS, 2)
        if not status & PCI_STATUS_CAP_LIST:
            raise VirtioDriverError("capabilities", f"{pci} has no capability list")
        caps: dict[int, VirtioCapability] = {}
        pointer = await self.config_read(pci, PCI_CAPABILITY_LIST, 1) & 0xFC
        seen: set[int] = set()
        while pointer and pointer not in seen:
            seen.add(pointer)
            cap_id = await self.config_read(pci, pointer, 1)
            next_pointer = await self.config_read(pci, pointer + 1, 1) & 0xFC
            if cap_id == PCI_CAP_ID_VENDOR:
                raw = b"".join([
                    struct.pack("<I", await self.config_read(pci, pointer + index, 4))
                    for index in range(0, VIRTIO_NOTIFY_CAP_LENGTH, 4)])
                cap = parse_virtio_capability(raw)
                # PCI_CFG is an access window, not a BAR region; the spec
                # lets a driver skip types it does not use.
                if cap.cfg_type in _REGION_CAP_TYPES:
                    caps.setdefault(cap.cfg_type, cap)
            pointer = next_pointer
        for needed in sorted(_REGION_CAP_TYPES):
            if needed not in caps:
                raise VirtioDriverError("capabilities", f"{pci} lacks the {needed.name} capability")
        return caps

    async def assign_bars(self, pci: PciAddress, indexes: Iterable[int]) -> dict[int, int]:
        """Size and place the memory BARs ``indexes``; enable MEM and bus master."""
        bars: dict[int, int] = {}
        for index in sorted(set(indexes)):
            offset = PCI_BAR0 + 4 * index
            original = await self.config_read(pci, offset, 4)
            if original & PCI_BAR_IO:
                raise VirtioDriverError("BARs", f"BAR{index} of {pci} is an I/O BAR")
            is_64 = bool(original & PCI_BAR_MEM_TYPE_64)
            await self.config_write(pci, offset, 4, 0xFFFFFFFF)
            low = await self.config_read(pci, offset, 4)
            high = None
            if is_64:
                await self.config_write(pci, offset + 4, 4, 0xFFFFFFFF)
                high = await self.config_read(pci, offset + 4, 4)
            size = bar_size(low, high)
            if size == 0:
                raise VirtioDriverError("BARs", f"BAR{index} of {pci} is not implemented")
            address = align_up(self._mmio_next, size)
            self._mmio_next = address + size
            await self.config_write(pci, offset, 4, address & 0xFFFFFFFF)
            if is_64:
                await self.config_write(pci, offset + 4, 4, address >> 32)
            bars[index] = address
        command = await self.config_read(pci, PCI_COMMAND, 2)
        await self.config_write(pci, PCI_COMMAND, 2,
                                command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        return bars

    def _address(self, cfg_type: int, offset: int) -> int:
        cap = self._caps[cfg_type]
        return self._bars[cap.bar] + cap.offset + offset

    def _common(self, offset: int) -> int:
        return self._address(VirtioPciCapType.COMMON_CFG, offset)

    async def device_status(self) -> DeviceStatus:
        return DeviceStatus(await self.qtest.readb(self._common(COMMON_DEVICE_STATUS)))

    async def _set_status(self, status: DeviceStatus) -> None:
        await self.qtest.writeb(self._common(COMMON_DEVICE_STATUS), int(status))

    async def reset(self) -> None:
        await self._set_status(DeviceStatus(0))
        # The spec lets a device take time to reset; the driver must see 0.
        await wait_until(self._is_reset, RESET_TIMEOUT, "the virtio device to reset")

    async def _is_reset(self) -> bool:
        return await self.device_status() == DeviceStatus(0)

    async def read_device_features(self) -> VirtioFeature:
        value = 0
        for select in (0, 1):
            await self.qtest.writel(self._common(COMMON_DEVICE_FEATURE_SELECT), select)
            value |= await self.qtest.readl(self._common(COMMON_DEVICE_FEATURE)) << (32 * select)
        return VirtioFeature(value)

    async def write_driver_features(self, features: VirtioFeature) -> None:
        for select in (0, 1):
            await self.qtest.writel(self._common(COMMON_DRIVER_FEATURE_SELECT), select)
            await self.qtest.writel(self._common(COMMON_DRIVER_FEATURE),
                                    int(features) >> (32 * select) & 0xFFFFFFFF)

    async def _write64(self, offset: int, value: int) -> None:
        # Two 32-bit halves: the common configuration is specified in
        # 32-bit fields, and QEMU splits 64-bit accesses differently by version.
        await self.qtest.writel(self._common(offset), value & 0xFFFFFFFF)
        await self.qtest.writel(self._common(offset + 4), value >> 32)

    async def setup_queue(self, index: int, queue_size: int | None) -> SplitRingLayout:
        """Select queue ``index``, size it, place its split ring and enable it."""
        await self.qtest.writew(self._common(COMMON_QUEUE_SELECT), index)
        maximum = await self.qtest.readw(self._common(COMMON_QUEUE_SIZE))
        if maximum == 0:
            raise VirtioDriverError("queues", f"queue {index} does not exist")
        size = maximum if queue_size is None else queue_size
        if size > maximum:
            raise VirtioDriverError("queues",
                                    f"queue {index}: size {size} exceeds the device's {maximum}")
        layout = SplitRingLayout.place(self._ring_next, size)
        self._ring_next = layout.end
        await self.qtest.memset(layout.desc, layout.end - layout.desc, 0)
        await self.qtest.writew(self._common(COMMON_QUEUE_SIZE), size)
        await self._write64(COMMON_QUEUE_DESC, layout.desc)
        await self._write64(COMMON_QUEUE_DRIVER, layout.avail)
        await self._write64(COMMON_QUEUE_DEVICE, layout.used)
        await self.qtest.writew(self._common(COMMON_QUEUE_ENABLE), 1)
        return layout

    async def read_bars(self, pci: PciAddress, indexes: Iterable[int]) -> dict[int, int]:
        """The addresses already programmed in memory BARs ``indexes`` (a device
        set up before, e.g. by the source's driver before a migration)."""
        bars: dict[int, int] = {}
        for index in sorted(set(indexes)):
            offset = PCI_BAR0 + 4 * index
            low = await self.config_read(pci, offset, 4)
            address = low & PCI_BAR_MEM_MASK
            if low & PCI_BAR_MEM_TYPE_64:
                address |= await self.config_read(pci, offset + 4, 4) << 32
            if address == 0:
                raise VirtioDriverError("BARs", f"BAR{index} of {pci} is not programmed")
            bars[index] = address
        return bars

    async def attach(self, pci: PciAddress | None = None) -> DeviceStatus:
        """Adopt a device a driver already brought up (its BARs and rings as they
        are, as a migrated guest finds them); return its status."""
        pci = await self._only_device() if pci is None else pci
        self._caps = await self.read_capabilities(pci)
        self._bars = await self.read_bars(pci, (cap.bar for cap in self._caps.values()))
        return await self.device_status()

    async def _only_device(self) -> PciAddress:
        devices = await self.find_devices()
        if len(devices) != 1:
            raise VirtioDriverError("discovery",
                                    f"expected one virtio-net on bus 0, found {len(devices)}")
        return devices[0]

    async def _read64(self, offset: int) -> int:
        low = await self.qtest.readl(self._common(offset))
        return low | await self.qtest.readl(self._common(offset + 4)) << 32

    async def transmit(self, frame: bytes, queue: int = TX_QUEUE,
                       timeout: float = TRANSMIT_TIMEOUT) -> int:
        """Post one frame on TX ``queue``, kick it, and wait (bounded) until the
        device returns the buffer in the used ring; return the new used index.

        Works on a device brought up here or adopted with :meth:`attach`: the
        ring addresses are read back from the device.
        """
        await self.qtest.writew(self._common(COMMON_QUEUE_SELECT), queue)
        size = await self.qtest.readw(self._common(COMMON_QUEUE_SIZE))
        if not await self.qtest.readw(self._common(COMMON_QUEUE_ENABLE)):
            raise VirtioDriverError("transmit", f"queue {queue} is not enabled")
        desc = await self._read64(COMMON_QUEUE_DESC)
        avail = await self._read64(COMMON_QUEUE_DRIVER)
        used = await self._read64(COMMON_QUEUE_DEVICE)
        notify_off = await self.qtest.readw(self._common(COMMON_QUEUE_NOTIFY_OFF))
        avail_index = await self.qtest.readw(avail + 2)
        used_before = await self.qtest.readw(used + 2)
        packet = VIRTIO_NET_HDR_V1 + frame
        await self.qtest.write(TRANSMIT_BUFFER, packet)
        head = avail_index % size
        # One device-readable descriptor: addr le64, len le32, flags le16, next le16.
        await self.qtest.write(desc + DESC_SIZE * head,
                               struct.pack("<QIHH", TRANSMIT_BUFFER, len(packet), 0, 0))
        await self.qtest.writew(avail + 4 + 2 * head, head)
        await self.qtest.writew(avail + 2, (avail_index + 1) & 0xFFFF)
        notify = self._caps[VirtioPciCapType.NOTIFY_CFG]
        await self.qtest.writew(
            self._bars[notify.bar] + notify.offset + notify_off * notify.notify_off_multiplier,
            queue)
        wanted = (used_before + 1) & 0xFFFF

        async def returned() -> bool:
            return await self.qtest.readw(used + 2) == wanted

        await wait_until(returned, timeout, f"the device to return TX buffer {head}")
        return wanted

    async def read_mac(self) -> str:
        data = await self.qtest.read(self._address(VirtioPciCapType.DEVICE_CFG, NET_CONFIG_MAC), 6)
        return ":".join(f"{byte:02x}" for byte in data)

    async def initialise(self, wanted: VirtioFeature | None = None, *,
                         queue_pairs: int | None = None, queue_size: int | None = None,
                         pci: PciAddress | None = None) -> Negotiation:
        """Bring a virtio-net device up to DRIVER_OK; return what was negotiated.

        ``wanted``: the features to ack, intersected with what the device
        offers (default :func:`default_wanted`). VIRTIO_F_VERSION_1 must be
        among them (a modern driver must accept it), else VirtioDriverError.
        ``queue_pairs``: how many pairs to set up (default: all the device has
        when MQ is acked, else 1). ``queue_size``: entries per ring (default:
        the device's maximum, i.e. QEMU's rx/tx_queue_size).
        ``pci``: which device (default: the only virtio-net on bus 0).
        """
        if pci is None:
            pci = await self._only_device()
        self._caps = await self.read_capabilities(pci)
        self._bars = await self.assign_bars(pci, (cap.bar for cap in self._caps.values()))

        await self.reset()
        status = DeviceStatus.ACKNOWLEDGE
        await self._set_status(status)
        status |= DeviceStatus.DRIVER
        await self._set_status(status)

        offered = await self.read_device_features()
        acked = offered & (default_wanted(offered) if wanted is None else wanted)
        if VirtioFeature.VIRTIO_F_VERSION_1 not in acked:
            # The spec obliges a driver of a modern device to accept it; QEMU
            # would not even check, and the device would run in legacy mode.
            await self._set_status(status | DeviceStatus.FAILED)
            raise VirtioDriverError("features", "VIRTIO_F_VERSION_1 is not among the features"
                                    f" to ack {format_mask(acked, VirtioFeature)}")
        await self.write_driver_features(acked)
        status |= DeviceStatus.FEATURES_OK
        await self._set_status(status)
        if not await self.device_status() & DeviceStatus.FEATURES_OK:
            await self._set_status(status | DeviceStatus.FAILED)
            raise VirtioDriverError(
                "FEATURES_OK", f"device refused features {format_mask(acked, VirtioFeature)}")

        max_pairs = 1
        if acked & VirtioFeature.VIRTIO_NET_F_MQ:
            max_pairs = await self.qtest.readw(
                self._address(VirtioPciCapType.DEVICE_CFG, NET_CONFIG_MAX_VIRTQUEUE_PAIRS))
        pairs = max_pairs if queue_pairs is None else queue_pairs
        if not 1 <= pairs <= max_pairs:
            raise VirtioDriverError("queues",
                                    f"{pairs} queue pairs asked, the device allows {max_pairs}"
                                    " with the acked features")
        rings = tuple([await self.setup_queue(index, queue_size) for index in range(2 * pairs)])
        control = None
        if acked & VirtioFeature.VIRTIO_NET_F_CTRL_VQ:
            # The control queue is the device's last one (index 2N with MQ, else 2).
            num_queues = await self.qtest.readw(self._common(COMMON_NUM_QUEUES))
            control = await self.setup_queue(num_queues - 1, None)

        status |= DeviceStatus.DRIVER_OK
        await self._set_status(status)
        final = await self.device_status()
        if final & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED) or not (
                final & DeviceStatus.DRIVER_OK):
            raise VirtioDriverError("DRIVER_OK", f"device status is {final!r}")
        negotiation = Negotiation(pci, offered, acked, await self.read_mac(), max_pairs, pairs,
                                  rings, control)
        logger.debug("%s", negotiation)
        return negotiation
