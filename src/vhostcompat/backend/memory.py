"""Guest memory as the frontend shares it: mapped regions, translation, dirty log.

SET_MEM_TABLE (or ADD_MEM_REG) gives, per region, a guest physical address,
a size, the frontend's user address for it, and an fd with an offset into
it. :class:`GuestMemory` maps those fds (shared, read-write) and translates
guest physical addresses (descriptor buffers) and frontend user addresses
(SET_VRING_ADDR ring addresses) to places in the mappings. Every
translation checks that the whole range lies inside one region: a peer's
address is never trusted, and an access that would leave a region is
refused with :class:`GuestMemoryError`, never performed.

A table is checked before anything is mapped (each fd must be at least
``mmap_offset + memory_size`` bytes long, user ranges must not overlap; the
session already refused overlapping guest ranges) and mapped all or
nothing.

A size checked once is only worth something if it cannot change: a
frontend that shrinks its file (``ftruncate``) after the check would make
the next access to the mapping fault (SIGBUS), killing the process and
every connection it serves. So every memory fd, and the dirty log's, must
be a memfd sealed against shrinking (``F_SEAL_SHRINK``, read with
``F_GET_SEALS``), and the size is checked after the seal is seen. QEMU's
``memory-backend-memfd`` seals ``F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL``
by default (``seal=on``; seen with QEMU 7.2 and 10.0), as does its dirty
log. A file-backed region (``memory-backend-file``, hugetlbfs files)
cannot be sealed and is refused with that reason.

:class:`DirtyLog` is the migration log of SET_LOG_BASE: a bitmap with one
bit per 4 KiB guest page (bit ``page % 8`` of byte ``page // 8``, as QEMU's
vhost code reads it). Whatever the backend writes into guest memory while
VHOST_F_LOG_ALL is acked is marked there, so QEMU copies those pages again.
A plain read-modify-write of a byte is enough: the backend is the only
writer, and QEMU collects bits by atomically exchanging whole words with 0,
so a race can only re-mark pages already collected (a harmless extra copy),
never lose one.

Mappings are only touched through slicing and ``struct.pack_into`` /
``unpack_from``, never through memoryviews kept around, so closing them can
never fail for an export still alive.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import mmap
import os
import struct
from collections.abc import Iterator, Sequence

from vhostcompat.errors import RemoteProtocolError
from vhostcompat.vhostuser.payloads import LogDescription, MemoryRegion

PAGE_SIZE = mmap.PAGESIZE
# VHOST_LOG_PAGE: the dirty log's granularity, fixed by the protocol.
LOG_PAGE_SIZE = 0x1000


class GuestMemoryError(RemoteProtocolError):
    """A memory table, log or address from the frontend that we refuse."""

    def __init__(self, reason: str, *, address: int | None = None,
                 length: int | None = None) -> None:
        self.reason = reason
        self.address = address
        self.length = length
        where = ""
        if address is not None:
            where = f"address {address:#x}"
            if length is not None:
                where += f" (+{length:#x} bytes)"
            where += ": "
        super().__init__(f"{where}{reason}")


def _fd_size(fd: int, what: str) -> int:
    """The size of a memory fd that can no longer shrink (see the module docstring)."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as error:
        raise GuestMemoryError(
            f"{what}: fd {fd} cannot be sealed ({error.strerror}): only a memfd sealed "
            "against shrinking (F_SEAL_SHRINK, QEMU's memory-backend-memfd default) is "
            "accepted") from None
    if not seals & fcntl.F_SEAL_SHRINK:
        raise GuestMemoryError(
            f"{what}: fd {fd} is not sealed against shrinking (F_SEAL_SHRINK; seals "
            f"{seals:#x}): a frontend could shrink it under the mapping")
    try:
        return os.fstat(fd).st_size
    except OSError as error:
        raise GuestMemoryError(f"{what}: fd {fd} unusable: {error.strerror}") from None


