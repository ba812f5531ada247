"""qtest protocol client and the pure parts of the virtio-pci driver."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import run_bounded
from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import LabTimeoutError, QtestError, VirtioDriverError
from vhostcompat.lab.qtest import (
    QTEST_DRIVER_UNSUPPORTED,
    RING_ALIGN,
    PciAddress,
    QtestClient,
    SplitRingLayout,
    VirtioPciCapType,
    bar_size,
    default_wanted,
    parse_int_reply,
    parse_reply,
    parse_virtio_capability,
    qtest_listener,
)

# --- replies ------------------------------------------------------------------


def test_ok_replies_give_their_words() -> None:
    assert parse_reply("outl 0xcf8 0x0", "OK") == []
    assert parse_reply("read 0x0 0x2", "OK 0xabcd") == ["0xabcd"]
    assert parse_int_reply("inl 0xcfc", "OK 0x10411af4") == 0x10411AF4


@pytest.mark.parametrize("reply", ["FAIL Unknown command 'bogus'", "ERR", "", "OKAY"])
def test_other_replies_are_errors_naming_the_command(reply: str) -> None:
    with pytest.raises(QtestError) as caught:
        parse_reply("bogus 1", reply)
    assert caught.value.command == "bogus 1"
    assert caught.value.reply == reply


@pytest.mark.parametrize("reply", ["OK", "OK 0x1 0x2", "OK nothex"])
def test_integer_replies_must_hold_one_number(reply: str) -> None:
    with pytest.raises(QtestError):
        parse_int_reply("inl 0xcfc", reply)


# --- the client against a scripted peer ----------------------------------------

Script = Callable[[str], list[str]]


@contextlib.asynccontextmanager
async def scripted_peer(script: Script, timeout: float = 2.0) -> AsyncIterator[QtestClient]:
    """A QtestClient whose peer answers each command line with script(line)."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    peer_reader, peer_writer = await asyncio.open_connection(sock=theirs)
    received: list[str] = []

    async def serve() -> None:
        while line := await peer_reader.readline():
            received.append(line.decode().strip())
            for reply in script(received[-1]):
                peer_writer.write(reply.encode() + b"\n")
            await peer_writer.drain()

    task = asyncio.create_task(serve())
    client = QtestClient(reader, writer, timeout=timeout)
    try:
        yield client
    finally:
        await client.close()
        peer_writer.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    return run_bounded(coroutine, timeout)


def test_commands_are_formatted_in_hex_and_irq_lines_skipped() -> None:
    seen: list[str] = []

    def script(line: str) -> list[str]:
        seen.append(line)
        if line.startswith("inl"):
            return ["IRQ raise 11", "OK 0x10411af4"]
        if line.startswith("read "):
            return ["OK 0x525400123456"]
        return ["OK"]

    async def scenario() -> None:
        async with scripted_peer(script) as client:
            await client.outl(0xCF8, 0x80000800)
            assert await client.inl(0xCFC) == 0x10411AF4
            await client.writew(0xE0000016, 2)
            await client.write(0x100000, b"\x01\x02")
            assert await client.read(0xE0003000, 6) == bytes.fromhex("525400123456")
            await client.memset(0x100000, 0x1000, 0)

    run(scenario())
    assert seen == [
        "outl 0xcf8 0x80000800",
        "inl 0xcfc",
        "writew 0xe0000016 0x2",
        "write 0x100000 0x2 0x0102",
        "read 0xe0003000 0x6",
        "memset 0x100000 0x1000 0x0",
    ]


def test_a_refused_command_raises() -> None:
    async def scenario() -> None:
        async with scripted_peer(lambda line: ["FAIL"]) as client:
            with pytest.raises(QtestError) as caught:
                await client.readl(0x0)
            assert caught.value.command == "readl 0x0"

    run(scenario())


def test_a_short_read_is_refused() -> None:
    async def scenario() -> None:
        async with scripted_peer(lambda line: ["OK 0x0102"]) as client:
            with pytest.raises(QtestError):
                await client.read(0x0, 4)

    run(scenario())


def test_a_silent_peer_times_out() -> None:
    async def scenario() -> None:
        async with scripted_peer(lambda line: [], timeout=0.2) as client:
            with pytest.raises(QtestError) as caught:
                await client.inb(0x80)
            assert "no reply" in caught.value.reply

    run(scenario())


def test_a_closed_connection_raises() -> None:
    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        theirs.close()
        client = QtestClient(reader, writer, timeout=2)
        with pytest.raises(QtestError):
            await client.inb(0x80)
        await client.close()

    run(scenario())



