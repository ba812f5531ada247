"""libvirt-xml: the pinning as a parseable partial <domain>, with <qemu:override> for the rest."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from tests.cli.conftest import Cli
from vhostcompat.features import VirtioFeature
from vhostcompat.libvirtxml import ALIAS, QEMU_NAMESPACE, libvirt_pinning
from vhostcompat.profiles import CompatProfile
from vhostcompat.profiles.catalog import merge_entries, shipped_catalog_entries
from vhostcompat.qemuargs import QemuTarget, pin_frontend

Q = f"{{{QEMU_NAMESPACE}}}"
SHIPPED = merge_entries(shipped_catalog_entries())


def parse(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(text)


def test_upstream_26_pins_through_driver_and_override() -> None:
    result = libvirt_pinning(pin_frontend(SHIPPED.get("upstream.ovs-dpdk.v2.6")))
    domain = parse(result.xml)
    driver = domain.find("devices/interface/driver")
    assert driver is not None
    assert driver.get("event_idx") == "off"
    assert driver.get("rx_queue_size") == "1024"
    host = driver.find("host")
    assert host is not None and host.get("ufo") == "off"
    assert domain.find("devices/interface/alias").get("name") == ALIAS  # type: ignore[union-attr]
    properties = {element.get("name"): element.get("value") for element in domain.iter(
        f"{Q}property")}
    assert properties["indirect_desc"] == "false"
    assert domain.find(f"{Q}override/{Q}device").get("alias") == ALIAS  # type: ignore[union-attr]
    assert "indirect_desc" in result.overrides
    assert any("tainted" in note for note in result.notes)


def test_uso_on_qemu_10_needs_the_override_and_names_the_machine() -> None:
    defaults = {"host_uso": True, "guest_uso4": True, "guest_uso6": True, "csum": True}
    target = QemuTarget("qemu-10", "10.0.2", "pc-q35-10.0", defaults)
    profile = CompatProfile("common", VirtioFeature.VIRTIO_F_VERSION_1 |
                            VirtioFeature.VIRTIO_NET_F_CSUM)
    result = libvirt_pinning(pin_frontend(profile, target))
    domain = parse(result.xml)
    assert domain.find("os/type").get("machine") == "pc-q35-10.0"  # type: ignore[union-attr]
    assert set(result.overrides) == {"host_uso", "guest_uso4", "guest_uso6"}


def test_the_command_prints_parseable_xml(cli: Cli) -> None:
    result = cli("libvirt-xml", "--profile", "debian12.dpdk-vhost.v22.11")
    assert result.status == 0
    domain = parse(result.stdout)
    assert domain.find("devices/interface/driver/host").get("tso4") == "off"  # type: ignore[union-attr]
    assert "note: " in result.stderr
    document = json.loads(cli("libvirt-xml", "--profile", "debian12.dpdk-vhost.v22.11",
                              "--json").stdout)
    assert parse(document["xml"]).tag == "domain"


def test_machine_needs_qemu(cli: Cli) -> None:
    result = cli("libvirt-xml", "--profile", "debian12.dpdk-vhost.v22.11", "--machine", "q35")
    assert result.status == 2
    assert result.stderr == "vhostcompat: --machine goes with --qemu BINARY\n"
