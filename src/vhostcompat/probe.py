"""``vhostcompat probe``: ask any vhost-user backend what it offers, as a frontend.

The probe connects to a backend's socket and asks, in QEMU's order:

1. GET_FEATURES (the virtio feature word);
2. GET_PROTOCOL_FEATURES, when VHOST_USER_F_PROTOCOL_FEATURES is offered;
3. GET_QUEUE_NUM, when the MQ protocol feature is offered. Our own session
   (like a strict backend) only allows it once MQ is negotiated, so the
   probe first sends SET_PROTOCOL_FEATURES with MQ alone: the narrowest ack
   that makes the question legal, and per-connection state only;
4. SET_OWNER only with ``set_owner=True``, followed by GET_FEATURES as a
   barrier (its answer proves the backend took SET_OWNER without closing).

It never sends a memory table, a ring or SET_FEATURES: the backend is left
unconfigured, and closing the connection discards what little was said.
Every reply goes through a front-end :class:`~vhostcompat.vhostuser.Session`,
so a malformed answer is refused with the reason, never trusted.

:func:`migration_blockers` says what stops QEMU from migrating a VM on a
backend with a given offer (FIELD-NOTES: VHOST_F_LOG_ALL and the LOG_SHMFD
protocol feature); the reference backend warns with the same words.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable

from vhostcompat.errors import VhostCompatError
from vhostcompat.features import ProtocolFeature, VirtioFeature, names
from vhostcompat.profiles import feature_labels
from vhostcompat.transport import FdConnection, MessageConnection, connect
from vhostcompat.vhostuser import (
    EMPTY,
    U64,
    Channel,
    FrontendRequest,
    Message,
    Payload,
    Role,
    Session,
    close_fds,
)

DEFAULT_TIMEOUT = 5.0
_F = FrontendRequest


class ProbeError(VhostCompatError):
    """A backend that could not be probed: names the socket, the step and why."""

    def __init__(self, path: str, step: str, reason: str) -> None:
        self.path = path
        self.step = step
        self.reason = reason
        super().__init__(f"probe of {path}: {step}: {reason}")


def migration_blockers(features: VirtioFeature,
                       protocol_features: ProtocolFeature | None) -> list[str]:
    """Why QEMU would refuse to migrate a VM on a backend offering this; [] if ready."""
    blockers = []
    if VirtioFeature.VHOST_F_LOG_ALL not in features:
        blockers.append("lacks VHOST_F_LOG_ALL (no dirty page logging)")
    if VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES not in features:
        blockers.append("lacks VHOST_USER_F_PROTOCOL_FEATURES (so no LOG_SHMFD)")
    elif protocol_features is None or ProtocolFeature.LOG_SHMFD not in protocol_features:
        blockers.append("lacks LOG_SHMFD (the dirty log cannot be shared)")
    return blockers


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What a backend offered to the probe."""

    socket: str
    features: VirtioFeature
    protocol_features: ProtocolFeature | None
    """None when VHOST_USER_F_PROTOCOL_FEATURES is not offered."""
    queue_pairs: int | None
    """GET_QUEUE_NUM's answer; None when the MQ protocol feature is not offered."""
    owner_set: bool = False

    @property
    def migration_blockers(self) -> list[str]:
        return migration_blockers(self.features, self.protocol_features)

    def migration_line(self) -> str:
        blockers = self.migration_blockers
        return "migration: ready" if not blockers else \
            "migration: blocked: " + "; ".join(blockers)

    def lines(self) -> list[str]:
        out = [f"socket: {self.socket}", f"features: {int(self.features):#x}"]
        out += [f"  {label}" for label in feature_labels(self.features)]
        if self.protocol_features is None:
            out.append("protocol features: not offered (no VHOST_USER_F_PROTOCOL_FEATURES)")
        else:
            out.append(f"protocol features: {int(self.protocol_features):#x}")
            out += [f"  {label}" for label in feature_labels(self.protocol_features)]
        if self.queue_pairs is None:
            out.append("queue pairs: not reported (no MQ protocol feature)")
        else:
            out.append(f"queue pairs: {self.queue_pairs}")
        if self.owner_set:
            out.append("owner: set (SET_OWNER sent)")
        out.append(self.migration_line())
        return out

    def to_json(self) -> dict[str, object]:
        protocol: dict[str, object] | None = None
        if self.protocol_features is not None:
            protocol = {"mask": f"{int(self.protocol_features):#x}",
                        "names": names(self.protocol_features, ProtocolFeature)}
        return {
            "socket": self.socket,
            "features": {"mask": f"{int(self.features):#x}",
                         "names": names(self.features, VirtioFeature)},
            "protocol_features": protocol,
            "queue_pairs": self.queue_pairs,
            "owner_set": self.owner_set,
            "migration": {"ready": not self.migration_blockers,
                          "blockers": self.migration_blockers},
        }


