"""A fleet database cluster (3 ovsdb-servers, Raft) as lab children, for tests and benches.

::

    async with run_fleet_cluster(run_dir) as cluster:
        cluster.address                  # "tcp:127.0.0.1:P1,tcp:127.0.0.1:P2,tcp:127.0.0.1:P3"
        leader = await cluster.wait_leader()      # index of the member leading now
        await cluster.kill(leader)       # SIGKILL, reaped by PID
        await cluster.restart(leader)    # the same database file and ports: it rejoins

The databases are made exactly as ``vhostcompat fleet init`` makes them
(:mod:`vhostcompat.fleet.cluster`), on ephemeral 127.0.0.1 ports; every
member is a child process, stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from vhostcompat.fleet.cluster import ClusterPlan, MemberPlan, plan_cluster
from vhostcompat.fleet.schema import schema_path
from vhostcompat.fleet.session import MemberState, member_state
from vhostcompat.lab.ovsdb import OvsdbLabError, connects, free_tcp_port, run_command
from vhostcompat.lab.process import ChildProcess, start_process, wait_until
from vhostcompat.ovsdb import OvsdbClient, OvsdbError

START_TIMEOUT = 20.0
ELECTION_TIMEOUT = 20.0


@dataclass
class FleetCluster:
    """The members of one fleet cluster and their processes (None: not running)."""

    plan: ClusterPlan
    processes: dict[int, ChildProcess] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.plan.address

    def member(self, index: int) -> MemberPlan:
        return self.plan.members[index - 1]

    @property
    def indexes(self) -> list[int]:
        return [member.index for member in self.plan.members]

    def running(self) -> list[int]:
        return [index for index, process in self.processes.items() if process.running]

    async def create(self) -> None:
        for member in self.plan.members:
            member.directory.mkdir(parents=True, exist_ok=True)
        for command in self.plan.create_commands(schema_path()):
            await run_command(command)

    async def start(self, index: int) -> None:
        member = self.member(index)
        process = await start_process(f"fleet-{member.name}", member.server_argv(),
                                      member.directory)
        self.processes[index] = process
        for port in (member.client_port, member.raft_port):
            await wait_until(functools.partial(_listens, port), START_TIMEOUT,
                             f"fleet member {member.name} to listen on {port}",
                             watch=[process])

    async def start_all(self) -> None:
        """One member at a time, each connected before the next: a joiner started before
        the first member listens backs off for seconds (ovsdb-server's reconnect), and
        Raft adds one server at a time."""
        for index in self.indexes:
            await self.start(index)
            await self.wait_connected(index)

    async def state(self, index: int) -> MemberState | None:
        """What the member says of itself in ``_Server`` (None: it does not answer)."""
        client = OvsdbClient(self.member(index).remote, "_Server", timeout=2.0,
                             reconnect=False)
        try:
            await client.connect()
            return await member_state(client)
        except OvsdbError:
            return None
        finally:
            await client.close()

    async def leader(self) -> int | None:
        for index in self.running():
            state = await self.state(index)
            if state is not None and state.usable:
                return index
        return None

    async def wait_leader(self, timeout: float = ELECTION_TIMEOUT) -> int:
        found: list[int] = []

        async def elected() -> bool:
            leader = await self.leader()
            if leader is not None:
                found.append(leader)
            return leader is not None

        await wait_until(elected, timeout, "a fleet leader to be elected")
        return found[-1]

    async def wait_connected(self, index: int, timeout: float = ELECTION_TIMEOUT) -> None:
        """Until the member says it is connected to the cluster (after a restart)."""
        async def connected() -> bool:
            state = await self.state(index)
            return state is not None and state.connected

        await wait_until(connected, timeout, f"fleet member m{index} to rejoin",
                         watch=[self.processes[index]])

    async def kill(self, index: int) -> None:
        """SIGKILL the member, reaped by PID (a crash)."""
        process = self.processes.pop(index, None)
        if process is None:
            raise OvsdbLabError(f"fleet member m{index} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        await process.stop()

    async def restart(self, index: int) -> None:
        """Start a stopped member again on its database and ports: it rejoins."""
        if index in self.processes:
            raise OvsdbLabError(f"fleet member m{index} is running")
        await self.start(index)

    async def stop(self) -> None:
        processes, self.processes = list(self.processes.values()), {}
        await asyncio.gather(*(process.stop() for process in processes),
                             return_exceptions=True)


async def _listens(port: int) -> bool:
    return await connects(lambda: asyncio.open_connection("127.0.0.1", port))


@contextlib.asynccontextmanager
async def run_fleet_cluster(run_dir: Path, members: int = 3) -> AsyncIterator[FleetCluster]:
    """A fresh cluster of ``members`` in ``run_dir``, a leader elected; stopped on exit."""
    chosen: list[int] = []
    while len(chosen) < 2 * members:  # the kernel may hand out a port it just freed again
        port = free_tcp_port()
        if port not in chosen:
            chosen.append(port)
    ports = list(zip(chosen[::2], chosen[1::2], strict=True))
    cluster = FleetCluster(plan_cluster(run_dir, ports))
    await cluster.create()
    try:
        await cluster.start_all()
        await cluster.wait_leader()
        yield cluster
    finally:
        await cluster.stop()
