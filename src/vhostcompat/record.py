"""``vhostcompat record --qmp``: what a running VM's guest negotiated, read from QEMU.

For a tap (or vhost-net) interface no vhost-user proxy sees the negotiation,
but QEMU knows it: over its QMP monitor, ``x-query-virtio-status`` gives the
guest-acked features (decoded by us, see :mod:`vhostcompat.lab.qmp`) and the
device status, and ``qom-get /machine type`` the machine type it runs
(``pc-q35-10.0-machine``: QEMU's ``q35`` alias already resolved). That is
recorded on the interface's row (:class:`~vhostcompat.profiles.NegotiatedState`),
where ``check-migration`` compares it with the destination.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from qemu.qmp import QMPClient, QMPError

from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature, names
from vhostcompat.hoststore import open_host
from vhostcompat.lab.errors import QmpCommandError
from vhostcompat.lab.qmp import VirtioStatus, virtio_net_path
from vhostcompat.profiles import NegotiatedState

QMP_TIMEOUT = 10.0
MACHINE_SUFFIX = "-machine"
DRIVER_OK = "VIRTIO_CONFIG_S_DRIVER_OK"


class RecordError(InputError):
    """The QEMU monitor could not be read: names the socket and why."""

    def __init__(self, socket: str, reason: str) -> None:
        super().__init__(f"QMP {socket}: {reason}")


@dataclass(frozen=True)
class GuestState:
    """What one running QEMU says its guest negotiated."""

    path: str
    machine_type: str
    guest_features: VirtioFeature
    driver_ok: bool

    def negotiated(self) -> NegotiatedState:
        return NegotiatedState(acked_features=self.guest_features,
                               machine_type=self.machine_type,
                               status="running" if self.driver_ok else "not-ready")


def machine_type_from_qom(value: object) -> str:
    """``pc-q35-7.2`` from ``qom-get /machine type``'s ``pc-q35-7.2-machine``."""
    if not isinstance(value, str) or not value.endswith(MACHINE_SUFFIX):
        raise QmpCommandError("qom-get", f"/machine type is {value!r}")
    return value[:-len(MACHINE_SUFFIX)]


def driver_ok(answer: Any) -> bool:
    statuses = answer.get("status", {}).get("statuses", []) if isinstance(answer, dict) else []
    return any(isinstance(entry, str) and entry.startswith(DRIVER_OK) for entry in statuses)


async def read_guest_state(socket: str, device_id: str = "net0",
                           timeout: float = QMP_TIMEOUT) -> GuestState:
    """Connect to QEMU's QMP ``socket`` and read the virtio-net ``device_id``'s state."""
    client = QMPClient("vhostcompat-record")
    try:
        async with asyncio.timeout(timeout):
            await client.connect(socket)
            try:
                devices = await client.execute("x-query-virtio")
                path = virtio_net_path(devices, device_id, socket)
                answer = await client.execute("x-query-virtio-status", {"path": path})
                machine = machine_type_from_qom(await client.execute(
                    "qom-get", {"path": "/machine", "property": "type"}))
            finally:
                await client.disconnect()
    except TimeoutError:
        raise RecordError(socket, f"no answer within {timeout:g} s") from None
    except (QMPError, OSError, EOFError) as error:
        raise RecordError(socket, str(error) or type(error).__name__) from None
    except QmpCommandError as error:
        raise RecordError(socket, str(error)) from None
    if not isinstance(answer, dict):
        raise RecordError(socket, f"x-query-virtio-status answered {answer!r}")
    try:
        status = VirtioStatus.from_qmp(path, answer)
    except QmpCommandError as error:
        raise RecordError(socket, str(error)) from None
    return GuestState(path, machine, status.guest_features, driver_ok(answer))


@dataclass(frozen=True)
class RecordReport:
    host: str
    interface: str
    state: GuestState

    def to_json(self) -> dict[str, object]:
        features = self.state.guest_features
        return {"host": self.host, "interface": self.interface,
                "machine_type": self.state.machine_type, "driver_ok": self.state.driver_ok,
                "acked_features": {"mask": f"{int(features):#x}",
                                   "names": names(features, VirtioFeature)}}

    def lines(self) -> list[str]:
        return [f"{self.host}: interface {self.interface}: machine {self.state.machine_type}, "
                f"guest acked {int(self.state.guest_features):#x}"
                + ("" if self.state.driver_ok else " (driver not ready: DRIVER_OK not set)")]


async def record_from_qmp(address: str, interface: str, socket: str,
                          device_id: str = "net0") -> RecordReport:
    """Read the guest's state from QEMU and record it on the host's interface row."""
    state = await read_guest_state(socket, device_id)
    async with open_host(address) as store:
        await store.record_negotiated(interface, state.negotiated())
    return RecordReport(address, interface, state)
