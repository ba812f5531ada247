"""Real Open vSwitch with the DPDK datapath (OVS 3.1 + DPDK 22.11), one instance per host.

An instance lives in its own directory D: its own ``ovsdb-server`` (the
standard vswitch schema, ``unix:D/db.sock``, a
:class:`~vhostcompat.lab.ovsdb.OvsdbServer`) and ``ovs-vswitchd-dpdk``,
started as FIELD-NOTES measured them on a machine without hugepages:

* ``dpdk-extra=--no-huge -m 128 --no-pci --legacy-mem --file-prefix NAME``:
  ``--legacy-mem`` because OVS 3.1 otherwise appends ``--in-memory``, which
  ``--no-huge`` refuses; ``-m 128`` keeps the RSS near 180 MB;
* ``OVS_RUNDIR``, ``OVS_LOGDIR``, ``OVS_DBDIR``, ``OVS_SYSCONFDIR`` and
  ``RUNTIME_DIRECTORY`` all D: two instances never share a file;
* ``unshare --net``: the netdev datapath creates kernel taps (``ovs-netdev``,
  the bridge's) that would collide between instances and outlive them; in a
  private network namespace they vanish with it. vhost-user and OVSDB are
  Unix sockets, so the namespace costs nothing;
* ``pmd-maxsleep=10000``: the PMD thread would otherwise busy-poll a core;
* ready when the log says ``DPDK Enabled - initialized`` (the
  ``dpdk_initialized`` column keeps ``true`` from an earlier run).

``userspace-tso-enable`` is global and read at start: :class:`OvsConfig`'s
``tso`` sets it before vswitchd starts (it then offers HOST_TSO4/6 on
client ports). :meth:`RunningOvs.restart_vswitchd` and
:meth:`RunningOvs.restart_ovsdb_server` stop (or kill) and start one daemon
by PID, for the tests that crash them. Every child is stopped by PID and reaped.

Never call ``ovs-appctl netdev-dpdk/get-mempool-info`` on these instances:
before any guest driver started it crashed vswitchd here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from vhostcompat.errors import InputError
from vhostcompat.lab.ovsdb import OvsdbServer, run_command
from vhostcompat.lab.process import ChildProcess, start_process, wait_until

logger = logging.getLogger(__name__)

VSWITCHD_DPDK = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
OVSDB_SERVER = "ovsdb-server"
OVSDB_TOOL = "ovsdb-tool"
OVS_VSCTL = "ovs-vsctl"
UNSHARE = "unshare"
REQUIRED_TOOLS = (OVSDB_SERVER, OVSDB_TOOL, OVS_VSCTL, UNSHARE, VSWITCHD_DPDK)
DPDK_READY = "DPDK Enabled - initialized"
START_TIMEOUT = 30.0
VSCTL_TIMEOUT = 20.0
# vswitchd takes ~2 s to exit on SIGTERM (FIELD-NOTES).
VSWITCHD_STOP_TIMEOUT = 10.0
_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")


def missing_tools() -> list[str]:
    """The programs an OVS-DPDK instance needs that this machine lacks."""
    return [tool for tool in REQUIRED_TOOLS
            if (shutil.which(tool) if "/" not in tool else
                (tool if os.access(tool, os.X_OK) else None)) is None]


@dataclasses.dataclass(frozen=True)
class OvsConfig:
    """One OVS-DPDK instance: its name (file prefix), TSO, DPDK memory, its bridge."""

    name: str
    tso: bool = False
    memory_mib: int = 128
    bridge: str = "br0"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InputError(f"OVS instance name must match {_NAME.pattern}: {self.name!r}")
        if self.memory_mib < 64:
            raise InputError(f"OVS-DPDK memory_mib must be at least 64, not {self.memory_mib}")

    def other_config(self, directory: Path) -> dict[str, str]:
        """The ``Open_vSwitch . other_config`` keys set before vswitchd starts (pure)."""
        config = {
            "dpdk-init": "true",
            "dpdk-extra": f"--no-huge -m {self.memory_mib} --no-pci --legacy-mem "
                          f"--file-prefix vc{self.name}{os.getpid()}",
            "pmd-maxsleep": "10000",
        }
        if self.tso:
            config["userspace-tso-enable"] = "true"
        return config


def environment(directory: Path) -> dict[str, str]:
    """Every directory OVS and DPDK would use, pointed at the instance's own."""
    where = str(directory)
    return {name: where for name in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR",
                                     "OVS_SYSCONFDIR", "RUNTIME_DIRECTORY")}


def vswitchd_argv(directory: Path) -> list[str]:
    # unshare execs vswitchd: the child's PID is vswitchd's own.
    return [UNSHARE, "--net", "--", VSWITCHD_DPDK, f"unix:{directory / 'db.sock'}",
            f"--unixctl={directory / 'vs.ctl'}", f"--pidfile={directory / 'vs.pid'}",
            f"--log-file={directory / 'vs.log'}", "--no-chdir"]


