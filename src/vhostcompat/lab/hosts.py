"""Lab hosts: a vhost-user backend, optionally behind the proxy, and a QEMU on it.

A host here is what one machine of a migration story runs for one VM: a
backend listening on a socket, ``vhostcompat proxy`` in front of it when the
interface has a compatibility mode (as a child process, exactly as it is
deployed), and QEMU connected to whichever of the two faces it.

The backend is a :data:`BackendFactory`: a callable taking the run directory
and a name, returning an async context manager that starts the backend on
``run_dir/NAME.sock`` and yields it (anything with a ``socket_path``: the
host keeps it as :attr:`Host.backend` for inspection). Factories are given
for DPDK testpmd (:func:`dpdk_testpmd`), the reference backend in this
process (:func:`reference_backend_in_process`, yielding its
:class:`~vhostcompat.backend.BackendServer`) and the reference backend as its
own process (:func:`reference_backend_process`).

* :func:`run_backend`: the backend (+ proxy), and the socket QEMU is to use;
* :func:`host`: the backend (+ proxy) + QEMU, stopped in order on exit;
* :func:`source_and_destination`: hosts "a" and "b" started side by side, the
  destination's QEMU waiting for an incoming migration.

A host NAME's files in the run directory: ``NAME-backend.*`` (its socket
``NAME-backend.sock``), ``NAME-proxy.*`` (``.sock``, ``.json`` status, ``.log``)
and ``NAME-qemu.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from vhostcompat.backend import BackendConfig, BackendServer, serve_backend
from vhostcompat.lab.commands import (
    ProxyConfig,
    ProxyMode,
    RunningProxy,
    RunningReferenceBackend,
    run_proxy,
    run_reference_backend,
)
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.qemu import QemuVm, RunningQemu, run_qemu
from vhostcompat.lab.testpmd import RunningTestpmd, TestpmdConfig, run_testpmd


class Listening(Protocol):
    """A started vhost-user backend: where it listens."""

    @property
    def socket_path(self) -> Path: ...


BackendT = TypeVar("BackendT", bound=Listening)
SourceT = TypeVar("SourceT", bound=Listening)
DestinationT = TypeVar("DestinationT", bound=Listening)

BackendFactory: TypeAlias = Callable[[Path, str], AbstractAsyncContextManager[BackendT]]
"""(run directory, name) -> async context manager starting a backend on ``run_dir/NAME.sock``."""


def dpdk_testpmd(*, tso: bool = False, queues: int = 1) -> BackendFactory[RunningTestpmd]:
    """DPDK testpmd (interactive, as :mod:`vhostcompat.lab.testpmd` runs it)."""

    def factory(run_dir: Path, name: str) -> AbstractAsyncContextManager[RunningTestpmd]:
        config = TestpmdConfig(run_dir / f"{name}.sock", tso=tso, queues=queues)
        return run_testpmd(config, run_dir, name)

    return factory


def reference_backend_in_process(config: BackendConfig) -> BackendFactory[BackendServer]:
    """The reference backend served by this process's event loop (its devices inspectable)."""

    def factory(run_dir: Path, name: str) -> AbstractAsyncContextManager[BackendServer]:
        return serve_backend(config, run_dir / f"{name}.sock")

    return factory


def reference_backend_process(options: Sequence[str], *,
                              verbose: int = 1) -> BackendFactory[RunningReferenceBackend]:
    """``vhostcompat backend OPTIONS`` as its own process, through the real command line."""

    def factory(run_dir: Path, name: str) -> AbstractAsyncContextManager[
            RunningReferenceBackend]:
        return run_reference_backend(run_dir, name, options, verbose=verbose)

    return factory


@dataclasses.dataclass(frozen=True)
class Host(Generic[BackendT]):
    """One started host: its backend, its proxy (None when direct) and its QEMU."""

    name: str
    backend: BackendT
    proxy: RunningProxy | None
    qemu: RunningQemu


