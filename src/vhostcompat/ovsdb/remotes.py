"""OVSDB remote strings: ``unix:PATH``, ``tcp:IP:PORT``, and comma-separated lists.

The syntax is ovsdb-server's and ovs-vsctl's (``--db=``): ``tcp:127.0.0.1:6640``,
``tcp:[::1]:6640``, ``unix:/var/run/openvswitch/db.sock``. A list such as
``tcp:127.0.0.1:6641,tcp:127.0.0.1:6642,unix:/run/db.sock`` names the members
of one database (a Raft cluster, or fall-backs): the client tries each in
turn. TCP remotes take an IP address, never a name (no DNS lookup behind a
migration decision). ``ssl:`` and the passive forms (``punix:``, ``ptcp:``)
are refused with a reason, as is anything else that does not parse.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
from dataclasses import dataclass

from vhostcompat.ovsdb.errors import OvsdbRemoteError

ACTIVE_SCHEMES = ("unix:", "tcp:")
OTHER_SCHEMES = ("ssl:", "punix:", "ptcp:", "pssl:")
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
# A Unix listener whose backlog is full refuses a non-blocking connect with
# EAGAIN (nothing is queued): try again, this soon at first, doubling.
BACKLOG_RETRY_FIRST = 0.001
BACKLOG_RETRY_MAX = 0.05


@dataclass(frozen=True)
class Remote:
    """One active remote: a Unix socket path, or a TCP address and port."""

    scheme: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"

    async def open_socket(self) -> socket.socket:
        """A connected non-blocking socket to this remote (bound by the caller's timeout).

        A Unix socket connects at once when the server listens (one system
        call, no event-loop step); a full backlog is retried with a short
        doubling backoff. A TCP socket connects through the event loop, with
        Nagle off (every OVSDB message is one write, answered before the next).
        """
        if self.scheme == "unix":
            return await _connect_unix(self.path)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return sock


async def _connect_unix(path: str) -> socket.socket:
    delay = BACKLOG_RETRY_FIRST
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError as error:
            sock.close()
            if error.errno != errno.EAGAIN:
                raise
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(delay)  # a retry backoff, bounded by the caller's timeout
        delay = min(delay * 2, BACKLOG_RETRY_MAX)


def looks_like_remote(address: str) -> bool:
    """Does ``address`` use an OVSDB remote syntax (rather than a filesystem path)?"""
    return address.strip().startswith(ACTIVE_SCHEMES + OTHER_SCHEMES)


def parse_remote(text: str) -> Remote:
    """One member: ``unix:PATH`` or ``tcp:IP:PORT``; :class:`OvsdbRemoteError` otherwise."""
    member = text.strip()
    if member.startswith("unix:"):
        path = member[len("unix:"):]
        if not path:
            raise OvsdbRemoteError(text, "unix: needs a socket path")
        if len(path.encode()) > MAX_UNIX_PATH:
            raise OvsdbRemoteError(text, f"socket path longer than {MAX_UNIX_PATH} bytes")
        if "\0" in path:
            raise OvsdbRemoteError(text, "socket path holds a NUL byte")
        return Remote("unix", path=path)
    if member.startswith("tcp:"):
        return _parse_tcp(text, member[len("tcp:"):])
    if member.startswith(OTHER_SCHEMES):
        scheme = member.split(":", 1)[0]
        raise OvsdbRemoteError(text, f"{scheme}: is not supported (use unix:PATH or "
                               "tcp:IP:PORT)")
    raise OvsdbRemoteError(text, "expected unix:PATH or tcp:IP:PORT")


def _parse_tcp(text: str, rest: str) -> Remote:
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]:")
        if not bracket:
            raise OvsdbRemoteError(text, "expected tcp:[IPv6]:PORT")
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise OvsdbRemoteError(text, "expected tcp:IP:PORT")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise OvsdbRemoteError(text, f"{host!r} is not an IP address") from None
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or not (
            0 < int(port_text) < 65536):
        raise OvsdbRemoteError(text, f"port {port_text!r} is not 1-65535")
    return Remote("tcp", host=str(address), port=int(port_text))


def parse_remotes(text: str) -> tuple[Remote, ...]:
    """A comma-separated list of members, in the order given; duplicates refused."""
    return _parse_remotes(text)


@functools.lru_cache(maxsize=4096)  # a fleet query parses each host's remote more than once
def _parse_remotes(text: str) -> tuple[Remote, ...]:
    if not text or not text.strip():
        raise OvsdbRemoteError(text, "empty remote")
    remotes = tuple(parse_remote(member) if member.strip() else _empty_member(text)
                    for member in text.split(","))
    if len(set(remotes)) != len(remotes):
        raise OvsdbRemoteError(text, "a member is listed twice")
    return remotes


def _empty_member(text: str) -> Remote:
    raise OvsdbRemoteError(text, "empty member in the list")


def format_remotes(remotes: tuple[Remote, ...]) -> str:
    return ",".join(str(remote) for remote in remotes)
