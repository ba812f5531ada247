"""Fixtures for the libvirt tests: embedded host stores and domain XML with our metadata."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers import run_bounded
from vhostcompat import manager
from vhostcompat.lab.libvirt import TcgDomain, VhostUserInterface
from vhostcompat.libvirt.metadata import DomainMetadata, InterfaceMetadata
from vhostcompat.profiles import load_default_catalog
from vhostcompat.profiles.catalog import SYSTEM_CATALOG_ENV

V27, V26, FC26 = "upstream.ovs-dpdk.v2.7", "upstream.ovs-dpdk.v2.6", "fc26.ovs-dpdk.v2.6"
MAC = "52:54:00:12:34:56"
MAC2 = "52:54:00:12:34:57"


@pytest.fixture(autouse=True)
def no_system_catalog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's /etc/vhostcompat out of these tests."""
    monkeypatch.setenv(SYSTEM_CATALOG_ENV, str(tmp_path / "no-such-system-dir"))


def publish(path: Path, only: Sequence[str] | None = None) -> str:
    run_bounded(manager.publish(str(path), load_default_catalog(), only))
    return str(path)


@pytest.fixture
def new_host(tmp_path: Path) -> str:
    """Publishes every shipped version (v2.7 with indirect descriptors first)."""
    return publish(tmp_path / "new-host")


@pytest.fixture
def old_host(tmp_path: Path) -> str:
    """Publishes only upstream.ovs-dpdk.v2.6."""
    return publish(tmp_path / "old-host", [V26])


@pytest.fixture
def distro_host(tmp_path: Path) -> str:
    """Publishes only fc26.ovs-dpdk.v2.6 (2.6 plus a backport): takes 2.6 by content."""
    return publish(tmp_path / "distro-host", [FC26])


def socket_for(mac: str) -> Path:
    return Path("/run/openvswitch") / f"vhu-{mac[-2:]}"


def domain_xml(*entries: InterfaceMetadata, macs: Sequence[str] | None = None,
               name: str = "vm1") -> bytes:
    """A TCG domain with a vhost-user interface per MAC and our metadata (if any entries)."""
    interfaces = tuple(VhostUserInterface(mac, socket_for(mac))
                       for mac in (macs if macs is not None else [e.mac for e in entries]))
    metadata = (DomainMetadata(entries).to_element(),) if entries else ()
    return TcgDomain(name, interfaces, metadata=metadata).to_xml().encode()
