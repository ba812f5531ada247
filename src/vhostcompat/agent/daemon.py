"""The host agent's daemon: monitor the Interface table, run each interface in its mode.

:class:`Agent` connects to the host's Open vSwitch database (reconnecting
when it goes), monitors ``Open_vSwitch`` (what the host publishes,
``next_cfg``/``cur_cfg``), ``Bridge``, ``Port`` and ``Interface``, and after
every update asks :func:`~vhostcompat.agent.reconcile.reconcile` what to do,
then does it, one action at a time:

* a proxy per interface in its mode, **in this process**
  (:class:`~vhostcompat.proxy.ProxyServer` on the agent's event loop): it
  listens on the agent's socket (``STATE_DIR/NAME.sock``) for OVS and
  connects to QEMU's socket as a client. In-process rather than a child
  ``vhostcompat proxy`` per interface: a mode starts in milliseconds (a
  Python child took 0.4-1.2 s here before it listened, beyond the 100 ms
  target), the agent reads each
  proxy's status directly to write it on the row, and one process serves
  many interfaces in a few MB. Isolation holds within the process: every
  peer byte is validated, each connection is its own task, and one broken
  connection never affects another interface;
* ports re-created and keys written through
  :class:`~vhostcompat.agent.ports.PortWriter`;
* what each proxy learns (status, negotiated features, queue pairs, ring
  size) written on its Interface row, under the store's keys
  (:func:`vhostcompat.hoststore.encode_negotiated`).

Restarts: after an ovsdb-server restart the monitor delivers the whole
contents again; the reconciler compares them with the proxies running, so
nothing is started twice, and each proxy's status is written again. After
the agent's own restart the rows (and the journal) still say where QEMU
is: proxies start again on the same sockets, and OVS and QEMU reconnect.
ovs-vswitchd restarts need nothing from the agent: the ports still point
at its sockets, and the proxies wait for OVS to come back. On SIGTERM the
proxies stop but every redirection stays: an interface with a mode is
never handed straight to OVS (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhostcompat.agent.journal import Journal
from vhostcompat.agent.log import event
from vhostcompat.agent.ports import (
    INTERFACE_COLUMNS,
    INTERFACE_STATUS_COLUMNS,
    PORT_COLUMNS,
    PortCopy,
    PortError,
    PortWriter,
    Tables,
    changed_copy,
    copy_of,
)
from vhostcompat.agent.reconcile import (
    FRONTEND_PATH_KEY,
    SERVER_PATH_KEY,
    Action,
    InterfaceView,
    Redirect,
    Restore,
    RunningProxy,
    StartProxy,
    Status,
    StatusKind,
    StopProxy,
    WriteStatus,
    reconcile,
)
from vhostcompat.errors import InputError, VhostCompatError
from vhostcompat.fleet.presence import FleetOptions, FleetPresence
from vhostcompat.hoststore import (
    NEGOTIATED_KEYS,
    STATUS_KEY,
    encode_negotiated,
    record_from_rows,
)
from vhostcompat.ovsdb import OvsdbClient, OvsdbCommitError, OvsdbError, connect
from vhostcompat.profiles import Catalog, CompatProfile
from vhostcompat.proxy import (
    Endpoint,
    ProxyOptions,
    ProxyPolicy,
    ProxyServer,
    ProxyState,
    ProxyStatus,
    SocketRole,
    StatusBoard,
)
from vhostcompat.transport import MAX_SOCKET_PATH

_log = logging.getLogger("vhostcompat.agent")

TIMEOUT = 5.0
RETRY_MIN = 0.1
RETRY_MAX = 2.0
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The columns the agent cannot work without (checked on connect) ...
REQUIRED = {
    "Open_vSwitch": ("external_ids", "next_cfg", "cur_cfg"),
    "Bridge": ("name", "ports"),
    "Port": ("name", "interfaces"),
    "Interface": ("name", "type", "options", "external_ids"),
}
# ... and every column it keeps when it re-creates a port (those the schema has).
MONITORED = {**REQUIRED, "Port": (*PORT_COLUMNS, "interfaces"),
             "Interface": (*INTERFACE_COLUMNS, *INTERFACE_STATUS_COLUMNS)}


def status_of(proxy: ProxyStatus) -> Status:
    """The row's ``vhost-compat-status`` for a proxy's state."""
    if proxy.state is ProxyState.RUNNING:
        return Status(StatusKind.RUNNING)
    if proxy.state is ProxyState.REFUSED:
        return Status(StatusKind.REFUSED, proxy.detail)
    if proxy.state is ProxyState.FAILED:
        return Status(StatusKind.FAILED, proxy.detail)
    return Status(StatusKind.WAITING)


@dataclass(frozen=True)
class AgentConfig:
    remote: str
    state_dir: Path
    catalog: Catalog | None = None
    proxy: ProxyOptions = field(default_factory=ProxyOptions)
    timeout: float = TIMEOUT
    fleet: FleetOptions | None = None  # register in a fleet database (vhostcompat.fleet)

    def socket_path(self, name: str) -> str:
        """The agent's socket for an interface (names that are not path-safe, or too
        long for a socket path, are hashed)."""
        plain = str(self.state_dir / f"{name}.sock")
        if _SAFE_NAME.fullmatch(name) and name not in (".", "..") and \
                len(os.fsencode(plain)) <= MAX_SOCKET_PATH:
            return plain
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return str(self.state_dir / f"iface-{digest}.sock")

    def check(self) -> None:
        """Refuse a state directory whose socket paths cannot fit (107 bytes)."""
        longest = self.socket_path("\0")  # a hashed name: the longest path used
        if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
            raise InputError(f"--state-dir {self.state_dir} is too long for the agent's "
                             f"sockets ({len(os.fsencode(longest))} > {MAX_SOCKET_PATH} "
                             "bytes); choose a shorter directory")


class RowSink:
    """A proxy's status, written on its Interface row (only when it changed)."""

    def __init__(self, agent: Agent, name: str) -> None:
        self.agent = agent
        self.name = name
        self.last: dict[str, str] | None = None
        self.enabled = True

    async def publish(self, status: ProxyStatus) -> None:
        if not self.enabled:
            return
        state = status.negotiated_state()
        entries = encode_negotiated(state)
        entries[STATUS_KEY] = str(status_of(status))
        if entries == self.last:
            return
        if not await self.agent.writer.write_ids(self.name, entries, drop=NEGOTIATED_KEYS):
            return  # the row is being re-created: written again once it is back
        if entries.get(STATUS_KEY) != (self.last or {}).get(STATUS_KEY):
            event(_log, "status", iface=self.name, status=entries[STATUS_KEY],
                  acked=entries.get("vhost-compat-acked-features"))
        self.last = entries
        if self.agent.presence is not None:  # and on the interface's fleet record
            self.agent.presence.negotiated(self.name, entries)


