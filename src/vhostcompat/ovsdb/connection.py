"""One JSON-RPC connection to one OVSDB remote: calls, echo replies, notifications.

A :class:`Connection` owns one stream and one reader task. Calls are sent
with an id and wait (bounded) for the response with that id. Requests from
the server are answered at once: ``echo`` (ovsdb-server's inactivity probe:
a client that does not answer is disconnected) with its own params, any
other method with an error. Notifications (``update``) go to the owner's
callback, which runs inside the reader, before the next message is read, so
a monitor's initial rows are always delivered before its first change.

When the connection ends, for whatever reason (the server closed it, a
socket error, a message we refuse, :meth:`close`), every pending call fails
with :class:`OvsdbConnectionError` naming the call and the reason, and the
owner's ``on_lost`` callback is told once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
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
from vhostcompat.ovsdb.values import ValueShapeError

_log = logging.getLogger("vhostcompat.ovsdb")

READ_CHUNK = 256 * 1024
RequestId = int | str
ResultHook = Callable[[Any], None]
Notify = Callable[[str, Any], None]


@dataclass
class _Pending:
    method: str
    future: asyncio.Future[Any]
    on_result: ResultHook | None


class _RemoteLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['remote'] if self.extra else '?'}: {msg}", kwargs


class Connection:
    """A live connection; build it with :meth:`open`."""

    def __init__(self, remote: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, on_notify: Notify, on_lost: Callable[[Connection, OvsdbError], None],
                 max_message_bytes: int, max_depth: int) -> None:
        self.remote = remote
        self.echo_replies = 0
        self._reader = reader
        self._writer = writer
        self._framer = MessageReader(max_message_bytes, max_depth)
        self._on_notify = on_notify
        self._on_lost = on_lost
        self._pending: dict[RequestId, _Pending] = {}
        self._next_id = 0
        self._lost: OvsdbError | None = None
        self._log = _RemoteLogger(_log, {"remote": remote})
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @property
    def lost(self) -> OvsdbError | None:
        """Why the connection ended, or None while it is up."""
        return self._lost

    async def call(self, method: str, params: list[Any], timeout: float, *,
                   request_id: RequestId | None = None,
                   on_result: ResultHook | None = None) -> Any:
        """Send a request and wait at most ``timeout`` seconds for its result.

        ``on_result`` runs in the reader on a successful result, before any
        later message is handled; if it raises ValueShapeError the result is
        refused as a protocol error.
        """
        if self._lost is not None:
            raise OvsdbConnectionError(f"{self.remote}: not connected ({self._lost})")
        if request_id is None:
            self._next_id += 1
            request_id = self._next_id
        if request_id in self._pending:
            raise OvsdbError(f"{self.remote}: request id {request_id!r} is already in use")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(method, future, on_result)
        try:
            self._send({"method": method, "params": params, "id": request_id})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise OvsdbTimeoutError(self.remote, method, timeout) from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        """Close the stream; pending calls fail with "client closed"."""
        self._lose(OvsdbConnectionError(f"{self.remote}: connection closed by the client"))
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # -- the reader ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason: OvsdbError
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    reason = OvsdbConnectionError(f"{self.remote}: connection closed by the "
                                                  "server")
                    break
                for message in self._framer.feed(data):
                    self._dispatch(message)
        except FramingError as error:
            reason = OvsdbProtocolError(self.remote, str(error))
        except OvsdbProtocolError as error:
            reason = error
        except OSError as error:
            reason = OvsdbConnectionError(f"{self.remote}: connection lost ({describe(error)})")
        except Exception as error:  # pending calls must never hang on a bug
            self._log.exception("unexpected error handling a message")
            reason = OvsdbProtocolError(self.remote, f"unexpected error: {error!r}")
        if not isinstance(reason, OvsdbConnectionError):
            self._log.error("closing the connection: %s", reason)
        self._lose(reason)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
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
        if pending is None:
            self._log.debug("late or unknown reply to id %r ignored", request_id)
            return
        if pending.future.done():
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

    def _send(self, message: dict[str, Any]) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("--> %.500s", message)
        try:
            self._writer.write(encode(message))
        except (OSError, RuntimeError) as error:
            # A transport closing under us; the reader reports the loss.
            self._log.debug("write failed: %s", error)

    def _lose(self, reason: OvsdbError) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(OvsdbConnectionError(
                    f"{self.remote}: connection lost while waiting for the reply to "
                    f"{pending.method} ({_cause(reason)})"))
        self._writer.close()
        self._on_lost(self, reason)


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:200]


def _cause(reason: OvsdbError) -> str:
    text = str(reason)
    return text.split(": ", 1)[1] if ": " in text else text
