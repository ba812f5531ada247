"""Lab hosts on any backend: a vhost-user backend with a QEMU on its socket.

A host here is what a migration story needs of a machine: a backend
listening on a socket and a QEMU connected to it. The backend is a
:data:`BackendFactory`, a callable taking the run directory and a name and
returning an async context manager that yields the socket path (the shape of
``bench.bench_start``'s factories plus the name, so that two hosts in one
directory never collide). Factories are given for:

* DPDK testpmd (:func:`testpmd_backend`);
* the reference backend in this process (:class:`InProcessReferenceBackend`,
  which keeps the :class:`~vhostcompat.backend.BackendServer` for inspection);
* the reference backend as its own process, through the real command line
  (:func:`run_reference_backend`, :func:`reference_backend_process`).

:func:`source_and_destination` starts two hosts side by side, the
destination's QEMU waiting for an incoming migration, and cleans both up
whatever happens. (:mod:`vhostcompat.lab.hosts` is the proxy's variant:
testpmd behind ``vhostcompat proxy``.)

What QEMU 7.2's virtio-net-pci changes between a backend's GET_FEATURES
answer and the features its device offers is stated once here
(:data:`QEMU_DROPS`, :data:`QEMU_ADDS`, :data:`LEGACY_ONLY`,
:func:`device_offer`), measured with testpmd and with the reference backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from vhostcompat.backend import BackendConfig, BackendServer, serve_backend
from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.process import ChildProcess, managed_process, wait_until
from vhostcompat.lab.qemu import QemuVm, RunningQemu, run_qemu
from vhostcompat.lab.testpmd import TestpmdConfig, run_testpmd

F = VirtioFeature

BackendFactory = Callable[[Path, str], AbstractAsyncContextManager[Path]]
"""(run directory, name) -> async context manager yielding the socket path."""

BACKEND_START_TIMEOUT = 10.0

# What QEMU's virtio-net-pci drops from the backend's offer: what its device
# model leaves off by default (properties host_mtu, mq, packed, in_order) and
# VHOST_F_LOG_ALL, a vhost-only bit for dirty logging no guest ever sees ...
QEMU_DROPS = (F.VIRTIO_NET_F_MTU | F.VIRTIO_NET_F_MQ | F.VIRTIO_F_RING_PACKED
              | F.VIRTIO_F_IN_ORDER | F.VHOST_F_LOG_ALL)
# ... and what it adds, implemented by QEMU itself whatever the backend says:
# MAC and link status in config space, control-queue commands it handles.
QEMU_ADDS = (F.VIRTIO_NET_F_MAC | F.VIRTIO_NET_F_STATUS | F.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
             | F.VIRTIO_NET_F_CTRL_VLAN | F.VIRTIO_NET_F_CTRL_RX_EXTRA
             | F.VIRTIO_NET_F_CTRL_MAC_ADDR)
# A modern-only device (disable-legacy=on) hides the legacy-only bits from the driver.
LEGACY_ONLY = F.VIRTIO_NET_F_GSO | F.VIRTIO_F_ANY_LAYOUT | F.VHOST_USER_F_PROTOCOL_FEATURES


def device_offer(backend_features: VirtioFeature) -> VirtioFeature:
    """QEMU's ``backend-features`` for a backend offering ``backend_features``.

    Holds with the lab's default device properties, for backends that offer
    CTRL_VQ and CTRL_RX (QEMU adds those too when a backend lacks them).
    """
    return (backend_features & ~QEMU_DROPS) | QEMU_ADDS


@dataclasses.dataclass(frozen=True)
class Host:
    """One started host: its name, backend socket and QEMU."""

    name: str
    socket_path: Path
    qemu: RunningQemu


def testpmd_backend(*, tso: bool = False, queues: int = 1) -> BackendFactory:
    """DPDK testpmd (interactive, as :mod:`vhostcompat.lab.testpmd` runs it)."""

    @contextlib.asynccontextmanager
    async def factory(run_dir: Path, name: str) -> AsyncIterator[Path]:
        config = TestpmdConfig(run_dir / f"{name}.sock", tso=tso, queues=queues)
        async with run_testpmd(config, run_dir, f"{name}-testpmd") as testpmd:
            yield testpmd.socket_path

    return factory


class InProcessReferenceBackend:
    """The reference backend served by this process's event loop.

    A :data:`BackendFactory`; once started, :attr:`running` is the
    :class:`~vhostcompat.backend.BackendServer` (its devices can be inspected).
    """

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.server: BackendServer | None = None

    def __call__(self, run_dir: Path, name: str) -> AbstractAsyncContextManager[Path]:
        return self._serve(run_dir / f"{name}.sock")

    @contextlib.asynccontextmanager
    async def _serve(self, path: Path) -> AsyncIterator[Path]:
        async with serve_backend(self.config, path) as server:
            self.server = server
            yield path

    @property
    def running(self) -> BackendServer:
        if self.server is None:
            raise LabError("the in-process reference backend has not been started")
        return self.server


@dataclasses.dataclass(frozen=True)
class RunningBackend:
    """A reference backend process: its socket and the child process."""

    socket_path: Path
    process: ChildProcess


def reference_backend_argv(socket_path: Path, ready_file: Path, options: Sequence[str], *,
                           verbose: int = 1) -> list[str]:
    """``python -m vhostcompat.cli [-v] backend --socket ... --ready-file ... OPTIONS``."""
    flags = ["-" + "v" * verbose] if verbose else []
    return [sys.executable, "-m", "vhostcompat.cli", *flags, "backend",
            "--socket", str(socket_path), "--ready-file", str(ready_file), *options]


@contextlib.asynccontextmanager
async def run_reference_backend(run_dir: Path, name: str, options: Sequence[str], *,
                                verbose: int = 1,
                                start_timeout: float = BACKEND_START_TIMEOUT,
                                ) -> AsyncIterator[RunningBackend]:
    """``vhostcompat backend`` as a child process, ready once it wrote its ready file.

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
        yield RunningBackend(socket_path, process)


