"""vhostcompat's own commands as lab child processes: ``proxy`` and ``backend``.

The lab runs them exactly as they are deployed, through the real command
line (``python -m vhostcompat.cli ...``), next to the third-party programs
of :mod:`~vhostcompat.lab.qemu` and :mod:`~vhostcompat.lab.testpmd`:

* :func:`run_proxy`: ``vhostcompat proxy`` in a :class:`ProxyMode`, ready once
  its status file says it waits for the front-end; :class:`RunningProxy`
  reads that status back;
* :func:`run_reference_backend`: ``vhostcompat backend``, ready once it wrote
  its ready file;
* :func:`run_agent`: ``vhostcompat agent``, ready once it logged its first
  resynchronisation with the database.

Every child is stopped by PID and reaped, whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from vhostcompat.errors import InputError
from vhostcompat.lab.process import ChildProcess, managed_process, wait_until
from vhostcompat.proxy.status import ProxyState, ProxyStatus, StatusFileError, read_status_file

PROXY_START_TIMEOUT = 20.0
BACKEND_START_TIMEOUT = 10.0


def _cli_argv(verbose: int, *arguments: str) -> list[str]:
    """This Python running the ``vhostcompat`` CLI, ``-v`` repeated ``verbose`` times."""
    flags = ["-" + "v" * verbose] if verbose else []
    return [sys.executable, "-m", "vhostcompat.cli", *flags, *arguments]


@dataclasses.dataclass(frozen=True)
class ProxyLaunch:
    """How the lab starts a proxy process, beyond its command line (for benchmarks).

    ``source``: the ``src`` directory of another vhostcompat tree, whose proxy
    runs instead of this one (its ``PYTHONPATH``): two versions measured side
    by side in one run. ``cpus``: the CPUs the proxy may run on (its affinity,
    set as it starts, before it relays anything), to keep it off the CPUs of
    another program's threads. ``realtime_priority``: the proxy's
    ``--realtime-priority`` (SCHED_FIFO, :mod:`vhostcompat.realtime`).
    """

    source: Path | None = None
    cpus: frozenset[int] | None = None
    realtime_priority: int | None = None

    def __post_init__(self) -> None:
        if self.cpus is not None and (not self.cpus or min(self.cpus) < 0):
            raise InputError(f"a proxy's CPUs must be CPU numbers, not {sorted(self.cpus)}")

    def environment(self) -> dict[str, str] | None:
        """What the proxy's environment adds (pure)."""
        return None if self.source is None else {"PYTHONPATH": os.fspath(self.source)}


@dataclasses.dataclass(frozen=True)
class ProxyMode:
    """The compatibility mode a proxy enforces, as its command line takes it.

    ``profile`` from ``catalogs`` (default: the shipped ones), or, with
    ``db`` and ``iface``, the interface's assigned version in that host store
    (where the proxy then records what was negotiated). Checked as the
    command checks it, before any process starts. ``launch``: how its
    process is started (:class:`ProxyLaunch`; benchmarks).
    """

    profile: str | None = None
    catalogs: tuple[Path, ...] = ()
    db: str | None = None
    iface: str | None = None
    launch: ProxyLaunch = ProxyLaunch()

    def __post_init__(self) -> None:
        if (self.db is None) != (self.iface is None):
            raise InputError("a proxy mode's db and iface go together")
        if self.profile is None and self.db is None:
            raise InputError("a proxy mode needs a profile, or a db and an iface")

    def argv(self) -> list[str]:
        """The proxy options that select this mode (pure)."""
        argv = [] if self.profile is None else ["--profile", self.profile]
        for catalog in self.catalogs:
            argv += ["--catalog", str(catalog)]
        if self.db is not None and self.iface is not None:
            argv += ["--db", self.db, "--iface", self.iface]
        return argv


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """One ``vhostcompat proxy`` process.

    ``frontend`` / ``backend`` are endpoint texts (``PATH``, ``PATH:server``,
    ``PATH:client``); ``mode`` is what it enforces.
    """

    frontend: str
    backend: str
    status_file: Path
    mode: ProxyMode
    reply_timeout: float | None = None
    backend_timeout: float | None = None
    debug: bool = False
    options: tuple[str, ...] = ()
    """More command-line options, as given (timeouts, socket permissions...)."""
    stats_file: Path | None = None
    """Where the proxy writes its relay times when it exits (``--stats-file``)."""


def proxy_argv(config: ProxyConfig) -> list[str]:
    """The proxy's command line (pure)."""
    argv = _cli_argv(2 if config.debug else 0, "proxy", "--frontend", config.frontend,
                     "--backend", config.backend, "--status-file", str(config.status_file),
                     *config.mode.argv())
    if config.reply_timeout is not None:
        argv += ["--reply-timeout", f"{config.reply_timeout:g}"]
    if config.backend_timeout is not None:
        argv += ["--backend-timeout", f"{config.backend_timeout:g}"]
    if config.stats_file is not None:
        argv += ["--stats-file", str(config.stats_file)]
    if config.mode.launch.realtime_priority is not None:
        argv += ["--realtime-priority", str(config.mode.launch.realtime_priority)]
    return argv + list(config.options)


