"""What a proxy reports: its state and what its interface negotiated.

A :class:`StatusBoard` is the proxy's live record (one per interface): the
mode, the state of the current connection, the back-end's answers and the
offers made from them, what the guest acked, the queue pairs and ring sizes
in use, and the latest refusals. Every change is published by a background
task, coalesced, to the sinks:

* :class:`StatusFile`: a JSON document written atomically (temporary file,
  rename), read back by ``vhostcompat proxy-status PATH``;
* :class:`HostStoreSink`: the Interface row of a host store
  (``external_ids:vhost-compat-acked-features`` etc., see
  :mod:`vhostcompat.hoststore`), where ``check-migration`` finds it.

Publishing never blocks the relay: changes within :data:`COALESCE` seconds
are published together, after the burst of messages that made them.

The status document (``--status-file``)::

    {"interface": "vhu0" | null, "profile": VERSION, "state": "running",
     "detail": "...", "frontend": "PATH (server)", "backend": "PATH (client)",
     "connections": 2, "pid": 1234, "updated": 1700000000.0,
     "features": {"backend": F, "offered": F, "acked": F | null},
     "protocol_features": {"backend": F, "offered": F, "acked": F | null},
     "queue_num": {"backend": 128, "offered": 1},
     "queue_pairs": 1, "ring_sizes": {"0": 256, "1": 256},
     "refusals": ["SET_VRING_NUM (ring 0) refused: ..."]}

where ``F`` is ``{"hex": "0x...", "names": [...]}`` or null when not known yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from vhostcompat.errors import InputError
from vhostcompat.features import Flag, ProtocolFeature, VirtioFeature, names
from vhostcompat.files import FileInputError, read_text, write_atomically
from vhostcompat.hoststore import open_host
from vhostcompat.profiles import NegotiatedState
from vhostcompat.proxy.policy import Negotiated, Offer, Refusal
from vhostcompat.vhostuser import FrontendRequest

_log = logging.getLogger(__name__)

MAX_REFUSALS = 10
# Status fields that are feature flags (the board may hold them as ints until read).
_FLAG_FIELDS: dict[str, type[VirtioFeature] | type[ProtocolFeature]] = {
    "backend_features": VirtioFeature, "offered_features": VirtioFeature,
    "backend_protocol_features": ProtocolFeature, "offered_protocol_features": ProtocolFeature}
COALESCE = 0.05  # seconds of changes gathered into one publication
_T = TypeVar("_T")


class ProxyState(enum.Enum):
    """Where the proxy's interface stands."""

    STARTING = "starting"
    WAITING = "waiting"                  # for the front-end to connect
    CONNECTING = "connecting"            # front-end here, connecting the back-end
    NEGOTIATING = "negotiating"          # both connected, no ring running
    RUNNING = "running"                  # rings started: the device is up
    STOPPED = "stopped"                  # rings stopped (vhost stopped, migrated away)
    REFUSED = "refused"                  # the mode refused a request; connection closed
    FAILED = "failed"                    # protocol error, timeout, back-end unreachable
    BACKEND_LOST = "backend-lost"        # the back-end closed (restart); waiting again
    FRONTEND_CLOSED = "frontend-closed"  # the front-end closed; waiting again
    EXITED = "exited"                    # the proxy stopped

    @property
    def healthy(self) -> bool:
        """False for the states that mean "this interface is not in its mode"."""
        return self not in (ProxyState.REFUSED, ProxyState.FAILED)


