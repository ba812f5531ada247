"""The reference backend's data path: a sink that drains the guest's TX rings.

A vhost-user net device has an RX ring (even index: the device fills guest
buffers) and a TX ring (odd index: the guest hands packets to the device)
per queue pair. The reference backend has no network behind it: it never
fills RX buffers, and it takes every packet the guest transmits and drops
it, returning the buffer in the used ring and signalling the call eventfd.
That is enough for a guest driver to make progress, and it makes the state
a migration must carry real: the next available index (what GET_VRING_BASE
reports) moves, and the used ring writes are marked in the dirty log.

Split rings only (virtio 1.x, "Split Virtqueues"): descriptor table (16
bytes per entry), available ring (flags, idx, ring[num], used_event) and
used ring (flags, idx, ring[num] of id/len, avail_event), little endian.
Ring addresses are frontend user addresses, buffer addresses are guest
physical addresses; both are translated by :class:`GuestMemory`, which
refuses anything outside a region. A chain is walked for validation (head
index, loops, indirect tables, buffer bounds) without reading the packet.

Packed rings are never processed: the base index given by SET_VRING_BASE is
reported back unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from vhostcompat.backend.memory import DirtyLog, GuestMemory, GuestMemoryError, GuestRange
from vhostcompat.errors import RemoteProtocolError
from vhostcompat.features import VirtioFeature
from vhostcompat.transport import Log
from vhostcompat.vhostuser.payloads import VringAddressFlags
from vhostcompat.vhostuser.session import RingState

_U16 = struct.Struct("<H")
_DESCRIPTOR = struct.Struct("<QIHH")
_USED_ELEMENT = struct.Struct("<II")
_EVENTFD_VALUE = struct.Struct("=Q")
RING_HEADER = 4          # flags and idx, for both the available and the used ring
INDEX_MODULUS = 1 << 16  # ring indices are free-running u16


class DescriptorFlags(enum.IntFlag):
    NEXT = 1
    WRITE = 2
    INDIRECT = 4


class AvailableFlags(enum.IntFlag):
    NO_INTERRUPT = 1


class RingError(RemoteProtocolError):
    """A ring whose contents (written by the guest) we refuse to follow."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"ring {index}: {reason}")


def is_transmit_ring(index: int) -> bool:
    """Odd rings are TX (guest to device) in a virtio-net queue pair."""
    return index % 2 == 1


def need_event(event: int, new: int, old: int) -> bool:
    """virtio's vring_need_event: did ``new`` just pass the driver's event index?"""
    return (new - event - 1) % INDEX_MODULUS < (new - old) % INDEX_MODULUS


@dataclass(frozen=True)
class _Layout:
    """The three parts of a split ring, translated and bounds-checked."""

    descriptors: GuestRange
    available: GuestRange
    used: GuestRange
    num: int
    log_address: int | None
    """Guest address of the used ring for the dirty log (VHOST_VRING_F_LOG)."""


