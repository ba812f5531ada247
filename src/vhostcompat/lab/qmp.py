"""What QEMU negotiated and how migration went, read over QMP.

Thin helpers over QEMU's own asyncio QMP library (``qemu.qmp.QMPClient``):

* :func:`find_virtio_net_path` and :func:`virtio_status`: ``x-query-virtio``
  and ``x-query-virtio-status``, whose feature sets QEMU prints as lists of
  names (``"VIRTIO_RING_F_INDIRECT_DESC: Indirect descriptors supported"``)
  plus a number for the bits it cannot name; they come back as
  :class:`~vhostcompat.features.VirtioFeature` values. The ``vhost-dev`` part
  (the backend's raw GET_FEATURES answer, what vhost acked, the protocol
  features) exists only once vhost started, i.e. after DRIVER_OK.
* :func:`migrate`: ``return-path`` on both sides (without it a failed load on
  the destination leaves the source saying ``completed`` and paused), then a
  bounded wait for the source's final state; the final ``query-migrate``
  answer is returned (``status``, ``total-time``, ``downtime``, ...).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from vhostcompat.errors import FeatureNameError
from vhostcompat.features import Flag, ProtocolFeature, VirtioFeature, parse
from vhostcompat.lab.errors import QmpCommandError
from vhostcompat.lab.process import wait_until
from vhostcompat.lab.qemu import RunningQemu

logger = logging.getLogger(__name__)

MIGRATION_TIMEOUT = 30.0
MIGRATION_POLL_INTERVAL = 0.02
FINAL_MIGRATION_STATES = frozenset({"completed", "failed", "cancelled"})
VIRTIO_NET_NAME = "virtio-net"


# QEMU 10.0.2 prints GUEST_USO6 under GUEST_USO4's name ("VIRTIO_NET_F_GUEST_USO4:
# Driver can receive USOv6"): where QEMU's description names the bit, the
# description decides, so the mask is decoded by us and not by QEMU's label.
MISLABELLED: Mapping[str, VirtioFeature] = {
    "Driver can receive USOv6": VirtioFeature.VIRTIO_NET_F_GUEST_USO6,
    "Driver can receive USOv4": VirtioFeature.VIRTIO_NET_F_GUEST_USO4,
}


def _parse_named(kind: type[Flag], command: str, names: Sequence[object],
                 unknown: object) -> Flag:
    value = kind(0)
    for entry in names:
        if not isinstance(entry, str):
            raise QmpCommandError(command, f"feature entry {entry!r} is not a string")
        # "NAME: description"; the name is the spec's (or an alias we know).
        name, _, description = (part.strip() for part in entry.partition(":"))
        try:
            bit = parse(kind, [name])
        except FeatureNameError as error:
            raise QmpCommandError(command,
                                  f"QEMU printed a feature we cannot map: {error}") from None
        if kind is VirtioFeature and description in MISLABELLED:
            bit = kind(int(MISLABELLED[description]))
        if value & bit:
            # Two entries for one bit: a label we cannot trust; never guess.
            raise QmpCommandError(command, f"QEMU printed {name} twice ({entry!r})")
        value |= bit
    if unknown is not None:
        if not isinstance(unknown, int) or isinstance(unknown, bool):
            raise QmpCommandError(command, f"unknown feature bits {unknown!r} are not a number")
        value |= kind(unknown)
    return value


def parse_virtio_features(block: Mapping[str, Any],
                          command: str = "x-query-virtio-status") -> VirtioFeature:
    """A ``VirtioDeviceFeatures`` object (dev-features, transports, unknown bits)."""
    names = [*block.get("transports", []), *block.get("dev-features", [])]
    return _parse_named(VirtioFeature, command, names, block.get("unknown-dev-features"))


def parse_protocol_features(block: Mapping[str, Any],
                            command: str = "x-query-virtio-status") -> ProtocolFeature:
    """A ``VhostDeviceProtocols`` object (protocols, unknown-protocols)."""
    return _parse_named(ProtocolFeature, command, block.get("protocols", []),
                        block.get("unknown-protocols"))


@dataclasses.dataclass(frozen=True)
class VhostDevStatus:
    """The ``vhost-dev`` part: QEMU's view of the vhost-user backend."""

    features: VirtioFeature
    """The backend's raw GET_FEATURES answer."""
    acked_features: VirtioFeature
    """What QEMU passed to SET_FEATURES (guest-acked bits vhost handles)."""
    backend_features: VirtioFeature
    protocol_features: ProtocolFeature
    max_queues: int
    nvqs: int

    @classmethod
    def from_qmp(cls, block: Mapping[str, Any]) -> VhostDevStatus:
        return cls(
            features=parse_virtio_features(block["features"]),
            acked_features=parse_virtio_features(block["acked-features"]),
            backend_features=parse_virtio_features(block["backend-features"]),
            protocol_features=parse_protocol_features(block["protocol-features"]),
            max_queues=int(block["max-queues"]),
            nvqs=int(block["nvqs"]),
        )