class StatusFileError(InputError):
    """A status file that cannot be read back."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"status file {path}: {detail}")


def _flag_json(value: int | None, kind: type[Flag]) -> dict[str, object] | None:
    if value is None:
        return None
    return {"hex": f"{int(value):#x}", "names": names(int(value), kind)}


@dataclass(frozen=True)
class ProxyStatus:
    """One snapshot of a proxy's status (see the module docstring for the JSON)."""

    profile: str
    state: ProxyState
    detail: str = ""
    interface: str | None = None
    frontend: str = ""
    backend: str = ""
    connections: int = 0
    backend_features: VirtioFeature | None = None
    offered_features: VirtioFeature | None = None
    acked_features: VirtioFeature | None = None
    backend_protocol_features: ProtocolFeature | None = None
    offered_protocol_features: ProtocolFeature | None = None
    acked_protocol_features: ProtocolFeature | None = None
    backend_queue_num: int | None = None
    offered_queue_num: int | None = None
    queue_pairs: int | None = None
    ring_sizes: Mapping[int, int] = field(default_factory=dict)
    dirty_logging: bool = False
    refusals: tuple[str, ...] = ()
    pid: int = 0
    updated: float = 0.0

    def negotiated_state(self) -> NegotiatedState:
        """The host store's view: what the interface negotiated, and the state."""
        return NegotiatedState(
            acked_features=self.acked_features,
            acked_protocol_features=self.acked_protocol_features,
            queue_pairs=self.queue_pairs,
            ring_size=max(self.ring_sizes.values(), default=None),
            status=self.state.value,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "profile": self.profile,
            "state": self.state.value,
            "detail": self.detail,
            "frontend": self.frontend,
            "backend": self.backend,
            "connections": self.connections,
            "pid": self.pid,
            "updated": self.updated,
            "features": {
                "backend": _flag_json(self.backend_features, VirtioFeature),
                "offered": _flag_json(self.offered_features, VirtioFeature),
                "acked": _flag_json(self.acked_features, VirtioFeature),
            },
            "protocol_features": {
                "backend": _flag_json(self.backend_protocol_features, ProtocolFeature),
                "offered": _flag_json(self.offered_protocol_features, ProtocolFeature),
                "acked": _flag_json(self.acked_protocol_features, ProtocolFeature),
            },
            "queue_num": {"backend": self.backend_queue_num, "offered": self.offered_queue_num},
            "queue_pairs": self.queue_pairs,
            "ring_sizes": {str(index): size for index, size in sorted(self.ring_sizes.items())},
            "dirty_logging": self.dirty_logging,
            "refusals": list(self.refusals),
        }

    @classmethod
    def from_json(cls, document: object, source: str = "status") -> ProxyStatus:
        """Read a status document back; :class:`StatusFileError` names what is wrong."""
        reader = _Reader(source)
        data = reader.mapping(document, "document")
        features = reader.mapping(data.get("features"), "features")
        protocol = reader.mapping(data.get("protocol_features"), "protocol_features")
        queue_num = reader.mapping(data.get("queue_num"), "queue_num")
        rings = reader.mapping(data.get("ring_sizes"), "ring_sizes")
        state_text = reader.typed(data.get("state"), str, "state")
        try:
            state = ProxyState(state_text)
        except ValueError:
            raise StatusFileError(source, f"unknown state {state_text!r}") from None
        try:
            ring_sizes = {int(index): reader.typed(size, int, "ring size")
                          for index, size in rings.items()}
        except ValueError:
            raise StatusFileError(source, "ring_sizes keys must be ring indices") from None
        return cls(
            profile=reader.typed(data.get("profile"), str, "profile"),
            state=state,
            detail=reader.typed(data.get("detail", ""), str, "detail"),
            interface=reader.optional(data.get("interface"), str, "interface"),
            frontend=reader.typed(data.get("frontend", ""), str, "frontend"),
            backend=reader.typed(data.get("backend", ""), str, "backend"),
            connections=reader.typed(data.get("connections", 0), int, "connections"),
            backend_features=reader.flag(features.get("backend"), VirtioFeature, "features"),
            offered_features=reader.flag(features.get("offered"), VirtioFeature, "features"),
            acked_features=reader.flag(features.get("acked"), VirtioFeature, "features"),
            backend_protocol_features=reader.flag(protocol.get("backend"), ProtocolFeature,
                                                  "protocol_features"),
            offered_protocol_features=reader.flag(protocol.get("offered"), ProtocolFeature,
                                                  "protocol_features"),
            acked_protocol_features=reader.flag(protocol.get("acked"), ProtocolFeature,
                                                "protocol_features"),
            backend_queue_num=reader.optional(queue_num.get("backend"), int, "queue_num"),
            offered_queue_num=reader.optional(queue_num.get("offered"), int, "queue_num"),
            queue_pairs=reader.optional(data.get("queue_pairs"), int, "queue_pairs"),
            ring_sizes=ring_sizes,
            dirty_logging=reader.typed(data.get("dirty_logging", False), bool, "dirty_logging"),
            refusals=tuple(reader.typed(item, str, "refusals")
                           for item in reader.typed(data.get("refusals", []), list, "refusals")),
            pid=reader.typed(data.get("pid", 0), int, "pid"),
            updated=float(reader.typed(data.get("updated", 0.0), (int, float), "updated")),
        )

    def lines(self) -> list[str]:
        """The status for people."""
        who = f"interface {self.interface}" if self.interface else "proxy"
        lines = [f"{who}: mode {self.profile}, {self.state.value}"
                 + (f" (connection {self.connections})" if self.connections else "")]
        if self.detail:
            lines.append(f"  {self.detail}")
        lines.append(f"  front-end {self.frontend}; back-end {self.backend}")
        lines += _feature_lines("features", self.backend_features, self.offered_features,
                                self.acked_features, VirtioFeature)
        lines += _feature_lines("protocol features", self.backend_protocol_features,
                                self.offered_protocol_features, self.acked_protocol_features,
                                ProtocolFeature)
        if self.offered_queue_num is not None:
            lines.append(f"  GET_QUEUE_NUM: back-end {self.backend_queue_num}, answered "
                         f"{self.offered_queue_num}")
        if self.queue_pairs is not None or self.ring_sizes:
            rings = " ".join(f"{index}:{size}" for index, size in sorted(self.ring_sizes.items()))
            lines.append(f"  queue pairs in use: {self.queue_pairs or 0}; ring sizes: "
                         f"{rings or 'none'}")
        if self.dirty_logging:
            lines.append("  dirty logging on (QEMU is migrating the guest)")
        lines.extend(f"  refused: {refusal}" for refusal in self.refusals)
        return lines


