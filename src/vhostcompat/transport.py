"""asyncio Unix stream sockets that carry fds (SCM_RIGHTS) for vhost-user.

asyncio streams cannot pass fds, so :class:`FdConnection` drives a
non-blocking ``AF_UNIX``/``SOCK_STREAM`` socket itself with
``loop.add_reader``/``add_writer`` and ``recvmsg``/``sendmsg``. Both socket
roles are here: :func:`listen` (server) and :func:`connect` (client, with
retries and exponential backoff; call it again to reconnect).
:class:`MessageConnection` pairs a connection with the sans-IO codec of
:mod:`vhostcompat.vhostuser` and speaks in messages.

Fd ownership: fds returned by :meth:`FdConnection.recv` belong to the
caller; fds given to :meth:`FdConnection.send` stay the caller's (the kernel
duplicates them into the peer). Every error path closes the fds that
arrived with it. Received fds are close-on-exec, so child processes (QEMU,
testpmd) never inherit them.

Each connection logs to this module's logger, every line prefixed with the
connection's name (:class:`ConnectionLog`): ``NAME: --> message`` /
``NAME: <-- message`` at DEBUG, one line at ERROR when a handler fails.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import errno
import logging
import math
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeAlias

from vhostcompat.errors import InputError, RemoteProtocolError, VhostCompatError
from vhostcompat.vhostuser.codec import Decoder, Message, close_fds, encode
from vhostcompat.vhostuser.requests import MAX_FDS, Channel, Role

_log = logging.getLogger(__name__)

RECV_SIZE = 65536
# Room for exactly MAX_FDS fds: a peer sending more gets MSG_CTRUNC.
_FD_ITEM = array.array("i").itemsize
ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_FDS * _FD_ITEM)
# Plain ints: ``int & socket.MSG_CTRUNC`` runs the IntFlag's Python operator.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """``logger``'s lines, each prefixed with ``label`` (a connection's name).

    Loggers are never freed: a child logger per connection would grow the
    logging registry with every reconnect a long-lived proxy or backend
    sees, so connections share their module's logger and carry their name
    in the message instead.
    """

    def __init__(self, logger: logging.Logger, label: str) -> None:
        super().__init__(logger, {"connection": label})
        self.label = label

    def process(self, msg: Any, kwargs: MutableMapping[str, Any],
                ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{self.label}: {msg}", kwargs


Log: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger]
"""Where a connection, a device or a relay logs: a logger, or a labelled one."""


class TransportError(VhostCompatError):
    """A socket-level failure (reset, broken pipe, use after close)."""


class ConnectionClosedError(TransportError):
    """The connection was closed (by us) while or before it was used."""


class ConnectError(TransportError):
    """No connection could be made to a socket path."""

    def __init__(self, path: str, attempts: int, cause: OSError) -> None:
        self.path = path
        self.attempts = attempts
        self.cause = cause
        plural = "s" if attempts != 1 else ""
        super().__init__(f"cannot connect to {path}: {cause.strerror or cause} "
                         f"({attempts} attempt{plural})")


class SocketPathError(TransportError, InputError):
    """A socket path we refuse to use (too long, a regular file, a symlink, in use)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"socket path {path}: {reason}")


class FdTransferError(RemoteProtocolError):
    """The peer's ancillary data was unusable (too many fds, truncated)."""


class PeerStalledError(RemoteProtocolError):
    """The peer sent no message in time after connecting, or stopped mid-message."""


@dataclasses.dataclass(frozen=True)
class StallTimeouts:
    """How long a peer may take (seconds; None: forever).

    ``first_message``: from connecting to its first complete message (a
    front-end speaks first: QEMU sends GET_FEATURES within milliseconds);
    ``message``: from a message's first byte to its last. An idle peer
    between messages is never timed out: a running VM sends nothing for days.
    """

    first_message: float | None = None
    message: float | None = None

    def __post_init__(self) -> None:
        for name in ("first_message", "message"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise InputError(f"{name.replace('_', ' ')} timeout must be a positive "
                                 f"number of seconds, not {value}")


DEFAULT_STALL_TIMEOUTS = StallTimeouts(first_message=10.0, message=5.0)


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[:len(data) - len(data) % _FD_ITEM])
            fds.extend(received)
        else:
            _log.debug("ignoring ancillary data level %d type %d", level, kind)
    return fds


