"""Serving the reference backend on a Unix socket: one task per connection.

:func:`serve_backend` listens on a path (the backend is the socket server,
QEMU's ``-chardev socket,path=...`` connects to it) and gives every accepted
connection its own task and its own :class:`~vhostcompat.backend.device.NetDevice`.
It logs to this module's logger, every line prefixed with the connection's
name (``vhost_sock#2: ...``; one logger for all, so that reconnections never
grow the logging registry). Requests and replies are logged at DEBUG
(``<-- request`` received, ``--> reply`` sent), negotiation milestones at INFO.

Whatever goes wrong on one connection (a message the codec or the session
refuses, a memory table out of bounds, an unsupported request) is logged as
one ERROR line naming the connection, its peer and the reason; that
connection is closed and everything its device holds is released (mappings
unmapped, eventfds closed). The listener and every other connection carry
on. A frontend that sends no message within the first-message timeout of
connecting, or stops in the middle of a message for longer than the
message timeout (:class:`~vhostcompat.transport.StallTimeouts`), is closed
the same way: stalled peers never hold fds for good.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

from vhostcompat.backend.config import BackendConfig
from vhostcompat.backend.device import NetDevice
from vhostcompat.errors import VhostCompatError
from vhostcompat.transport import (
    DEFAULT_STALL_TIMEOUTS,
    ConnectionLog,
    FdConnection,
    Listener,
    MessageConnection,
    SocketPermissions,
    StallTimeouts,
    listen,
)
from vhostcompat.vhostuser import Channel, Role

_log = logging.getLogger(__name__)
_PEER_CREDENTIALS = struct.Struct("3i")


def peer_description(connection: FdConnection) -> str:
    """``pid N`` of the process at the other end (SO_PEERCRED), for log lines."""
    try:
        with socket.socket(fileno=os.dup(connection.fileno())) as probe:
            raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                   _PEER_CREDENTIALS.size)
    except OSError as error:
        return f"unknown peer ({error.strerror})"
    pid, uid, _gid = _PEER_CREDENTIALS.unpack(raw)
    return f"peer pid {pid} uid {uid}"


@dataclasses.dataclass(frozen=True)
class ClosedConnection:
    """How one connection ended: ``reason`` is None when the frontend closed it."""

    name: str
    peer: str
    reason: str | None
    device: NetDevice


class BackendServer:
    """The reference backend listening on ``path``; see :func:`serve_backend`."""

    def __init__(self, config: BackendConfig, path: str | os.PathLike[str], *,
                 timeouts: StallTimeouts = DEFAULT_STALL_TIMEOUTS,
                 permissions: SocketPermissions | None = None) -> None:
        self.config = config
        self.socket_path = Path(path)
        self.timeouts = timeouts
        self.permissions = permissions
        self.devices: dict[str, NetDevice] = {}
        """The devices of the connections being served, by connection name."""
        self.closed: list[ClosedConnection] = []
        """Every connection that ended, in order, with its (closed) device."""
        self._listener: Listener | None = None

    async def start(self) -> None:
        for warning in self.config.warnings():
            _log.warning("%s", warning)
        self._listener = await listen(self.socket_path, self._serve,
                                      permissions=self.permissions)
        _log.info("listening on %s: %s", self.socket_path, self.config.describe())

    async def close(self) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None

    async def _serve(self, connection: FdConnection) -> None:
        log = ConnectionLog(_log, connection.name)
        peer = peer_description(connection)
        messages = MessageConnection(connection, Channel.FRONTEND, Role.BACKEND,
                                     timeouts=self.timeouts)
        messages.log = log
        device = NetDevice(self.config, log)
        self.devices[connection.name] = device
        log.info("connected: %s", peer)
        reason: str | None = None
        try:
            while (message := await messages.recv_message()) is not None:
                reply = device.handle(message)
                if reply is not None:
                    await messages.send_message(reply)
            log.info("%s closed the connection", peer)
        except VhostCompatError as error:
            reason = str(error)
            log.error("%s: closing the connection: %s", peer, error)
        finally:
            # Released before the socket closes: once the frontend sees EOF,
            # nothing of its connection is held here any more.
            device.close()
            del self.devices[connection.name]
            self.closed.append(ClosedConnection(connection.name, peer, reason, device))
            messages.close()


@contextlib.asynccontextmanager
async def serve_backend(config: BackendConfig, path: str | os.PathLike[str], *,
                        timeouts: StallTimeouts = DEFAULT_STALL_TIMEOUTS,
                        permissions: SocketPermissions | None = None,
                        ) -> AsyncIterator[BackendServer]:
    """Serve ``config``'s offer on the Unix socket ``path`` until the block exits."""
    server = BackendServer(config, path, timeouts=timeouts, permissions=permissions)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
