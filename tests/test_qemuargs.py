"""qemuargs: the frontend pinning, its table checked against the installed QEMU 7.2."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import require_tool
from vhostcompat.features import MASK64, VirtioFeature, parse_virtio
from vhostcompat.profiles import CompatProfile
from vhostcompat.profiles.catalog import merge_entries, shipped_catalog_entries
from vhostcompat.qemuargs import (
    ALWAYS_OFFERED,
    EMULATED_WITHOUT_PROPERTY,
    FEATURE_PROPERTIES,
    QEMU_EMULATED,
    VHOST_ONLY,
    QemuTarget,
    pin_frontend,
)

QEMU = "qemu-system-x86_64"
INDIRECT = VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC
SHIPPED = merge_entries(shipped_catalog_entries())


def properties(profile: CompatProfile) -> dict[str, str]:
    return dict(pin_frontend(profile).properties)


def test_upstream_26_switches_indirect_descriptors_off() -> None:
    pinned = properties(SHIPPED.get("upstream.ovs-dpdk.v2.6"))
    assert pinned["indirect_desc"] == "off"
    assert pinned["event_idx"] == "off"
    assert "csum" not in pinned, "the profile has VIRTIO_NET_F_CSUM"
    assert "status" not in pinned, "emulated by QEMU, not the backend's business"
    assert pin_frontend(SHIPPED.get("upstream.ovs-dpdk.v2.6")).argument().startswith(
        "virtio-net-pci,")


def test_dpdk_default_switches_host_tso_off_and_tso_profile_does_not() -> None:
    assert properties(SHIPPED.get("debian12.dpdk-vhost.v22.11"))["host_tso4"] == "off"
    assert "host_tso4" not in properties(SHIPPED.get("debian12.dpdk-vhost.v22.11-tso"))


@pytest.mark.parametrize(("ring", "size"), [(32768, "1024"), (1024, "1024"), (1000, "512"),
                                            (300, "256"), (256, "256")])
def test_ring_sizes_follow_max_ring_size(ring: int, size: str) -> None:
    pinned = properties(CompatProfile("v", VirtioFeature(0), max_ring_size=ring))
    assert (pinned["rx_queue_size"], pinned["tx_queue_size"]) == (size, size)


def test_rings_below_qemus_minimum_cannot_be_pinned() -> None:
    pinning = pin_frontend(CompatProfile("v", VirtioFeature(0), max_ring_size=128))
    assert not pinning.satisfiable
    assert "rx_queue_size" not in dict(pinning.properties)
    assert any("below QEMU's minimum" in note for note in pinning.notes)


def test_no_declared_ring_size_leaves_queue_sizes_alone() -> None:
    pinning = pin_frontend(CompatProfile("v", VirtioFeature(0)))
    assert pinning.satisfiable
    assert "rx_queue_size" not in dict(pinning.properties)


def test_json_form() -> None:
    document = pin_frontend(SHIPPED.get("upstream.ovs-dpdk.v2.6")).to_json()
    assert document["device"] == "virtio-net-pci"
    assert isinstance(document["properties"], dict)
    assert document["properties"]["indirect_desc"] == "off"
    assert document["unpinnable"] == []


@given(st.integers(0, MASK64).map(VirtioFeature))
def test_every_missing_backend_feature_is_switched_off(features: VirtioFeature) -> None:
    pinned = properties(CompatProfile("v", features))
    for prop, (bit, default) in FEATURE_PROPERTIES.items():
        if pinned.get(prop) == "off":
            assert not bit & features, f"{prop}=off although the profile allows it"
        elif default and not bit & features:
            assert bit & QEMU_EMULATED, f"{prop} stays on although the profile lacks it"


# --- against the installed QEMU ----------------------------------------------

HELP_LINE = re.compile(r"^\s+([\w-]+)=<(\w+)>\s+(?:-\s+(?:on/off\s+)?)?(?:\(default: (.*)\))?")


def device_help() -> dict[str, tuple[str, str | None]]:
    require_tool(QEMU)
    output = subprocess.run([QEMU, "-device", "virtio-net-pci,help"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    found: dict[str, tuple[str, str | None]] = {}
    for line in output.splitlines():
        match = HELP_LINE.match(line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3))
    return found


def test_property_table_matches_the_installed_qemu() -> None:
    help_table = device_help()
    for prop, (_, default) in FEATURE_PROPERTIES.items():
        assert prop in help_table, f"QEMU has no property {prop}"
        kind, shown = help_table[prop]
        assert kind == "bool", prop
        assert shown == ("true" if default else "false"), f"{prop} default {shown}"
    for prop in ("rx_queue_size", "tx_queue_size", "host_mtu"):
        assert help_table[prop][0] == "uint16"
    assert help_table["rx_queue_size"][1] == "256"


def offered_features(device: str) -> VirtioFeature:
    """Start QEMU (stopped, no guest code runs) and read the device's host features."""
    commands = [{"execute": "qmp_capabilities"},
                {"execute": "x-query-virtio-status",
                 "arguments": {"path": "/machine/peripheral/net0/virtio-backend"}},
                {"execute": "quit"}]
    result = subprocess.run(
        [QEMU, "-machine", "q35", "-accel", "tcg", "-nodefaults", "-no-user-config",
         "-display", "none", "-S", "-qmp", "stdio", "-device", f"{device},id=net0,romfile="],
        input="".join(json.dumps(command) + "\n" for command in commands),
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    status = next(reply["return"] for reply in replies
                  if isinstance(reply.get("return"), dict) and "host-features" in reply["return"])
    host = status["host-features"]
    names = [entry.split(":", 1)[0] for entry in host["dev-features"] + host["transports"]]
    return parse_virtio(names)


@pytest.mark.e2e
@pytest.mark.parametrize("version", SHIPPED.versions)
def test_qemu_offers_nothing_the_profile_lacks(version: str) -> None:
    require_tool(QEMU)
    profile = SHIPPED.get(version)
    pinning = pin_frontend(profile)
    # Without a vhost-user peer QEMU allows tx rings of 256 at most; the rest applies.
    device = ",".join(part for part in pinning.argument().split(",")
                      if not part.startswith("tx_queue_size="))
    offered = offered_features(device)
    tolerated = (profile.virtio_features | QEMU_EMULATED | EMULATED_WITHOUT_PROPERTY
                 | VHOST_ONLY)
    for bit in ALWAYS_OFFERED:
        tolerated |= bit
    extra = offered & ~tolerated
    assert not extra, f"QEMU still offers {extra!r}"


@pytest.mark.e2e
def test_unpinned_qemu_does_offer_indirect_descriptors() -> None:
    require_tool(QEMU)
    # The control: without the properties, the bit the story is about is offered.
    assert offered_features("virtio-net-pci") & INDIRECT


# --- against a given QEMU binary and machine type ---------------------------

def target(version: str, machine: str, defaults: dict[str, bool]) -> QemuTarget:
    return QemuTarget(f"qemu-{version}", version, machine, defaults)


USO_PROPERTIES = ("host_uso", "guest_uso4", "guest_uso6")
NO_USO = CompatProfile("common", parse_virtio("VIRTIO_F_VERSION_1,VIRTIO_NET_F_CSUM"),
                       machine_types=frozenset({"pc-q35-7.2"}))


def test_qemu_10_on_its_own_machine_switches_uso_off() -> None:
    pinning = pin_frontend(NO_USO, target("10.0.2", "pc-q35-10.0",
                                          dict.fromkeys(USO_PROPERTIES, True)))
    assert {name: value for name, value in pinning.properties} == dict.fromkeys(
        USO_PROPERTIES, "off")
    assert pinning.machine == "pc-q35-10.0"
    assert not pinning.satisfiable, "pc-q35-10.0 is not among the profile's machine types"


def test_qemu_10_on_pc_q35_7_2_has_uso_off_already() -> None:
    pinning = pin_frontend(NO_USO, target("10.0.2", "pc-q35-7.2",
                                          dict.fromkeys(USO_PROPERTIES, False)))
    assert pinning.properties == ()
    assert pinning.satisfiable
    assert any("off by default in QEMU 10.0.2 on pc-q35-7.2" in note and "HOST_USO" in note
               for note in pinning.notes)
    assert pinning.notes[-1].startswith("run -machine pc-q35-7.2")


def test_a_qemu_without_uso_properties_never_offers_uso() -> None:
    pinning = pin_frontend(NO_USO, target("7.2.22", "pc-q35-7.2", {"csum": True}))
    assert pinning.properties == ()
    assert any(note.startswith("QEMU 7.2.22 has no such property and never offers")
               and "VIRTIO_NET_F_HOST_USO (host_uso)" in note for note in pinning.notes)


def test_without_a_binary_the_profiles_machine_types_are_named() -> None:
    pinning = pin_frontend(NO_USO)
    assert pinning.machine is None
    assert any(note.startswith("the profile allows machine types up to pc-q35-7.2")
               for note in pinning.notes)
