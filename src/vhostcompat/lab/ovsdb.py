"""A standalone ovsdb-server (no ovs-vswitchd) as a lab child process, one or hundreds.

Exactly as FIELD-NOTES.md measured it: ``ovsdb-tool create`` a database
from the vswitch schema (or any schema file), run ``ovsdb-server`` on it as
a child process (``--remote=punix:``, optionally a TCP listener on an
ephemeral 127.0.0.1 port), reaped by PID, then ``ovs-vsctl --no-wait init``.

::

    async with run_ovsdb_server(run_dir, "host-a", tcp=True) as server:
        server.remote          # "unix:RUN_DIR/host-a/db.sock"
        server.tcp_remote      # "tcp:127.0.0.1:PORT"
        await server.vsctl("get", "Open_vSwitch", ".", "external_ids")
        await server.restart()  # same database, same socket and port (reconnect tests)

    async with run_ovsdb_servers(run_dir, 200) as servers: ...   # started concurrently

``probe_interval_ms`` (with ``tcp=True``) makes the TCP listener a
``Manager`` row with that ``inactivity_probe``: ovsdb-server then sends
``echo`` to a client idle that long (1000 ms is its minimum).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vhostcompat.lab.errors import LabError
from vhostcompat.lab.process import ChildProcess, start_process, wait_until
from vhostcompat.ovsdb.operations import Operation

VSWITCH_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
START_TIMEOUT = 20.0
COMMAND_TIMEOUT = 20.0
PARALLEL_STARTS = 16
StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class OvsdbLabError(LabError):
    """ovsdb-tool, ovsdb-server or ovs-vsctl failed in the lab."""


def free_tcp_port() -> int:
    """An ephemeral port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a short command; its stdout, or OvsdbLabError with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise OvsdbLabError(f"{argv[0]} took more than {timeout:g} s") from None
    if process.returncode != 0:
        raise OvsdbLabError(f"{' '.join(argv[:3])}... exited {process.returncode}: "
                            f"{stderr.decode(errors='replace').strip()}")
    return stdout.decode(errors="replace")


