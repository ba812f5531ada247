"""domain: bounded, DTD-free reading of untrusted domain XML, and its vhost-user interfaces."""

from __future__ import annotations

import pytest

from tests.libvirt.conftest import MAC, MAC2, domain_xml
from vhostcompat.libvirt.domain import (
    MAX_DOMAIN_XML,
    DomainXmlError,
    domain_name,
    parse_domain_xml,
    vhostuser_interfaces,
)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<domain><name>&b;</name></domain>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY secret SYSTEM "file:///etc/shadow">]>
<domain><name>&secret;</name></domain>"""


def test_a_domain_reads_with_its_vhost_user_interfaces() -> None:
    domain = parse_domain_xml(domain_xml(macs=[MAC, MAC2.upper()]))
    assert domain_name(domain) == "vm1"
    found = vhostuser_interfaces(domain)
    assert sorted(found) == [MAC, MAC2]
    assert found[MAC].socket_path == "/run/openvswitch/vhu-56"
    assert found[MAC].socket_name == "vhu-56"


def test_other_interface_types_are_not_ours() -> None:
    xml = (b"<domain><name>d</name><devices><interface type='network'>"
           b"<mac address='52:54:00:00:00:01'/></interface></devices></domain>")
    assert vhostuser_interfaces(parse_domain_xml(xml)) == {}


@pytest.mark.parametrize(("data", "fragment"), [
    (BILLION_LAUGHS, "document type declaration"),
    (EXTERNAL_ENTITY, "document type declaration"),
    (b"<domain><name>vm1</name>", "not well-formed: no element found at line 1"),
    (b"<domain><name>&undefined;</name></domain>", "undefined entity"),
    (b"", "empty input"),
    (b"<network/>", "root is <network>, not <domain>"),
    (b"<domain/>", "no <name>"),
    (b"<domain>" + b" " * MAX_DOMAIN_XML + b"</domain>", "larger than"),
])
def test_untrusted_xml_is_refused_in_one_line(data: bytes, fragment: str) -> None:
    with pytest.raises(DomainXmlError) as caught:
        domain_name(parse_domain_xml(data))
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_vhost_user_interfaces_with_one_mac_are_refused() -> None:
    with pytest.raises(DomainXmlError, match="two vhost-user interfaces have MAC"):
        vhostuser_interfaces(parse_domain_xml(domain_xml(macs=[MAC, MAC.upper()])))


def test_a_vhost_user_interface_with_a_bad_mac_is_refused() -> None:
    with pytest.raises(DomainXmlError, match="not a MAC address"):
        vhostuser_interfaces(parse_domain_xml(domain_xml(macs=["52:54"])))