@dataclass
class Managed:
    running: RunningProxy
    server: ProxyServer
    board: StatusBoard
    sink: RowSink


class Agent:
    """One host's agent; :meth:`run` until ``stop`` is set."""

    def __init__(self, config: AgentConfig) -> None:
        config.check()
        self.config = config
        self.tables = Tables()
        self.proxies: dict[str, Managed] = {}
        self.journal = Journal.open(config.state_dir)
        self.published: dict[str, CompatProfile] = {}
        # Proxies that could not start (QEMU's path unusable): not retried until the
        # interface's mode or QEMU's path changes on the row.
        self.failed: dict[str, RunningProxy] = {}
        self._dirty = asyncio.Event()
        self._resynced = False
        self._cfg_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._writer: PortWriter | None = None
        self.presence = None if config.fleet is None else FleetPresence(config.fleet,
                                                                       config.remote)

    @property
    def writer(self) -> PortWriter:
        if self._writer is None:
            raise VhostCompatError("the agent is not connected")
        return self._writer

    # -- the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, monitor and reconcile until ``stop``; proxies stopped, redirects kept."""
        client = await connect(self.config.remote, timeout=self.config.timeout,
                               required_columns=REQUIRED)
        self._writer = PortWriter(client, self.tables, self._cfg_applied)
        event(_log, "connected", db=self.config.remote, state_dir=str(self.config.state_dir))
        watcher = asyncio.create_task(self._watch(client), name="agent monitor")
        worker = asyncio.create_task(self._work(), name="agent reconcile")
        stopping = asyncio.create_task(stop.wait())
        tasks = [watcher, worker, stopping]
        if self.presence is not None:  # fails only for good: the name is another's
            tasks.append(asyncio.create_task(self.presence.run(), name="agent fleet"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping:
                    task.result()  # a monitor that ended for good: raise its error
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for name in list(self.proxies):
                await self._stop_proxy(name, "the agent stops", write=False)
                with contextlib.suppress(VhostCompatError, TimeoutError):
                    # The port stays on the agent's socket: say why nothing answers there.
                    await asyncio.wait_for(self.writer.write_ids(name, {STATUS_KEY: str(
                        Status(StatusKind.WAITING, "the agent is stopped"))}),
                        self.config.timeout)
            await client.close()
            event(_log, "stopped")

    async def _watch(self, client: OvsdbClient) -> None:
        schema = client.schema
        columns = {table: [column for column in wanted if schema.table(table).has_column(column)]
                   for table, wanted in MONITORED.items()}
        async for update in client.monitor(columns):
            if update.initial:
                for table in columns:
                    self.tables.replace(table, {})
                self._resynced = True
                event(_log, "resync", rows=sum(len(rows) for rows in update.values()))
            for table, rows in update.items():
                known = self.tables.table(table)
                for uuid, (_, new) in rows.items():
                    if new is None:
                        known.pop(uuid, None)
                    else:
                        known[uuid] = dict(new)
            self._wake_cfg_waiters()
            self._dirty.set()

    async def _work(self) -> None:
        retry = RETRY_MIN
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile_once()
                retry = RETRY_MIN
            except (OvsdbError, VhostCompatError, OSError) as error:
                event(_log, "error", logging.ERROR, reason=str(error), retry_in=f"{retry:g}s")
                await asyncio.sleep(retry)  # a bounded backoff, then read the rows again
                retry = min(retry * 2, RETRY_MAX)
                self._dirty.set()

    async def _reconcile_once(self) -> None:
        if self._resynced:
            self._resynced = False
            await self._after_resync()
        await self._finish_pending()
        self.published = self._published()
        if self.presence is not None:
            self.presence.published(list(self.published.values()))
        views = [self._view(row) for row in self.tables.table("Interface").values()]
        modes = {view.name: view.mode for view in views}
        self.failed = {name: failed for name, failed in self.failed.items()
                       if modes.get(name) == failed.version}
        for name, entry in list(self.journal.entries.items()):
            if name not in modes and entry.pending is None and name not in self.proxies:
                self.journal.forget(name)  # the interface is gone from the database
        running = {name: managed.running for name, managed in self.proxies.items()}
        actions = reconcile(views, self.published, running, self.config.socket_path,
                            self.journal.frontends())
        for action in actions:
            if isinstance(action, StartProxy) and self.failed.get(action.name) == RunningProxy(
                    action.profile.version, action.frontend_path):
                continue
            await self._execute(action)

    async def _after_resync(self) -> None:
        """The database's contents came anew (start, ovsdb-server restart)."""
        for managed in self.proxies.values():
            managed.sink.last = None  # the row may have missed the last status: write again
            await managed.sink.publish(managed.board.status)

    async def _finish_pending(self) -> None:
        """Ports the agent removed and had not inserted again (killed, or the insertion
        failed): inserted now if the database lacks them. A pending copy is dropped
        once a row of that name points where the copy does."""
        for name, entry in list(self.journal.entries.items()):
            pending = entry.pending
            if pending is None:
                continue
            found = self.tables.interface(name)
            if found is not None:
                wanted = dict(pending.interface.get("options") or {}).get(SERVER_PATH_KEY)
                if dict(found[1].get("options") or {}).get(SERVER_PATH_KEY) != wanted:
                    continue  # not the row we inserted (yet): wait for the monitor
            else:
                try:
                    await self.writer.insert(pending)
                    event(_log, "port-reinserted", iface=name, reason="pending in the journal")
                except PortError as error:  # its bridge is gone: nothing to insert it into
                    event(_log, "error", logging.ERROR, iface=name, reason=str(error),
                          qemu=entry.frontend_path)
            entry.pending = None
            self.journal.save()

    def _published(self) -> dict[str, CompatProfile]:
        switch = self.tables.open_vswitch()
        external_ids = dict(switch[1].get("external_ids") or {}) if switch else {}
        try:
            record = record_from_rows(self.config.remote, external_ids, {})
        except VhostCompatError as error:
            event(_log, "published-unreadable", logging.ERROR, reason=str(error))
            return {}  # fail closed: nothing runs in a mode the host cannot read
        published: dict[str, CompatProfile] = {}
        for version in record.versions:
            profile = record.profile(version)
            if profile is None and self.config.catalog is not None:
                profile = self.config.catalog.find(version)
            if profile is not None:
                published[version] = profile
        return published

    @staticmethod
    def _view(row: Mapping[str, Any]) -> InterfaceView:
        return InterfaceView(str(row.get("name", "")), str(row.get("type", "")),
                             dict(row.get("options") or {}),
                             dict(row.get("external_ids") or {}))

    # -- vswitchd's progress ---------------------------------------------------------

    def _cfg_applied(self, target: int) -> asyncio.Future[None] | None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._cfg_waiters.append((target, future))
        self._wake_cfg_waiters()
        return future

    def _wake_cfg_waiters(self) -> None:
        switch = self.tables.open_vswitch()
        current = switch[1].get("cur_cfg") if switch else None
        if not isinstance(current, int):
            return
        waiting = []
        for target, future in self._cfg_waiters:
            if current >= target and not future.done():
                future.set_result(None)
            elif not future.done():
                waiting.append((target, future))
        self._cfg_waiters = waiting

    # -- actions -----------------------------------------------------------------------

    async def _execute(self, action: Action) -> None:
        match action:
            case StartProxy(name, profile, frontend_path):
                await self._start_proxy(name, profile, frontend_path)
            case StopProxy(name, reason):
                await self._stop_proxy(name, reason)
            case Redirect(name, frontend_path, agent_path):
                await self._redirect(name, frontend_path, agent_path)
            case Restore(name, frontend_path):
                await self._restore(name, frontend_path)
            case WriteStatus(name, status):
                level = logging.INFO if status.kind is StatusKind.WAITING else logging.ERROR
                event(_log, "status", level, iface=name, status=str(status))
                await self.writer.write_ids(name, {STATUS_KEY: str(status)})

    async def _start_proxy(self, name: str, profile: CompatProfile, frontend_path: str) -> None:
        agent_path = self.config.socket_path(name)
        sink = RowSink(self, name)
        frontend = Endpoint(frontend_path, SocketRole.CLIENT)
        backend = Endpoint(agent_path, SocketRole.SERVER)
        board = StatusBoard(profile.version, interface=name, frontend=str(frontend),
                            backend=str(backend), sinks=[sink])
        server = ProxyServer(ProxyPolicy(profile), frontend, backend,
                             options=self.config.proxy, board=board, name=name)
        entry = self.journal.entry(name)
        if entry.frontend_path != frontend_path:
            entry.frontend_path = frontend_path
            self.journal.save()
        try:
            await server.start()
        except VhostCompatError as error:
            # The port is still redirected (the next action): fail closed, said on the row.
            self.failed[name] = RunningProxy(profile.version, frontend_path)
            status = Status(StatusKind.FAILED, f"the proxy cannot start: {error}")
            event(_log, "status", logging.ERROR, iface=name, status=str(status))
            await self.writer.write_ids(name, {STATUS_KEY: str(status)})
            return
        self.failed.pop(name, None)
        board.start()
        self.proxies[name] = Managed(RunningProxy(profile.version, frontend_path), server,
                                     board, sink)
        event(_log, "proxy-started", iface=name, mode=profile.version, qemu=frontend_path,
              ovs=agent_path)

    async def _stop_proxy(self, name: str, reason: str, write: bool = True) -> None:
        managed = self.proxies.pop(name, None)
        if managed is None:
            return
        await managed.server.close()
        managed.sink.enabled = write  # when the agent stops, the row keeps its last status
        with contextlib.suppress(TimeoutError, VhostCompatError):
            await managed.board.close(timeout=self.config.timeout)
        event(_log, "proxy-stopped", iface=name, mode=managed.running.version, reason=reason)

    async def _redirect(self, name: str, frontend_path: str, agent_path: str) -> None:
        found = self.tables.interface(name)
        options = dict(found[1].get("options") or {}) if found else {}
        if options.get("vhost-server-path") == agent_path:
            await self.writer.write_ids(name, {FRONTEND_PATH_KEY: frontend_path})
            return
        copy, *_ = copy_of(self.tables, name)
        ofport = found[1].get("ofport") if found else None
        new = changed_copy(copy, agent_path, set_ids={FRONTEND_PATH_KEY: frontend_path},
                           drop_ids=(), ofport=ofport)
        await self._recreate(name, new, "redirected", qemu=frontend_path, ovs=agent_path)

    async def _restore(self, name: str, frontend_path: str) -> None:
        copy, *_ = copy_of(self.tables, name)
        found = self.tables.interface(name)
        new = changed_copy(copy, frontend_path, set_ids={},
                           drop_ids=(FRONTEND_PATH_KEY, *NEGOTIATED_KEYS),
                           ofport=found[1].get("ofport") if found else None)
        await self._recreate(name, new, "restored", qemu=frontend_path)
        self.journal.forget(name)

    async def _recreate(self, name: str, new: PortCopy, what: str, **fields: object) -> None:
        entry = self.journal.entry(name)
        entry.pending = new
        self.journal.save()
        try:
            await self.writer.remove(name)
        except OvsdbCommitError:
            # Refused (a conflict: the row changed since it was read): nothing was
            # removed, nothing is pending. Any other failure (the connection lost
            # mid-commit) may have removed it: the copy stays, as after a crash.
            entry.pending = None
            self.journal.save()
            raise
        await self.writer.insert(new)
        entry.pending = None
        self.journal.save()
        event(_log, what, logging.INFO, iface=name, **fields)
        managed = self.proxies.get(name)
        if managed is not None:  # a status published while the row was away
            managed.sink.last = None
            await managed.sink.publish(managed.board.status)