def test_listener_accepts_the_first_peer(short_dir: Path) -> None:
    async def scenario() -> None:
        path = short_dir / "q.qtest"
        async with qtest_listener(path) as listener:
            _reader, writer = await asyncio.open_unix_connection(str(path))
            client = await listener.accept(5)
            writer.write(b"OK 0x7\n")
            await writer.drain()
            # The listener's client reads what the peer (playing QEMU) wrote.
            assert await client._reader.readline() == b"OK 0x7\n"
            await client.close()
            writer.close()
        assert not path.exists()

    run(scenario())


def test_listener_gives_up_when_nobody_connects(short_dir: Path) -> None:
    async def scenario() -> None:
        async with qtest_listener(short_dir / "q.qtest") as listener:
            with pytest.raises(LabTimeoutError):
                await listener.accept(0.2)

    run(scenario())


# --- PCI and virtio structures ------------------------------------------------


def test_config_address_encodes_bus_slot_function_and_dword() -> None:
    assert PciAddress(0, 1).config_address(0x00) == 0x80000800
    assert PciAddress(0, 1).config_address(0x06) == 0x80000804
    assert PciAddress(2, 31, 7).config_address(0xFF) == (
        0x80000000 | 2 << 16 | 31 << 11 | 7 << 8 | 0xFC)
    assert str(PciAddress(0, 3)) == "00:03.0"


def test_impossible_pci_addresses_are_refused() -> None:
    with pytest.raises(VirtioDriverError):
        PciAddress(0, 32)


def capability(cfg_type: int, bar: int, offset: int, length: int,
               multiplier: int | None = None) -> bytes:
    cap_len = 16 if multiplier is None else 20
    raw = struct.pack("<BBBBBBBBII", 0x09, 0x50, cap_len, cfg_type, bar, 0, 0, 0, offset, length)
    return raw if multiplier is None else raw + struct.pack("<I", multiplier)


def test_virtio_capabilities_decode() -> None:
    common = parse_virtio_capability(capability(1, 4, 0x0, 0x1000) + b"\0" * 4)
    assert (common.cfg_type, common.bar, common.offset, common.length) == (1, 4, 0, 0x1000)
    assert common.cfg_type == VirtioPciCapType.COMMON_CFG
    notify = parse_virtio_capability(capability(2, 4, 0x3000, 0x1000, multiplier=4))
    assert notify.notify_off_multiplier == 4
    assert notify.offset == 0x3000


def test_broken_capabilities_are_refused() -> None:
    with pytest.raises(VirtioDriverError):
        parse_virtio_capability(capability(1, 4, 0, 0x1000)[:12])
    with pytest.raises(VirtioDriverError):
        parse_virtio_capability(b"\x05" + capability(1, 4, 0, 0x1000)[1:])
    with pytest.raises(VirtioDriverError):
        parse_virtio_capability(capability(2, 4, 0, 0x1000) + b"\0" * 4)  # cap_len 16


def test_bar_sizes_from_the_all_ones_readback() -> None:
    assert bar_size(0xFFFFC00C, 0xFFFFFFFF) == 0x4000  # 64-bit prefetchable 16 KiB
    assert bar_size(0xFFFFF000) == 0x1000  # 32-bit 4 KiB
    assert bar_size(0x0000000C, 0xFFFFFFF0) == 0x10 << 32  # 64 GiB
    assert bar_size(0) == 0


@pytest.mark.parametrize("size", [64, 256, 1024, 32768])
def test_split_ring_parts_are_aligned_and_do_not_overlap(size: int) -> None:
    ring = SplitRingLayout.place(0x100001, size)
    assert ring.size == size
    for address in (ring.desc, ring.avail, ring.used, ring.end):
        assert address % RING_ALIGN == 0
    assert ring.desc >= 0x100001
    assert ring.avail >= ring.desc + 16 * size
    assert ring.used >= ring.avail + 6 + 2 * size
    assert ring.end >= ring.used + 6 + 8 * size
    following = SplitRingLayout.place(ring.end, size)
    assert following.desc >= ring.end


@pytest.mark.parametrize("size", [0, 3, 100, 65536])
def test_split_ring_sizes_must_be_powers_of_two(size: int) -> None:
    with pytest.raises(VirtioDriverError):
        SplitRingLayout.place(0, size)


def test_default_wanted_drops_only_what_the_driver_cannot_honour() -> None:
    offered = (VirtioFeature.VIRTIO_F_VERSION_1 | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
               | VirtioFeature.VIRTIO_F_RING_PACKED | VirtioFeature.VIRTIO_NET_F_HOST_TSO4
               | VirtioFeature.VIRTIO_F_ACCESS_PLATFORM)
    wanted = default_wanted(offered)
    assert wanted == (VirtioFeature.VIRTIO_F_VERSION_1
                      | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
                      | VirtioFeature.VIRTIO_NET_F_HOST_TSO4)
    assert not wanted & QTEST_DRIVER_UNSUPPORTED
    assert VirtioFeature.VIRTIO_F_RING_PACKED in QTEST_DRIVER_UNSUPPORTED
