"""The domain ``<metadata>`` element that carries each interface's compatibility version.

libvirt keeps one element per XML namespace in a domain's ``<metadata>``, as
it is, through define, start, save/restore and migration, and hands it to the
qemu hook on stdin (read and set it with ``virsh metadata DOMAIN URI``). Ours
is, in the namespace :data:`NAMESPACE` (stable: a new major version of this
format gets a new URI)::

    <metadata>
      <vhostcompat:interfaces xmlns:vhostcompat="https://vhostcompat.example/xmlns/vhostcompat/1">
        <vhostcompat:interface mac="52:54:00:12:34:56" version="debian12.dpdk-vhost.v22.11"
                               iface="vhu0">
          <vhostcompat:negotiated acked-features="0x130afffa7" queue-pairs="1"
                                  ring-size="256"/>
        </vhostcompat:interface>
      </vhostcompat:interfaces>
    </metadata>

* one ``interface`` per vhost-user interface, matched to the domain's
  ``<interface type='vhostuser'>`` by its ``<mac address>`` (compared
  case-insensitively);
* ``version``: the interface's compatibility version (required);
* ``iface`` (optional): the interface's name in the host store; without it,
  the last component of the interface's vhost-user socket path (for
  ``/var/run/openvswitch/vhu0`` that is ``vhu0``: OVS names a
  ``dpdkvhostuser`` port's socket after the port);
* ``negotiated`` (optional): what the guest negotiated on the host it runs on,
  every attribute optional: ``acked-features`` and ``acked-protocol-features``
  (hex masks), ``queue-pairs`` and ``ring-size`` (positive integers).

Everything read from a domain is untrusted: a malformed entry is refused as a
whole with :class:`MetadataError`, naming the entry and attribute.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from vhostcompat.errors import InputError
from vhostcompat.features import MASK64, ProtocolFeature, VirtioFeature
from vhostcompat.hoststore import check_interface_name
from vhostcompat.libvirt.calls import NAMESPACE
from vhostcompat.profiles import NegotiatedState
from vhostcompat.profiles.model import VERSION_PATTERN

PREFIX = "vhostcompat"
ROOT_TAG = "interfaces"
INTERFACE_TAG = "interface"
NEGOTIATED_TAG = "negotiated"
MAC_PATTERN = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAX_INTERFACES = 64

ET.register_namespace(PREFIX, NAMESPACE)


def qualified(tag: str) -> str:
    """``{NAMESPACE}tag``, as ElementTree names our elements."""
    return f"{{{NAMESPACE}}}{tag}"


class MetadataError(InputError):
    """Our ``<metadata>`` element (or a value meant for it) is malformed."""


def normalize_mac(text: str) -> str:
    """A MAC address in libvirt's form (lower case, colons); :class:`MetadataError` if not one."""
    mac = text.strip().lower()
    if not MAC_PATTERN.fullmatch(mac):
        raise MetadataError(f"{text!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    return mac


def check_version(text: str) -> str:
    if not VERSION_PATTERN.fullmatch(text):
        raise MetadataError(f"{text!r} is not a valid compatibility version")
    return text


def _mask(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise MetadataError(f"{text!r} is not a hex mask") from None
    if not 0 <= value <= MASK64:
        raise MetadataError(f"{text!r} is not a 64-bit mask")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1 or len(text) > 10:
        raise MetadataError(f"{text!r} is not a positive integer")
    return int(text)


# attribute -> (NegotiatedState field, parse, format)
_NEGOTIATED_ATTRIBUTES: Mapping[str, tuple[str, Callable[[str], object],
                                           Callable[[int], str]]] = {
    "acked-features": ("acked_features", lambda text: VirtioFeature(_mask(text)), hex),
    "acked-protocol-features": ("acked_protocol_features",
                                lambda text: ProtocolFeature(_mask(text)), hex),
    "queue-pairs": ("queue_pairs", _count, str),
    "ring-size": ("ring_size", _count, str),
}


def negotiated_from_attributes(attributes: Mapping[str, str]) -> NegotiatedState:
    """``<negotiated>``'s attributes; an unknown attribute is refused (never ignored)."""
    values: dict[str, object] = {}
    for name, text in attributes.items():
        known = _NEGOTIATED_ATTRIBUTES.get(name)
        if known is None:
            allowed = ", ".join(_NEGOTIATED_ATTRIBUTES)
            raise MetadataError(f"unknown attribute {name!r} on negotiated "
                                f"(allowed: {allowed})")
        field_name, parse, _ = known
        try:
            values[field_name] = parse(text)
        except MetadataError as error:
            raise MetadataError(f"negotiated {name}: {error}") from None
    return NegotiatedState(**values)  # type: ignore[arg-type]


def negotiated_to_attributes(state: NegotiatedState) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for name, (field_name, _, render) in _NEGOTIATED_ATTRIBUTES.items():
        value = getattr(state, field_name)
        if value is not None:
            attributes[name] = render(int(value))
    return attributes


@dataclass(frozen=True)
class InterfaceMetadata:
    """One vhost-user interface's entry: its MAC, version, store name, what it negotiated."""

    mac: str
    version: str
    iface: str | None = None
    negotiated: NegotiatedState | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        check_version(self.version)
        if self.iface is not None:
            try:
                check_interface_name(self.iface)
            except InputError as error:
                raise MetadataError(str(error)) from None
        if self.negotiated is not None:
            # Only what a destination is checked against travels; not the status.
            carried = dataclasses.replace(self.negotiated, status=None)
            object.__setattr__(self, "negotiated", None if carried.is_empty() else carried)

    def to_element(self) -> ET.Element:
        element = ET.Element(qualified(INTERFACE_TAG), mac=self.mac, version=self.version)
        if self.iface is not None:
            element.set("iface", self.iface)
        if self.negotiated is not None:
            ET.SubElement(element, qualified(NEGOTIATED_TAG),
                          negotiated_to_attributes(self.negotiated))
        return element


@dataclass(frozen=True)
class DomainMetadata:
    """Every managed vhost-user interface of a domain, at most one entry per MAC."""

    interfaces: tuple[InterfaceMetadata, ...]

    def __post_init__(self) -> None:
        if not self.interfaces:
            raise MetadataError("no interface entries")
        if len(self.interfaces) > MAX_INTERFACES:
            raise MetadataError(f"{len(self.interfaces)} interface entries "
                                f"(at most {MAX_INTERFACES})")
        macs = [entry.mac for entry in self.interfaces]
        for mac in macs:
            if macs.count(mac) > 1:
                raise MetadataError(f"MAC {mac} has more than one entry")

    def to_element(self) -> ET.Element:
        root = ET.Element(qualified(ROOT_TAG))
        root.extend(entry.to_element() for entry in self.interfaces)
        return root

    def to_xml(self) -> str:
        """The element alone, as ``virsh metadata --set`` and ``<metadata>`` take it.

        In the default-namespace form (``<interfaces xmlns="URI">``): virsh
        adds its own prefix to the root (``--key``) and fails ("failed to
        create a new XML namespace") on a root that already declares one.
        """
        lines = [f"<{ROOT_TAG} xmlns={quoteattr(NAMESPACE)}>"]
        for entry in self.interfaces:
            element = entry.to_element()
            children = [f"    <{NEGOTIATED_TAG}{_attributes(child.attrib)}/>" for child in element]
            opening = f"  <{INTERFACE_TAG}{_attributes(element.attrib)}"
            lines += [opening + ">", *children, f"  </{INTERFACE_TAG}>"] if children else [
                opening + "/>"]
        return "\n".join([*lines, f"</{ROOT_TAG}>", ""])


def _attributes(attributes: Mapping[str, str]) -> str:
    return "".join(f" {name}={quoteattr(value)}" for name, value in attributes.items())


def _only_attributes(element: ET.Element, allowed: Iterable[str], where: str) -> None:
    for name in element.attrib:
        if name not in allowed:
            raise MetadataError(f"{where}: unknown attribute {name!r}")


def _parse_interface(element: ET.Element, position: int) -> InterfaceMetadata:
    where = f"interface entry {position}"
    if element.tag != qualified(INTERFACE_TAG):
        raise MetadataError(f"{where}: unexpected element {element.tag!r}")
    _only_attributes(element, ("mac", "version", "iface"), where)
    mac, version = element.get("mac"), element.get("version")
    if mac is None or version is None:
        raise MetadataError(f"{where}: needs both mac and version")
    negotiated = None
    children = list(element)
    if len(children) > 1 or (children and children[0].tag != qualified(NEGOTIATED_TAG)):
        raise MetadataError(f"{where} ({mac}): only one negotiated element may follow")
    try:
        if children:
            negotiated = negotiated_from_attributes(children[0].attrib)
        return InterfaceMetadata(mac, version, element.get("iface"), negotiated)
    except MetadataError as error:
        raise MetadataError(f"{where} ({mac}): {error}") from None


def parse_metadata_element(root: ET.Element) -> DomainMetadata:
    """Our ``interfaces`` element, validated as a whole."""
    if root.tag != qualified(ROOT_TAG):
        raise MetadataError(f"expected {qualified(ROOT_TAG)!r}, found {root.tag!r}")
    entries = tuple(_parse_interface(child, position)
                    for position, child in enumerate(root, start=1))
    return DomainMetadata(entries)


def metadata_from_domain(domain: ET.Element) -> DomainMetadata | None:
    """Our metadata in a parsed ``<domain>``, or None when it carries none."""
    found = [element for metadata in domain.findall("metadata")
             for element in metadata if element.tag.startswith(f"{{{NAMESPACE}}}")]
    if not found:
        return None
    if len(found) > 1:
        raise MetadataError(f"the domain holds {len(found)} elements of {NAMESPACE} in "
                            "<metadata> (libvirt keeps one)")
    try:
        return parse_metadata_element(found[0])
    except MetadataError as error:
        raise MetadataError(f"vhostcompat metadata: {error}") from None