@dataclasses.dataclass(frozen=True)
class VirtioStatus:
    """``x-query-virtio-status`` of one device, features decoded."""

    path: str
    host_features: VirtioFeature
    """The device's offer: QEMU's own features masked with the backend's.

    A modern-only device hides the legacy-only bits among them from the driver.
    """
    backend_features: VirtioFeature
    """The same masking as recorded for the backend (equal to host_features
    on QEMU 7.2 unless ``host_mtu`` bypasses the backend)."""
    guest_features: VirtioFeature
    """What the guest driver acked."""
    vhost_started: bool
    vhost_dev: VhostDevStatus | None
    raw: Mapping[str, Any]

    @classmethod
    def from_qmp(cls, path: str, answer: Mapping[str, Any]) -> VirtioStatus:
        try:
            vhost = answer.get("vhost-dev")
            return cls(
                path=path,
                host_features=parse_virtio_features(answer["host-features"]),
                backend_features=parse_virtio_features(answer["backend-features"]),
                guest_features=parse_virtio_features(answer["guest-features"]),
                vhost_started=bool(answer.get("vhost-started", False)),
                vhost_dev=VhostDevStatus.from_qmp(vhost) if vhost is not None else None,
                raw=answer,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise QmpCommandError("x-query-virtio-status",
                                  f"unexpected answer for {path}: {error!r}") from None


def virtio_net_path(devices: object, wanted: str, where: str) -> str:
    """The QOM path of the virtio-net with id ``wanted`` in an ``x-query-virtio`` answer."""
    if not isinstance(devices, list):
        raise QmpCommandError("x-query-virtio", f"{where}: answered {devices!r}")
    paths = [str(device.get("path")) for device in devices
             if isinstance(device, dict) and device.get("name") == VIRTIO_NET_NAME]
    for path in paths:
        if f"/{wanted}/" in path:
            return path
    raise QmpCommandError("x-query-virtio",
                          f"{where}: no virtio-net with id {wanted!r} among {paths}")


async def find_virtio_net_path(qemu: RunningQemu, device_id: str | None = None) -> str:
    """The QOM path of the virtio-net device (``.../net0/virtio-backend``).

    ``device_id`` picks one when there are several (default: the VM's).
    """
    wanted = qemu.vm.device_id if device_id is None else device_id
    return virtio_net_path(await qemu.execute("x-query-virtio"), wanted, qemu.name)


async def virtio_status(qemu: RunningQemu, path: str | None = None) -> VirtioStatus:
    """``x-query-virtio-status`` for ``path`` (default: the VM's virtio-net)."""
    if path is None:
        path = await find_virtio_net_path(qemu)
    answer = await qemu.execute("x-query-virtio-status", {"path": path})
    return VirtioStatus.from_qmp(path, answer)


async def wait_for_vhost_started(qemu: RunningQemu, timeout: float,
                                 path: str | None = None) -> VirtioStatus:
    """Wait (bounded) until QEMU reports vhost started; return that status."""
    if path is None:
        path = await find_virtio_net_path(qemu)
    latest: list[VirtioStatus] = []

    async def started() -> bool:
        latest[:] = [await virtio_status(qemu, path)]
        return latest[0].vhost_started and latest[0].vhost_dev is not None

    await wait_until(started, timeout, f"vhost to start in {qemu.name}",
                     watch=[qemu.process])
    return latest[0]


async def set_return_path(qemu: RunningQemu) -> None:
    await qemu.execute("migrate-set-capabilities",
                       {"capabilities": [{"capability": "return-path", "state": True}]})


async def migrate(source: RunningQemu, destination: RunningQemu, uri: str, *,
                  timeout: float = MIGRATION_TIMEOUT) -> dict[str, Any]:
    """Migrate ``source`` to ``destination`` (started with ``incoming=uri``).

    Enables ``return-path`` on both sides, starts the migration and waits at
    most ``timeout`` seconds for the source to reach ``completed``,
    ``failed`` or ``cancelled``. Returns the source's final ``query-migrate``
    answer; a failure is a result here, not an exception (the failure is
    what some tests want to see). On ``completed`` it also waits for the
    destination to leave its incoming state.
    """
    for qemu in (source, destination):
        await set_return_path(qemu)
    started = time.monotonic()
    await source.execute("migrate", {"uri": uri})
    final: dict[str, Any] = {}

    async def finished() -> bool:
        answer = await source.execute("query-migrate")
        if answer.get("status") in FINAL_MIGRATION_STATES:
            final.update(answer)
            return True
        return False

    await wait_until(finished, timeout, f"migration {source.name} -> {destination.name}",
                     watch=[source.process], interval=MIGRATION_POLL_INTERVAL)
    if final["status"] == "completed":
        remaining = max(timeout - (time.monotonic() - started), 0.1)
        await wait_until(lambda: _incoming_done(destination), remaining,
                         f"{destination.name} to finish loading", watch=[destination.process],
                         interval=MIGRATION_POLL_INTERVAL)
    logger.debug("migration %s -> %s: %s", source.name, destination.name, final)
    return final


async def _incoming_done(destination: RunningQemu) -> bool:
    status = await destination.execute("query-status")
    return bool(status.get("status") != "inmigrate")


async def run_state(qemu: RunningQemu) -> str:
    """The VM run state (``running``, ``paused``, ``inmigrate``, ``postmigrate`` ...)."""
    status = await qemu.execute("query-status")
    state = status.get("status")
    if not isinstance(state, str):
        raise QmpCommandError("query-status", f"{qemu.name}: no status in {status!r}")
    return state