def rss_kib(pid: int) -> int | None:
    """A process's resident set size in KiB (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


class RunningOvs:
    """A started instance: its directory, daemons and ``ovs-vsctl`` on its database."""

    def __init__(self, config: OvsConfig, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.env = environment(directory)
        self.database = OvsdbServer(config.name, directory)
        self.vswitchd: ChildProcess | None = None
        self._vswitchd_starts = 0

    @property
    def db_socket(self) -> Path:
        return self.database.socket_path

    @property
    def remote(self) -> str:
        """The OVSDB remote of this instance's database."""
        return self.database.remote

    @property
    def bridge(self) -> str:
        return self.config.bridge

    @property
    def vswitchd_log(self) -> Path:
        return self.directory / "vs.log"

    def socket_path(self, name: str) -> Path:
        """A socket path in the instance's directory (short, for QEMU and the agent)."""
        return self.directory / f"{name}.sock"

    async def vsctl(self, *arguments: str, wait: bool = False,
                    timeout: float = VSCTL_TIMEOUT) -> str:
        """Run ``ovs-vsctl`` on this database; its stdout (stripped). LabError on failure.

        Without ``wait`` it passes ``--no-wait`` (never blocks on vswitchd).
        """
        argv = [OVS_VSCTL, f"--db={self.remote}", f"--timeout={int(timeout)}"]
        if not wait:
            argv.append("--no-wait")
        return (await run_command([*argv, *arguments], timeout + 5)).strip()

    async def get(self, table: str, record: str, column: str) -> str:
        """``ovs-vsctl --no-wait get TABLE RECORD COLUMN`` (a missing key is an error)."""
        return await self.vsctl("get", table, record, column)

    async def add_vhost_client_port(self, name: str, server_path: Path | None,
                                    settings: Sequence[str] = ()) -> None:
        """A ``dpdkvhostuserclient`` port; ``settings`` are more ``COLUMN[:KEY]=VALUE``."""
        values = ["type=dpdkvhostuserclient", *settings]
        if server_path is not None:
            values.append(f"options:vhost-server-path={server_path}")
        await self.vsctl("add-port", self.bridge, name, "--", "set", "Interface", name,
                         *values)

    # -- daemons -----------------------------------------------------------------------

    async def start_ovsdb_server(self) -> None:
        self.db_socket.unlink(missing_ok=True)  # left by a killed server
        await self.database.start()

    async def start_vswitchd(self, timeout: float = START_TIMEOUT) -> None:
        """Start vswitchd and wait until DPDK is initialised and the bridge is up."""
        self.vswitchd_log.unlink(missing_ok=True)
        self._vswitchd_starts += 1
        self.vswitchd = await start_process(
            f"vswitchd-{self._vswitchd_starts}", vswitchd_argv(self.directory),
            self.directory, env=self.env)
        vswitchd = self.vswitchd

        def initialised() -> bool:
            try:
                return DPDK_READY in self.vswitchd_log.read_text(errors="replace")
            except FileNotFoundError:
                return False

        await wait_until(initialised, timeout, f"{self.config.name}: {DPDK_READY}",
                         watch=[vswitchd], interval=0.02)

    async def stop_vswitchd(self) -> int | None:
        if self.vswitchd is None:
            return None
        status = await self.vswitchd.stop(VSWITCHD_STOP_TIMEOUT)
        self.vswitchd = None
        return status

    async def stop_ovsdb_server(self) -> None:
        await self.database.stop()

    async def restart_vswitchd(self, *, crash: bool = False) -> None:
        """Stop vswitchd (SIGKILL with ``crash``), then start it again."""
        if crash and self.vswitchd is not None:
            await self.vswitchd.kill()
            self.vswitchd = None
        await self.stop_vswitchd()
        await self.start_vswitchd()

    async def restart_ovsdb_server(self, *, crash: bool = False) -> None:
        """Stop ovsdb-server (SIGKILL with ``crash``), then start it on the same database."""
        await (self.database.kill() if crash else self.database.stop())
        await self.start_ovsdb_server()

    def rss_kib(self) -> dict[str, int | None]:
        """Resident memory of each daemon (KiB)."""
        server = self.database.process
        return {"ovsdb-server": rss_kib(server.pid) if server else None,
                "ovs-vswitchd": rss_kib(self.vswitchd.pid) if self.vswitchd else None}

    async def stop(self) -> None:
        """vswitchd first (it holds the database's connection), then ovsdb-server."""
        try:
            await self.stop_vswitchd()
        finally:
            await self.stop_ovsdb_server()


async def _create_database(directory: Path, config: OvsConfig, ovs: RunningOvs) -> None:
    await ovs.database.create()
    await ovs.start_ovsdb_server()
    settings = [f"other_config:{key}={_quoted(value)}"
                for key, value in config.other_config(directory).items()]
    await ovs.vsctl("init", "--", "set", "Open_vSwitch", ".", *settings)
    await ovs.vsctl("add-br", config.bridge, "--", "set", "Bridge", config.bridge,
                    "datapath_type=netdev")


def _quoted(value: str) -> str:
    # ovs-vsctl parses values: a string with spaces or commas must be quoted.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.asynccontextmanager
async def run_ovs(config: OvsConfig, directory: Path, *,
                  vswitchd: bool = True) -> AsyncIterator[RunningOvs]:
    """An OVS-DPDK instance in ``directory`` (created), with bridge ``config.bridge``.

    ``vswitchd=False`` starts only the database (configured, bridge added):
    the caller starts vswitchd when it wants. Both daemons are stopped by
    PID on exit.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ovs = RunningOvs(config, directory)
    try:
        await _create_database(directory, config, ovs)
        if vswitchd:
            await ovs.start_vswitchd()
        yield ovs
    finally:
        await ovs.stop()


@contextlib.asynccontextmanager
async def run_ovs_pair(configs: Sequence[OvsConfig], directory: Path,
                       ) -> AsyncIterator[Mapping[str, RunningOvs]]:
    """Several instances side by side (started concurrently), by name, in ``directory/NAME``."""
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(stack.enter_async_context(
                run_ovs(config, directory / config.name))) for config in configs]
        yield {task.result().config.name: task.result() for task in tasks}
