"""A private libvirtd per lab host, and TCG domains with vhost-user interfaces.

As root, libvirt's QEMU driver uses fixed paths (``/etc/libvirt``,
``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt``,
``/var/cache/libvirt``) that no configuration moves. A lab host therefore
runs its daemons in a private mount namespace where private copies under the
host's directory D are bind-mounted over those paths (FIELD-NOTES.md,
"libvirt 9.0, started by hand"); the machine's own files are never touched:

=====================  =============================================
inside the namespace   the host's directory
=====================  =============================================
``/etc/libvirt``       ``D/etc`` (a copy, with our qemu.conf, libvirtd.conf, hooks)
``/run/libvirt``       ``D/run`` (the client socket ``D/run/libvirt-sock``)
``/var/lib/libvirt``   ``D/lib`` (a copy)
``/var/log/libvirt``   ``D/log`` (QEMU's command line: ``D/log/qemu/DOMAIN.log``)
``/var/cache/libvirt`` ``D/cache`` (QEMU capabilities)
=====================  =============================================

virtlogd starts first, through ``unshare -m --propagation private`` (its
process holds the namespace); libvirtd joins that namespace with
``nsenter``. Both run in the foreground as children of the lab, so both are
stopped by PID and reaped (their pidfiles are checked against those PIDs).
Only ``/run/libvirt`` is created on the machine, empty, as a mount point.

Stopping order matters: QEMU outlives libvirtd, so every domain is destroyed
first, then libvirtd and virtlogd get SIGTERM.

Capability cache: libvirtd probes every QEMU binary on a cold start (~8.5 s
here), or reuses ``/var/cache/libvirt/qemu/capabilities`` (~0.5 s). A
:class:`CapabilityCache` directory is copied into each new daemon's cache
before it starts and filled from the first daemon that probed; libvirt
itself re-probes whenever the cached entry does not match the binary.

Vhost-user sockets: a host's backend listens under ``D/run/vhost-user``,
which QEMU (inside the namespace) sees as ``/run/libvirt/vhost-user``: the
same path on every host, as ``/var/run/openvswitch/vhuNAME`` is in a real
deployment, so a migrated domain's XML needs no rewrite.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import shutil
import signal
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from vhostcompat.lab.errors import LabError, LabTimeoutError
from vhostcompat.lab.process import ChildProcess, managed_process, wait_until

logger = logging.getLogger(__name__)

SYSTEM_ETC = Path("/etc/libvirt")
SYSTEM_LIB = Path("/var/lib/libvirt")
# Mount points inside the namespace, and the host directory's part for each.
MOUNTS: tuple[tuple[str, str], ...] = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)
VHOST_USER_DIR = "vhost-user"
VHOST_USER_PATH_INSIDE = Path("/run/libvirt") / VHOST_USER_DIR
QEMU_EMULATOR = "/usr/bin/qemu-system-x86_64"
START_TIMEOUT = 90.0       # a cold start probes QEMU (~8.5 s idle; slower on a busy machine)
STOP_TIMEOUT = 20.0
VIRSH_TIMEOUT = 120.0      # a migration is one virsh call
DOMAIN_STOP_TIMEOUT = 20.0
POLL_INTERVAL = 0.1


class LibvirtError(LabError):
    """A lab libvirtd or virsh call failed."""


@dataclasses.dataclass(frozen=True)
class VirshResult:
    """One virsh call: its arguments, exit status and output."""

    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def error_line(self) -> str:
        """virsh's error, joined into one line."""
        return " ".join(line.strip() for line in self.stderr.splitlines() if line.strip())


