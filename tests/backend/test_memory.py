"""Guest memory: mapping, bounds-checked translation, the dirty log."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from tests.backend.helpers import USER_BASE, FakeGuest, memfd
from tests.helpers import open_fd_count
from vhostcompat.backend.memory import LOG_PAGE_SIZE, DirtyLog, GuestMemory, GuestMemoryError
from vhostcompat.vhostuser import LogDescription, MemoryRegion

MIB = 1 << 20


@pytest.fixture
def guest() -> Iterator[FakeGuest]:
    fake = FakeGuest(2 * MIB)
    yield fake
    fake.close()


def test_translation_reads_and_writes_the_shared_pages(guest: FakeGuest) -> None:
    memory = GuestMemory()
    # Two regions of one memfd, the second at a guest hole, as QEMU sends them.
    regions = [MemoryRegion(0x0, MIB, USER_BASE, 0),
               MemoryRegion(0x1000_0000, MIB, USER_BASE + MIB, MIB)]
    memory.set_table(regions, [guest.fd, guest.fd])
    guest.memory[0x10:0x15] = b"hello"
    assert memory.guest(0x10, 5).read() == b"hello"
    assert memory.user(USER_BASE + 0x10, 5).read() == b"hello"
    memory.guest(0x1000_0000 + 8, 3).write(b"abc")
    assert guest.memory[MIB + 8:MIB + 11] == b"abc"
    assert memory.user(USER_BASE + MIB + 8, 3).guest_address == 0x1000_0008
    value = struct.Struct("<H")
    memory.guest(0x20, 2).pack(value, 0, 0xBEEF)
    assert memory.guest(0x20, 2).unpack(value) == (0xBEEF,)
    assert memory.total_size == 2 * MIB
    memory.close()
    assert len(memory) == 0


@pytest.mark.parametrize(("address", "length"), [
    (MIB - 4, 8),          # runs off the end of region 0
    (MIB, 1),              # the hole between the regions
    (0x1000_0000 - 1, 2),  # starts in the hole
    (0x1000_0000 + MIB, 1),
    (2**64 - 1, 2),        # wraps the address space
])
def test_every_translation_is_bounds_checked(guest: FakeGuest, address: int,
                                             length: int) -> None:
    memory = GuestMemory()
    memory.set_table([MemoryRegion(0x0, MIB, USER_BASE, 0),
                      MemoryRegion(0x1000_0000, MIB, USER_BASE + 2 * MIB, MIB)],
                     [guest.fd, guest.fd])
    with pytest.raises(GuestMemoryError, match=f"address {address:#x}"):
        memory.guest(address, length)
    with pytest.raises(GuestMemoryError, match="frontend's address space"):
        memory.user(USER_BASE + MIB - 1, 2)
    memory.close()


def test_a_region_beyond_its_fd_is_refused_and_nothing_is_mapped(guest: FakeGuest) -> None:
    memory = GuestMemory()
    memory.set_table([guest.region(MIB)], [guest.fd])
    good = memory.regions
    with pytest.raises(GuestMemoryError, match="out of bounds of its fd"):
        memory.set_table([MemoryRegion(0, MIB, USER_BASE, 0),
                          MemoryRegion(MIB, MIB, USER_BASE + MIB, 1536 * 1024)],
                         [guest.fd, guest.fd])
    # All or nothing: the previous table is still in force.
    assert memory.regions == good
    memory.close()


def test_overlapping_user_ranges_and_unmappable_fds_are_refused(guest: FakeGuest) -> None:
    memory = GuestMemory()
    with pytest.raises(GuestMemoryError, match="overlap in the frontend's address space"):
        memory.set_table([MemoryRegion(0, MIB, USER_BASE, 0),
                          MemoryRegion(MIB, MIB, USER_BASE + MIB - 4096, MIB)],
                         [guest.fd, guest.fd])
    read_end, write_end = os.pipe()
    with pytest.raises(GuestMemoryError, match="cannot be sealed"):
        memory.set_table([MemoryRegion(0, 4096, USER_BASE, 0)], [read_end])
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(GuestMemoryError, match="2 memory regions but 1 fds"):
        memory.set_table([guest.region(MIB), guest.region(MIB, guest=MIB)], [guest.fd])
    assert len(memory) == 0


def test_add_and_remove_single_regions(guest: FakeGuest) -> None:
    memory = GuestMemory()
    first = MemoryRegion(0, MIB, USER_BASE, 0)
    second = MemoryRegion(4 * MIB, MIB, USER_BASE + 4 * MIB, MIB)
    memory.add(first, guest.fd)
    memory.add(second, guest.fd)
    assert memory.guest(4 * MIB, 16).region.region == second
    memory.remove(first)
    with pytest.raises(GuestMemoryError):
        memory.guest(0, 1)
    with pytest.raises(GuestMemoryError, match="no mapped memory region"):
        memory.remove(first)
    memory.close()


def test_mappings_hold_no_fd_of_ours(guest: FakeGuest) -> None:
    before = open_fd_count()
    memory = GuestMemory()
    copy = guest.fd_copy()
    memory.set_table([guest.region(MIB)], [copy])
    os.close(copy)  # the sender's copy is the caller's to close
    assert memory.guest(0, 4).read() == bytes(4)
    memory.close()
    assert open_fd_count() == before


def test_dirty_log_marks_one_bit_per_4k_page() -> None:
    fd = memfd(4096)
    log = DirtyLog(fd, LogDescription(mmap_size=64, mmap_offset=0))
    log.mark(0x3000, 1)                      # page 3: byte 0, bit 3
    log.mark(9 * LOG_PAGE_SIZE - 2, 4)       # pages 8 and 9: byte 1, bits 0 and 1
    log.mark(0x5000, 0)                      # nothing
    with open(f"/proc/self/fd/{fd}", "rb") as shared:
        bitmap = shared.read(4)
    assert bitmap == bytes([0b0000_1000, 0b0000_0011, 0, 0])
    assert log.is_marked(0x3FFF) and not log.is_marked(0x4000)
    assert log.covered == 64 * 8 * LOG_PAGE_SIZE
    # Beyond what the log covers: counted, never written.
    log.mark(log.covered, 1)
    assert log.pages_beyond == 1 and log.pages_marked == 3
    log.close()
    os.close(fd)


def test_dirty_log_respects_its_offset_and_bounds() -> None:
    fd = memfd(3 * 4096)
    log = DirtyLog(fd, LogDescription(mmap_size=16, mmap_offset=4096 + 8))
    log.mark(0, 1)
    with open(f"/proc/self/fd/{fd}", "rb") as shared:
        data = shared.read()
    assert data[4096 + 8] == 1 and data.count(0) == len(data) - 1
    log.close()
    with pytest.raises(GuestMemoryError, match="out of bounds of its fd"):
        DirtyLog(fd, LogDescription(mmap_size=4096, mmap_offset=3 * 4096 - 8))
    with pytest.raises(GuestMemoryError, match="size 0"):
        DirtyLog(fd, LogDescription(mmap_size=0, mmap_offset=0))
    os.close(fd)