def _map(fd: int, offset: int, length: int, what: str) -> tuple[mmap.mmap, int]:
    """Map ``length`` bytes of ``fd`` from ``offset``; returns the map and the
    position of ``offset`` in it (mmap offsets must be page aligned)."""
    start = offset - offset % PAGE_SIZE
    skip = offset - start
    try:
        mapping = mmap.mmap(fd, skip + length, flags=mmap.MAP_SHARED,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    except (OSError, ValueError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise GuestMemoryError(f"{what}: cannot map fd {fd}: {reason}") from None
    return mapping, skip


@dataclasses.dataclass(eq=False)
class MappedRegion:
    """One guest memory region mapped in this process."""

    region: MemoryRegion
    mapping: mmap.mmap
    skip: int
    """Where the region starts in ``mapping`` (its mmap offset's in-page part)."""

    @property
    def user_end(self) -> int:
        return self.region.userspace_addr + self.region.memory_size

    def contains_guest(self, address: int, length: int) -> bool:
        start = self.region.guest_phys_addr
        return start <= address and address + length <= start + self.region.memory_size

    def contains_user(self, address: int, length: int) -> bool:
        start = self.region.userspace_addr
        return start <= address and address + length <= self.user_end

    def read(self, offset: int, length: int) -> bytes:
        position = self.skip + offset
        return self.mapping[position:position + length]

    def write(self, offset: int, data: bytes) -> None:
        position = self.skip + offset
        self.mapping[position:position + len(data)] = data

    def unpack(self, layout: struct.Struct, offset: int) -> tuple[int, ...]:
        return layout.unpack_from(self.mapping, self.skip + offset)

    def pack(self, layout: struct.Struct, offset: int, *values: int) -> None:
        layout.pack_into(self.mapping, self.skip + offset, *values)

    def close(self) -> None:
        self.mapping.close()


@dataclasses.dataclass(frozen=True)
class GuestRange:
    """A checked range of guest memory: a region and an offset in it."""

    region: MappedRegion
    offset: int
    length: int

    @property
    def guest_address(self) -> int:
        return self.region.region.guest_phys_addr + self.offset

    def read(self) -> bytes:
        return self.region.read(self.offset, self.length)

    def write(self, data: bytes) -> None:
        if len(data) != self.length:
            raise ValueError(f"{len(data)} bytes for a {self.length}-byte range")
        self.region.write(self.offset, data)

    def unpack(self, layout: struct.Struct, at: int = 0) -> tuple[int, ...]:
        self._check(layout, at)
        return self.region.unpack(layout, self.offset + at)

    def pack(self, layout: struct.Struct, at: int, *values: int) -> None:
        self._check(layout, at)
        self.region.pack(layout, self.offset + at, *values)

    def _check(self, layout: struct.Struct, at: int) -> None:
        # Our own programming error, not the peer's: the range was checked.
        if not 0 <= at <= self.length - layout.size:
            raise ValueError(f"{layout.size} bytes at {at} leave a {self.length}-byte range")


def _check_user_overlap(regions: Sequence[MemoryRegion]) -> None:
    ordered = sorted(regions, key=lambda region: region.userspace_addr)
    for before, after in itertools.pairwise(ordered):
        if before.userspace_addr + before.memory_size > after.userspace_addr:
            raise GuestMemoryError(f"memory regions {before} and {after} overlap in the "
                                   "frontend's address space")


class GuestMemory:
    """The guest memory regions of one connection, mapped."""

    def __init__(self) -> None:
        self._regions: list[MappedRegion] = []

    def __iter__(self) -> Iterator[MappedRegion]:
        return iter(self._regions)

    def __len__(self) -> int:
        return len(self._regions)

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(mapped.region for mapped in self._regions)

    @property
    def total_size(self) -> int:
        return sum(mapped.region.memory_size for mapped in self._regions)

    def set_table(self, regions: Sequence[MemoryRegion], fds: Sequence[int]) -> None:
        """Replace every region (SET_MEM_TABLE), all or nothing.

        The fds stay the caller's: mappings hold their own reference.
        """
        if len(regions) != len(fds):
            raise GuestMemoryError(f"{len(regions)} memory regions but {len(fds)} fds")
        _check_user_overlap(regions)
        mapped = self._map_all(list(zip(regions, fds, strict=True)))
        self.close()
        self._regions = mapped

    def add(self, region: MemoryRegion, fd: int) -> None:
        """Add one region (ADD_MEM_REG)."""
        _check_user_overlap([*self.regions, region])
        self._regions.extend(self._map_all([(region, fd)]))

    def remove(self, region: MemoryRegion) -> None:
        """Unmap the region with ``region``'s guest address, user address and size."""
        key = (region.guest_phys_addr, region.userspace_addr, region.memory_size)
        for mapped in self._regions:
            known = mapped.region
            if (known.guest_phys_addr, known.userspace_addr, known.memory_size) == key:
                self._regions.remove(mapped)
                mapped.close()
                return
        raise GuestMemoryError(f"no mapped memory region {region} to remove")

    @staticmethod
    def _map_all(pairs: Sequence[tuple[MemoryRegion, int]]) -> list[MappedRegion]:
        for number, (region, fd) in enumerate(pairs):
            what = f"memory region {number} {region}"
            size = _fd_size(fd, what)
            if region.mmap_offset + region.memory_size > size:
                raise GuestMemoryError(
                    f"{what} ends at offset {region.mmap_offset + region.memory_size:#x}, "
                    f"out of bounds of its fd ({size:#x} bytes)")
        mapped: list[MappedRegion] = []
        try:
            for number, (region, fd) in enumerate(pairs):
                mapping, skip = _map(fd, region.mmap_offset, region.memory_size,
                                     f"memory region {number}")
                mapped.append(MappedRegion(region, mapping, skip))
        except GuestMemoryError:
            for done in mapped:
                done.close()
            raise
        return mapped

    def guest(self, address: int, length: int) -> GuestRange:
        """The range of guest physical memory ``[address, address + length)``."""
        for mapped in self._regions:
            if mapped.contains_guest(address, length):
                return GuestRange(mapped, address - mapped.region.guest_phys_addr, length)
        raise GuestMemoryError("not inside one guest memory region"
                               + self._known(), address=address, length=length)

    def user(self, address: int, length: int) -> GuestRange:
        """The range the frontend sees at its user address ``address``."""
        for mapped in self._regions:
            if mapped.contains_user(address, length):
                return GuestRange(mapped, address - mapped.region.userspace_addr, length)
        raise GuestMemoryError("not inside one memory region of the frontend's address "
                               "space" + self._known(), address=address, length=length)

    def _known(self) -> str:
        if not self._regions:
            return " (no memory table yet)"
        return ""

    def close(self) -> None:
        """Unmap every region."""
        regions, self._regions = self._regions, []
        for mapped in regions:
            mapped.close()


class DirtyLog:
    """The dirty page bitmap shared by SET_LOG_BASE, mapped."""

    def __init__(self, fd: int, description: LogDescription) -> None:
        if description.mmap_size == 0:
            raise GuestMemoryError("dirty log of size 0")
        size = _fd_size(fd, "dirty log")
        end = description.mmap_offset + description.mmap_size
        if end > size:
            raise GuestMemoryError(f"dirty log ends at offset {end:#x}, out of bounds of its "
                                   f"fd ({size:#x} bytes)")
        self.description = description
        self._mapping, self._skip = _map(fd, description.mmap_offset, description.mmap_size,
                                         "dirty log")
        self.pages_marked = 0
        self.pages_beyond = 0

    @property
    def size(self) -> int:
        return self.description.mmap_size

    @property
    def covered(self) -> int:
        """Guest physical bytes the bitmap covers."""
        return self.size * 8 * LOG_PAGE_SIZE

    def mark(self, guest_address: int, length: int) -> None:
        """Mark the pages of ``[guest_address, guest_address + length)`` dirty."""
        if length <= 0:
            return
        first = guest_address // LOG_PAGE_SIZE
        last = (guest_address + length - 1) // LOG_PAGE_SIZE
        for page in range(first, last + 1):
            byte = page // 8
            if byte >= self.size:
                # QEMU sizes the log for all guest memory: a page beyond it
                # is one QEMU does not migrate; count it instead of writing.
                self.pages_beyond += 1
                continue
            position = self._skip + byte
            self._mapping[position] |= 1 << (page % 8)
            self.pages_marked += 1

    def is_marked(self, guest_address: int) -> bool:
        page = guest_address // LOG_PAGE_SIZE
        byte = page // 8
        return byte < self.size and bool(self._mapping[self._skip + byte] >> (page % 8) & 1)

    def close(self) -> None:
        self._mapping.close()