@dataclasses.dataclass(frozen=True)
class RunningProxy:
    """A started proxy: its config and process; its status is read from the file."""

    config: ProxyConfig
    process: ChildProcess

    def status(self) -> ProxyStatus:
        return read_status_file(self.config.status_file)

    async def wait_for(self, condition: Callable[[ProxyStatus], bool], timeout: float,
                       what: str) -> ProxyStatus:
        """Wait (bounded) until the status satisfies ``condition``; that status."""
        seen: list[ProxyStatus] = []

        def satisfied() -> bool:
            try:
                status = self.status()
            except StatusFileError:
                return False  # not written yet
            seen[:] = [status]
            return condition(status)

        await wait_until(satisfied, timeout, f"proxy status: {what}", watch=[self.process])
        return seen[0]

    async def wait_for_state(self, state: ProxyState, timeout: float) -> ProxyStatus:
        return await self.wait_for(lambda status: status.state is state, timeout,
                                   f"state {state.value}")


@contextlib.asynccontextmanager
async def run_proxy(config: ProxyConfig, run_dir: Path, name: str = "proxy", *,
                    start_timeout: float = PROXY_START_TIMEOUT) -> AsyncIterator[RunningProxy]:
    """Start the proxy; ready once it listens/connects (status ``waiting``). Stopped on exit."""
    config.status_file.unlink(missing_ok=True)
    launch = config.mode.launch
    async with managed_process(name, proxy_argv(config), run_dir,
                               env=launch.environment()) as process:
        if launch.cpus is not None:
            _set_affinity(process.pid, launch.cpus)
        proxy = RunningProxy(config, process)
        # A start that fails writes "failed" and exits: keep waiting, so that
        # the exit is reported with the proxy's log.
        await proxy.wait_for(
            lambda status: status.state not in (ProxyState.STARTING, ProxyState.FAILED),
            start_timeout, "started")
        yield proxy


def _set_affinity(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads it starts later inherit it)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(thread), cpus)


@dataclasses.dataclass(frozen=True)
class RunningReferenceBackend:
    """A ``vhostcompat backend`` process: its socket and the child process."""

    socket_path: Path
    process: ChildProcess


def reference_backend_argv(socket_path: Path, ready_file: Path, options: Sequence[str], *,
                           verbose: int = 1) -> list[str]:
    """``python -m vhostcompat.cli [-v] backend --socket ... --ready-file ... OPTIONS``."""
    return _cli_argv(verbose, "backend", "--socket", str(socket_path),
                     "--ready-file", str(ready_file), *options)


@contextlib.asynccontextmanager
async def run_reference_backend(run_dir: Path, name: str, options: Sequence[str], *,
                                verbose: int = 1,
                                start_timeout: float = BACKEND_START_TIMEOUT,
                                ) -> AsyncIterator[RunningReferenceBackend]:
    """``vhostcompat backend`` on ``run_dir/NAME.sock``, ready once it wrote its ready file.

    ``options`` select the offer (``--profile V`` or ``--features ...``).
    Stopped with SIGTERM (it exits 0 and removes its socket) and reaped.
    """
    socket_path = run_dir / f"{name}.sock"
    ready_file = run_dir / f"{name}.ready"
    ready_file.unlink(missing_ok=True)
    argv = reference_backend_argv(socket_path, ready_file, options, verbose=verbose)
    async with managed_process(name, argv, run_dir) as process:
        await wait_until(ready_file.exists, start_timeout, f"{name} to listen",
                         watch=[process])
        yield RunningReferenceBackend(socket_path, process)


AGENT_START_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class RunningAgent:
    """A ``vhostcompat agent`` process: its database, state directory and process."""

    remote: str
    state_dir: Path
    process: ChildProcess

    def events(self, name: str) -> list[str]:
        """The agent's log lines of event ``name`` so far."""
        return [line for line in self.process.log_text().splitlines()
                if f" event={name} " in f"{line} "]


def agent_argv(remote: str, state_dir: Path, options: Sequence[str] = ()) -> list[str]:
    return _cli_argv(0, "agent", "--db", remote, "--state-dir", str(state_dir), *options)


@contextlib.asynccontextmanager
async def run_agent(remote: str, state_dir: Path, run_dir: Path, name: str = "agent", *,
                    options: Sequence[str] = (),
                    start_timeout: float = AGENT_START_TIMEOUT) -> AsyncIterator[RunningAgent]:
    """``vhostcompat agent`` on ``remote``; ready after its first resync. Stopped on exit."""
    async with managed_process(name, agent_argv(remote, state_dir, options),
                               run_dir) as process:
        agent = RunningAgent(remote, state_dir, process)
        await wait_until(lambda: bool(agent.events("resync")), start_timeout,
                         f"{name} to read the database", watch=[process])
        yield agent
