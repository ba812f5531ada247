"""QEMU as a real vhost-user frontend: configuration, command line, launcher.

:class:`QemuVm` says what the VM looks like (the vhost-user socket and who
listens on it, queues, MAC, ring sizes, extra virtio-net-pci properties such
as ``indirect_desc=off`` for frontend pinning, memory, an incoming migration
URI, qtest on or off). :func:`qemu_argv` turns it into a command line (pure)
and :func:`run_qemu` starts it, connects QMP (``qemu.qmp.QMPClient``) and
accepts the qtest connection, and always cleans up.

Choices that come from measurements on Debian's QEMU 7.2 (see FIELD-NOTES):
``-accel tcg`` (guests hang under this machine's KVM), memory from a shared
memfd backend (vhost-user maps guest RAM in the backend), ``romfile=`` (else
iPXE drives the NIC and starts vhost on its own), the halt firmware as
``-bios``, and unix sockets everywhere. QEMU blocks its whole start, QMP
included, until the vhost-user socket is connected: start the backend first
(or, with ``chardev_server=True``, have it connect to QEMU).

What QEMU 7.2's virtio-net-pci changes between a backend's GET_FEATURES
answer and the features its device offers is stated once here
(:data:`QEMU_DROPS`, :data:`QEMU_ADDS`, :data:`LEGACY_ONLY`,
:func:`device_offer`), measured with testpmd and with the reference backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import LabError, LabTimeoutError, QmpCommandError
from vhostcompat.lab.firmware import write_halt_firmware
from vhostcompat.lab.process import (
    POLL_INTERVAL,
    STOP_TIMEOUT,
    ChildProcess,
    start_process,
    wait_for_path,
)
from vhostcompat.lab.qtest import QtestClient, VirtioNetPciDriver, qtest_listener

logger = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
# QEMU 10.0, unpacked privately by scripts/qemu10.sh beside the installed 7.2.
QEMU10_ENV = "VHOSTCOMPAT_QEMU10"
QEMU10_WRAPPER = "qemu-system-x86_64-10.0"
DEFAULT_MAC = "52:54:00:12:34:56"
DEFAULT_DEVICE_ID = "net0"
# ``q35`` is an alias of the binary's newest q35 machine (pc-q35-7.2 on QEMU
# 7.2, pc-q35-10.0 on 10.0): pass a versioned type to keep two QEMUs migratable.
DEFAULT_MACHINE = "q35"
START_TIMEOUT = 20.0
QMP_DISCONNECT_TIMEOUT = 5.0
# virtio-net accepts ring sizes that are powers of 2 in this range.
MIN_QUEUE_SIZE = 256
MAX_QUEUE_SIZE = 1024
MAX_QUEUES = 64

F = VirtioFeature
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
# A modern-only device (disable-legacy=on) hides the legacy-only bits from the
# driver (bit 30 is VIRTIO_F_BAD_FEATURE to a legacy guest).
LEGACY_ONLY = (F.VIRTIO_NET_F_GSO | F.VIRTIO_F_NOTIFY_ON_EMPTY | F.VIRTIO_F_ANY_LAYOUT
               | F.VHOST_USER_F_PROTOCOL_FEATURES)

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_PROPERTY_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_.-]*")
# Linux interface names: at most IFNAMSIZ - 1 = 15 bytes, no '/', no spaces.
_TAP_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,15}")


def device_offer(backend_features: VirtioFeature) -> VirtioFeature:
    """QEMU's ``backend-features`` for a backend offering ``backend_features``.

    Holds with the lab's default device properties, for backends that offer
    CTRL_VQ and CTRL_RX (QEMU adds those too when a backend lacks them).
    """
    return (backend_features & ~QEMU_DROPS) | QEMU_ADDS


def qemu10_binary() -> str:
    """QEMU 10.0: ``$VHOSTCOMPAT_QEMU10``, else the wrapper in this environment's bin."""
    return os.environ.get(QEMU10_ENV) or str(Path(sys.prefix) / "bin" / QEMU10_WRAPPER)