class _Prober:
    """One probe connection: every request checked by a front-end session."""

    def __init__(self, path: str, messages: MessageConnection) -> None:
        self.path = path
        self.messages = messages
        self.session = Session(Role.FRONTEND)
        self.step = "connect"

    async def ask(self, request: FrontendRequest, payload: Payload = EMPTY) -> Payload | None:
        """Send a request; its reply's payload if one is owed, else None."""
        self.step = request.name
        message = Message(request, payload)
        self.session.send(message)
        await self.messages.send_message(message)
        if not self.session.reply_expected(message):
            return None
        reply = await self.messages.recv_message()
        if reply is None:
            raise ProbeError(self.path, request.name, "the backend closed the connection "
                             "instead of answering")
        close_fds(reply.fds)
        self.session.receive(reply)
        return reply.payload

    async def ask_u64(self, request: FrontendRequest, payload: Payload = EMPTY) -> int:
        answer = await self.ask(request, payload)
        if not isinstance(answer, U64):
            raise ProbeError(self.path, request.name, f"answered {answer!r}, not a u64")
        return answer.value

    async def run(self, set_owner: bool) -> ProbeResult:
        features = VirtioFeature(await self.ask_u64(_F.GET_FEATURES))
        protocol: ProtocolFeature | None = None
        queue_pairs: int | None = None
        if VirtioFeature.VHOST_USER_F_PROTOCOL_FEATURES in features:
            protocol = ProtocolFeature(await self.ask_u64(_F.GET_PROTOCOL_FEATURES))
            if ProtocolFeature.MQ in protocol:
                await self.ask(_F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.MQ))
                queue_pairs = await self.ask_u64(_F.GET_QUEUE_NUM)
        if set_owner:
            await self.ask(_F.SET_OWNER)
            again = VirtioFeature(await self.ask_u64(_F.GET_FEATURES))
            if again != features:
                raise ProbeError(self.path, "GET_FEATURES", f"answered {int(again):#x} after "
                                 f"SET_OWNER, {int(features):#x} before")
        return ProbeResult(self.path, features, protocol, queue_pairs, set_owner)


async def probe(path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT,
                set_owner: bool = False) -> ProbeResult:
    """Probe the backend listening on ``path``, all within ``timeout`` seconds.

    Raises :class:`ProbeError` (or the transport's ConnectError when nobody
    listens) with a one-line reason.
    """
    where = os.fspath(path)

    async def connected() -> FdConnection:
        return await connect(where, name="probe")

    return await probe_connection(connected, where, timeout=timeout, set_owner=set_owner)


async def probe_connection(connection: Callable[[], Awaitable[FdConnection]], where: str, *,
                           timeout: float = DEFAULT_TIMEOUT,
                           set_owner: bool = False) -> ProbeResult:
    """Probe, as a front-end, over the connection ``connection()`` gives (closed after).

    The connection may be one the probe made, or one a backend made to a
    socket of ours (an OVS ``dpdkvhostuserclient`` port): the front-end
    side of the protocol is the same. Everything within ``timeout`` seconds.
    """
    prober: _Prober | None = None
    try:
        async with asyncio.timeout(timeout):
            prober = _Prober(where, MessageConnection(await connection(), Channel.FRONTEND,
                                                      Role.FRONTEND))
            try:
                return await prober.run(set_owner)
            finally:
                prober.messages.close()
    except TimeoutError:
        step = prober.step if prober else "connect"
        raise ProbeError(where, step, f"no answer within {timeout:g}s") from None
    except ProbeError:
        raise
    except VhostCompatError as error:
        if prober is None:
            raise  # cannot connect: the transport's message says it all
        raise ProbeError(where, prober.step, str(error)) from error