@dataclasses.dataclass(frozen=True)
class CapabilityCache:
    """A directory of libvirt's QEMU capability XML files shared between lab daemons."""

    directory: Path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.xml")) if self.directory.is_dir() else []

    def seed(self, destination: Path) -> int:
        """Copy the cached capabilities into a daemon's cache; how many files."""
        destination.mkdir(parents=True, exist_ok=True)
        files = self.files()
        for path in files:
            shutil.copy2(path, destination / path.name)
        return len(files)

    def keep(self, source: Path) -> None:
        """Fill the cache from a daemon that probed, if it is still empty."""
        if self.files() or not source.is_dir():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.glob("*.xml")):
            temporary = self.directory / f".{path.name}.tmp"
            shutil.copy2(path, temporary)
            os.replace(temporary, self.directory / path.name)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class LibvirtHost:
    """One lab host's libvirt directory D and what is derived from it (pure)."""

    name: str
    root: Path

    def part(self, name: str) -> Path:
        return self.root / name

    @property
    def etc(self) -> Path:
        return self.part("etc")

    @property
    def run(self) -> Path:
        return self.part("run")

    @property
    def hooks_dir(self) -> Path:
        """Where libvirt looks for qemu hooks (``/etc/libvirt/hooks/qemu.d`` inside)."""
        return self.etc / "hooks" / "qemu.d"

    @property
    def socket(self) -> Path:
        return self.run / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def capabilities_dir(self) -> Path:
        return self.part("cache") / "qemu" / "capabilities"

    @property
    def vhost_user_dir(self) -> Path:
        """Backend sockets, seen by this host's QEMU under :data:`VHOST_USER_PATH_INSIDE`."""
        return self.run / VHOST_USER_DIR

    def domain_log(self, domain: str) -> Path:
        return self.part("log") / "qemu" / f"{domain}.log"

    def domain_pidfile(self, domain: str) -> Path:
        return self.run / "qemu" / f"{domain}.pid"

    @property
    def libvirtd_pidfile(self) -> Path:
        return self.root / "libvirtd.pid"

    @property
    def virtlogd_pidfile(self) -> Path:
        return self.root / "virtlogd.pid"


def qemu_conf(migration_port: int) -> str:
    """The private qemu.conf: root, no security driver, no namespaces or cgroups.

    libvirt wants a range (min < max); migrations here pass their own port.
    """
    return "\n".join([
        'user = "root"', 'group = "root"', "dynamic_ownership = 0", "remember_owner = 0",
        'security_driver = "none"', "namespaces = [ ]", "cgroup_controllers = [ ]",
        # Never migration_host/migration_address = 127.0.0.1 (the driver then
        # fails to load): loopback is passed per migration instead.
        f"migration_port_min = {migration_port}", f"migration_port_max = {migration_port + 1}",
        ""])


def libvirtd_conf(host_uuid: str) -> str:
    """The private libvirtd.conf: a host_uuid of its own, no auth on the private socket."""
    return "\n".join([
        f'host_uuid = "{host_uuid}"', 'unix_sock_group = "root"',
        'unix_sock_rw_perms = "0770"', 'auth_unix_ro = "none"', 'auth_unix_rw = "none"',
        # Warnings and errors on stderr: the lab's log of the daemon, shown
        # with a failure.
        'log_outputs = "3:stderr"',
        ""])


def prepare_host(host: LibvirtHost) -> None:
    """Private copies of the machine's libvirt configuration and state, our config files."""
    if host.root.exists() and any(host.root.iterdir()):
        raise LibvirtError(f"libvirt host {host.name}: {host.root} is not empty")
    host.root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SYSTEM_ETC, host.etc, symlinks=True)
    shutil.copytree(SYSTEM_LIB, host.part("lib"), symlinks=True)
    for part in ("run", "log/qemu", "cache/qemu"):
        host.part(part).mkdir(parents=True, exist_ok=True)
    host.vhost_user_dir.mkdir()
    host.hooks_dir.mkdir(parents=True, exist_ok=True)
    (host.etc / "qemu.conf").write_text(qemu_conf(free_tcp_port()))
    (host.etc / "libvirtd.conf").write_text(libvirtd_conf(str(uuid.uuid4())))


