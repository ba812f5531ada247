"""The proxy of one interface: its two sockets, their roles, and restarts.

Each side of the proxy is an :class:`Endpoint`: a Unix socket path and the
role the proxy takes on it. By default the proxy *listens* on the front-end
path (QEMU connects as a client) and *connects* to the back-end path (the
back-end listens, as DPDK testpmd with ``client=0`` or an OVS
``dpdkvhostuser`` port does); either role can be swapped, so QEMU as the
server with OVS ``dpdkvhostuserclient`` ports works too.

A relay starts when a front-end connection arrives (accepted, or made when
the proxy is the front-end's client); the proxy then gets a back-end
connection (connecting with retries, or taking the one the back-end made)
and runs a :class:`~vhostcompat.proxy.relay.Relay` until either side goes.
Then:

* the back-end went (a restart, an OVS upgrade): the front-end connection is
  closed too, so QEMU notices; with ``reconnect=N`` on its chardev QEMU
  connects again, the proxy reaches the new back-end, and the device comes
  back in the same mode;
* the front-end went: the back-end connection is closed cleanly, and the
  proxy waits for the next front-end.

One relay runs at a time: a second front-end connecting meanwhile waits a
moment for the relay to end (longer while that relay's front-end stalls,
until the stall timeouts cut it off), then is refused with an ERROR line.
Paths that are symbolic links, or exist and are not sockets, are refused on
either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from vhostcompat.errors import InputError
from vhostcompat.proxy.policy import ProxyPolicy
from vhostcompat.proxy.relay import REPLY_TIMEOUT, Relay, RelayOutcome, RelayResult
from vhostcompat.proxy.status import ProxyState, StatusBoard
from vhostcompat.proxy.timings import RelayTimings
from vhostcompat.transport import (
    DEFAULT_STALL_TIMEOUTS,
    MAX_SOCKET_PATH,
    ConnectError,
    FdConnection,
    Listener,
    SocketPathError,
    SocketPermissions,
    StallTimeouts,
    connect,
    listen,
)

_log = logging.getLogger(__name__)

BACKEND_TIMEOUT = 10.0
# After a relay that ended at once, wait before connecting again (doubling):
# a peer that accepts and closes at once must not make us spin.
RETRY_BACKOFF = 0.05
RETRY_MAX_BACKOFF = 1.0
SHORT_RELAY = 1.0
TAKEOVER_TIMEOUT = 1.0
DEFAULT_PERMISSIONS = SocketPermissions()
# A relay whose front-end has stalled this long (seconds) gives way to a new
# front-end connection: QEMU sends its first message within milliseconds.
PREEMPT_AFTER = 0.25
# How often a waiting front-end connection looks at the relay in its way.
TURN_POLL = 0.05
MAX_RESULTS = 100


class SocketRole(enum.Enum):
    """The role the proxy itself takes on a socket path."""

    SERVER = "server"  # the proxy listens; the peer connects
    CLIENT = "client"  # the proxy connects; the peer listens


@dataclass(frozen=True)
class Endpoint:
    """A socket path and the proxy's role on it (``PATH``, ``PATH:server``, ``PATH:client``)."""

    path: str
    role: SocketRole

    @classmethod
    def parse(cls, text: str, default: SocketRole) -> Endpoint:
        for role in SocketRole:
            suffix = f":{role.value}"
            if text.endswith(suffix):
                return cls(text[:-len(suffix)], role)
        return cls(text, default)

    def __str__(self) -> str:
        action = "listens" if self.role is SocketRole.SERVER else "connects"
        return f"{self.path} (proxy {action})"

    def check(self) -> None:
        """Refuse a path the proxy must not use; raises :class:`SocketPathError`."""
        if not self.path:
            raise SocketPathError(self.path, "empty path")
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise SocketPathError(self.path, f"longer than {MAX_SOCKET_PATH} bytes (the Unix "
                                             "socket path limit)")
        try:
            status = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise SocketPathError(self.path, f"cannot be examined: {error.strerror}") from None
        if stat.S_ISLNK(status.st_mode):
            # Following it would let whoever controls the link redirect the
            # control channel (and the guest's memory fds) elsewhere.
            raise SocketPathError(self.path, "is a symbolic link; refusing it")
        if not stat.S_ISSOCK(status.st_mode):
            raise SocketPathError(self.path, "exists and is not a socket")


