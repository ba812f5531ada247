"""One JSON-RPC connection to one OVSDB remote: calls, echo replies, notifications.

A :class:`Connection` owns one non-blocking socket, watched by the event
loop's reader callback: bytes go through the framer
(:mod:`vhostcompat.ovsdb.jsonrpc`) as they arrive and each message is handled
at once, inside that callback (no reader task, no transport: a one-shot read
of a host is one connect, one write and one wake-up, and closing it is one
system call, which is what lets a fleet of hundreds be read concurrently at
a small cost per host). What the kernel does not take at once is kept and
written when the socket is writable. Calls are sent with an id and wait,
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
import socket
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
from vhostcompat.ovsdb.jsonrpc import FramingError, MessageReader, encode, encode_json
from vhostcompat.ovsdb.remotes import Remote
from vhostcompat.ovsdb.values import ValueShapeError

_log = logging.getLogger("vhostcompat.ovsdb")

CLOSE_TIMEOUT = 5.0
RECV_SIZE = 256 * 1024
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
    encoded_params: bytes | None = None
    """``params`` as JSON already (a request sent to many servers is encoded once)."""


@dataclass
class _Pending:
    method: str
    future: asyncio.Future[Any]
    on_result: ResultHook | None


class _RemoteLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['remote'] if self.extra else '?'}: {msg}", kwargs


class Connection:
    """A live connection; make one with :meth:`open`."""

    def __init__(self, remote: str, sock: socket.socket, *, on_notify: Notify,
                 on_lost: LostHook, max_message_bytes: int, max_depth: int) -> None:
        """Take ``sock`` (connected, non-blocking) and start reading it."""
        loop = asyncio.get_running_loop()
        self.remote = remote
        self.echo_replies = 0
        self._framer = MessageReader(max_message_bytes, max_depth)
        self._on_notify = on_notify
        self._on_lost = on_lost
        self._pending: dict[RequestId, _Pending] = {}
        self._next_id = 0
        self._lost: OvsdbError | None = None
        self._log = _RemoteLogger(_log, {"remote": remote})
        self._debug = self._log.isEnabledFor(logging.DEBUG)
        self._loop = loop
        self.last_received = loop.time()
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._unsent = bytearray()  # what the kernel has not taken yet
        self._flushed: asyncio.Future[None] | None = None  # close() waiting for _unsent
        loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def open(cls, remote: Remote, *, on_notify: Notify, on_lost: LostHook,
                   max_message_bytes: int, max_depth: int) -> Connection:
        sock = await remote.open_socket()
        return cls(str(remote), sock, on_notify=on_notify, on_lost=on_lost,
                   max_message_bytes=max_message_bytes, max_depth=max_depth)

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
            if request.encoded_params is None:
                data += self._encode({"method": request.method, "params": request.params,
                                      "id": request_id})
            else:
                data += self._encode_with(request, request_id)
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
        """Close the stream; pending calls fail with ``reason`` ("closed by the client").

        What we wrote and the kernel has not taken yet is flushed first; a
        peer that never reads must not hold us: the socket is closed after
        :data:`CLOSE_TIMEOUT` seconds whatever is left.
        """
        if self._sock is not None and self._unsent and self._flushed is None:
            self._flushed = self._loop.create_future()
        self._lose(reason or OvsdbConnectionError(f"{self.remote}: connection closed by the "
                                                  "client"))
        if self._flushed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._flushed), CLOSE_TIMEOUT)
            except TimeoutError:
                pass
            finally:
                self._close_socket()

    # -- the socket -------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lose_to(error)
            return
        if not data:
            self._lose(OvsdbConnectionError(f"{self.remote}: connection closed by the server"))
            return
        self._received(data)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._unsent.clear()
            self._lose_to(error)
            self._close_socket()
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._loop.remove_writer(self._fd)
            if self._flushed is not None and not self._flushed.done():
                self._flushed.set_result(None)

    def _lose_to(self, error: OSError) -> None:
        """The socket failed: the connection is lost, naming why."""
        self._lose(OvsdbConnectionError(f"{self.remote}: connection lost ({describe(error)})"))

    def _close_socket(self) -> None:
        """Stop watching the socket and close it (once)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._unsent.clear()
        sock.close()
        if self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(None)

    def _received(self, data: bytes) -> None:
        if self._lost is not None:
            return
        self.last_received = self._loop.time()
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

    def _encode_with(self, request: Request, request_id: RequestId) -> bytes:
        """A request whose params are JSON already, framed the way :func:`encode` would."""
        assert request.encoded_params is not None
        if self._debug:
            self._log.debug("--> %.500s", {"method": request.method, "params": request.params,
                                           "id": request_id})
        return b"".join((b'{"method":', encode_json(request.method), b',"params":',
                         request.encoded_params, b',"id":', encode_json(request_id), b"}"))

    def _send(self, message: dict[str, Any]) -> None:
        self._write(self._encode(message))

    def _write(self, data: bytes) -> None:
        """Send ``data`` now, or what the kernel does not take once the socket is writable."""
        sock = self._sock
        if sock is None or self._lost is not None:
            return
        if self._unsent:
            self._unsent += data
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self._lose_to(error)
            return
        if sent < len(data):
            self._unsent += data[sent:]
            self._loop.add_writer(self._fd, self._on_writable)

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
        if self._flushed is None:
            # Nothing of ours is waiting to go out (or the peer is gone): close now.
            self._close_socket()
        else:
            self._loop.remove_reader(self._fd)  # nothing more is read; the flush goes on
        self._on_lost(self, reason)


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:200]


def _cause(reason: OvsdbError) -> str:
    text = str(reason)
    return text.split(": ", 1)[1] if ": " in text else text
