"""What the manager tests share: a small catalog of modes that differ in one way each."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import run_bounded
from vhostcompat import manager
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.hoststore import open_host
from vhostcompat.profiles import Catalog, NegotiatedState, load_catalog

T = TypeVar("T")
F = VirtioFeature

BIG, BIG_RENAMED, SMALL, TSO = "test.big", "test.big-renamed", "test.small", "test.tso"
NO_INDIRECT = "test.no-indirect"
IFACE = "vhu0"
COMMON_FEATURES = ["VIRTIO_NET_F_CSUM", "VIRTIO_NET_F_MRG_RXBUF", "VIRTIO_NET_F_MQ",
                   "VHOST_F_LOG_ALL", "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_F_VERSION_1"]
PROTOCOL = ["MQ", "LOG_SHMFD", "RARP", "REPLY_ACK"]


def _entry(version: str, extra: list[str], pairs: int, ring: int) -> str:
    features = ", ".join(f'"{name}"' for name in [*COMMON_FEATURES, *extra])
    protocol = ", ".join(f'"{name}"' for name in PROTOCOL)
    return (f'[[profile]]\nversion = "{version}"\nvirtio_features = [{features}]\n'
            f"protocol_features = [{protocol}]\nmax_queue_pairs = {pairs}\n"
            f"max_ring_size = {ring}\n")


# Newest first: big (indirect descriptors, 2 queue pairs, rings of 1024), the same
# under another name, no-indirect (big without indirect descriptors and rings of
# 256), small (no indirect descriptors, 1 queue pair, rings of 256), and tso (small
# plus HOST_TSO4: neither it nor small satisfies the other).
CATALOG_TEXT = (_entry(BIG, ["VIRTIO_RING_F_INDIRECT_DESC"], 2, 1024)
                + _entry(BIG_RENAMED, ["VIRTIO_RING_F_INDIRECT_DESC"], 2, 1024)
                + _entry(NO_INDIRECT, [], 2, 256)
                + _entry(SMALL, [], 1, 256)
                + _entry(TSO, ["VIRTIO_NET_F_HOST_TSO4"], 1, 128))

SMALL_ACKED = (F.VIRTIO_NET_F_CSUM | F.VIRTIO_NET_F_MRG_RXBUF | F.VIRTIO_NET_F_MQ
               | F.VHOST_USER_F_PROTOCOL_FEATURES | F.VIRTIO_F_VERSION_1)
ACKED_PROTOCOL = (ProtocolFeature.MQ | ProtocolFeature.LOG_SHMFD | ProtocolFeature.RARP
                  | ProtocolFeature.REPLY_ACK)


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return run_bounded(coroutine, timeout)


def write_catalog(directory: Path) -> Catalog:
    path = directory / "modes.toml"
    path.write_text(CATALOG_TEXT)
    return load_catalog([path])


def guest(acked: VirtioFeature = SMALL_ACKED, queue_pairs: int = 1,
          ring_size: int = 256) -> NegotiatedState:
    """What a proxy records once a guest ran: acked features, pairs and ring size in use."""
    return NegotiatedState(acked_features=acked, acked_protocol_features=ACKED_PROTOCOL,
                           queue_pairs=queue_pairs, ring_size=ring_size, status="running")


async def record(address: str, state: NegotiatedState, interface: str = IFACE) -> None:
    async with open_host(address) as store:
        await store.record_negotiated(interface, state)


async def publish_modes(catalog: Catalog, hosts: dict[str, list[str]]) -> None:
    for address, versions in hosts.items():
        await manager.publish(address, catalog, versions)
