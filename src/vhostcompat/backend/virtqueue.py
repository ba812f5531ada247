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
import enum
import logging
import os
import struct
from collections.abc import Callable, Generator, Iterator
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
# Descriptors walked before a drain yields to the event loop (about a
# millisecond of work): one kick never holds the other connections longer.
STEP_BUDGET = 512
EVENTFD_LINK = "anon_inode:[eventfd]"


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
        self._job: Generator[None, None, None] | None = None
        self.continuation: asyncio.Handle | None = None
        """The scheduled next slice of the drain in progress, if any."""

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
        self.cancel_drain()
        self._unwatch()

    def _unwatch(self) -> None:
        if self._loop is not None and self.kick_fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.kick_fd)
        self._loop = None

    def consume_kick(self) -> None:
        """Read the kick eventfd's counter so it stops being readable.

        A read that fails (other than "nothing to read") stops the ring:
        raises :class:`RingError`.
        """
        if self.kick_fd is None:
            return
        try:
            os.read(self.kick_fd, _EVENTFD_VALUE.size)
        except (BlockingIOError, InterruptedError):
            pass  # someone else read it first (a spurious wake-up): fine
        except OSError as error:
            self.broken = RingError(self.index, f"kick eventfd read failed: "
                                    f"{error.strerror or error}")
            self.stop()
            raise self.broken from None

    def close(self) -> None:
        self.cancel_drain()
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

    def start_drain(self, ring: RingState, memory: GuestMemory, dirty_log: DirtyLog | None,
                    acked: VirtioFeature) -> None:
        """Begin taking what the guest made available; :meth:`drain_slice` does the work.

        Nothing may change the ring, the memory table or the dirty log while
        a drain is in progress: the device cancels it (:meth:`cancel_drain`)
        before it handles any request, and starts a new one afterwards.
        """
        self.cancel_drain()
        if self.broken is None:
            self._job = self._drain_steps(ring, memory, dirty_log, acked)

    @property
    def draining(self) -> bool:
        """Whether a drain is in progress (more slices to run)."""
        return self._job is not None

    def drain_slice(self) -> bool:
        """Run the drain for at most :data:`STEP_BUDGET` descriptors; True once done.

        Raises :class:`RingError` (and latches the ring broken) for ring
        contents we refuse; the caller logs it once.
        """
        if self._job is None:
            return True
        try:
            next(self._job)
        except StopIteration:
            self._job = None
            return True
        except (RingError, GuestMemoryError) as error:
            self._job = None
            self.broken = error if isinstance(error, RingError) else RingError(
                self.index, str(error))
            self.stop()
            raise self.broken from None
        except BaseException:
            self._job = None
            raise
        return False

    def cancel_drain(self) -> None:
        """Abandon a drain in progress; what it completed is already published."""
        job, self._job = self._job, None
        if job is not None:
            job.close()
        if self.continuation is not None:
            self.continuation.cancel()
            self.continuation = None

    def drain(self, ring: RingState, memory: GuestMemory, dirty_log: DirtyLog | None,
              acked: VirtioFeature) -> int:
        """Take every buffer the guest made available at once; return how many."""
        before = self.buffers
        self.start_drain(ring, memory, dirty_log, acked)
        while not self.drain_slice():
            pass
        return self.buffers - before

    def _drain_steps(self, ring: RingState, memory: GuestMemory, dirty_log: DirtyLog | None,
                     acked: VirtioFeature) -> Generator[None, None, None]:
        """The drain as a generator that yields after every :data:`STEP_BUDGET` descriptors.

        A hostile driver can make one kick cost ``num`` chains of ``num``
        descriptors each; yielding lets every other connection be served
        meanwhile. Before each yield the completed chains are published
        (used index, notification), so an abandoned drain leaves the ring
        consistent.
        """
        event_index = VirtioFeature.VIRTIO_RING_F_EVENT_IDX in acked
        indirect = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC in acked
        layout = self._layout(ring, memory, event_index)
        sink = _Sink(self, layout, memory, dirty_log, event_index)
        num = layout.num
        while True:
            available_index = layout.available.unpack(_U16, 2)[0]
            pending = (available_index - self.last_avail) % INDEX_MODULUS
            if pending > num:
                raise RingError(self.index, f"available index {available_index} is "
                                f"{pending} entries ahead of {self.last_avail}, more than "
                                f"the ring's {num}")
            if not pending:
                break
            for _ in range(pending):
                slot = self.last_avail % num
                head = layout.available.unpack(_U16, RING_HEADER + 2 * slot)[0]
                self.bytes += yield from sink.walk_chain(head, indirect)
                element = RING_HEADER + _USED_ELEMENT.size * (self.last_used % num)
                # Nothing written into a TX buffer: the used length is 0.
                sink.write(_USED_ELEMENT, element, head, 0)
                self.last_avail = (self.last_avail + 1) % INDEX_MODULUS
                self.last_used = (self.last_used + 1) % INDEX_MODULUS
                self.buffers += 1
            sink.publish()
        if event_index:
            # Ask for a kick as soon as the driver adds anything.
            sink.write(_U16, RING_HEADER + _USED_ELEMENT.size * num, self.last_avail)

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

    def notify(self) -> None:
        """Signal the call eventfd; a write that fails stops the ring (RingError)."""
        if self.call_fd is None:
            return
        try:
            os.write(self.call_fd, _EVENTFD_VALUE.pack(1))
            self.notifications += 1
        except BlockingIOError:
            # The counter is saturated: the frontend has a pending notification anyway.
            pass
        except OSError as error:
            raise RingError(self.index, f"call eventfd write failed: "
                            f"{error.strerror or error}") from None


