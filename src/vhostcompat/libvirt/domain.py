"""Reading a libvirt domain XML that arrives from outside (the qemu hook's stdin).

The document is untrusted: its size is bounded (:data:`MAX_DOMAIN_XML`), a
document type declaration is refused before anything is built (so no entity
can be declared, expanded or fetched), and only what the hook needs is read:
the domain's name, its ``<metadata>`` and its ``<interface type='vhostuser'>``
devices (MAC, socket path).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import xml.parsers.expat
from dataclasses import dataclass
from pathlib import PurePosixPath

from vhostcompat.errors import InputError
from vhostcompat.libvirt.metadata import MetadataError, normalize_mac

MAX_DOMAIN_XML = 4 * 1024 * 1024  # real domain XML is a few KiB


class DomainXmlError(InputError):
    """Domain XML that cannot be read: too large, not well-formed, a DTD, not a domain."""


class _DoctypeRefused(Exception):
    pass


def _refuse_doctype(*_: object) -> None:
    raise _DoctypeRefused


def _refuse_declarations(data: bytes) -> None:
    """One expat pass that stops at any DTD or entity declaration."""
    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_doctype
    parser.ExternalEntityRefHandler = _refuse_doctype  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
    except _DoctypeRefused:
        raise DomainXmlError("domain XML with a document type declaration (DTD/entities) "
                             "is refused") from None
    except xml.parsers.expat.ExpatError as error:
        raise DomainXmlError(f"domain XML is not well-formed: "
                             f"{xml.parsers.expat.ErrorString(error.code)} at line "
                             f"{error.lineno}, column {error.offset}") from None


def parse_domain_xml(data: bytes) -> ET.Element:
    """The ``<domain>`` root of a bounded, DTD-free document."""
    if len(data) > MAX_DOMAIN_XML:
        raise DomainXmlError(f"domain XML larger than {MAX_DOMAIN_XML} bytes")
    if not data.strip():
        raise DomainXmlError("no domain XML (empty input)")
    _refuse_declarations(data)
    root = ET.fromstring(data)  # safe now: no DTD, so no entities
    if root.tag != "domain":
        raise DomainXmlError(f"the document's root is <{root.tag}>, not <domain>")
    return root


def domain_name(domain: ET.Element) -> str:
    name = (domain.findtext("name") or "").strip()
    if not name:
        raise DomainXmlError("the domain has no <name>")
    return name


@dataclass(frozen=True)
class VhostUserInterface:
    """One ``<interface type='vhostuser'>`` as the domain describes it."""

    mac: str
    socket_path: str | None

    @property
    def socket_name(self) -> str | None:
        """The socket path's last component (the default store interface name)."""
        if not self.socket_path:
            return None
        return PurePosixPath(self.socket_path).name or None


def vhostuser_interfaces(domain: ET.Element) -> dict[str, VhostUserInterface]:
    """The domain's vhost-user interfaces by MAC (those without a MAC have none to match)."""
    found: dict[str, VhostUserInterface] = {}
    for element in domain.findall("devices/interface"):
        if element.get("type") != "vhostuser":
            continue
        address = element.find("mac")
        text = address.get("address") if address is not None else None
        if text is None:
            continue
        try:
            mac = normalize_mac(text)
        except MetadataError as error:
            raise DomainXmlError(f"vhost-user interface: {error}") from None
        if mac in found:
            raise DomainXmlError(f"two vhost-user interfaces have MAC {mac}")
        source = element.find("source")
        found[mac] = VhostUserInterface(mac, source.get("path") if source is not None else None)
    return found