@dataclass(frozen=True)
class ProxyOptions:
    """Timeouts of a proxy (seconds)."""

    reply_timeout: float = REPLY_TIMEOUT      # for each reply the back-end owes
    backend_timeout: float = BACKEND_TIMEOUT  # to get a back-end once a front-end is here
    # After a relay shorter than short_relay, wait before the next one (from
    # retry_backoff, doubling up to max_backoff): QEMU reconnects at once
    # when its start fails (e.g. too many queue pairs), and neither the
    # proxy nor the back-end should spin with it.
    short_relay: float = SHORT_RELAY
    retry_backoff: float = RETRY_BACKOFF
    max_backoff: float = RETRY_MAX_BACKOFF
    # How long a new front-end connection waits for the previous relay to end
    # (longer while that relay's front-end is stalling: until it is cut off).
    takeover_timeout: float = TAKEOVER_TIMEOUT
    # How long a front-end may take to send its first message, or any one message.
    timeouts: StallTimeouts = DEFAULT_STALL_TIMEOUTS
    # The permissions of the sockets the proxy listens on.
    permissions: SocketPermissions = DEFAULT_PERMISSIONS

    def __post_init__(self) -> None:
        for name in ("reply_timeout", "backend_timeout"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise InputError(f"{name.replace('_', '-')} must be a positive number of "
                                 f"seconds, not {value}")
        for name in ("short_relay", "retry_backoff", "max_backoff", "takeover_timeout"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise InputError(f"{name.replace('_', '-')} must be a number of seconds, "
                                 f"not {value}")


class ProxyServer:
    """The proxy of one interface; use as ``async with ProxyServer(...) as server``."""

    def __init__(self, policy: ProxyPolicy, frontend: Endpoint, backend: Endpoint, *,
                 options: ProxyOptions | None = None, board: StatusBoard | None = None,
                 name: str = "proxy", timings: RelayTimings | None = None) -> None:
        self.policy = policy
        self.frontend = frontend
        self.backend = backend
        self.options = options or ProxyOptions()
        self.board = board or StatusBoard(policy.version, frontend=str(frontend),
                                          backend=str(backend))
        self.name = name
        self.log = _log.getChild(name.replace(".", "_"))
        self.relays = 0
        # The latest results (a long-lived proxy sees QEMU come and go).
        self.results: deque[RelayResult] = deque(maxlen=MAX_RESULTS)
        # Every relay's per-message stamps, in one bounded ring.
        self.timings = timings if timings is not None else RelayTimings()
        self._active: Relay | None = None
        self._busy = False
        self._listeners: list[Listener] = []
        self._client_loop: asyncio.Task[None] | None = None
        self._spare: tuple[FdConnection, asyncio.Future[None]] | None = None
        self._spare_arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._waiting: asyncio.Future[None] | None = None
        self._backoff = 0.0

    @property
    def active(self) -> Relay | None:
        """The relay running now, if any."""
        return self._active

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Check both paths, then listen / start connecting; returns once ready."""
        if os.path.abspath(self.frontend.path) == os.path.abspath(self.backend.path):
            raise InputError(f"the front-end and back-end paths are the same: "
                             f"{self.frontend.path}")
        self.frontend.check()
        self.backend.check()
        try:
            if self.backend.role is SocketRole.SERVER:
                self._listeners.append(await listen(self.backend.path, self._backend_arrived,
                                                    permissions=self.options.permissions))
            if self.frontend.role is SocketRole.SERVER:
                self._listeners.append(await listen(self.frontend.path, self._serve_frontend,
                                                    permissions=self.options.permissions))
            else:
                self._client_loop = asyncio.create_task(self._frontend_client_loop(),
                                                        name=f"{self.name} front-end client")
        except BaseException:
            await self.close()
            raise
        self.board.set_state(ProxyState.WAITING, f"front-end {self.frontend}, back-end "
                                                 f"{self.backend}")
        self.log.info("mode %s: front-end %s, back-end %s", self.policy.version,
                      self.frontend, self.backend)

    async def close(self) -> None:
        """Stop accepting and connecting; close any relay (its sockets and fds)."""
        if self._client_loop is not None:
            self._client_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._client_loop
            self._client_loop = None
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        for listener in listeners:
            await listener.wait_closed()
        if self._spare is not None:
            connection, done = self._spare
            self._spare = None
            connection.close()
            if not done.done():
                done.set_result(None)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def wait_idle(self, timeout: float) -> RelayResult | None:
        """Wait (bounded) until no relay runs; the last relay's result, if any."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()
        return self.results[-1] if self.results else None

    # -- the front-end side ------------------------------------------------------------

    async def _frontend_client_loop(self) -> None:
        while True:
            try:
                self.frontend.check()
                connection = await connect(self.frontend.path, retry_for=math.inf,
                                           max_backoff=RETRY_MAX_BACKOFF,
                                           name=f"{self.name}-front")
            except (ConnectError, SocketPathError) as error:
                self.log.error("front-end: %s", error)
                self.board.set_state(ProxyState.FAILED, f"front-end: {error}")
                # Not a socket yet, or no permission: an operator must act; retry slowly.
                await asyncio.sleep(RETRY_MAX_BACKOFF)
                continue
            await self._serve_frontend(connection)

    async def _serve_frontend(self, frontend: FdConnection) -> None:
        """Relay one front-end connection (closed on return)."""
        refused = await self._wait_for_turn()
        if refused is not None:
            self.log.error("a second front-end connected; closing it: %s", refused)
            frontend.close()
            return
        self._busy = True
        self._idle.clear()
        self.relays += 1
        number = self.relays
        self.board.new_connection()
        release: Callable[[], None] | None = None
        loop = asyncio.get_running_loop()
        try:
            if self._backoff:
                await asyncio.sleep(self._backoff)
            started = loop.time()
            try:
                backend, release = await self._backend_connection(number)
            except (ConnectError, SocketPathError, TimeoutError) as error:
                detail = (f"back-end {self.backend.path} unreachable: "
                          f"{error or 'nobody connected'} (waited "
                          f"{self.options.backend_timeout:g} s); closing the front-end "
                          "connection")
                self.log.error("connection %d: %s", number, detail)
                self._record(RelayResult(RelayOutcome.BACKEND_CLOSED, detail),
                             ProxyState.FAILED)
                return
            self.board.set_state(ProxyState.NEGOTIATING)
            relay = Relay(self.policy, frontend, backend,
                          reply_timeout=self.options.reply_timeout, observer=self.board,
                          name=f"{self.name} #{number}", timeouts=self.options.timeouts,
                          timings=self.timings)
            self._active = relay
            self.log.info("connection %d: relaying %s <-> %s", number, self.frontend.path,
                          self.backend.path)
            result = await relay.run()
            self._record(result, None)
            if loop.time() - started < self.options.short_relay:
                self._backoff = min(max(self._backoff * 2, self.options.retry_backoff),
                                    self.options.max_backoff)
            else:
                self._backoff = 0.0
        finally:
            self._active = None
            self._busy = False
            self._idle.set()
            if release is not None:
                release()
            frontend.close()

    async def _wait_for_turn(self) -> str | None:
        """None when this new front-end connection may be relayed now, else why not.

        A front-end that reconnects (QEMU retrying a failed start) can be
        accepted before the relay of its previous connection has seen that
        one close: give that relay a moment to end rather than refusing.
        Stalled peers never stand in QEMU's way: a relay whose front-end
        has been stalling (no first message yet, or stopped mid-message)
        for :data:`PREEMPT_AFTER` seconds is ended for the newcomer, and
        only the newest waiting connection waits (an older one is closed),
        so a pile of stalled connections delays QEMU's reconnect by one
        stall at most.
        """
        if not self._busy:
            return None
        loop = asyncio.get_running_loop()
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)  # replaced by this newer connection
        displaced: asyncio.Future[None] = loop.create_future()
        self._waiting = displaced
        deadline = loop.time() + self.options.takeover_timeout
        try:
            while self._busy:
                if displaced.done():
                    return "a newer front-end connection replaced it while it waited"
                active = self._active
                if active is not None and active.frontend_stalling(PREEMPT_AFTER):
                    self.log.warning("the front-end being relayed stalls; a new front-end "
                                     "connection takes over")
                    active.preempt("a new front-end connection took over while this one "
                                   "stalled")
                    deadline = max(deadline, loop.time() + self.options.takeover_timeout)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return "a front-end is being relayed (one relay at a time)"
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, TURN_POLL)):
                        await self._idle.wait()
            return None if not displaced.done() else \
                "a newer front-end connection replaced it while it waited"
        finally:
            if self._waiting is displaced:
                self._waiting = None

    def _record(self, result: RelayResult, state: ProxyState | None) -> None:
        self.results.append(result)
        if state is None:
            state = {
                RelayOutcome.FRONTEND_CLOSED: ProxyState.FRONTEND_CLOSED,
                RelayOutcome.BACKEND_CLOSED: ProxyState.BACKEND_LOST,
                RelayOutcome.REFUSED: ProxyState.REFUSED,
                RelayOutcome.CANCELLED: ProxyState.EXITED,
            }.get(result.outcome, ProxyState.FAILED)
        if state is not ProxyState.REFUSED:  # the refusal itself is already the detail
            self.board.set_state(state, str(result))

    # -- the back-end side -------------------------------------------------------------

    async def _backend_connection(self, number: int,
                                  ) -> tuple[FdConnection, Callable[[], None] | None]:
        """A back-end connection for relay ``number``, and what to call when done."""
        timeout = self.options.backend_timeout
        if self.backend.role is SocketRole.CLIENT:
            self.backend.check()
            connection = await connect(self.backend.path, retry_for=timeout,
                                       name=f"{self.name}-back")
            return connection, None
        async with asyncio.timeout(timeout):
            while self._spare is None:
                self._spare_arrived.clear()
                await self._spare_arrived.wait()
        connection, done = self._spare
        self._spare = None

        def release() -> None:
            if not done.done():
                done.set_result(None)

        return connection, release

    async def _backend_arrived(self, connection: FdConnection) -> None:
        """A back-end connected to us (server role): keep it for the next relay."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._spare is not None:
            older, older_done = self._spare
            self.log.info("a newer back-end connection replaces one not used yet")
            older.close()
            if not older_done.done():
                older_done.set_result(None)
        self._spare = (connection, done)
        self._spare_arrived.set()
        # The listener closes the connection when this returns: hold it until
        # the relay that takes it is done with it.
        await done