class _Sink:
    """One drain's view of a ring: chain walks, used-ring writes, publication."""

    def __init__(self, queue: Virtqueue, layout: _Layout, memory: GuestMemory,
                 dirty_log: DirtyLog | None, event_index: bool) -> None:
        self.queue = queue
        self.layout = layout
        self.memory = memory
        self.dirty_log = dirty_log
        self.event_index = event_index
        self.published = queue.last_used
        self.steps = STEP_BUDGET

    def step(self) -> Iterator[None]:
        """Count one descriptor; at the budget, publish what is complete and yield."""
        self.steps -= 1
        if self.steps <= 0:
            self.publish()
            self.steps = STEP_BUDGET
            yield

    def walk_chain(self, head: int, indirect_acked: bool) -> Generator[None, None, int]:
        """Validate the chain starting at ``head``; return its total length."""
        layout, index_of = self.layout, self.queue.index
        if head >= layout.num:
            raise RingError(index_of, f"head descriptor {head} out of range "
                            f"(ring of {layout.num})")
        table, count, index, total = layout.descriptors, layout.num, head, 0
        in_indirect = False
        for _ in range(layout.num + 1):
            yield from self.step()
            address, length, raw_flags, following = table.unpack(
                _DESCRIPTOR, _DESCRIPTOR.size * index)
            flags = DescriptorFlags(raw_flags)
            if flags & DescriptorFlags.INDIRECT:
                if not indirect_acked or in_indirect or flags & DescriptorFlags.NEXT:
                    raise RingError(index_of, f"descriptor {index}: indirect table not "
                                    "allowed here (not negotiated, nested or chained)")
                if length == 0 or length % _DESCRIPTOR.size:
                    raise RingError(index_of, f"descriptor {index}: indirect table of "
                                    f"{length} bytes")
                table = self.memory.guest(address, length)
                count, index, in_indirect = length // _DESCRIPTOR.size, 0, True
                continue
            self.memory.guest(address, length)  # the buffer must lie in guest memory
            total += length
            if not flags & DescriptorFlags.NEXT:
                return total
            if following >= count:
                raise RingError(index_of, f"descriptor {index}: next {following} out of "
                                f"range ({count} descriptors)")
            index = following
        raise RingError(index_of, f"descriptor chain from head {head} loops")

    def write(self, item: struct.Struct, offset: int, *values: int) -> None:
        layout = self.layout
        layout.used.pack(item, offset, *values)
        if self.dirty_log is not None:
            base = layout.used.guest_address if layout.log_address is None \
                else layout.log_address
            self.dirty_log.mark(base + offset, item.size)

    def publish(self) -> None:
        """Make the completed chains visible (used index) and notify if the driver asks."""
        queue = self.queue
        if queue.last_used == self.published:
            return
        old, self.published = self.published, queue.last_used
        self.write(_U16, 2, queue.last_used)
        if self._should_notify(old):
            queue.notify()

    def _should_notify(self, old_used: int) -> bool:
        layout = self.layout
        if self.event_index:
            offset = RING_HEADER + 2 * layout.num
            used_event = layout.available.unpack(_U16, offset)[0]
            return need_event(used_event, self.queue.last_used, old_used)
        flags = layout.available.unpack(_U16, 0)[0]
        return not flags & AvailableFlags.NO_INTERRUPT


def eventfd_problem(fd: int) -> str | None:
    """Why ``fd`` cannot serve as a kick/call/err fd (None: it can, now non-blocking).

    A pipe, a socket or a blocking eventfd with a full counter would block
    or spin the event loop of every connection: only an eventfd is watched
    or written, and never in blocking mode (QEMU's are non-blocking anyway;
    the flag is shared with the frontend's file description).
    """
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target != EVENTFD_LINK:
            return f"not an eventfd ({target})"
        os.set_blocking(fd, False)
    except OSError as error:
        return f"unusable: {error.strerror or error}"
    return None


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError as error:
            logging.getLogger(__name__).warning("closing fd %d: %s", fd, error.strerror)
