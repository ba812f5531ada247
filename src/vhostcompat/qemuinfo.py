"""What one QEMU binary really has: version, machine types, virtio-net-pci properties.

Two QEMU generations differ in exactly the things pinning and selection need:
QEMU 10.0's ``virtio-net-pci`` has ``host_uso``, ``guest_uso4`` and
``guest_uso6`` (7.2 has none), its ``q35`` is ``pc-q35-10.0`` (7.2 refuses
to load that), and on an older machine type it changes property defaults
(USO off on ``pc-q35-7.2``). So nothing here is a table: the binary is asked
(``-version``, ``-machine help``, ``-device virtio-net-pci,help``), and the
defaults that a machine type sets are read from a paused QEMU over QMP
(:func:`device_facts`, ``qom-get`` of each property).

Errors are :class:`QemuBinaryError` (bad input, exit 2), one line naming the
binary: it does not exist, is not QEMU, lacks the machine type.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.errors import InputError, VhostCompatError
from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.process import bounded_output
from vhostcompat.lab.qemu import LEGACY_ONLY, QemuVm, run_qemu
from vhostcompat.lab.qmp import virtio_status

DEVICE = "virtio-net-pci"
HELP_TIMEOUT = 10.0
_VERSION = re.compile(r"QEMU emulator version (\d+\.\d+(?:\.\d+)?)")
_MACHINE_LINE = re.compile(r"(?P<name>\S+)\s+(?P<description>.*?)"
                           r"(?:\s+\(alias of (?P<alias>\S+)\))?(?P<default>\s+\(default\))?$")
_PROPERTY_LINE = re.compile(r"\s+(?P<name>[a-zA-Z][\w.-]*)=<(?P<type>[\w-]+)>\s*-\s*"
                            r"(?P<description>.*?)(?:\s*\(default: (?P<default>[^)]*)\))?$")


class QemuBinaryError(InputError):
    """A QEMU binary that cannot be used as asked: names it and what is wrong."""

    def __init__(self, binary: str, reason: str) -> None:
        self.binary = binary
        self.reason = reason
        super().__init__(f"QEMU {binary}: {reason}")


def resolve_binary(binary: str) -> str:
    """The binary's path; QemuBinaryError when it does not exist or cannot run."""
    found = shutil.which(binary) if os.sep not in binary else binary
    if found is None or not Path(found).exists():
        raise QemuBinaryError(binary, "no such file (give a QEMU system emulator binary)")
    if not os.access(found, os.X_OK) or Path(found).is_dir():
        raise QemuBinaryError(binary, "not an executable file")
    return found


async def _output(binary: str, *args: str) -> str:
    path = resolve_binary(binary)
    try:
        _status, out = await bounded_output([path, *args], HELP_TIMEOUT)
    except OSError as error:
        raise QemuBinaryError(binary, f"cannot run: {error.strerror}") from None
    except TimeoutError:
        raise QemuBinaryError(binary, f"{' '.join(args)}: no answer within "
                              f"{HELP_TIMEOUT:g} s (not QEMU?)") from None
    return out


@dataclass(frozen=True)
class MachineTypes:
    """``-machine help``: every machine type, aliases resolved."""

    names: tuple[str, ...]
    aliases: Mapping[str, str]
    default: str | None

    def resolve(self, binary: str, machine: str) -> str:
        """The versioned type ``machine`` names (``q35`` -> ``pc-q35-10.0``)."""
        if machine in self.aliases:
            return self.aliases[machine]
        if machine not in self.names:
            versioned = [name for name in self.names if name.startswith("pc-q35-")]
            hint = f"its q35 types: {', '.join(versioned[:6])}" if versioned else \
                f"it has: {', '.join(self.names[:8])}"
            raise QemuBinaryError(binary, f"has no machine type {machine!r} ({hint})")
        return machine

    @property
    def versioned(self) -> frozenset[str]:
        """The machine types a host publishes: versioned ones, no aliases."""
        return frozenset(name for name in self.names if name not in self.aliases
                         and re.fullmatch(r"pc-(q35|i440fx)-\d+\.\d+", name))


async def qemu_version(binary: str) -> str:
    """``10.0.2``; QemuBinaryError when the binary does not say it is QEMU."""
    text = await _output(binary, "-version")
    match = _VERSION.search(text)
    if match is None:
        first = text.strip().splitlines()[0] if text.strip() else "nothing"
        raise QemuBinaryError(binary, f"not QEMU (-version printed {first[:60]!r}, no "
                              "'QEMU emulator version')")
    return match.group(1)