def _feature_lines(label: str, backend: Flag | None, offered: Flag | None, acked: Flag | None,
                   kind: type[Flag]) -> list[str]:
    lines = []
    if backend is not None:
        lines.append(f"  {label}: back-end {int(backend):#x}, offered {int(offered or 0):#x}")
        withheld = int(backend) & ~int(offered or 0)
        if withheld:
            lines.append(f"    withheld: {', '.join(names(withheld, kind))}")
    if acked is not None:
        lines.append(f"  {label} acked: {int(acked):#x} "
                     f"({', '.join(names(int(acked), kind)) or 'none'})")
    return lines


class _Reader:
    """Type checks for :meth:`ProxyStatus.from_json`, naming the field at fault."""

    def __init__(self, source: str) -> None:
        self.source = source

    def mapping(self, value: object, what: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise StatusFileError(self.source, f"{what} is not a JSON object")
        return value

    def typed(self, value: object, kind: type[_T] | tuple[type, ...], what: str) -> _T:
        # JSON booleans are ints to Python: only accept one where a bool is wanted.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise StatusFileError(self.source, f"{what}: unexpected value {value!r}")
        return value  # type: ignore[return-value]

    def optional(self, value: object, kind: type[_T], what: str) -> _T | None:
        return None if value is None else self.typed(value, kind, what)

    def flag(self, value: object, kind: type[Flag], what: str) -> Flag | None:
        if value is None:
            return None
        text = self.mapping(value, what).get("hex")
        try:
            return kind(int(self.typed(text, str, what), 16))
        except ValueError:
            raise StatusFileError(self.source, f"{what}: {text!r} is not a hex mask") from None


def read_status_file(path: str | os.PathLike[str]) -> ProxyStatus:
    """The status a proxy wrote with ``--status-file``."""
    where = os.fspath(path)
    if not os.path.lexists(where):
        raise StatusFileError(where, "no such file (is the proxy running with "
                                     "--status-file?)")
    try:
        text = read_text(where)
    except FileInputError as error:
        raise StatusFileError(where, error.reason) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise StatusFileError(where, f"not JSON ({error.msg})") from None
    except ValueError as error:  # a number beyond Python's integer digits limit
        raise StatusFileError(where, f"not usable JSON ({error})") from None
    except RecursionError:
        raise StatusFileError(where, "JSON nested too deeply") from None
    try:
        return ProxyStatus.from_json(document, where)
    except (ValueError, OverflowError) as error:
        raise StatusFileError(where, f"a value out of range ({error})") from None


class StatusSink(Protocol):
    """Where snapshots go."""

    async def publish(self, status: ProxyStatus) -> None: ...


class StatusFile:
    """The status as a JSON file, replaced atomically (readers never see a torn one)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def publish(self, status: ProxyStatus) -> None:
        data = json.dumps(status.to_json(), indent=2) + "\n"
        write_atomically(self.path, data.encode("utf-8"))


class HostStoreSink:
    """The negotiated state on the interface's row of a host store."""

    def __init__(self, address: str, interface: str) -> None:
        self.address = address
        self.interface = interface
        self._last: NegotiatedState | None = None

    async def publish(self, status: ProxyStatus) -> None:
        state = status.negotiated_state()
        if state == self._last:
            return  # the store fsyncs every write: skip the ones that change nothing
        async with open_host(self.address) as store:
            await store.record_negotiated(self.interface, state)
        self._last = state


class StatusBoard:
    """The live status of one proxied interface, published to sinks in the background.

    Mutators are synchronous and cheap (the relay calls them between
    messages); :meth:`run` is the publishing task, started by
    :meth:`start` and ended by :meth:`close` after a final flush.
    """

    def __init__(self, profile: str, *, interface: str | None = None, frontend: str = "",
                 backend: str = "", sinks: Sequence[StatusSink] = (),
                 coalesce: float = COALESCE) -> None:
        self._status = ProxyStatus(profile, ProxyState.STARTING, interface=interface,
                                   frontend=frontend, backend=backend, pid=os.getpid())
        self._sinks = list(sinks)
        self._changed = asyncio.Event()
        self._published = 0
        self._version = 0
        self._version_published = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._coalesce = coalesce
        self.failures = 0
        # Changes not yet folded into _status: replace() of the whole status
        # on every change cost the relay ~15 us a message during a start-up.
        self._pending: dict[str, Any] = {}

    @property
    def status(self) -> ProxyStatus:
        if self._pending:
            # Offers are recorded as the ints the relay has: flags are made here,
            # when the status is read or published, not while relaying.
            changes: dict[str, Any] = {
                name: value if value is None or name not in _FLAG_FIELDS
                else _FLAG_FIELDS[name](value) for name, value in self._pending.items()}
            self._status = replace(self._status, **changes)
            self._pending = {}
        return self._status

    def _get(self, name: str) -> Any:
        """One field of the current status, without folding the pending changes."""
        return self._pending[name] if name in self._pending else getattr(self._status, name)

    # -- mutators ------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        self._pending.update(changes)
        self._pending["updated"] = time.time()
        self._version += 1
        self._changed.set()

    def set_state(self, state: ProxyState, detail: str = "") -> None:
        if self._keeps_refusal(state):
            return
        self._update(state=state, detail=detail)

    def _keeps_refusal(self, state: ProxyState) -> bool:
        """A refusal stays the interface's state until its device runs again.

        QEMU retries at once after a refused start: the states of those
        retries (connecting, negotiating, closed) must not hide the reason.
        """
        return self._get("state") is ProxyState.REFUSED and state in (
            ProxyState.WAITING, ProxyState.CONNECTING, ProxyState.NEGOTIATING,
            ProxyState.FRONTEND_CLOSED)

    def new_connection(self) -> None:
        """A front-end connected: forget the previous connection's offers."""
        changes: dict[str, Any] = {"state": ProxyState.CONNECTING, "detail": ""}
        if self._keeps_refusal(ProxyState.CONNECTING):
            changes = {}
        self._update(connections=self._get("connections") + 1,
                     backend_features=None, offered_features=None,
                     backend_protocol_features=None, offered_protocol_features=None,
                     backend_queue_num=None, offered_queue_num=None, **changes)

    def record_offer(self, offer: Offer) -> None:
        match offer.request:
            case FrontendRequest.GET_FEATURES:
                self._update(backend_features=offer.backend, offered_features=offer.offered)
            case FrontendRequest.GET_PROTOCOL_FEATURES:
                self._update(backend_protocol_features=offer.backend,
                             offered_protocol_features=offer.offered)
            case FrontendRequest.GET_QUEUE_NUM:
                self._update(backend_queue_num=offer.backend, offered_queue_num=offer.offered)

    def record_negotiated(self, negotiated: Negotiated) -> None:
        """What the guest acked and the rings in use; the last values are kept
        across reconnections (the same guest renegotiates the same)."""
        changes: dict[str, Any] = {}
        if negotiated.acked_features is not None:
            changes["acked_features"] = negotiated.acked_features
        if negotiated.acked_protocol_features is not None:
            changes["acked_protocol_features"] = negotiated.acked_protocol_features
        changes["dirty_logging"] = negotiated.dirty_logging
        if negotiated.running:
            changes["queue_pairs"] = negotiated.queue_pairs
            changes["ring_sizes"] = dict(negotiated.ring_sizes)
            if self._get("state") in (ProxyState.NEGOTIATING, ProxyState.STOPPED,
                                      ProxyState.REFUSED):
                changes["state"] = ProxyState.RUNNING
                changes["detail"] = ""
        elif self._get("state") is ProxyState.RUNNING:
            changes["state"] = ProxyState.STOPPED
        if any(self._get(name) != value for name, value in changes.items()):
            self._update(**changes)

    def record_refusal(self, refusal: Refusal) -> None:
        refusals = (*self._get("refusals"), str(refusal))[-MAX_REFUSALS:]
        self._update(refusals=refusals, state=ProxyState.REFUSED, detail=str(refusal))

    # -- publishing ----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="proxy-status")

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            # A start-up is a burst of changes within milliseconds: let it
            # settle, so that the files are written once, not between messages.
            await asyncio.sleep(self._coalesce)
            self._changed.clear()
            version, snapshot = self._version, self.status
            for sink in self._sinks:
                try:
                    await sink.publish(snapshot)
                except Exception as error:  # a status write must never stop the proxy
                    self.failures += 1
                    _log.error("publishing the status to %s failed: %s",
                               type(sink).__name__, error)
            self._published = version
            self._version_published.set()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until the latest change is published."""
        if self._task is None:
            for sink in self._sinks:
                await sink.publish(self.status)
            self._published = self._version
            return
        async with asyncio.timeout(timeout):
            while self._published < self._version:
                self._version_published.clear()
                await self._version_published.wait()

    async def close(self, timeout: float = 10.0) -> None:
        """Publish the last change, then stop the publishing task."""
        try:
            await self.flush(timeout)
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
