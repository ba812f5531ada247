"""One proxied vhost-user connection: front-end <-> proxy <-> back-end, in asyncio.

A :class:`Relay` joins a front-end connection (QEMU) and a back-end
connection (DPDK, OVS, any vhost-user back-end) and runs until one of them
closes, misbehaves or the mode refuses a request. Messages are decoded and
checked, and forwarded with their fds (shared memory, kick/call eventfds):
the data path itself never crosses the proxy.

Per message:

* front-end request: the mode's check (:meth:`ProxyPolicy.check`), then the
  front-end session's rules (``Session(Role.BACKEND)``, the profile's limits),
  then the back-end session's, then it is forwarded. A reply owed by the
  back-end starts a timer: a back-end that does not answer in
  ``reply_timeout`` seconds ends the relay with an ERROR naming the request,
  instead of hanging QEMU forever;
* back-end reply: matched to its request by the back-end session, then the
  answers the mode changes are rewritten (GET_FEATURES, GET_PROTOCOL_FEATURES,
  GET_QUEUE_NUM), then forwarded;
* SET_BACKEND_REQ_FD: the back-end channel is relayed too. The proxy hands
  the back-end one end of a socket pair of its own and relays between it and
  the front-end's socket, so back-end requests (and fds) are checked the
  same way.

Whatever ends a relay, every socket and fd it holds is closed and its tasks
are finished before :meth:`Relay.run` returns its :class:`RelayResult`; one
relay's failure never touches another's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol

from vhostcompat.errors import LocalProtocolError, RemoteProtocolError
from vhostcompat.proxy.policy import (
    Negotiated,
    Offer,
    ProxyPolicy,
    Refusal,
    negotiated_from,
)
from vhostcompat.proxy.timings import REPLY, REQUEST, RelayTimings, Timing
from vhostcompat.transport import (
    ConnectionLog,
    FdConnection,
    MessageConnection,
    StallTimeouts,
    TransportError,
)
from vhostcompat.vhostuser import (
    U64,
    Channel,
    FrontendRequest,
    Message,
    RemoteMessageError,
    Request,
    Role,
    Session,
    close_fds,
)

_log = logging.getLogger(__name__)

REPLY_TIMEOUT = 5.0

# Front-end requests after which the negotiated state may have changed.
_STATE_REQUESTS = frozenset({
    FrontendRequest.SET_FEATURES, FrontendRequest.SET_PROTOCOL_FEATURES,
    FrontendRequest.SET_VRING_NUM, FrontendRequest.SET_VRING_KICK,
    FrontendRequest.GET_VRING_BASE, FrontendRequest.RESET_OWNER,
    FrontendRequest.RESET_DEVICE, FrontendRequest.VRING_KICK,
})


class Side(enum.Enum):
    FRONTEND = "front-end"
    BACKEND = "back-end"


class RelayOutcome(enum.Enum):
    """Why a relay ended."""

    FRONTEND_CLOSED = "the front-end closed the connection"
    BACKEND_CLOSED = "the back-end closed the connection"
    REFUSED = "the compatibility mode refused a request"
    FRONTEND_ERROR = "the front-end broke the protocol"
    BACKEND_ERROR = "the back-end broke the protocol"
    BACKEND_TIMEOUT = "the back-end did not answer in time"
    INTERNAL_ERROR = "the proxy failed"
    CANCELLED = "the proxy stopped"


@dataclasses.dataclass(frozen=True)
class RelayResult:
    outcome: RelayOutcome
    detail: str

    def __str__(self) -> str:
        return f"{self.outcome.value}: {self.detail}" if self.detail else self.outcome.value


class RelayObserver(Protocol):
    """What a relay tells its owner as it goes (the status board implements it)."""

    def record_offer(self, offer: Offer) -> None: ...

    def record_negotiated(self, negotiated: Negotiated) -> None: ...

    def record_refusal(self, refusal: Refusal) -> None: ...


class _NullObserver:
    def record_offer(self, offer: Offer) -> None:
        pass

    def record_negotiated(self, negotiated: Negotiated) -> None:
        pass

    def record_refusal(self, refusal: Refusal) -> None:
        pass


class _End(Exception):
    """Raised inside a pump to end the relay with a result."""

    def __init__(self, result: RelayResult) -> None:
        super().__init__(str(result))
        self.result = result


def _end(outcome: RelayOutcome, detail: str = "") -> NoReturn:
    raise _End(RelayResult(outcome, detail))


_CLOSED = {Side.FRONTEND: RelayOutcome.FRONTEND_CLOSED, Side.BACKEND: RelayOutcome.BACKEND_CLOSED}
_BROKE = {Side.FRONTEND: RelayOutcome.FRONTEND_ERROR, Side.BACKEND: RelayOutcome.BACKEND_ERROR}


# GET_* answers the mode may change (Relay._apply_offer).
_REWRITTEN = frozenset({FrontendRequest.GET_FEATURES, FrontendRequest.GET_PROTOCOL_FEATURES,
                        FrontendRequest.GET_QUEUE_NUM})
# Request names for the stamps (an enum member's .name runs Python code).
_NAMES: dict[FrontendRequest, str] = {request: request.name for request in FrontendRequest}


class Relay:
    """Relay one front-end connection to one back-end connection in a mode."""

    def __init__(self, policy: ProxyPolicy, frontend: FdConnection, backend: FdConnection, *,
                 reply_timeout: float = REPLY_TIMEOUT, observer: RelayObserver | None = None,
                 name: str = "relay", timeouts: StallTimeouts | None = None,
                 timings: RelayTimings | None = None) -> None:
        self.policy = policy
        self.reply_timeout = reply_timeout
        self.observer: RelayObserver = observer or _NullObserver()
        # One logger for every relay, the connection named in each line: a
        # child logger per connection would stay registered forever.
        self.log = ConnectionLog(_log, name)
        timeouts = timeouts or StallTimeouts()
        self._frontend = MessageConnection(frontend, Channel.FRONTEND, Role.BACKEND,
                                           timeouts=timeouts)
        # The back-end only answers: a reply it owes has reply_timeout.
        self._backend = MessageConnection(backend, Channel.FRONTEND, Role.FRONTEND,
                                          timeouts=StallTimeouts(message=timeouts.message))
        # The front-end sees us as its back-end, in the mode's limits; the
        # back-end sees us as its front-end.
        self.frontend_session = Session(Role.BACKEND, limits=policy.session_limits())
        self.backend_session = Session(Role.FRONTEND)
        # The requests whose reply the back-end owes, oldest first, with the loop time
        # it is due by; one timer, for the oldest (re-armed as replies come).
        self._pending: deque[tuple[FrontendRequest, float]] = deque()
        self._reply_timer: asyncio.TimerHandle | None = None
        self._channel: tuple[MessageConnection, MessageConnection] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended: asyncio.Future[RelayResult] | None = None
        self.messages = 0
        self.offers: dict[FrontendRequest, Offer] = {}
        self._requests_seen: set[Request] = set()
        self._negotiated_pending = False
        self.timings = timings if timings is not None else RelayTimings()
        self._cpu_clock = self.timings.cpu_clock
        self._record = self.timings.samples.append
        self._frontend.cpu_clock = self._backend.cpu_clock = self._cpu_clock

    def frontend_stalling(self, at_least: float) -> bool:
        """Whether the front-end has been stalling for ``at_least`` seconds: no first
        message since the relay started, or a message begun and not finished."""
        return self._frontend.stalling_for() >= at_least

    def preempt(self, detail: str) -> None:
        """End the relay now (another front-end takes over); its result says why."""
        self._finish(RelayResult(RelayOutcome.FRONTEND_ERROR, detail))

    # -- running ---------------------------------------------------------------------

    async def run(self) -> RelayResult:
        """Relay until one side closes or fails; everything is closed on return."""
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        self._reply_timer = loop.call_at(loop.time() + self.reply_timeout, self._check_replies)
        self._spawn(self._frontend_requests, Side.FRONTEND, "front-end requests")
        self._spawn(self._backend_replies, Side.BACKEND, "back-end replies")
        try:
            result = await self._ended
        except asyncio.CancelledError:
            self._finish(RelayResult(RelayOutcome.CANCELLED, ""))
            raise
        finally:
            await self._shutdown()
        self._report_end(result)
        return result

    def _spawn(self, body: Callable[[], Awaitable[None]], side: Side, what: str) -> None:
        task = asyncio.create_task(self._pump(body, side, what), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, body: Callable[[], Awaitable[None]], side: Side, what: str) -> None:
        try:
            await body()
        except _End as end:
            self._finish(end.result)
        except RemoteProtocolError as error:
            self._finish(RelayResult(_BROKE[side], str(error)))
        except TransportError as error:
            self._finish(RelayResult(_CLOSED[side], str(error)))
        except LocalProtocolError as error:
            self.log.error("%s: internal error: %s", what, error)
            self._finish(RelayResult(RelayOutcome.INTERNAL_ERROR, str(error)))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.log.exception("%s crashed", what)
            self._finish(RelayResult(RelayOutcome.INTERNAL_ERROR, repr(error)))

    def _finish(self, result: RelayResult) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(result)

    async def _shutdown(self) -> None:
        self._record_negotiated()
        if self._reply_timer is not None:
            self._reply_timer.cancel()
            self._reply_timer = None
        self._pending.clear()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_channel()
        self._frontend.close()
        self._backend.close()

    def _report_end(self, result: RelayResult) -> None:
        match result.outcome:
            case RelayOutcome.FRONTEND_CLOSED | RelayOutcome.CANCELLED:
                self.log.info("%s; back-end connection closed", result)
            case RelayOutcome.BACKEND_CLOSED:
                self.log.warning("%s; front-end connection closed", result)
            case RelayOutcome.REFUSED:
                pass  # logged at ERROR when refused
            case _:
                self.log.error("%s; both connections closed", result)

    # -- front-end -> back-end ----------------------------------------------------------

    async def _frontend_requests(self) -> None:
        while True:
            message = await self._frontend.recv_message()
            if message is None:
                self._closed_by_frontend()
            self.messages += 1
            self._requests_seen.add(message.request)
            await self._forward_request(message)
            # Stamped once everything for it is done, bookkeeping included.
            self._stamp(message, REQUEST, self._frontend)

    def _stamp(self, message: Message, direction: str, source: MessageConnection) -> None:
        cpu = 0 if self._cpu_clock is None else self._cpu_clock() - source.received_cpu_ns
        request = message.request
        name = _NAMES[request] if type(request) is FrontendRequest else request.name
        # tuple.__new__: Timing(...) runs the NamedTuple's Python constructor.
        self._record(tuple.__new__(Timing, (name, direction, source.received_ns,
                                            time.monotonic_ns(), cpu, source.arrived_ns)))

    def _closed_by_frontend(self) -> NoReturn:
        session = self.frontend_session
        if session.acked_features is not None or session.started_rings():
            _end(RelayOutcome.FRONTEND_CLOSED)
        queue_offer = self.offers.get(FrontendRequest.GET_QUEUE_NUM)
        if (queue_offer is not None and queue_offer.offered < queue_offer.backend
                and FrontendRequest.SET_VRING_ENABLE not in self._requests_seen):
            # QEMU gives up in its netdev set-up, when it wants more queue
            # pairs than GET_QUEUE_NUM allowed: after the first pair's
            # SET_OWNER .. SET_VRING_ERR, before the device's first
            # SET_VRING_ENABLE (and it retries at once). That is the mode
            # refusing the interface, so say which limit it was. A QEMU that
            # got that far and closes later (a destination whose incoming
            # migration failed to load) is not a refusal.
            self._refuse(Refusal(
                FrontendRequest.GET_QUEUE_NUM,
                f"the front-end closed the connection after GET_QUEUE_NUM was answered "
                f"{queue_offer.offered}, before enabling any ring: it asks for more queue "
                f"pairs than max_queue_pairs {self.policy.profile.max_queue_pairs} of mode "
                f"{self.policy.version} (the back-end offers {queue_offer.backend})"))
        _end(RelayOutcome.FRONTEND_CLOSED, "during start-up (before the device started)")

    def _refuse(self, refusal: Refusal) -> NoReturn:
        self.log.error("%s", refusal)
        self.observer.record_refusal(refusal)
        _end(RelayOutcome.REFUSED, str(refusal))

    async def _forward_request(self, message: Message) -> None:
        outgoing = message
        owned = True  # whether outgoing.fds are still ours to close
        try:
            refusal = self.policy.check(message, self.frontend_session)
            if refusal is not None:
                self._refuse(refusal)
            try:
                self.frontend_session.receive(message)
            except RemoteMessageError:
                owned = False  # the session closed them
                raise
            if message.request is FrontendRequest.SET_BACKEND_REQ_FD:
                outgoing = self._open_backend_channel(message)
            if self.backend_session.send(outgoing):
                self._expect_reply(message.request)
            # Unchanged (fds travel beside the bytes): the bytes as they came.
            wire = self._frontend.last_wire if outgoing.payload is message.payload else None
            try:
                await self._backend.send_message(outgoing, wire)
            except TransportError as error:
                _end(RelayOutcome.BACKEND_CLOSED, str(error))
        finally:
            if owned and outgoing.fds:
                close_fds(outgoing.fds)
        if message.request in _STATE_REQUESTS and not self._negotiated_pending:
            # Once per burst, after it: QEMU's device start sends a dozen of
            # these back to back, and the snapshot is the same at its end.
            self._negotiated_pending = True
            asyncio.get_running_loop().call_soon(self._record_negotiated)

    def _record_negotiated(self) -> None:
        if self._negotiated_pending:
            self._negotiated_pending = False
            self.observer.record_negotiated(negotiated_from(self.frontend_session))

    def _expect_reply(self, request: Request) -> None:
        assert isinstance(request, FrontendRequest)
        loop = asyncio.get_running_loop()
        due = loop.time() + self.reply_timeout
        self._pending.append((request, due))
        if self._reply_timer is None:
            self._reply_timer = loop.call_at(due, self._check_replies)

    def _check_replies(self) -> None:
        """The oldest reply owed may be late: end the relay if so, else look again
        when the oldest one still owed is due.

        The timer stays armed while nothing is owed (a timeout ahead: it fires
        no earlier than any reply later owed is due), so that a request owed a
        reply after a quiet spell (a migration's device stop) needs no timer
        of its own.
        """
        loop = asyncio.get_running_loop()
        if self._reply_timer is not None:
            self._reply_timer.cancel()  # itself, unless called otherwise (a test)
        if not self._pending:
            self._reply_timer = loop.call_at(loop.time() + self.reply_timeout,
                                             self._check_replies)
            return
        request, due = self._pending[0]
        if loop.time() < due:
            self._reply_timer = loop.call_at(due, self._check_replies)
            return
        self._reply_timer = None
        self._finish(RelayResult(
            RelayOutcome.BACKEND_TIMEOUT,
            f"the back-end did not answer {request.name} within {self.reply_timeout:g} s; "
            "closing the front-end connection"))

    async def _send(self, connection: MessageConnection, side: Side, message: Message) -> None:
        try:
            await connection.send_message(message)
        except TransportError as error:
            _end(_CLOSED[side], str(error))

    # -- back-end -> front-end ----------------------------------------------------------

    async def _backend_replies(self) -> None:
        while True:
            reply = await self._backend.recv_message()
            if reply is None:
                _end(RelayOutcome.BACKEND_CLOSED, "")
            self.messages += 1
            await self._forward_reply(reply)
            self._stamp(reply, REPLY, self._backend)

    async def _forward_reply(self, reply: Message) -> None:
        outgoing = reply
        owned = True
        try:
            try:
                self.backend_session.receive(reply)
            except RemoteMessageError:
                owned = False
                raise
            if self._pending:
                self._pending.popleft()
            outgoing = self._apply_offer(reply)
            self.frontend_session.send(outgoing)
            wire = self._backend.last_wire if outgoing is reply else None
            try:
                await self._frontend.send_message(outgoing, wire)
            except TransportError as error:
                _end(RelayOutcome.FRONTEND_CLOSED, str(error))
        finally:
            if owned and outgoing.fds:
                close_fds(outgoing.fds)

    def _apply_offer(self, reply: Message) -> Message:
        request = reply.request
        if request not in _REWRITTEN or not isinstance(reply.payload, U64):
            return reply
        assert isinstance(request, FrontendRequest)
        offer = self.policy.offer(request, reply.payload.value)
        if self.offers.get(request) != offer:
            # QEMU asks GET_FEATURES twice per connection: say (and record) it once.
            self.log.info("%s", offer.describe(self.policy.version))
            if request is FrontendRequest.GET_FEATURES:
                blockers = self.policy.migration_blockers(offer.offered, None)
            elif request is FrontendRequest.GET_PROTOCOL_FEATURES:
                blockers = self.policy.migration_blockers(None, offer.offered)
            else:
                blockers = []
            for blocker in blockers:
                self.log.warning("mode %s: QEMU will not migrate this device: %s",
                                 self.policy.version, blocker)
            self.offers[request] = offer
            self.observer.record_offer(offer)
        return dataclasses.replace(reply, payload=U64(offer.offered))

    # -- the back-end channel (SET_BACKEND_REQ_FD) ------------------------------------

    def _open_backend_channel(self, message: Message) -> Message:
        """Interpose on the back-end channel; returns the message to forward.

        The front-end's fd becomes our socket towards it (owned from here);
        the forwarded message carries the back-end's end of a new socket pair.
        """
        self._close_channel()
        (frontend_fd,) = message.fds
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Takes ownership of the fd only when it succeeds.
            frontend_socket = socket.socket(fileno=frontend_fd)
        except OSError as error:
            ours.close()
            theirs.close()
            raise RemoteMessageError(f"the back-end channel fd is not a socket: {error}",
                                     request=message.request) from None
        to_frontend = MessageConnection(FdConnection(frontend_socket, name="channel-front"),
                                        Channel.BACKEND, Role.BACKEND)
        to_backend = MessageConnection(FdConnection(ours, name="channel-back"),
                                       Channel.BACKEND, Role.FRONTEND)
        self._channel = (to_frontend, to_backend)
        # The back-end's requests and the front-end's replies.
        self._spawn(functools.partial(self._relay_channel, Side.BACKEND), Side.BACKEND,
                    "back-end channel requests")
        self._spawn(functools.partial(self._relay_channel, Side.FRONTEND), Side.FRONTEND,
                    "back-end channel replies")
        return dataclasses.replace(message, fds=(theirs.detach(),))

    def _close_channel(self) -> None:
        if self._channel is not None:
            for connection in self._channel:
                connection.close()
            self._channel = None

    async def _relay_channel(self, origin: Side) -> None:
        """Relay what ``origin`` sends on the back-end channel to the other side, to its end."""
        assert self._channel is not None
        to_frontend, to_backend = self._channel
        connections = {Side.FRONTEND: to_frontend, Side.BACKEND: to_backend}
        sessions = {Side.FRONTEND: self.frontend_session, Side.BACKEND: self.backend_session}
        towards = Side.FRONTEND if origin is Side.BACKEND else Side.BACKEND
        while (message := await connections[origin].recv_message()) is not None:
            self.messages += 1
            await self._relay_on_channel(message, sessions[origin], sessions[towards],
                                         connections[towards], towards)
        self.log.info("the %s closed the back-end channel", origin.value)

    async def _relay_on_channel(self, message: Message, receiver: Session, sender: Session,
                                destination: MessageConnection, side: Side) -> None:
        owned = True
        try:
            try:
                receiver.receive(message)
            except RemoteMessageError:
                owned = False
                raise
            sender.send(message)
            await self._send(destination, side, message)
        finally:
            if owned:
                close_fds(message.fds)