def reference_backend_process(options: Sequence[str]) -> BackendFactory:
    """A :data:`BackendFactory` running ``vhostcompat backend OPTIONS`` as a process."""

    @contextlib.asynccontextmanager
    async def factory(run_dir: Path, name: str) -> AsyncIterator[Path]:
        async with run_reference_backend(run_dir, f"{name}-backend", options) as backend:
            yield backend.socket_path

    return factory


@contextlib.asynccontextmanager
async def host(run_dir: Path, name: str, backend: BackendFactory, *,
               vm_options: Mapping[str, Any] | None = None) -> AsyncIterator[Host]:
    """One host: ``backend`` started, then a QEMU (``NAME-qemu``) on its socket."""
    async with backend(run_dir, name) as socket_path:
        vm = QemuVm(socket_path, **dict(vm_options or {}))
        async with run_qemu(vm, run_dir, f"{name}-qemu") as qemu:
            yield Host(name, socket_path, qemu)


@contextlib.asynccontextmanager
async def source_and_destination(
        run_dir: Path, uri: str, source_backend: BackendFactory,
        destination_backend: BackendFactory, *,
        vm_options: Mapping[str, Any] | None = None,
        ) -> AsyncIterator[tuple[Host, Host]]:
    """Hosts "a" (source) and "b" (destination, QEMU waiting for ``uri``), side by side.

    ``vm_options`` apply to both QEMUs (queues, ring sizes and device
    properties must match for a migration to load).
    """
    common = dict(vm_options or {})
    async with contextlib.AsyncExitStack() as stack:
        # A TaskGroup cancels the other start if one fails; whatever started
        # is on the stack by the time the group ends, so it is cleaned up.
        async with asyncio.TaskGroup() as group:
            source = group.create_task(stack.enter_async_context(
                host(run_dir, "a", source_backend, vm_options=common)))
            destination = group.create_task(stack.enter_async_context(
                host(run_dir, "b", destination_backend,
                     vm_options={**common, "incoming": uri, "qtest": False})))
        yield source.result(), destination.result()
