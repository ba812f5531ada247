"""``vhostcompat libvirt-xml``: the frontend pinning as libvirt domain XML.

The same pinning as ``qemu-args`` (:func:`vhostcompat.qemuargs.pin_frontend`),
expressed the way libvirt 9.0 lets a domain say it:

* the interface's ``<driver>`` element (domaincommon.rng): ``queues``,
  ``rx_queue_size``, ``tx_queue_size``, ``event_idx``, ``packed``, ``iommu``,
  ``rss``, ``rss_hash_report``, and the ``<host csum gso tso4 tso6 ecn ufo
  mrg_rxbuf/>`` and ``<guest csum tso4 tso6 ecn ufo/>`` offload switches;
* what that schema cannot express (``indirect_desc``, the USO bits,
  ``ctrl_*``, ``any_layout``, ``queue_reset`` ...): a ``<qemu:override>`` block
  (namespace http://libvirt.org/schemas/domain/qemu/1.0) setting the device's
  frontend properties by the interface's alias ``ua-net0``. libvirt marks
  such a domain tainted, and says so; we do too;
* with a QEMU target, the machine type to run (``<os><type machine=...>``).

Features no property removes (VIRTIO_F_VERSION_1) and protocol features are
named in the notes: neither libvirt nor QEMU can express them.

The output is one XML document (a partial ``<domain>``) whose pieces go into
the real domain definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from xml.etree import ElementTree

from vhostcompat.features import VirtioFeature, names
from vhostcompat.qemuargs import FrontendPinning

QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
ALIAS = "ua-net0"

# QEMU property -> (element, attribute) in libvirt 9.0's <driver> grammar.
DRIVER_ATTRIBUTES: Mapping[str, tuple[str, str]] = {
    "csum": ("host", "csum"),
    "gso": ("host", "gso"),
    "host_tso4": ("host", "tso4"),
    "host_tso6": ("host", "tso6"),
    "host_ecn": ("host", "ecn"),
    "host_ufo": ("host", "ufo"),
    "mrg_rxbuf": ("host", "mrg_rxbuf"),
    "guest_csum": ("guest", "csum"),
    "guest_tso4": ("guest", "tso4"),
    "guest_tso6": ("guest", "tso6"),
    "guest_ecn": ("guest", "ecn"),
    "guest_ufo": ("guest", "ufo"),
    "event_idx": ("driver", "event_idx"),
    "packed": ("driver", "packed"),
    "iommu_platform": ("driver", "iommu"),
    "rss": ("driver", "rss"),
    "hash": ("driver", "rss_hash_report"),
    "rx_queue_size": ("driver", "rx_queue_size"),
    "tx_queue_size": ("driver", "tx_queue_size"),
}
PROPERTY_TYPES: Mapping[str, str] = {"rx_queue_size": "unsigned", "tx_queue_size": "unsigned"}


@dataclass(frozen=True)
class LibvirtPinning:
    """The XML document, and what it had to put in ``<qemu:override>`` or cannot say."""

    xml: str
    overrides: tuple[str, ...]
    notes: tuple[str, ...]
    satisfiable: bool

    def to_json(self) -> dict[str, object]:
        return {"xml": self.xml, "qemu_override": list(self.overrides),
                "notes": list(self.notes), "satisfiable": self.satisfiable}


def _switch(value: str) -> str:
    return {"on": "on", "off": "off", "true": "on", "false": "off"}.get(value, value)


def libvirt_pinning(pinning: FrontendPinning, queues: int = 1) -> LibvirtPinning:
    """The ``<driver>`` element and ``<qemu:override>`` that pin like ``pinning``."""
    ElementTree.register_namespace("qemu", QEMU_NAMESPACE)
    domain = ElementTree.Element("domain", {"type": "qemu"})
    if pinning.machine is not None:
        os_element = ElementTree.SubElement(domain, "os")
        ElementTree.SubElement(os_element, "type", {"arch": "x86_64",
                                                    "machine": pinning.machine}).text = "hvm"
    interface = ElementTree.SubElement(ElementTree.SubElement(domain, "devices"),
                                       "interface", {"type": "ethernet"})
    ElementTree.SubElement(interface, "model", {"type": "virtio"})
    driver = ElementTree.SubElement(interface, "driver", {"queues": str(queues)})
    children: dict[str, ElementTree.Element] = {}
    overrides: list[tuple[str, str]] = []
    for prop, value in pinning.properties:
        where = DRIVER_ATTRIBUTES.get(prop)
        if where is None:
            overrides.append((prop, value))
            continue
        element, attribute = where
        if element == "driver":
            driver.set(attribute, _switch(value))
        else:
            if element not in children:
                children[element] = ElementTree.SubElement(driver, element)
            children[element].set(attribute, _switch(value))
    ElementTree.SubElement(interface, "alias", {"name": ALIAS})
    notes = list(pinning.notes)
    if overrides:
        override = ElementTree.SubElement(domain, f"{{{QEMU_NAMESPACE}}}override")
        device = ElementTree.SubElement(override, f"{{{QEMU_NAMESPACE}}}device",
                                        {"alias": ALIAS})
        frontend = ElementTree.SubElement(device, f"{{{QEMU_NAMESPACE}}}frontend")
        for prop, value in overrides:
            kind = PROPERTY_TYPES.get(prop, "bool")
            ElementTree.SubElement(frontend, f"{{{QEMU_NAMESPACE}}}property", {
                "name": prop, "type": kind,
                "value": {"off": "false", "on": "true"}.get(value, value)})
        notes.append("libvirt 9.0's <driver> has no attribute for: "
                     + ", ".join(prop for prop, _value in overrides)
                     + f"; set through <qemu:override> on alias {ALIAS} (libvirt marks the "
                     "domain tainted)")
    if pinning.unpinnable:
        notes.append("neither libvirt nor QEMU can remove: "
                     + ", ".join(names(pinning.unpinnable, VirtioFeature)))
    ElementTree.indent(domain)
    text = ElementTree.tostring(domain, encoding="unicode") + "\n"
    return LibvirtPinning(text, tuple(prop for prop, _value in overrides), tuple(notes),
                          pinning.satisfiable)