def namespace_script(host: LibvirtHost) -> str:
    """The shell line run by ``unshare``: bind mounts, then virtlogd in the foreground."""
    mounts = [f"mount --bind {shlex.quote(str(host.part(part)))} {inside}"
              for part, inside in MOUNTS]
    virtlogd = f"exec virtlogd -p {shlex.quote(str(host.virtlogd_pidfile))}"
    return "set -e; " + "; ".join([*mounts, virtlogd])


def virtlogd_argv(host: LibvirtHost) -> list[str]:
    return ["unshare", "-m", "--propagation", "private", "--", "sh", "-c",
            namespace_script(host)]


def libvirtd_argv(host: LibvirtHost, namespace_pid: int) -> list[str]:
    return ["nsenter", f"--mount=/proc/{namespace_pid}/ns/mnt", "--",
            "libvirtd", "-p", str(host.libvirtd_pidfile)]


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


async def wait_pid_gone(pid: int, timeout: float, what: str) -> None:
    """Wait (bounded) until a process that is not our child is gone."""
    await wait_until(lambda: not pid_alive(pid), timeout, f"{what} (pid {pid}) to exit")


class LibvirtDaemon:
    """A started lab host: its libvirtd and virtlogd, and virsh against it."""

    def __init__(self, host: LibvirtHost, virtlogd: ChildProcess,
                 libvirtd: ChildProcess) -> None:
        self.host = host
        self.virtlogd = virtlogd
        self.libvirtd = libvirtd

    @property
    def uri(self) -> str:
        return self.host.uri

    async def virsh(self, *arguments: str, stdin: bytes | None = None,
                    timeout: float = VIRSH_TIMEOUT) -> VirshResult:
        """``virsh -c URI ARGS...``; its status and output (never raises on failure)."""
        argv = ("virsh", "-c", self.uri, *arguments)
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else
            asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise LibvirtError(f"virsh {' '.join(arguments)}: no answer within "
                               f"{timeout:g}s") from None
        assert process.returncode is not None
        return VirshResult(argv, process.returncode, out.decode(errors="replace"),
                           err.decode(errors="replace"))

    async def virsh_ok(self, *arguments: str, timeout: float = VIRSH_TIMEOUT) -> str:
        """``virsh ARGS...`` that must succeed; its stdout."""
        result = await self.virsh(*arguments, timeout=timeout)
        if not result.ok:
            raise LibvirtError(f"{self.host.name}: virsh {' '.join(arguments)} failed: "
                               f"{result.error_line()}")
        return result.stdout

    async def domains(self) -> list[str]:
        """Every running domain's name."""
        out = await self.virsh_ok("list", "--name")
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def domain_state(self, domain: str) -> str | None:
        """``virsh domstate``: "running", "paused", "shut off"..., None if unknown here."""
        result = await self.virsh("domstate", domain)
        return result.stdout.strip() if result.ok else None

    def qemu_pid(self, domain: str) -> int | None:
        """The domain's QEMU process, if it runs (libvirt's pidfile, then /proc)."""
        pid = _read_pid(self.host.domain_pidfile(domain))
        return pid if pid is not None and pid_alive(pid) else None

    async def destroy_all(self, timeout: float = DOMAIN_STOP_TIMEOUT) -> None:
        """Destroy every running domain and wait until its QEMU is gone."""
        for domain in await self.domains():
            pid = self.qemu_pid(domain)
            await self.virsh("destroy", domain)
            if pid is not None:
                await wait_pid_gone(pid, timeout, f"{self.host.name}: QEMU of {domain}")

    async def destroy_all_if_running(self) -> None:
        """Before libvirtd stops: QEMU outlives it, so its domains go first."""
        if self.libvirtd.running:
            await self.destroy_all()


