"""One JSON-RPC connection to one OVSDB remote: calls, echo replies, notifications.

A :class:`Connection` is the asyncio protocol of one stream: bytes go
through the framer (:mod:`vhostcompat.ovsdb.jsonrpc`) as they arrive and each
message is handled at once, inside ``data_received`` (no reader task: one
event-loop step fewer per round trip). Calls are sent with an id and wait,
bounded by a timer, for the response with that id. Requests from the server
are answered at once: ``echo`` (ovsdb-server's inactivity probe: a client
that does not answer is disconnected) with its own params, any other method
with an error. Notifications (``update``) go to the owner's callback, before
the next message is handled, so a monitor's initial rows are always
delivered before its first change.

When the connection ends, for whatever reason (the server closed it, a
socket error, a message we refuse, :meth:`close`), every pending call fails
with :class:`OvsdbConnectionError` naming the call and the reason, and the
owner's ``on_lost`` callback is told once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vhostcompat.ovsdb.errors import (
    OvsdbConnectionError,
    OvsdbError,
    OvsdbProtocolError,
    OvsdbRequestError,
    OvsdbTimeoutError,
    describe,
)
from vhostcompat.ovsdb.jsonrpc import FramingError, MessageReader, encode
from vhostcompat.ovsdb.remotes import Remote
from vhostcompat.ovsdb.values import ValueShapeError

_log = logging.getLogger("vhostcompat.ovsdb")

CLOSE_TIMEOUT = 5.0
RequestId = int | str
ResultHook = Callable[[Any], None]
Notify = Callable[[str, Any], None]
LostHook = Callable[["Connection", OvsdbError], None]


@dataclass(frozen=True)
class Request:
    """One call of :meth:`Connection.call_many` (``request_id`` None: the next number)."""

    method: str
    params: list[Any]
    request_id: RequestId | None = None
    on_result: ResultHook | None = None


@dataclass
class _Pending:
    method: str
    future: asyncio.Future[Any]
    on_result: ResultHook | None


class _RemoteLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['remote'] if self.extra else '?'}: {msg}", kwargs


class Connection(asyncio.Protocol):
    """A live connection; make one with :meth:`open`."""

    def __init__(self, remote: str, *, on_notify: Notify, on_lost: LostHook,
                 max_message_bytes: int, max_depth: int) -> None:
        self.remote = remote
        self.echo_replies = 0
        self._framer = MessageReader(max_message_bytes, max_depth)
        self._on_notify = on_notify
        self._on_lost = on_lost
        self._pending: dict[RequestId, _Pending] = {}
        self._next_id = 0
        self._lost: OvsdbError | None = None
        self._transport: asyncio.Transport | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._log = _RemoteLogger(_log, {"remote": remote})
        self._debug = self._log.isEnabledFor(logging.DEBUG)
        self.last_received = asyncio.get_running_loop().time()

    @classmethod
    async def open(cls, remote: Remote, *, on_notify: Notify, on_lost: LostHook,
                   max_message_bytes: int, max_depth: int) -> Connection:
        return await remote.connect(lambda: cls(
            str(remote), on_notify=on_notify, on_lost=on_lost,
            max_message_bytes=max_message_bytes, max_depth=max_depth))

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    @property
    def lost(self) -> OvsdbError | None:
        """Why the connection ended, or None while it is up."""
        return self._lost

    async def call(self, method: str, params: list[Any], timeout: float, *,
                   request_id: RequestId | None = None,
                   on_result: ResultHook | None = None) -> Any:
        """Send a request and wait at most ``timeout`` seconds for its result.

        ``on_result`` runs as the result is received, before any later
        message is handled; if it raises ValueShapeError the result is
        refused as a protocol error.
        """
        [result] = await self.call_many([Request(method, params, request_id, on_result)],
                                        timeout)
        return result

    async def call_many(self, requests: Sequence[Request], timeout: float, *,
                        return_exceptions: bool = False) -> list[Any]:
        """Send several requests in one write (pipelined); their results, in order.

        The first failure (in request order) is raised, or with
        ``return_exceptions`` each failure is returned in its request's place;
        a timeout covers them all.
        """
        if self._lost is not None:
            raise OvsdbConnectionError(f"{self.remote}: not connected ({self._lost})")
        loop = asyncio.get_running_loop()
        ids: list[RequestId] = []
        futures: list[asyncio.Future[Any]] = []
        data = bytearray()
        for request in requests:
            request_id = request.request_id
            if request_id is None:
                self._next_id += 1
                request_id = self._next_id
            if request_id in self._pending or request_id in ids:
                raise OvsdbError(f"{self.remote}: request id {request_id!r} is already in use")
            future: asyncio.Future[Any] = loop.create_future()
            self._pending[request_id] = _Pending(request.method, future, request.on_result)
            ids.append(request_id)
            futures.append(future)
            data += self._encode({"method": request.method, "params": request.params,
                                  "id": request_id})
        timers = [loop.call_later(timeout, self._expire, request_id, timeout)
                  for request_id in ids]
        try:
            self._write(bytes(data))
            if not return_exceptions:
                return [await future for future in futures]
            await asyncio.wait(futures)
            return [future.exception() or future.result() for future in futures]
        finally:
            for timer in timers:
                timer.cancel()
            for request_id, future in zip(ids, futures, strict=True):
                self._pending.pop(request_id, None)
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: a later failure is not "never retrieved"

    def _expire(self, request_id: RequestId, timeout: float) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(OvsdbTimeoutError(self.remote, pending.method, timeout))

    async def close(self, reason: OvsdbError | None = None) -> None:
        """Close the stream; pending calls fail with ``reason`` ("closed by the client")."""
        self._lose(reason or OvsdbConnectionError(f"{self.remote}: connection closed by the "
                                                  "client"))
        # connection_lost follows once what we wrote is flushed; a peer that
        # never reads must not hold us: abort after a bound.
        try:
            await asyncio.wait_for(self._closed, CLOSE_TIMEOUT)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._lost is not None:
            return
        self.last_received = asyncio.get_running_loop().time()
        try:
            for message in self._framer.feed(data):
                self._dispatch(message)
                if self._lost is not None:
                    return
        except FramingError as error:
            self._refuse(OvsdbProtocolError(self.remote, str(error)))
        except OvsdbProtocolError as error:
            self._refuse(error)
        except Exception as error:  # pending calls must never hang on a bug
            self._log.exception("unexpected error handling a message")
            self._refuse(OvsdbProtocolError(self.remote, f"unexpected error: {error!r}"))

    def eof_received(self) -> bool:
        self._lose(OvsdbConnectionError(f"{self.remote}: connection closed by the server"))
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if error is None:
            self._lose(OvsdbConnectionError(f"{self.remote}: connection closed"))
        else:
            self._lose(OvsdbConnectionError(f"{self.remote}: connection lost "
                                            f"({describe(error)})"))
        if not self._closed.done():
            self._closed.set_result(None)

    # -- messages ---------------------------------------------------------------

    def _dispatch(self, message: dict[str, Any]) -> None:
        if self._debug:
            self._log.debug("<-- %.500s", message)
        method = message.get("method")
        if method is not None:
            self._request(method, message.get("params"), message.get("id"))
            return
        request_id = message.get("id")
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            raise OvsdbProtocolError(self.remote, "a message that is neither a request nor "
                                     "a response")
        pending = self._pending.get(request_id)
        if pending is None or pending.future.done():
            self._log.debug("late or unknown reply to id %r ignored", request_id)
            return
        error = message.get("error")
        if error is not None:
            pending.future.set_exception(self._request_error(pending.method, error))
            return
        result = message.get("result")
        if pending.on_result is not None:
            try:
                pending.on_result(result)
            except ValueShapeError as shape:
                raise OvsdbProtocolError(self.remote, f"{pending.method} answer: "
                                         f"{shape}") from None
        pending.future.set_result(result)

    def _request(self, method: object, params: object, request_id: object) -> None:
        if not isinstance(method, str) or not isinstance(params, list):
            raise OvsdbProtocolError(self.remote, "a request without a method name or params")
        if request_id is None:
            try:
                self._on_notify(method, params)
            except ValueShapeError as shape:
                raise OvsdbProtocolError(self.remote, f"{method} notification: "
                                         f"{shape}") from None
            return
        if method == "echo":
            self.echo_replies += 1
            self._send({"id": request_id, "result": params, "error": None})
        else:
            self._send({"id": request_id, "result": None, "error": f"unknown method {method}"})

    def _request_error(self, method: str, error: object) -> OvsdbRequestError:
        if isinstance(error, dict):
            return OvsdbRequestError(self.remote, method, str(error.get("error", error))[:200],
                                     _text(error.get("details")))
        return OvsdbRequestError(self.remote, method, str(error)[:200])

    def _encode(self, message: dict[str, Any]) -> bytes:
        if self._debug:
            self._log.debug("--> %.500s", message)
        return encode(message)

    def _send(self, message: dict[str, Any]) -> None:
        self._write(self._encode(message))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _refuse(self, reason: OvsdbError) -> None:
        self._log.error("closing the connection: %s", reason)
        self._lose(reason)

    def _lose(self, reason: OvsdbError) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(OvsdbConnectionError(
                    f"{self.remote}: connection lost while waiting for the reply to "
                    f"{pending.method} ({_cause(reason)})"))
        if self._transport is not None:
            self._transport.close()
        elif not self._closed.done():
            self._closed.set_result(None)
        self._on_lost(self, reason)


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:200]


def _cause(reason: OvsdbError) -> str:
    text = str(reason)
    return text.split(": ", 1)[1] if ": " in text else text