def _option_value(value: str | Path) -> str:
    # QEMU's option syntax doubles a comma to mean a literal one.
    return str(value).replace(",", ",,")


@dataclasses.dataclass(frozen=True)
class QemuVm:
    """What the VM looks like; validated on creation (bad values raise InputError).

    ``chardev_server``: False, QEMU connects to the backend's socket (backend
    is the server, e.g. testpmd ``client=0``); True, QEMU listens on it.
    ``queues``: queue pairs of the vhost-user netdev (``mq=on`` is added to
    the device when above 1). ``device_properties``: extra ``-device
    virtio-net-pci`` properties, e.g. ``{"indirect_desc": "off"}``.
    ``incoming``: a migration URI such as ``unix:/tmp/x/mig`` (destination).
    ``paused``: start with ``-S``; ``cont`` is then up to the caller.
    ``reconnect``: as the socket's client, reconnect this many seconds after
    the backend closes (chardev ``reconnect=N``), as needed to survive a
    backend restart.
    ``tap``: a tap device name instead of ``socket_path``: ``-netdev tap``
    (userspace virtio-net, ``vhost=off``); QEMU opens the device, creating a
    transient one if it does not exist (root). Neither: a device without a
    netdev, enough to read its properties.
    ``binary``: which QEMU (``qemu-system-x86_64`` 7.2, the 10.0 wrapper ...);
    ``machine``: its machine type (``q35`` is the binary's newest q35).
    """

    socket_path: Path | None
    chardev_server: bool = False
    queues: int = 1
    mac: str = DEFAULT_MAC
    rx_queue_size: int | None = None
    tx_queue_size: int | None = None
    device_properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    memory_mib: int = 128
    incoming: str | None = None
    qtest: bool = True
    paused: bool = False
    device_id: str = DEFAULT_DEVICE_ID
    binary: str = QEMU_BINARY
    reconnect: int | None = None
    tap: str | None = None
    machine: str = DEFAULT_MACHINE

    def __post_init__(self) -> None:
        if self.socket_path is not None and self.tap is not None:
            raise InputError("a VM has a vhost-user socket or a tap device, not both "
                             f"({self.socket_path} and {self.tap})")
        if self.tap is not None and (self.chardev_server or self.reconnect is not None
                                     or self.queues != 1):
            raise InputError("chardev_server, reconnect and queues go with vhost-user, "
                             "not with a tap netdev")
        if self.tap is not None and not _TAP_NAME.fullmatch(self.tap):
            raise InputError(f"not a tap device name: {self.tap!r}")
        if not _PROPERTY_NAME.fullmatch(self.machine):
            raise InputError(f"not a QEMU machine type: {self.machine!r}")
        if not 1 <= self.queues <= MAX_QUEUES:
            raise InputError(f"queues must be 1..{MAX_QUEUES}, not {self.queues}")
        if not _MAC.fullmatch(self.mac):
            raise InputError(f"not a MAC address: {self.mac!r}")
        for name, size in (("rx_queue_size", self.rx_queue_size),
                           ("tx_queue_size", self.tx_queue_size)):
            if size is not None and (size & (size - 1) or
                                     not MIN_QUEUE_SIZE <= size <= MAX_QUEUE_SIZE):
                raise InputError(f"{name} must be a power of 2 in {MIN_QUEUE_SIZE}.."
                                 f"{MAX_QUEUE_SIZE}, not {size}")
        if self.reconnect is not None and (self.chardev_server or self.reconnect < 1):
            raise InputError("reconnect needs QEMU as the socket's client and at least 1 s, "
                             f"not {self.reconnect} (chardev_server={self.chardev_server})")
        if self.memory_mib < 16:
            raise InputError(f"memory_mib must be at least 16, not {self.memory_mib}")
        if not _PROPERTY_NAME.fullmatch(self.device_id):
            raise InputError(f"not a QEMU device id: {self.device_id!r}")
        for name, value in self.device_properties.items():
            if not _PROPERTY_NAME.fullmatch(name) or "," in value or "=" in value:
                raise InputError(f"not a -device property: {name}={value}")
        # A private copy: the caller's mapping may change after validation.
        object.__setattr__(self, "device_properties", dict(self.device_properties))


