"""metadata: the namespaced <metadata> element, built and read back, and what it refuses."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.libvirt.conftest import MAC, MAC2, V26, V27
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.libvirt.calls import NAMESPACE
from vhostcompat.libvirt.metadata import (
    DomainMetadata,
    InterfaceMetadata,
    MetadataError,
    metadata_from_domain,
    parse_metadata_element,
)
from vhostcompat.profiles import NegotiatedState

NEGOTIATED = NegotiatedState(VirtioFeature.VIRTIO_F_VERSION_1
                             | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC,
                             ProtocolFeature.MQ, 2, 512)
BOTH = DomainMetadata((InterfaceMetadata(MAC, V27, "vhu0", NEGOTIATED),
                       InterfaceMetadata(MAC2, V26)))


def in_domain(inner: str) -> ET.Element:
    return ET.fromstring(f"<domain><metadata>{inner}</metadata></domain>")


def test_printed_form_reads_back_identical() -> None:
    text = BOTH.to_xml()
    assert text.startswith(f'<interfaces xmlns="{NAMESPACE}">')
    assert parse_metadata_element(ET.fromstring(text)) == BOTH
    assert parse_metadata_element(BOTH.to_element()) == BOTH


def test_negotiated_attributes_are_hex_masks_and_counts() -> None:
    element = BOTH.to_element()[0][0]
    assert element.attrib == {"acked-features": "0x110000000",
                              "acked-protocol-features": "0x1",
                              "queue-pairs": "2", "ring-size": "512"}


def test_found_in_a_domain_with_libvirts_prefix_and_other_namespaces() -> None:
    other = '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"/>'
    prefixed = (f'<vhostcompat:interfaces xmlns:vhostcompat="{NAMESPACE}">'
                f'<vhostcompat:interface mac="{MAC2}" version="{V26}"/>'
                '</vhostcompat:interfaces>')
    expected = DomainMetadata((InterfaceMetadata(MAC2, V26),))
    assert metadata_from_domain(in_domain(other + prefixed)) == expected
    assert metadata_from_domain(in_domain(other)) is None
    assert metadata_from_domain(ET.fromstring("<domain/>")) is None


def test_mac_is_normalised_to_libvirts_form() -> None:
    assert InterfaceMetadata("52:54:00:AB:CD:EF", V26).mac == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize(("inner", "fragment"), [
    ('<interface mac="52:54:00:12:34" version="v"/>', "not a MAC address"),
    ('<interface mac="52:54:00:12:34:56" version="bad version"/>',
     "not a valid compatibility version"),
    ('<interface mac="52:54:00:12:34:56"/>', "needs both mac and version"),
    ('<interface mac="52:54:00:12:34:56" version="v" colour="red"/>',
     "unknown attribute 'colour'"),
    ('<interface mac="52:54:00:12:34:56" version="v" iface="a b"/>', "invalid interface name"),
    ('<interface mac="52:54:00:12:34:56" version="v"/>'
     '<interface mac="52:54:00:12:34:56" version="w"/>', "more than one entry"),
    ('<interface mac="52:54:00:12:34:56" version="v"><negotiated acked-features="xyz"/>'
     '</interface>', "negotiated acked-features: 'xyz' is not a hex mask"),
    ('<interface mac="52:54:00:12:34:56" version="v"><negotiated acked-features='
     '"0x10000000000000000"/></interface>', "not a 64-bit mask"),
    ('<interface mac="52:54:00:12:34:56" version="v"><negotiated queue-pairs="0"/>'
     '</interface>', "'0' is not a positive integer"),
    ('<interface mac="52:54:00:12:34:56" version="v"><negotiated mtu="1500"/></interface>',
     "unknown attribute 'mtu' on negotiated"),
    ('<interface mac="52:54:00:12:34:56" version="v"><other/></interface>',
     "only one negotiated element"),
    ('<something/>', "unexpected element"),
    ('', "no interface entries"),
])
def test_malformed_entries_are_refused_naming_what(inner: str, fragment: str) -> None:
    root = f'<interfaces xmlns="{NAMESPACE}">{inner}</interfaces>'
    with pytest.raises(MetadataError, match="vhostcompat metadata") as caught:
        metadata_from_domain(in_domain(root))
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_elements_of_our_namespace_are_refused() -> None:
    one = BOTH.to_xml()
    with pytest.raises(MetadataError, match="2 elements"):
        metadata_from_domain(in_domain(one + one))


def test_too_many_interfaces_are_refused() -> None:
    entries = tuple(InterfaceMetadata(f"52:54:00:00:{index // 256:02x}:{index % 256:02x}",
                                      V26) for index in range(65))
    with pytest.raises(MetadataError, match="at most 64"):
        DomainMetadata(entries)


def test_the_agents_status_text_does_not_travel() -> None:
    entry = InterfaceMetadata(MAC, V26, negotiated=NegotiatedState(queue_pairs=1,
                                                                   status="running"))
    assert entry.negotiated == NegotiatedState(queue_pairs=1)
    assert InterfaceMetadata(MAC, V26, negotiated=NegotiatedState(status="x")).negotiated \
        is None