def _is_qemu(pid: int) -> bool:
    """Whether ``pid`` is still a QEMU (a stale pidfile may name a reused PID)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return Path(argv0.decode(errors="replace")).name.startswith("qemu-system-")


async def kill_leftover_qemus(host: LibvirtHost, timeout: float = DOMAIN_STOP_TIMEOUT) -> None:
    """After libvirtd: any QEMU it left (a failed destroy) is stopped by its PID."""
    for pidfile in sorted((host.run / "qemu").glob("*.pid")):
        pid = _read_pid(pidfile)
        if pid is None or not pid_alive(pid) or not _is_qemu(pid):
            continue
        logger.warning("%s: QEMU pid %d left running; stopping it", host.name, pid)
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            with contextlib.suppress(LabTimeoutError):
                await wait_pid_gone(pid, timeout, f"{host.name}: QEMU")
                break


def _check_pidfile(path: Path, child: ChildProcess) -> bool:
    pid = _read_pid(path)
    if pid is not None and pid != child.pid:
        raise LibvirtError(f"{path} names pid {pid}, not our {child.name} (pid {child.pid})")
    return pid is not None


@dataclasses.dataclass(frozen=True)
class StartTiming:
    """How long a daemon took to answer, and whether its capability cache was seeded."""

    seconds: float
    seeded_files: int


@contextlib.asynccontextmanager
async def run_libvirtd(host: LibvirtHost, cache: CapabilityCache | None = None, *,
                       start_timeout: float = START_TIMEOUT,
                       timings: list[StartTiming] | None = None,
                       ) -> AsyncIterator[LibvirtDaemon]:
    """virtlogd + libvirtd for a prepared host, ready once ``virsh version`` answers.

    Hooks must be in :attr:`LibvirtHost.hooks_dir` before this starts
    (libvirt discovers them at start). Stopped on exit, domains first.
    """
    Path("/run/libvirt").mkdir(exist_ok=True)  # a mount point, left empty
    seeded = cache.seed(host.capabilities_dir) if cache is not None else 0
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        virtlogd = await stack.enter_async_context(
            managed_process(f"{host.name}-virtlogd", virtlogd_argv(host), host.root,
                            stop_timeout=STOP_TIMEOUT))
        await wait_until(lambda: _check_pidfile(host.virtlogd_pidfile, virtlogd),
                         start_timeout, f"{host.name}: virtlogd to write its pidfile",
                         watch=[virtlogd])
        # Unwound in reverse: domains, libvirtd, leftover QEMUs, virtlogd.
        stack.push_async_callback(kill_leftover_qemus, host)
        libvirtd = await stack.enter_async_context(
            managed_process(f"{host.name}-libvirtd", libvirtd_argv(host, virtlogd.pid),
                            host.root, stop_timeout=STOP_TIMEOUT))
        daemon = LibvirtDaemon(host, virtlogd, libvirtd)
        stack.push_async_callback(daemon.destroy_all_if_running)

        async def answers() -> bool:
            if not host.socket.exists():
                return False
            return (await daemon.virsh("version", timeout=start_timeout)).ok

        await wait_until(answers, start_timeout, f"{host.name}: libvirtd to answer",
                         watch=[virtlogd, libvirtd], interval=POLL_INTERVAL)
        _check_pidfile(host.libvirtd_pidfile, libvirtd)
        elapsed = time.monotonic() - started
        logger.info("%s: libvirtd ready in %.2fs (%d capability files seeded)", host.name,
                    elapsed, seeded)
        if timings is not None:
            timings.append(StartTiming(elapsed, seeded))
        if cache is not None:
            cache.keep(host.capabilities_dir)
        yield daemon


@contextlib.asynccontextmanager
async def run_hosts(run_dir: Path, names: Sequence[str], cache: CapabilityCache | None,
                    before_start: Callable[[LibvirtHost], None] | None = None,
                    timings: list[StartTiming] | None = None,
                    ) -> AsyncIterator[list[LibvirtDaemon]]:
    """Several lab hosts ``run_dir/NAME``, started one after the other.

    One after the other because the first fills the capability cache the
    others start warm from; ``before_start`` runs on each prepared host
    (install hooks there).
    """
    async with contextlib.AsyncExitStack() as stack:
        daemons = []
        for name in names:
            host = LibvirtHost(name, run_dir / name)
            prepare_host(host)
            if before_start is not None:
                before_start(host)
            daemons.append(await stack.enter_async_context(
                run_libvirtd(host, cache, timings=timings)))
        yield daemons


# --- domains -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VhostUserInterface:
    """One ``<interface type='vhostuser'>``: QEMU connects (client) to ``socket_path``."""

    mac: str
    socket_path: Path


@dataclasses.dataclass(frozen=True)
class TcgDomain:
    """A diskless TCG domain for vhost-user tests.

    ``<domain type='qemu'>`` on q35, memfd shared memory (mandatory for
    vhost-user), no disks, no graphics, no USB, no balloon. The NIC's option
    ROM is off (``<rom enabled='no'/>``), else SeaBIOS's iPXE drives it
    ~2 s after start and starts vhost by itself; without a guest driver the
    vhost-user connection then stays negotiated but never starts its rings.
    ``metadata`` elements go into ``<metadata>`` as they are.
    """

    name: str
    interfaces: tuple[VhostUserInterface, ...]
    metadata: tuple[ET.Element, ...] = ()
    memory_mib: int = 128
    emulator: str = QEMU_EMULATOR
    option_rom: bool = False

    def to_element(self) -> ET.Element:
        domain = ET.Element("domain", type="qemu")
        ET.SubElement(domain, "name").text = self.name
        ET.SubElement(domain, "memory", unit="MiB").text = str(self.memory_mib)
        ET.SubElement(domain, "vcpu").text = "1"
        os_element = ET.SubElement(domain, "os")
        ET.SubElement(os_element, "type", arch="x86_64", machine="q35").text = "hvm"
        backing = ET.SubElement(domain, "memoryBacking")
        ET.SubElement(backing, "source", type="memfd")
        ET.SubElement(backing, "access", mode="shared")
        if self.metadata:
            ET.SubElement(domain, "metadata").extend(self.metadata)
        devices = ET.SubElement(domain, "devices")
        ET.SubElement(devices, "emulator").text = self.emulator
        for interface in self.interfaces:
            element = ET.SubElement(devices, "interface", type="vhostuser")
            ET.SubElement(element, "mac", address=interface.mac)
            ET.SubElement(element, "source", type="unix", path=str(interface.socket_path),
                          mode="client")
            ET.SubElement(element, "model", type="virtio")
            if not self.option_rom:
                ET.SubElement(element, "rom", enabled="no")
        ET.SubElement(devices, "controller", type="usb", model="none")
        ET.SubElement(devices, "memballoon", model="none")
        return domain

    def to_xml(self) -> str:
        element = self.to_element()
        ET.indent(element)
        return ET.tostring(element, encoding="unicode") + "\n"


async def define_and_start(daemon: LibvirtDaemon, domain: TcgDomain,
                           directory: Path) -> VirshResult:
    """``virsh define`` the domain, then ``virsh start`` it; the start's result."""
    path = directory / f"{domain.name}.xml"
    path.write_text(domain.to_xml())
    await daemon.virsh_ok("define", str(path))
    return await daemon.virsh("start", domain.name)


async def migrate(source: LibvirtDaemon, destination: LibvirtDaemon,
                  domain: str) -> VirshResult:
    """``virsh migrate --live --p2p`` over loopback only (both loopback options)."""
    port = free_tcp_port()
    return await source.virsh("migrate", "--live", "--p2p", domain, destination.uri,
                              "--migrateuri", f"tcp://127.0.0.1:{port}",
                              "--listen-address", "127.0.0.1")

