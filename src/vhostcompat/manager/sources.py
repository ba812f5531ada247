"""Where the manager's host records come from: a fan-out to every host's own store.

Every verb of :mod:`vhostcompat.manager` first *gathers* records (this
module), then *computes* over them (pure functions, no I/O). A
:class:`RecordSource` is anything that turns host addresses into a
:class:`Gathered`: :class:`HostStores` asks each host's store (embedded
directory or OVSDB remote) concurrently, at most ``concurrency`` at a time,
each within ``timeout`` seconds; another source (one fleet database) plugs in
by implementing the same methods.

A verb that reads and then writes (``provision``) does both inside
:meth:`RecordSource.holding`: there :class:`HostStores` keeps each host's
connection from its read to its writes (one connection per host instead of
two), and closes them all when the block ends, however it ends.

A host that cannot be read is never dropped: it is a :class:`HostFailure`
with its one-line reason, and every verb says what it could not decide
because of it (never "compatible"). Bad input (a host listed twice, a
malformed address) is refused as a whole before anything is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from vhostcompat.errors import HostError, InputError, VhostCompatError
from vhostcompat.hoststore import HostRecord, HostStore, ModeWrite, open_host

DEFAULT_CONCURRENCY = 64
DEFAULT_TIMEOUT = 5.0
MAX_CONCURRENCY = 4096

T = TypeVar("T")

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``(address, done, total)`` after each host answered or failed."""


class FleetError(HostError):
    """Some hosts could not be read or written, so the verb cannot answer (exit 2)."""

    def __init__(self, what: str, failures: Sequence[HostFailure]) -> None:
        self.failures = tuple(failures)
        shown = "; ".join(failure.reason for failure in self.failures[:3])
        more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        super().__init__(f"{what}: {len(self.failures)} host(s) failed: {shown}{more}")


@dataclass(frozen=True)
class HostFailure:
    """A host that could not be asked, and why (one line naming the host)."""

    address: str
    reason: str
    error: VhostCompatError | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, str]:
        return {"host": self.address, "reason": self.reason}


@dataclass(frozen=True)
class Gathered:
    """The records of the hosts that answered and the failures of those that did not."""

    addresses: tuple[str, ...]
    records: Mapping[str, HostRecord]
    failures: Mapping[str, HostFailure] = field(default_factory=dict)

    def record(self, address: str) -> HostRecord | None:
        return self.records.get(address)

    @property
    def complete(self) -> bool:
        return not self.failures

    def failure_list(self) -> list[HostFailure]:
        """The failures in the order the hosts were given."""
        return [self.failures[address] for address in self.addresses
                if address in self.failures]

    def require_all(self, what: str) -> list[HostRecord]:
        """Every record, in order; the host's own error when one host failed,
        :class:`FleetError` (listing them) when several did."""
        failures = self.failure_list()
        if len(failures) == 1 and failures[0].error is not None:
            raise failures[0].error
        if failures:
            raise FleetError(what, failures)
        return [self.records[address] for address in self.addresses]


def check_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    """The addresses as given; refuses none, an empty one, or one listed twice."""
    if not addresses:
        raise InputError("no hosts given")
    seen: set[str] = set()
    for address in addresses:
        if not address or not address.strip():
            raise InputError("empty host address")
        if address in seen:
            raise InputError(f"host {address} is listed twice")
        seen.add(address)
    return tuple(addresses)


class RecordSource(Protocol):
    """Gathers host records and carries conditional writes to the hosts."""

    async def gather(self, addresses: Sequence[str],
                     progress: ProgressCallback | None = None, *,
                     interfaces: bool | tuple[str, ...] = True) -> Gathered:
        """Every host's record (``interfaces=False``: without interface records; a tuple
        of names: only those, see
        :meth:`HostStore.read <vhostcompat.hoststore.HostStore.read>`)."""

    async def write(self, changes: Mapping[str, ModeWrite],
                    progress: ProgressCallback | None = None,
                    ) -> dict[str, VhostCompatError | None]: ...

    def holding(self) -> AbstractAsyncContextManager[RecordSource]:
        """A source for one gather and the writes planned from it, which may keep what
        the gather opened until the block ends (or simply this source)."""
        ...