@dataclasses.dataclass(frozen=True)
class QemuPaths:
    """The files of one QEMU run (all in one short run directory)."""

    firmware: Path
    qmp: Path
    qtest: Path
    management_qmp: Path | None = None
    """A second QMP monitor for management tools (``vhostcompat record --qmp``),
    as libvirt or a host agent would have: the lab holds the first one."""

    @classmethod
    def in_directory(cls, run_dir: Path, name: str) -> QemuPaths:
        return cls(firmware=run_dir / "halt.bin", qmp=run_dir / f"{name}.qmp",
                   qtest=run_dir / f"{name}.qtest",
                   management_qmp=run_dir / f"{name}-mgmt.qmp")


def device_properties(vm: QemuVm) -> dict[str, str]:
    """The ``-device virtio-net-pci`` properties, extra ones last (they win)."""
    properties = {
        "id": vm.device_id,
        "mac": vm.mac,
        # Modern only: the qtest driver speaks virtio 1.x.
        "disable-legacy": "on",
        # No option ROM: iPXE would otherwise drive the NIC on its own.
        "romfile": "",
    }
    if vm.socket_path is not None or vm.tap is not None:
        properties = {"netdev": "n0", **properties}
    if vm.queues > 1:
        properties["mq"] = "on"
    if vm.rx_queue_size is not None:
        properties["rx_queue_size"] = str(vm.rx_queue_size)
    if vm.tx_queue_size is not None:
        properties["tx_queue_size"] = str(vm.tx_queue_size)
    properties.update(vm.device_properties)
    return properties


def netdev_arguments(vm: QemuVm) -> list[str]:
    """``-chardev``/``-netdev`` for a vhost-user socket, ``-netdev tap`` for a tap,
    nothing for a device without a backend (enough to read its properties)."""
    if vm.tap is not None:
        # Userspace virtio-net on the tap (vhost=off): /dev/vhost-net is optional.
        return ["-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no,vhost=off"]
    if vm.socket_path is None:
        return []
    chardev = f"socket,id=c0,path={_option_value(vm.socket_path)}"
    if vm.chardev_server:
        chardev += ",server=on,wait=off"
    if vm.reconnect is not None:
        chardev += f",reconnect={vm.reconnect}"
    netdev = "vhost-user,id=n0,chardev=c0"
    if vm.queues > 1:
        netdev += f",queues={vm.queues}"
    return ["-chardev", chardev, "-netdev", netdev]


def qemu_argv(vm: QemuVm, paths: QemuPaths) -> list[str]:
    """The QEMU command line for ``vm`` (pure: touches no file)."""
    memory = f"{vm.memory_mib}M"
    device = "virtio-net-pci," + ",".join(
        f"{name}={value}" for name, value in device_properties(vm).items())
    argv = [
        vm.binary,
        "-accel", "tcg",
        "-machine", f"{vm.machine},memory-backend=mem",
        "-m", memory,
        # vhost-user maps guest RAM in the backend: it must be shared memory.
        "-object", f"memory-backend-memfd,id=mem,size={memory},share=on",
        "-bios", str(paths.firmware),
        "-display", "none", "-nodefaults", "-no-user-config",
        *netdev_arguments(vm),
        "-device", device,
        "-qmp", f"unix:{_option_value(paths.qmp)},server=on,wait=off",
    ]
    if paths.management_qmp is not None:
        argv += ["-qmp", f"unix:{_option_value(paths.management_qmp)},server=on,wait=off"]
    if vm.qtest:
        argv += ["-qtest", f"unix:{_option_value(paths.qtest)}", "-qtest-log", "/dev/null"]
    if vm.incoming is not None:
        argv += ["-incoming", vm.incoming]
    if vm.paused:
        argv.append("-S")
    return argv