@contextlib.asynccontextmanager
async def run_backend(run_dir: Path, name: str, backend: BackendFactory[BackendT],
                      proxy: ProxyMode | None = None,
                      ) -> AsyncIterator[tuple[BackendT, RunningProxy | None, Path]]:
    """The backend ``NAME-backend`` and, in ``proxy`` mode, ``NAME-proxy`` in front of it.

    Yields both and the socket QEMU is to use (the proxy's, when there is one).
    """
    socket_path = run_dir / f"{name}-backend.sock"
    async with contextlib.AsyncExitStack() as stack:
        if proxy is None:
            started = await stack.enter_async_context(backend(run_dir, f"{name}-backend"))
            running_proxy = None
            frontend_path = socket_path
        else:
            frontend_path = run_dir / f"{name}-proxy.sock"
            proxy_config = ProxyConfig(frontend=str(frontend_path), backend=str(socket_path),
                                       status_file=run_dir / f"{name}-proxy.json", mode=proxy,
                                       stats_file=run_dir / f"{name}-proxy.stats.json")
            # Both take a second or so to start: side by side. Whatever started
            # is on the stack by the time the group ends, so it is cleaned up.
            async with asyncio.TaskGroup() as group:
                backend_task = group.create_task(
                    stack.enter_async_context(backend(run_dir, f"{name}-backend")))
                proxy_task = group.create_task(stack.enter_async_context(
                    run_proxy(proxy_config, run_dir, f"{name}-proxy")))
            started, running_proxy = backend_task.result(), proxy_task.result()
        if started.socket_path != socket_path:
            raise LabError(f"host {name}: its backend listens on {started.socket_path}, "
                           f"not {socket_path}")
        yield started, running_proxy, frontend_path


@contextlib.asynccontextmanager
async def host(run_dir: Path, name: str, backend: BackendFactory[BackendT], *,
               proxy: ProxyMode | None = None,
               vm_options: Mapping[str, Any] | None = None) -> AsyncIterator[Host[BackendT]]:
    """One host: the backend (+ proxy), then QEMU (``NAME-qemu``) on its socket.

    QEMU starts last: it blocks until its socket answers. Stopped in reverse.
    """
    async with run_backend(run_dir, name, backend, proxy) as (started, running_proxy,
                                                              socket_path):
        vm = QemuVm(socket_path, **dict(vm_options or {}))
        async with run_qemu(vm, run_dir, f"{name}-qemu") as qemu:
            yield Host(name, started, running_proxy, qemu)


@contextlib.asynccontextmanager
async def source_and_destination(
        run_dir: Path, uri: str, source_backend: BackendFactory[SourceT],
        destination_backend: BackendFactory[DestinationT], *,
        source_proxy: ProxyMode | None = None, destination_proxy: ProxyMode | None = None,
        vm_options: Mapping[str, Any] | None = None,
        source_options: Mapping[str, Any] | None = None,
        destination_options: Mapping[str, Any] | None = None,
        ) -> AsyncIterator[tuple[Host[SourceT], Host[DestinationT]]]:
    """Hosts "a" (source) and "b" (destination, QEMU waiting for ``uri``), side by side.

    ``vm_options`` apply to both QEMUs (queues, ring sizes and device
    properties must match for a migration to load); ``source_options`` and
    ``destination_options`` add to them on one side (two QEMU binaries, say).
    """
    common = dict(vm_options or {})
    async with contextlib.AsyncExitStack() as stack:
        # A TaskGroup cancels the other start if one fails; whatever started
        # is on the stack by the time the group ends, so it is cleaned up.
        async with asyncio.TaskGroup() as group:
            source = group.create_task(stack.enter_async_context(
                host(run_dir, "a", source_backend, proxy=source_proxy,
                     vm_options={**common, **(source_options or {})})))
            destination = group.create_task(stack.enter_async_context(
                host(run_dir, "b", destination_backend, proxy=destination_proxy,
                     vm_options={**common, "incoming": uri, "qtest": False,
                                 **(destination_options or {})})))
        yield source.result(), destination.result()
