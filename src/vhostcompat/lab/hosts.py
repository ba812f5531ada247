"""Hosts of the story: DPDK testpmd, optionally behind the proxy, and QEMU.

A "host" here is what one machine of the upstream story runs for one VM: a
real vhost-user back-end (DPDK testpmd, ``tso=1`` playing the newer
version), QEMU as the front-end, and, when the interface has a compatibility
mode, ``vhostcompat proxy`` between them as a child process, exactly as it
is deployed (QEMU connects to the proxy's socket, the proxy to testpmd's).

* :func:`run_proxy`: the proxy as a child process, ready once its status
  file says it waits for the front-end; :class:`RunningProxy` reads that
  status back;
* :func:`run_backend`: testpmd (+ proxy), the socket QEMU is to use;
* :func:`run_host`: testpmd (+ proxy) + QEMU, stopped in order on exit;
* :func:`run_hosts`: several hosts started side by side (a source and a
  destination waiting for an incoming migration).

Every child is stopped by PID and reaped, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vhostcompat.lab.process import ChildProcess, managed_process, wait_until
from vhostcompat.lab.qemu import QemuVm, RunningQemu, run_qemu
from vhostcompat.lab.testpmd import RunningTestpmd, TestpmdConfig, run_testpmd
from vhostcompat.proxy.status import ProxyState, ProxyStatus, StatusFileError, read_status_file

PROXY_START_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """One ``vhostcompat proxy`` process.

    ``frontend`` / ``backend`` are endpoint texts (``PATH``, ``PATH:server``,
    ``PATH:client``). The mode is ``profile`` (from ``catalogs``, default the
    shipped ones) or, with ``db`` and ``iface``, the interface's assigned one.
    """

    frontend: str
    backend: str
    status_file: Path
    profile: str | None = None
    catalogs: tuple[Path, ...] = ()
    db: str | None = None
    iface: str | None = None
    reply_timeout: float | None = None
    backend_timeout: float | None = None
    debug: bool = False


def proxy_argv(config: ProxyConfig) -> list[str]:
    """The proxy's command line: this Python running the ``vhostcompat`` CLI (pure)."""
    argv = [sys.executable, "-m", "vhostcompat.cli"]
    if config.debug:
        argv.append("-vv")
    argv += ["proxy", "--frontend", config.frontend, "--backend", config.backend,
             "--status-file", str(config.status_file)]
    if config.profile is not None:
        argv += ["--profile", config.profile]
    for catalog in config.catalogs:
        argv += ["--catalog", str(catalog)]
    if config.db is not None:
        argv += ["--db", config.db]
    if config.iface is not None:
        argv += ["--iface", config.iface]
    if config.reply_timeout is not None:
        argv += ["--reply-timeout", f"{config.reply_timeout:g}"]
    if config.backend_timeout is not None:
        argv += ["--backend-timeout", f"{config.backend_timeout:g}"]
    return argv


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
    async with managed_process(name, proxy_argv(config), run_dir) as process:
        proxy = RunningProxy(config, process)
        # A start that fails writes "failed" and exits: keep waiting, so that
        # the exit is reported with the proxy's log.
        await proxy.wait_for(
            lambda status: status.state not in (ProxyState.STARTING, ProxyState.FAILED),
            start_timeout, "started")
        yield proxy


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """One host: testpmd (``tso``), QEMU, and the proxy when ``proxied``.

    ``mode`` is the proxy's ``--profile`` (from ``catalogs``); with ``db`` and
    ``iface`` the proxy reads the interface's mode from that host store (and
    records what it negotiated there) when ``mode`` is None.
    """

    name: str
    tso: bool = False
    mode: str | None = None
    catalogs: tuple[Path, ...] = ()
    db: str | None = None
    iface: str | None = None
    queues: int = 1
    vm_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reply_timeout: float | None = None

    @property
    def proxied(self) -> bool:
        return self.mode is not None or self.db is not None


@dataclasses.dataclass(frozen=True)
class Host:
    config: HostConfig
    testpmd: RunningTestpmd
    proxy: RunningProxy | None
    qemu: RunningQemu


@contextlib.asynccontextmanager
async def run_backend(run_dir: Path, config: HostConfig,
                      ) -> AsyncIterator[tuple[RunningTestpmd, RunningProxy | None, Path]]:
    """testpmd, and the proxy in front of it when proxied: both, and the socket QEMU uses."""
    pmd_socket = run_dir / f"{config.name}-pmd.sock"
    testpmd_config = TestpmdConfig(pmd_socket, tso=config.tso, queues=config.queues)
    async with contextlib.AsyncExitStack() as stack:
        if not config.proxied:
            testpmd = await stack.enter_async_context(
                run_testpmd(testpmd_config, run_dir, f"{config.name}-testpmd"))
            yield testpmd, None, pmd_socket
            return
        proxy_config = ProxyConfig(
            frontend=str(run_dir / f"{config.name}.sock"), backend=str(pmd_socket),
            status_file=run_dir / f"{config.name}-proxy.json", profile=config.mode,
            catalogs=config.catalogs, db=config.db, iface=config.iface,
            reply_timeout=config.reply_timeout)
        # Both take a second or so to start: side by side. Whatever started
        # is on the stack by the time the group ends, so it is cleaned up.
        async with asyncio.TaskGroup() as group:
            testpmd_task = group.create_task(stack.enter_async_context(
                run_testpmd(testpmd_config, run_dir, f"{config.name}-testpmd")))
            proxy_task = group.create_task(stack.enter_async_context(
                run_proxy(proxy_config, run_dir, f"{config.name}-proxy")))
        yield testpmd_task.result(), proxy_task.result(), Path(proxy_config.frontend)


@contextlib.asynccontextmanager
async def run_host(run_dir: Path, config: HostConfig) -> AsyncIterator[Host]:
    """Start one host; QEMU last (it blocks until its socket answers). Stopped on exit."""
    async with run_backend(run_dir, config) as (testpmd, proxy, socket_path):
        vm = QemuVm(socket_path, queues=config.queues, **dict(config.vm_options))
        async with run_qemu(vm, run_dir, f"{config.name}-qemu") as qemu:
            yield Host(config, testpmd, proxy, qemu)


@contextlib.asynccontextmanager
async def run_hosts(run_dir: Path, configs: Sequence[HostConfig]) -> AsyncIterator[list[Host]]:
    """Several hosts started side by side (e.g. a source and a migration destination)."""
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(stack.enter_async_context(run_host(run_dir, config)))
                     for config in configs]
        yield [task.result() for task in tasks]