class Virtqueue:
    """The runtime side of one ring: its eventfds, indices and counters.

    What the frontend configured (size, addresses, enabled) stays in the
    session's :class:`RingState`, passed in on every call.
    """

    def __init__(self, index: int, log: Log) -> None:
        self.index = index
        self.log = log
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.last_avail = 0
        self.last_used = 0
        self.base_given: int | None = None
        self.buffers = 0
        self.bytes = 0
        self.notifications = 0
        self.broken: RingError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- fds ---------------------------------------------------------------------------

    def set_kick(self, fd: int | None) -> None:
        """Own ``fd`` as the kick eventfd (None: polling); a restart clears a broken latch."""
        self._unwatch()
        _close(self.kick_fd)
        self.kick_fd = fd
        self.broken = None

    def watch(self, loop: asyncio.AbstractEventLoop, on_kick: Callable[[], None]) -> None:
        """Call ``on_kick`` whenever the kick eventfd becomes readable."""
        self._unwatch()
        if self.kick_fd is not None and self.broken is None:
            try:
                loop.add_reader(self.kick_fd, on_kick)
            except OSError as error:
                # epoll refuses regular files and the like: not an eventfd.
                raise RingError(self.index, f"kick fd cannot be watched: "
                                f"{error.strerror or error}") from None
            self._loop = loop

    def set_call(self, fd: int | None) -> None:
        _close(self.call_fd)
        self.call_fd = fd

    def set_err(self, fd: int | None) -> None:
        _close(self.err_fd)
        self.err_fd = fd

    def stop(self) -> None:
        """Stop watching the kick fd (GET_VRING_BASE, reset): no more processing."""
        self._unwatch()

    def _unwatch(self) -> None:
        if self._loop is not None and self.kick_fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.kick_fd)
        self._loop = None

    def consume_kick(self) -> None:
        """Read the kick eventfd's counter so it stops being readable."""
        if self.kick_fd is None:
            return
        # Someone else may have read it first (a spurious wake-up): fine.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.kick_fd, _EVENTFD_VALUE.size)

    def close(self) -> None:
        self._unwatch()
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            _close(fd)
        self.kick_fd = self.call_fd = self.err_fd = None

    # -- indices -------------------------------------------------------------------------

    def set_base(self, base: int) -> None:
        """SET_VRING_BASE: where the device resumes (split ring: next avail index)."""
        self.base_given = base
        self.last_avail = self.last_used = base & 0xFFFF

    def reported_base(self, packed: bool) -> int:
        """What GET_VRING_BASE answers: the next available index we would process."""
        if packed:
            return self.base_given or 0
        return self.last_avail

    # -- the sink --------------------------------------------------------------------------

    def drain(self, ring: RingState, memory: GuestMemory, dirty_log: DirtyLog | None,
              acked: VirtioFeature) -> int:
        """Take every buffer the guest made available; return how many.

        Raises :class:`RingError` (and latches the ring broken) for ring
        contents we refuse; the caller logs it once.
        """
        if self.broken is not None:
            return 0
        try:
            return self._drain(ring, memory, dirty_log, acked)
        except (RingError, GuestMemoryError) as error:
            self.broken = error if isinstance(error, RingError) else RingError(
                self.index, str(error))
            self.stop()
            raise self.broken from None

    def _drain(self, ring: RingState, memory: GuestMemory, dirty_log: DirtyLog | None,
               acked: VirtioFeature) -> int:
        event_index = VirtioFeature.VIRTIO_RING_F_EVENT_IDX in acked
        layout = self._layout(ring, memory, event_index)
        num = layout.num
        available_index = layout.available.unpack(_U16, 2)[0]
        pending = (available_index - self.last_avail) % INDEX_MODULUS
        if pending > num:
            raise RingError(self.index, f"available index {available_index} is {pending} "
                            f"entries ahead of {self.last_avail}, more than the ring's {num}")
        old_used = self.last_used
        indirect = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC in acked
        for _ in range(pending):
            slot = self.last_avail % num
            head = layout.available.unpack(_U16, RING_HEADER + 2 * slot)[0]
            self.bytes += self._walk_chain(layout, memory, head, indirect)
            element = RING_HEADER + _USED_ELEMENT.size * (self.last_used % num)
            # Nothing written into a TX buffer: the used length is 0.
            self._write(layout, dirty_log, _USED_ELEMENT, element, head, 0)
            self.last_avail = (self.last_avail + 1) % INDEX_MODULUS
            self.last_used = (self.last_used + 1) % INDEX_MODULUS
            self.buffers += 1
        if pending:
            self._write(layout, dirty_log, _U16, 2, self.last_used)
        if event_index:
            # Ask for a kick as soon as the driver adds anything.
            self._write(layout, dirty_log, _U16, RING_HEADER + _USED_ELEMENT.size * num,
                        self.last_avail)
        if pending and self._should_notify(layout, event_index, old_used):
            self._notify()
        return pending

    def _layout(self, ring: RingState, memory: GuestMemory, event_index: bool) -> _Layout:
        if ring.num is None or ring.address is None:
            raise RingError(self.index, "started without SET_VRING_NUM and SET_VRING_ADDR")
        num = ring.num
        extra = 2 if event_index else 0
        address = ring.address
        log_address = address.log if address.flags & VringAddressFlags.LOG else None
        return _Layout(
            descriptors=memory.user(address.descriptor, _DESCRIPTOR.size * num),
            available=memory.user(address.available, RING_HEADER + 2 * num + extra),
            used=memory.user(address.used, RING_HEADER + _USED_ELEMENT.size * num + extra),
            num=num, log_address=log_address)

    def _walk_chain(self, layout: _Layout, memory: GuestMemory, head: int,
                    indirect_acked: bool) -> int:
        """Validate the chain starting at ``head``; return its total length."""
        if head >= layout.num:
            raise RingError(self.index, f"head descriptor {head} out of range "
                            f"(ring of {layout.num})")
        table, count, index, total = layout.descriptors, layout.num, head, 0
        in_indirect = False
        for _ in range(layout.num + 1):
            address, length, raw_flags, following = table.unpack(
                _DESCRIPTOR, _DESCRIPTOR.size * index)
            flags = DescriptorFlags(raw_flags)
            if flags & DescriptorFlags.INDIRECT:
                if not indirect_acked or in_indirect or flags & DescriptorFlags.NEXT:
                    raise RingError(self.index, f"descriptor {index}: indirect table not "
                                    "allowed here (not negotiated, nested or chained)")
                if length == 0 or length % _DESCRIPTOR.size:
                    raise RingError(self.index, f"descriptor {index}: indirect table of "
                                    f"{length} bytes")
                table = memory.guest(address, length)
                count, index, in_indirect = length // _DESCRIPTOR.size, 0, True
                continue
            memory.guest(address, length)  # the buffer must lie in guest memory
            total += length
            if not flags & DescriptorFlags.NEXT:
                return total
            if following >= count:
                raise RingError(self.index, f"descriptor {index}: next {following} out of "
                                f"range ({count} descriptors)")
            index = following
        raise RingError(self.index, f"descriptor chain from head {head} loops")

    def _write(self, layout: _Layout, dirty_log: DirtyLog | None, item: struct.Struct,
               offset: int, *values: int) -> None:
        layout.used.pack(item, offset, *values)
        if dirty_log is not None:
            base = layout.used.guest_address if layout.log_address is None \
                else layout.log_address
            dirty_log.mark(base + offset, item.size)

    def _should_notify(self, layout: _Layout, event_index: bool, old_used: int) -> bool:
        if event_index:
            offset = RING_HEADER + 2 * layout.num
            used_event = layout.available.unpack(_U16, offset)[0]
            return need_event(used_event, self.last_used, old_used)
        flags = layout.available.unpack(_U16, 0)[0]
        return not flags & AvailableFlags.NO_INTERRUPT

    def _notify(self) -> None:
        if self.call_fd is None:
            return
        try:
            os.write(self.call_fd, _EVENTFD_VALUE.pack(1))
            self.notifications += 1
        except BlockingIOError:
            # The counter is saturated: the frontend has a pending notification anyway.
            pass
        except OSError as error:
            self.log.warning("ring %d: call eventfd write failed: %s", self.index,
                             error.strerror)


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError as error:
            logging.getLogger(__name__).warning("closing fd %d: %s", fd, error.strerror)