def parse_machine_help(text: str) -> MachineTypes:
    names: list[str] = []
    aliases: dict[str, str] = {}
    default = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("Supported machines"):
            continue
        match = _MACHINE_LINE.match(line.strip())
        if match is None:
            continue
        names.append(match["name"])
        if match["alias"]:
            aliases[match["name"]] = match["alias"]
        if match["default"]:
            default = match["name"]
    return MachineTypes(tuple(names), aliases, default)


async def machine_types(binary: str) -> MachineTypes:
    return parse_machine_help(await _output(binary, "-machine", "help"))


@dataclass(frozen=True)
class DeviceProperty:
    name: str
    type: str
    default: str | None


def parse_device_help(text: str) -> dict[str, DeviceProperty]:
    properties: dict[str, DeviceProperty] = {}
    for line in text.splitlines():
        match = _PROPERTY_LINE.match(line)
        if match is not None:
            properties[match["name"]] = DeviceProperty(match["name"], match["type"],
                                                       match["default"])
    return properties


async def device_properties(binary: str, device: str = DEVICE) -> dict[str, DeviceProperty]:
    """``-device DEVICE,help``: every property with its type and class default."""
    properties = parse_device_help(await _output(binary, "-device", f"{device},help"))
    if not properties:
        raise QemuBinaryError(binary, f"-device {device},help listed no properties")
    return properties


@dataclass(frozen=True)
class BinaryFacts:
    """A QEMU binary, checked: version, machine types, the device's properties."""

    binary: str
    version: str
    machines: MachineTypes
    properties: Mapping[str, DeviceProperty]

    def resolve_machine(self, machine: str) -> str:
        return self.machines.resolve(self.binary, machine)


async def binary_facts(binary: str) -> BinaryFacts:
    """Ask ``binary`` everything but the machine-specific defaults."""
    version = await qemu_version(binary)
    machines, properties = await asyncio.gather(machine_types(binary),
                                                device_properties(binary))
    return BinaryFacts(binary, version, machines, properties)


@contextlib.asynccontextmanager
async def scratch_directory() -> AsyncIterator[Path]:
    """A short-lived run directory for a probing QEMU (short: Unix socket paths)."""
    path = Path(tempfile.mkdtemp(prefix="vc-q-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class QemuStartError(VhostCompatError):
    """A probing QEMU that would not start or answer: one line (its last log line)."""

    def __init__(self, binary: str, reason: str) -> None:
        super().__init__(f"QEMU {binary}: {reason}")


def one_line(error: BaseException) -> str:
    """An error's message reduced to its first line (lab errors carry a log tail)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class DeviceFacts:
    """A virtio-net-pci device as one binary and machine type really set it up."""

    machine: str
    """The versioned machine type (``q35`` resolved)."""
    host_features: VirtioFeature
    """QEMU's ``host-features`` (legacy-only bits included, as its load check uses)."""
    property_values: Mapping[str, bool]
    """Every boolean property's value on this machine type (its compat defaults)."""

    @property
    def guest_offer(self) -> VirtioFeature:
        """What a modern driver is offered: ``host-features`` minus legacy-only bits."""
        return self.host_features & ~LEGACY_ONLY


async def device_facts(facts: BinaryFacts, machine: str, *,
                       tap: str | None = None) -> DeviceFacts:
    """Start ``facts.binary`` paused (``-S``) on ``machine`` with one virtio-net-pci
    (on ``tap`` if given: QEMU creates a transient tap, needs root) and read its
    features and property values over QMP. QEMU is stopped before returning."""
    resolved = facts.resolve_machine(machine)
    vm = QemuVm(None, tap=tap, binary=facts.binary, machine=resolved, paused=True,
                qtest=False)
    booleans = [name for name, prop in facts.properties.items() if prop.type == "bool"]
    async with scratch_directory() as run_dir:
        try:
            async with run_qemu(vm, run_dir, "probe") as qemu:
                status = await virtio_status(qemu)
                device = f"/machine/peripheral/{vm.device_id}"
                values = {}
                for name in booleans:
                    value = await qemu.execute("qom-get", {"path": device, "property": name})
                    if not isinstance(value, bool):
                        raise QemuStartError(facts.binary, f"qom-get {name} answered "
                                             f"{value!r}, not a boolean")
                    values[name] = value
        except LabError as error:
            raise QemuStartError(facts.binary, one_line(error)) from None
    return DeviceFacts(resolved, status.host_features, values)
