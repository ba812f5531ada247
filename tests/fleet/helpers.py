"""What the fleet tests share: a real 3-member cluster, also usable from in-process CLI runs.

:class:`ClusterThread` runs a :class:`~vhostcompat.lab.fleet.FleetCluster`
on an event loop of its own in a thread, so that tests can run the CLI
in-process (each command runs its own ``asyncio.run``) against it and still
SIGKILL or restart a member (:meth:`ClusterThread.call`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import require_tool
from vhostcompat.lab.fleet import FleetCluster, run_fleet_cluster
from vhostcompat.profiles import CompatProfile, load_catalog_or_default

T = TypeVar("T")
CALL_TIMEOUT = 60.0


def require_ovsdb() -> None:
    require_tool("ovsdb-server", "ovsdb-tool")


def shipped_profiles() -> list[CompatProfile]:
    return list(load_catalog_or_default(None).profiles)


class ClusterThread:
    """A fleet cluster served by an event loop in a thread of its own."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.loop = asyncio.new_event_loop()
        self.cluster: FleetCluster | None = None
        self._stop: asyncio.Event | None = None
        self._done: Future[None] = Future()
        self._ready: Future[FleetCluster] = Future()
        self._thread = threading.Thread(target=self._main, name="fleet cluster", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
            self._done.set_result(None)
        except BaseException as error:
            if not self._ready.done():
                self._ready.set_exception(error)
            self._done.set_exception(error)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with run_fleet_cluster(self.run_dir) as cluster:
            self._ready.set_result(cluster)
            await self._stop.wait()

    def start(self) -> FleetCluster:
        self._thread.start()
        self.cluster = self._ready.result(CALL_TIMEOUT)
        return self.cluster

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine (on the cluster: kill, restart, wait_leader) on its loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(CALL_TIMEOUT)

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        with contextlib.suppress(BaseException):
            self._done.result(CALL_TIMEOUT)
        self._thread.join(CALL_TIMEOUT)
        self.loop.close()


@contextlib.contextmanager
def cluster_thread(run_dir: Path) -> Iterator[ClusterThread]:
    thread = ClusterThread(run_dir)
    try:
        thread.start()
        yield thread
    finally:
        thread.stop()