def held_limit() -> int:
    """How many hosts' connections :meth:`HostStores.holding` keeps at most: a quarter
    of this process's file descriptors (a larger gather holds none)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONCURRENCY if soft == resource.RLIM_INFINITY else soft // 4


@dataclass(frozen=True)
class HostStores:
    """Each host's own store (:func:`vhostcompat.hoststore.open_host`), asked concurrently.

    ``concurrency``: at most this many hosts at a time; ``timeout``: seconds
    per host (connect, read or write included).
    """

    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    kept: dict[str, HostStore] | None = field(default=None, compare=False, repr=False)
    """Inside :meth:`holding`: the stores a gather opened, kept for the writes."""

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise InputError(f"concurrency must be 1..{MAX_CONCURRENCY}, "
                             f"not {self.concurrency}")
        if not 0 < self.timeout <= 3600:
            raise InputError(f"timeout must be in (0, 3600] seconds, not {self.timeout:g}")

    async def gather(self, addresses: Sequence[str],
                     progress: ProgressCallback | None = None, *,
                     interfaces: bool | tuple[str, ...] = True) -> Gathered:
        ordered = check_addresses(addresses)
        kept = self.kept if self.kept is not None and len(ordered) <= held_limit() else None
        # A malformed address is bad input, refused before any I/O.
        stores = {address: open_host(address, hold=kept is not None) for address in ordered}
        if kept is not None:
            kept.update(stores)  # closed when holding() ends, whatever happens here

        async def read(address: str) -> HostRecord:
            if kept is not None:
                return await stores[address].read(interfaces=interfaces)
            async with stores[address] as store:
                return await store.read(interfaces=interfaces)

        outcomes = await self._fan_out(ordered, read, progress)
        records = {address: value for address, value in outcomes.items()
                   if isinstance(value, HostRecord)}
        failures = {address: failure_of(address, _as_error(address, value, self.timeout))
                    for address, value in outcomes.items() if not isinstance(value, HostRecord)}
        return Gathered(ordered, records, failures)

    async def write(self, changes: Mapping[str, ModeWrite],
                    progress: ProgressCallback | None = None,
                    ) -> dict[str, VhostCompatError | None]:
        """Each host's write; ``None`` where it was committed, else its error."""

        async def write_one(address: str) -> None:
            store = None if self.kept is None else self.kept.get(address)
            if store is not None:
                await store.write_mode(changes[address])
                return
            async with open_host(address) as store:
                await store.write_mode(changes[address])

        outcomes = await self._fan_out(tuple(changes), write_one, progress)
        return {address: (None if not isinstance(value, BaseException)
                          else _as_error(address, value, self.timeout))
                for address, value in outcomes.items()}

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[RecordSource]:
        """This source, with each host's store kept open from the gather to the writes
        (up to :func:`held_limit` hosts) and closed when the block ends."""
        held = dataclasses.replace(self, kept={})
        assert held.kept is not None
        try:
            yield held
        finally:
            stores = list(held.kept.values())
            held.kept.clear()
            await asyncio.gather(*(store.close() for store in stores), return_exceptions=True)

    async def _fan_out(self, addresses: Sequence[str],
                       call: Callable[[str], Awaitable[T]],
                       progress: ProgressCallback | None,
                       ) -> dict[str, T | VhostCompatError | TimeoutError]:
        gate = asyncio.Semaphore(self.concurrency)
        done = 0

        async def one(address: str) -> T | VhostCompatError | TimeoutError:
            nonlocal done
            async with gate:
                try:
                    async with asyncio.timeout(self.timeout):
                        result: T | VhostCompatError | TimeoutError = await call(address)
                except (VhostCompatError, TimeoutError) as error:
                    result = error
            done += 1
            if progress is not None:
                progress(address, done, len(addresses))
            return result

        with _collector_paused():
            results = await asyncio.gather(*(one(address) for address in addresses))
        return dict(zip(addresses, results, strict=True))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while the hosts are asked (on again after, unless
    the caller had it off).

    A fan-out allocates a few hundred objects per host, all freed by their
    reference counts; with 200 hosts that set off a dozen collections of the
    whole heap, 7-10 % of the fan-out's time here. What it allocates is
    bounded by the hosts asked, so nothing piles up meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class HostTimeoutError(HostError):
    """A host that did not answer within the per-host timeout."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        super().__init__(f"host {address}: no answer within {timeout:g} s")


def _as_error(address: str, error: object, timeout: float) -> VhostCompatError:
    if isinstance(error, VhostCompatError):
        return error
    return HostTimeoutError(address, timeout)


def failure_of(address: str, error: VhostCompatError) -> HostFailure:
    """A failure whose reason names the host (store errors already do)."""
    text = str(error)
    named = text.startswith(f"host {address}")
    return HostFailure(address, text if named else f"host {address}: {text}", error)
