"""The agent's decisions, without I/O: from Interface rows to actions.

The agent's daemon (:mod:`vhostcompat.agent.daemon`) keeps a copy of the
Interface rows and of what this host publishes, and asks :func:`reconcile`
what to do about each interface. The answer is a list of :class:`Action`
values, in the order they must run:

* :class:`StartProxy` / :class:`StopProxy`: run the interface's mode (a
  change of mode or of QEMU's socket path is a stop, then a start);
* :class:`Redirect`: make OVS connect to the agent's socket, keeping QEMU's
  path in ``external_ids:vhost-compat-frontend-path`` (re-creating the port:
  OVS 3.1 reads ``vhost-server-path`` only when a port is first registered);
* :class:`Restore`: the mode went away: OVS connects to QEMU's path again;
* :class:`WriteStatus`: ``external_ids:vhost-compat-status`` when no proxy
  reports for the interface (refused, or waiting for QEMU's path).

The rules (README, "The host agent"):

* only ``dpdkvhostuserclient`` interfaces are run in a mode (OVS the
  vhost-user client, QEMU the server); a mode on another type is refused on
  the row and nothing else is touched;
* an interface with a mode is always redirected to the agent's socket, even
  when its version cannot run (not published here): fail closed, OVS never
  reaches QEMU directly on an interface that has a mode;
* the proxy starts before the redirection, so OVS finds it listening when
  the port is registered;
* an interface whose mode went away gets its QEMU path back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vhostcompat.hoststore import STATUS_KEY
from vhostcompat.profiles import CompatProfile

MODE_KEY = "vhost-compat-version"            # Interface options
SERVER_PATH_KEY = "vhost-server-path"        # Interface options (OVS's own)
FRONTEND_PATH_KEY = "vhost-compat-frontend-path"  # Interface external_ids
CLIENT_TYPE = "dpdkvhostuserclient"
SERVER_TYPE = "dpdkvhostuser"


@dataclass(frozen=True)
class InterfaceView:
    """What the reconciler reads of one Interface row."""

    name: str
    type: str
    options: Mapping[str, str] = field(default_factory=dict)
    external_ids: Mapping[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str | None:
        return self.options.get(MODE_KEY) or None

    @property
    def server_path(self) -> str | None:
        return self.options.get(SERVER_PATH_KEY) or None

    @property
    def recorded_frontend(self) -> str | None:
        return self.external_ids.get(FRONTEND_PATH_KEY) or None

    @property
    def status(self) -> str | None:
        return self.external_ids.get(STATUS_KEY)


@dataclass(frozen=True)
class RunningProxy:
    """A proxy the agent runs: its mode (version) and QEMU's socket."""

    version: str
    frontend_path: str


class StatusKind(enum.Enum):
    RUNNING = "running"
    WAITING = "waiting"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Status:
    """``external_ids:vhost-compat-status``: ``running``, ``waiting``, ``refused: reason``."""

    kind: StatusKind
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.reason}" if self.reason else self.kind.value


@dataclass(frozen=True)
class StartProxy:
    name: str
    profile: CompatProfile
    frontend_path: str


@dataclass(frozen=True)
class StopProxy:
    name: str
    reason: str


@dataclass(frozen=True)
class Redirect:
    """Point OVS at the agent's socket; QEMU's path kept in external_ids.

    On a port that already points there, only the external_ids key is written.
    """

    name: str
    frontend_path: str
    agent_path: str


@dataclass(frozen=True)
class Restore:
    """Point OVS at QEMU's path again and forget the agent's keys."""

    name: str
    frontend_path: str


@dataclass(frozen=True)
class WriteStatus:
    name: str
    status: Status


Action = StartProxy | StopProxy | Redirect | Restore | WriteStatus


def unsupported_type_reason(kind: str) -> str:
    if kind == SERVER_TYPE:
        return (f"type {SERVER_TYPE} is not supported: OVS owns that socket (it listens "
                f"and QEMU connects), so no proxy can stand between them without moving "
                f"QEMU; use {CLIENT_TYPE}")
    return f"type {kind or 'system'} is not a vhost-user port; a mode needs {CLIENT_TYPE}"


def reconcile_interface(view: InterfaceView, published: Mapping[str, CompatProfile],
                        running: RunningProxy | None,
                        agent_path: str, known_frontend: str | None = None,
                        ) -> list[Action]:
    """The actions for one interface.

    ``agent_path``: the agent's socket for it. ``known_frontend``: QEMU's path
    as the agent's state directory remembers it (used when the row lost it).
    """
    return [action for action in _actions(view, published, running, agent_path,
                                           known_frontend)
            if not isinstance(action, WriteStatus) or view.status != str(action.status)]


def _actions(view: InterfaceView, published: Mapping[str, CompatProfile],
             running: RunningProxy | None, agent_path: str,
             known_frontend: str | None) -> list[Action]:
    mode = view.mode
    redirected = view.server_path == agent_path
    frontend = view.recorded_frontend or known_frontend
    if not redirected and view.server_path is not None:
        frontend = view.server_path  # QEMU's socket, or a new one the operator set
    stop: list[Action] = [StopProxy(view.name, "no mode")] if running is not None else []

    if view.type != CLIENT_TYPE:
        if mode is None:
            return stop
        return [*stop, WriteStatus(view.name, Status(StatusKind.REFUSED,
                                                     unsupported_type_reason(view.type)))]
    if mode is None:
        if not redirected:
            return stop
        if frontend is None:
            return [*stop, WriteStatus(view.name, Status(
                StatusKind.FAILED, "no mode, but QEMU's socket path is unknown "
                f"(set external_ids:{FRONTEND_PATH_KEY} to restore it)"))]
        return [*stop, Restore(view.name, frontend)]
    if frontend is None:
        return [*stop, WriteStatus(view.name, Status(
            StatusKind.WAITING, f"no QEMU socket: set options:{SERVER_PATH_KEY} or "
            f"external_ids:{FRONTEND_PATH_KEY}"))]

    actions: list[Action] = []
    profile = published.get(mode)
    if profile is None:
        if running is not None:
            actions.append(StopProxy(view.name, f"{mode} is not published"))
        known = ", ".join(published) or "nothing"
        actions.append(WriteStatus(view.name, Status(
            StatusKind.REFUSED, f"version {mode} is not published by this host (it "
            f"publishes: {known}); the interface stays disconnected")))
    elif running != RunningProxy(mode, frontend):
        if running is not None:
            actions.append(StopProxy(view.name, f"mode {running.version} -> {mode}"
                                     if running.version != mode else "QEMU's socket moved"))
        actions.append(StartProxy(view.name, profile, frontend))
    if not redirected or view.recorded_frontend != frontend:
        actions.append(Redirect(view.name, frontend, agent_path))
    return actions


def reconcile(views: Iterable[InterfaceView], published: Mapping[str, CompatProfile],
              running: Mapping[str, RunningProxy], agent_path: Callable[[str], str],
              known_frontends: Mapping[str, str] | None = None) -> list[Action]:
    """Every interface's actions; proxies of interfaces that no longer exist are stopped."""
    remembered = known_frontends or {}
    actions: list[Action] = []
    seen = set()
    for view in views:
        seen.add(view.name)
        actions += reconcile_interface(view, published, running.get(view.name),
                                       agent_path(view.name), remembered.get(view.name))
    actions += [StopProxy(name, "the interface is gone") for name in running
                if name not in seen]
    return actions