class RunningQemu:
    """A started QEMU: its process, QMP client and (with qtest) qtest client."""

    def __init__(self, name: str, vm: QemuVm, paths: QemuPaths, process: ChildProcess, *,
                 qmp: QMPClient, qtest: QtestClient | None) -> None:
        self.name = name
        self.vm = vm
        self.paths = paths
        self.process = process
        self.qmp = qmp
        self._qtest = qtest

    @property
    def qtest(self) -> QtestClient:
        if self._qtest is None:
            raise LabError(f"{self.name} was started without qtest")
        return self._qtest

    def driver(self) -> VirtioNetPciDriver:
        """A fresh virtio-net driver over this QEMU's qtest connection."""
        return VirtioNetPciDriver(self.qtest)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command; a failure becomes :class:`QmpCommandError`."""
        try:
            return await self.qmp.execute(command, dict(arguments) if arguments else None)
        except ExecuteError as error:
            raise QmpCommandError(command, f"{self.name}: {error}") from error
        except QMPError as error:
            self.process.ensure_running(f"QMP {command}")
            raise QmpCommandError(command, f"{self.name}: {error!r}") from error

    async def wait_exit(self, timeout: float) -> int:
        """Wait (bounded) for QEMU to exit by itself, e.g. a failed migration load."""
        return await self.process.wait(timeout)


async def _disconnect_qmp(qmp: QMPClient, name: str) -> None:
    try:
        await asyncio.wait_for(qmp.disconnect(), QMP_DISCONNECT_TIMEOUT)
    except (QMPError, EOFError, OSError) as error:
        # disconnect() re-raises what ended the session (EOF when QEMU exited
        # on a failed migration load); the process status tells the real story.
        logger.debug("%s: QMP session had ended with %r", name, error)


async def _connect_qmp(path: Path, process: ChildProcess, timeout: float) -> QMPClient:
    """Connect QMP once QEMU listens; QEMU greets only once its start is done."""
    deadline = time.monotonic() + timeout
    await wait_for_path(path, timeout, watch=[process])
    client = QMPClient(process.name)
    while True:
        process.ensure_running(f"QMP on {path}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LabTimeoutError(f"QMP on {path}", timeout, process.log_tail())
        try:
            await asyncio.wait_for(client.connect(str(path)), remaining)
            return client
        except TimeoutError:
            raise LabTimeoutError(f"QMP greeting on {path}", timeout,
                                  process.log_tail()) from None
        except (QMPError, OSError) as error:
            # The socket file appears at bind(), a moment before listen().
            logger.debug("QMP connect to %s: %r; retrying", path, error)
        await asyncio.sleep(POLL_INTERVAL)


@contextlib.asynccontextmanager
async def run_qemu(vm: QemuVm, run_dir: Path, name: str = "qemu", *,
                   start_timeout: float = START_TIMEOUT,
                   stop_timeout: float = STOP_TIMEOUT) -> AsyncIterator[RunningQemu]:
    """Start QEMU for ``vm`` with QMP connected (and qtest accepted); clean up on exit.

    ``run_dir`` holds the firmware, the QMP and qtest sockets and
    ``NAME.log``; keep it short (unix socket paths are limited to 107 bytes).
    The vhost-user backend must already listen on ``vm.socket_path`` unless
    ``vm.chardev_server`` is set, in which case it must connect within
    ``start_timeout``.
    """
    paths = QemuPaths.in_directory(run_dir, name)
    # A QMP socket left by an earlier run would pass for QEMU's new one.
    paths.qmp.unlink(missing_ok=True)
    if not paths.firmware.exists():
        write_halt_firmware(paths.firmware)
    async with contextlib.AsyncExitStack() as stack:
        listener = None
        if vm.qtest:
            # QEMU is the qtest client: we must listen before it starts.
            listener = await stack.enter_async_context(qtest_listener(paths.qtest))
        process = await start_process(name, qemu_argv(vm, paths), run_dir)
        stack.push_async_callback(process.stop, stop_timeout)
        qmp = await _connect_qmp(paths.qmp, process, start_timeout)
        stack.push_async_callback(_disconnect_qmp, qmp, name)
        qtest = None
        if listener is not None:
            qtest = await listener.accept(start_timeout, watch=[process])
            stack.push_async_callback(qtest.close)
        yield RunningQemu(name, vm, paths, process, qmp=qmp, qtest=qtest)