class FdConnection:
    """One connected Unix stream socket, with fds.

    One :meth:`recv` and one :meth:`send` may run at a time each (locks
    serialise concurrent callers); :meth:`close` wakes both with
    :class:`ConnectionClosedError`. A call that finds the socket ready (the
    bytes already there, room to send them all) and nobody ahead of it is
    done at once, without the lock: only waiting needs it.
    """

    def __init__(self, sock: socket.socket, *, name: str = "") -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._recv_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        # Callers holding or waiting for each lock: the lock-free attempt is
        # only for a caller with nobody ahead of it.
        self._receivers = self._senders = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._read_waiter: asyncio.Future[None] | None = None
        self._reading = False  # whether our reader is registered with the loop
        self._closed = False
        self.name = name or f"fd{self._fd}"
        self.log = ConnectionLog(_log, self.name)

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return self._fd

    async def recv(self, bufsize: int = RECV_SIZE) -> tuple[bytes, list[int]]:
        """Bytes and the fds that came with them; ``b""`` means the peer closed."""
        tried = not self._receivers
        if tried:
            received = self._try_recv(bufsize)
            if received is not None:
                return received
        self._receivers += 1
        try:
            async with self._recv_lock:
                # Just tried (and nobody can have been ahead): wait before trying again.
                if tried:
                    await self._wait(readable=True)
                while (received := self._try_recv(bufsize)) is None:
                    await self._wait(readable=True)
                return received
        finally:
            self._receivers -= 1

    def _try_recv(self, bufsize: int) -> tuple[bytes, list[int]] | None:
        """One ``recvmsg``; None if nothing is there yet."""
        self._check_open()
        try:
            data, ancdata, msg_flags, _ = self._sock.recvmsg(
                bufsize, ANCILLARY_SIZE, _MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as error:
            raise TransportError(
                f"{self.name}: receive failed: {error.strerror or error}") from error
        fds = _fds_from(ancdata) if ancdata else []
        if msg_flags & _MSG_CTRUNC:
            # The kernel dropped the fds that did not fit; close the rest.
            close_fds(fds)
            raise FdTransferError(
                f"{self.name}: ancillary data truncated (more than {MAX_FDS} fds "
                "in one message)")
        return data, fds

    async def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send all of ``data``; ``fds`` travel with its first byte (not closed)."""
        if fds and not data:
            raise TransportError(f"{self.name}: fds need at least one byte to travel with")
        if len(fds) > MAX_FDS:
            raise TransportError(f"{self.name}: {len(fds)} fds (at most {MAX_FDS})")
        view = memoryview(data)
        if not view:
            return
        if not self._senders:
            sent = self._try_send(view, fds)
            if sent == len(view):
                return
            if sent:
                view, fds = view[sent:], ()
        self._senders += 1
        try:
            async with self._send_lock:
                while view:
                    sent = self._try_send(view, fds)
                    if sent:
                        view, fds = view[sent:], ()
                    else:
                        await self._wait(readable=False)
        finally:
            self._senders -= 1

    @property
    def sending(self) -> bool:
        """Whether a :meth:`send` is waiting to finish (a new one would queue behind it)."""
        return self._senders > 0

    def send_nowait(self, data: bytes, fds: Sequence[int] = ()) -> int:
        """Send what the socket takes now, without waiting: how many bytes (``fds``
        went with the first, if any went). Only when no :meth:`send` is
        :attr:`sending`: bytes must not overtake those."""
        if self._senders:
            raise TransportError(f"{self.name}: a send is still in progress")
        if len(fds) > MAX_FDS:
            raise TransportError(f"{self.name}: {len(fds)} fds (at most {MAX_FDS})")
        if not data:
            if fds:
                raise TransportError(f"{self.name}: fds need at least one byte to travel with")
            return 0
        return self._try_send(data, fds)

    def _try_send(self, view: bytes | memoryview, fds: Sequence[int]) -> int:
        """One ``sendmsg`` (``fds`` with its first byte); bytes sent, 0 if no room."""
        if self._closed:
            raise ConnectionClosedError(f"{self.name}: connection closed")
        try:
            if fds:
                return self._sock.sendmsg(
                    [view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            return self._sock.send(view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            raise TransportError(
                f"{self.name}: send failed: {error.strerror or error}") from error

    def close(self) -> None:
        """Close the socket and wake any waiting recv/send with ConnectionClosedError."""
        if self._closed:
            return
        self._closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionClosedError(f"{self.name}: connection closed"))
        self._sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError(f"{self.name}: connection closed")

    async def _wait(self, *, readable: bool) -> None:
        if readable:
            await self._wait_readable()
            return
        waiter: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._loop.add_writer(self._fd, wake)
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if not self._closed:
                self._loop.remove_writer(self._fd)

    async def _wait_readable(self) -> None:
        """Wait until the socket is readable.

        The reader stays registered between waits: a relay waits for the
        next message right after handling one, and registering and
        unregistering with epoll around every message was a fifth of the
        relay's time. It is dropped when the socket becomes readable with
        nobody waiting (epoll is level-triggered: it would fire again and
        again).
        """
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._read_waiter = waiter
        if not self._reading:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if self._read_waiter is waiter:
                self._read_waiter = None

    def _on_readable(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif not self._closed:
            self._loop.remove_reader(self._fd)
            self._reading = False


def _check_path_length(path: str) -> None:
    if not path:
        raise SocketPathError(path, "empty path")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise SocketPathError(path, f"longer than {MAX_SOCKET_PATH} bytes "
                                    "(the Unix socket path limit)")


def _prepare_listen_path(path: str) -> None:
    """Refuse a path we must not replace; remove a stale socket left behind."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(status.st_mode):
        raise SocketPathError(path, "is a symbolic link; refusing to replace it")
    if not stat.S_ISSOCK(status.st_mode):
        raise SocketPathError(path, "exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        _log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except BlockingIOError:
        pass  # backlog full: someone is listening
    finally:
        probe.close()
    raise SocketPathError(path, "another process is listening on it")


Handler = Callable[[FdConnection], Awaitable[None]]


class Listener:
    """A listening socket that runs ``on_connection`` for every client.

    Each accepted connection is closed when its handler returns. A handler
    that fails is logged (one line at ERROR) and does not stop the listener.
    """

    def __init__(self, sock: socket.socket, path: str, on_connection: Handler) -> None:
        self.path = path
        self._sock = sock
        self._inode = os.stat(path).st_ino
        self._on_connection = on_connection
        self._handlers: set[asyncio.Task[None]] = set()
        self._count = 0
        # vhost.sock -> vhost_sock: connection names (vhost_sock#2) without dots.
        self.label = (os.path.basename(path) or "listener").replace(".", "_")
        self.log = ConnectionLog(_log, self.label)
        self._accepting = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self._sock)
            except OSError as error:
                # EMFILE and friends: say so and retry later instead of spinning.
                self.log.error("accept on %s failed: %s", self.path, error.strerror or error)
                await asyncio.sleep(0.1)
                continue
            self._count += 1
            connection = FdConnection(client, name=f"{self.label}#{self._count}")
            task = asyncio.create_task(self._run(connection))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _run(self, connection: FdConnection) -> None:
        try:
            await self._on_connection(connection)
        except VhostCompatError as error:
            connection.log.error("connection handler failed: %s", error)
        except Exception:
            connection.log.exception("connection handler crashed")
        finally:
            connection.close()

    @property
    def connections(self) -> int:
        """Handlers still running."""
        return len(self._handlers)

    def close(self) -> None:
        """Stop accepting, cancel the handlers, remove our socket file."""
        self._accepting.cancel()
        for task in self._handlers:
            task.cancel()
        self._sock.close()
        # Remove the path only if it is still our socket, not a successor's.
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    async def wait_closed(self) -> None:
        """Wait until the accept loop and every handler have finished."""
        await asyncio.gather(self._accepting, *self._handlers, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()


DEFAULT_SOCKET_MODE = 0o660


@dataclasses.dataclass(frozen=True)
class SocketPermissions:
    """Who may connect to a socket we listen on: its mode, and its group (a gid).

    Connecting to a Unix socket needs write permission on it. The default,
    0660, lets the owner and the socket's group in (the group is the
    process's unless ``group`` says otherwise) and nobody else, whatever the
    umask says.
    """

    mode: int = DEFAULT_SOCKET_MODE
    group: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.mode <= 0o777:
            raise InputError(f"socket mode {self.mode:#o} is not a permission mode "
                             "(0 to 0777)")


def _bind_with_permissions(sock: socket.socket, where: str,
                           permissions: SocketPermissions) -> None:
    """Bind ``sock`` to ``where`` with exactly ``permissions``, never anything wider.

    Linux gives a Unix socket's file the socket inode's mode less the umask:
    the inode is made owner-only (``fchmod``) before ``bind``, so whatever
    the umask, nobody but the owner can connect until the mode and group are
    set. It is bound in place, so ``ss -xl`` and /proc/net/unix show the real
    path.
    """
    os.fchmod(sock.fileno(), 0o600)
    sock.bind(where)
    _apply_permissions(where, permissions)


def _apply_permissions(path: str, permissions: SocketPermissions) -> None:
    if permissions.group is not None:
        os.chown(path, -1, permissions.group)
    os.chmod(path, permissions.mode)


async def listen(path: str | os.PathLike[str], on_connection: Handler, *,
                 backlog: int = 16, permissions: SocketPermissions | None = None) -> Listener:
    """Listen on a Unix socket path (the server role), with ``permissions``.

    A stale socket file is replaced; a regular file, a symlink, a socket
    someone listens on or a path over the length limit is refused with
    :class:`SocketPathError`. The socket gets ``permissions`` (default:
    :class:`SocketPermissions`'s 0660) whatever the umask.
    """
    where = os.fspath(path)
    _check_path_length(where)
    _prepare_listen_path(where)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        _bind_with_permissions(sock, where, permissions or SocketPermissions())
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise SocketPathError(where, f"cannot listen: {error.strerror or error}") from error
    return Listener(sock, where, on_connection)


async def connect(path: str | os.PathLike[str], *, retry_for: float = 0.0,
                  backoff: float = 0.05, max_backoff: float = 1.0,
                  name: str = "") -> FdConnection:
    """Connect to a Unix socket path (the client role).

    While nobody listens (no socket yet, connection refused, or a backlog
    full: asyncio would report that as connected, see _check_connected) retry for up
    to ``retry_for`` seconds, waiting ``backoff`` seconds after the first
    failure and doubling up to ``max_backoff``; then raise
    :class:`ConnectError`. A path that exists but is not a socket is refused
    at once with :class:`SocketPathError`.
    """
    where = os.fspath(path)
    _check_path_length(where)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    delay = backoff
    attempts = 0
    while True:
        attempts += 1
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.stat(where).st_mode):
                raise SocketPathError(where, "is not a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, where)
            _check_connected(sock)
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as error:
            sock.close()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ConnectError(where, attempts, error) from error
            _log.debug("connect to %s: %s; retrying in %.2fs", where, error.strerror,
                       min(delay, remaining))
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, max_backoff)
            continue
        except OSError as error:
            sock.close()
            raise ConnectError(where, attempts, error) from error
        except BaseException:
            sock.close()
            raise
        return FdConnection(sock, name=name)


def _check_connected(sock: socket.socket) -> None:
    """Raise BlockingIOError unless ``sock`` really is connected.

    A non-blocking connect to a Unix socket whose backlog is full fails with
    EAGAIN, and asyncio then reports success once the socket is writable
    although it never connected: treat it as "try again".
    """
    try:
        sock.getpeername()
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            raise BlockingIOError(errno.EAGAIN, "the listener's backlog is full") from None
        raise


class MessageConnection:
    """vhost-user messages over an :class:`FdConnection`.

    ``role`` is ours and ``channel`` the socket's, e.g. a back-end's main
    socket is ``MessageConnection(conn, Channel.FRONTEND, Role.BACKEND)``: it
    receives front-end requests and sends replies.
    """

    def __init__(self, connection: FdConnection, channel: Channel, role: Role, *,
                 timeouts: StallTimeouts | None = None) -> None:
        self.connection = connection
        self.channel = channel
        self.role = role
        self.decoder = Decoder(channel, sender=role.peer)
        self._eof = False
        self.log: Log = connection.log
        self.timeouts = timeouts or StallTimeouts()
        self.received = 0
        loop = asyncio.get_running_loop()
        self._time = loop.time
        self._connected_at = loop.time()
        first = self.timeouts.first_message
        self._first_deadline = None if first is None else self._connected_at + first
        self._message_started: float | None = None
        self._message_deadline: float | None = None
        self._chunk_ns = self._chunk_cpu_ns = self._arrival_ns = 0
        self.cpu_clock: Callable[[], int] | None = None
        """Set (to ``time.thread_time_ns``) to stamp :attr:`received_cpu_ns` too."""
        self.received_cpu_ns = 0
        self.last_wire = b""
        """The bytes of the last message returned, as they came (header and payload)."""
        self.arrived_ns = 0
        """When the bytes completing the last message returned came in (monotonic ns)."""
        self.received_ns = 0
        """When the last message returned was there to handle (monotonic ns; see
        :meth:`recv_message`)."""

    @property
    def stall_deadline(self) -> float | None:
        """The loop time at which the peer is cut off for stalling, if it is running late."""
        if self.received == 0 and self._first_deadline is not None:
            if self._message_deadline is None:
                return self._first_deadline
            return min(self._first_deadline, self._message_deadline)
        return self._message_deadline

    def stalling_for(self) -> float:
        """Seconds the peer has owed us the rest of a message (or its first one); 0 if none."""
        if self.received == 0:
            since: float | None = self._connected_at
        elif self.decoder.buffered:
            since = self._message_started
        else:
            since = None
        return 0.0 if since is None else self._time() - since

    async def recv_message(self) -> Message | None:
        """The next message from the peer, or None once the peer closed cleanly.

        Raises :class:`~vhostcompat.errors.RemoteProtocolError` for a message
        the codec refuses (its fds closed) or a stream cut mid-message; the
        connection should then be closed.

        :attr:`received_ns` is then when the message was there for us to
        handle: when the bytes that completed it came in, or, for one that
        came in the same chunk as earlier ones, now (the caller was busy with
        those until now).
        """
        decoder = self.decoder
        if decoder.buffered:
            # The next message may be complete already (a burst in one chunk):
            # it is there to handle from now. Otherwise it is stamped when
            # the bytes completing it come in.
            self._stamp()
        while True:
            message = decoder.next_message()
            if message is not None:
                self.last_wire = decoder.last_wire
                self.received_ns = self._chunk_ns
                self.received_cpu_ns = self._chunk_cpu_ns
                self.arrived_ns = self._arrival_ns
                self.received += 1
                # The next message gets its own time.
                self._message_started = self._message_deadline = None
                if _log.isEnabledFor(logging.DEBUG):
                    self.log.debug("<-- %s", message)
                return message
            if self._eof:
                return None
            if decoder.buffered and self._message_started is None:
                self._message_started = self._time()
                if self.timeouts.message is not None:
                    self._message_deadline = self._message_started + self.timeouts.message
            try:
                data, fds = await self._recv_before(self.stall_deadline)
                self._stamp()
                self._arrival_ns = self._chunk_ns
            except VhostCompatError:
                # The stream is unusable from here on: release what the decoder holds.
                decoder.close()
                raise
            if not data:
                self._eof = True
                decoder.end_of_stream()
                return None
            decoder.feed(data, fds)

    def _stamp(self) -> None:
        self._chunk_ns = time.monotonic_ns()
        if self.cpu_clock is not None:
            self._chunk_cpu_ns = self.cpu_clock()

    async def _recv_before(self, deadline: float | None) -> tuple[bytes, list[int]]:
        if deadline is None:
            return await self.connection.recv()
        try:
            async with asyncio.timeout_at(deadline):
                return await self.connection.recv()
        except TimeoutError:
            raise self._stalled() from None

    def _stalled(self) -> PeerStalledError:
        if self.decoder.buffered:
            return PeerStalledError(
                f"stalled in the middle of a message ({self.decoder.buffered} bytes "
                f"received, nothing more for {self.timeouts.message:g} s); closing")
        return PeerStalledError(f"sent no message within {self.timeouts.first_message:g} s "
                                "of connecting; closing")

    async def send_message(self, message: Message, wire: bytes | None = None) -> None:
        """Encode and send ``message``; its fds stay the caller's.

        ``wire``: the message's bytes as they were received (:attr:`last_wire`
        of the connection it came from), to forward it unchanged without
        encoding it again.
        """
        data, fds = (wire, message.fds) if wire is not None else encode(message)
        if _log.isEnabledFor(logging.DEBUG):
            self.log.debug("--> %s", message)
        connection = self.connection
        if not connection._senders and len(fds) <= MAX_FDS:
            # Room for it all, most of the time: no further coroutine (too many
            # fds, or a send still waiting: send() refuses, or queues).
            sent = connection._try_send(data, fds)
            if sent == len(data):
                return
            if sent:
                data, fds = data[sent:], ()
        await connection.send(data, fds)

    def close(self) -> None:
        """Close the socket and any fds the decoder still holds."""
        self.decoder.close()
        self.connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.close()