@dataclass
class OvsdbServer:
    """One ovsdb-server child and its files (in ``directory``)."""

    name: str
    directory: Path
    schema: Path = VSWITCH_SCHEMA
    tcp_port: int | None = None
    probe_interval_ms: int | None = None
    process: ChildProcess | None = field(default=None, repr=False)
    manager_created: bool = False

    @property
    def db_path(self) -> Path:
        return self.directory / "conf.db"

    @property
    def socket_path(self) -> Path:
        return self.directory / "db.sock"

    @property
    def control_path(self) -> Path:
        return self.directory / "ctl"

    @property
    def remote(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_remote(self) -> str | None:
        return None if self.tcp_port is None else f"tcp:127.0.0.1:{self.tcp_port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise OvsdbLabError(f"ovsdb-server {self.name} is not running")
        return self.process.pid

    @property
    def vswitch(self) -> bool:
        return self.schema == VSWITCH_SCHEMA

    def argv(self) -> list[str]:
        argv = ["ovsdb-server", str(self.db_path), f"--remote=punix:{self.socket_path}",
                f"--unixctl={self.control_path}", f"--pidfile={self.directory / 'pid'}",
                f"--log-file={self.directory / 'ovsdb-server.log'}", "--no-chdir"]
        if self.tcp_port is not None:
            if self.probe_interval_ms is None:
                argv.append(f"--remote=ptcp:{self.tcp_port}:127.0.0.1")
            else:
                argv.append("--remote=db:Open_vSwitch,Open_vSwitch,manager_options")
        return argv

    async def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await run_command(["ovsdb-tool", "create", str(self.db_path), str(self.schema)])

    async def start(self) -> None:
        """Start the server on the existing database and wait until it answers."""
        self.process = await start_process(f"ovsdb-server-{self.name}", self.argv(),
                                           self.directory)
        await wait_until(self._answers, START_TIMEOUT, f"ovsdb-server {self.name} to listen",
                         watch=[self.process])
        if self.tcp_port is not None and (self.probe_interval_ms is None
                                          or self.manager_created):
            await wait_until(self._tcp_listens, START_TIMEOUT,
                             f"ovsdb-server {self.name} to listen on TCP",
                             watch=[self.process])

    async def _answers(self) -> bool:
        return await connects(lambda: asyncio.open_unix_connection(str(self.socket_path)))

    async def _tcp_listens(self) -> bool:
        port = self.tcp_port
        return await connects(lambda: asyncio.open_connection("127.0.0.1", port))

    async def vsctl(self, *arguments: str) -> str:
        """``ovs-vsctl --db=unix:SOCKET --no-wait ARGUMENTS...``; its stdout."""
        return await run_command(["ovs-vsctl", f"--db={self.remote}", "--no-wait",
                                  "--timeout=10", *arguments])

    async def initialise(self) -> None:
        """``ovs-vsctl init`` and, with a probe interval, the TCP Manager row."""
        await self.vsctl("init")
        if self.tcp_port is not None and self.probe_interval_ms is not None:
            await self.vsctl("--", "--id=@m", "create", "Manager",
                             f'target="ptcp:{self.tcp_port}:127.0.0.1"',
                             f"inactivity_probe={self.probe_interval_ms}",
                             "--", "set", "Open_vSwitch", ".", "manager_options=@m")
            self.manager_created = True
            await wait_until(self._tcp_listens, START_TIMEOUT,
                             f"ovsdb-server {self.name} to listen on TCP",
                             watch=[self.process] if self.process else [])

    async def transact_offline(self, *operations: Operation) -> object:
        """``ovsdb-tool transact`` on the database file while the server is stopped."""
        if self.process is not None:
            raise OvsdbLabError(f"ovsdb-server {self.name} is running: stop it first")
        request = json.dumps([self.database, *(operation.to_json() for operation in operations)])
        return json.loads(await run_command(["ovsdb-tool", "transact", str(self.db_path),
                                             request]))

    @property
    def database(self) -> str:
        name: str = json.loads(self.schema.read_text())["name"]
        return name

    async def stop(self) -> None:
        """SIGTERM (then SIGKILL), reaped by PID."""
        if self.process is not None:
            await self.process.stop()
            self.process = None

    async def kill(self) -> None:
        """SIGKILL, reaped: a crash, for reconnect tests."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            await self.process.stop()
            self.process = None

    async def restart(self) -> None:
        """Stop (if running) and start again on the same database, socket and port."""
        await self.stop()
        await self.start()


async def connects(opener: Callable[[], Awaitable[StreamPair]]) -> bool:
    try:
        _, writer = await opener()
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def start_ovsdb_server(run_dir: Path, name: str, *, tcp: bool = False,
                             schema: Path = VSWITCH_SCHEMA,
                             probe_interval_ms: int | None = None) -> OvsdbServer:
    """Create the database, start the server, ``init`` it (vswitch schema); see the docstring."""
    if probe_interval_ms is not None and not (tcp and schema == VSWITCH_SCHEMA):
        raise OvsdbLabError("probe_interval_ms needs tcp=True and the vswitch schema")
    server = OvsdbServer(name, run_dir / name, schema, free_tcp_port() if tcp else None,
                         probe_interval_ms)
    await server.create()
    await server.start()
    try:
        if server.vswitch:
            await server.initialise()
    except BaseException:
        await server.stop()
        raise
    return server


@contextlib.asynccontextmanager
async def run_ovsdb_server(run_dir: Path, name: str = "ovsdb", *, tcp: bool = False,
                           schema: Path = VSWITCH_SCHEMA,
                           probe_interval_ms: int | None = None) -> AsyncIterator[OvsdbServer]:
    """:func:`start_ovsdb_server`, stopped and reaped when the block exits."""
    server = await start_ovsdb_server(run_dir, name, tcp=tcp, schema=schema,
                                      probe_interval_ms=probe_interval_ms)
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def run_ovsdb_servers(run_dir: Path, count: int, *, tcp: bool = False,
                            prefix: str = "host") -> AsyncIterator[list[OvsdbServer]]:
    """``count`` servers (``prefix``-0 ...), started concurrently, all stopped afterwards."""
    servers: list[OvsdbServer] = []
    gate = asyncio.Semaphore(PARALLEL_STARTS)

    async def one(index: int) -> None:
        async with gate:
            servers.append(await start_ovsdb_server(run_dir, f"{prefix}-{index}", tcp=tcp))

    try:
        results = await asyncio.gather(*(one(index) for index in range(count)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        servers.sort(key=lambda server: int(server.name.rsplit("-", 1)[1]))
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers), return_exceptions=True)
