"""qemuinfo: parsing what a QEMU binary says about itself; errors name the binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_bounded
from vhostcompat.qemuinfo import (
    QemuBinaryError,
    parse_device_help,
    parse_machine_help,
    qemu_version,
    resolve_binary,
)

MACHINE_HELP = """Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)
pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)
pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)
none                 empty machine
"""

DEVICE_HELP = """virtio-net-pci options:
  guest_uso4=<bool>      - on/off (default: on)
  host_mtu=<uint16>      -  (default: 0)
  netdev=<str>           - ID of a netdev to use as a backend
  in_order=<bool>        - on/off (default: off)
"""


def test_machine_help_resolves_aliases_and_lists_versioned_types() -> None:
    machines = parse_machine_help(MACHINE_HELP)
    assert machines.resolve("qemu", "q35") == "pc-q35-10.0"
    assert machines.resolve("qemu", "pc-q35-7.2") == "pc-q35-7.2"
    assert machines.default == "pc-i440fx-10.0"
    assert machines.versioned == {"pc-i440fx-10.0", "pc-q35-7.2", "pc-q35-10.0"}


def test_a_machine_type_the_binary_lacks_is_refused() -> None:
    with pytest.raises(QemuBinaryError, match=r"QEMU qemu: has no machine type 'pc-q35-11.0' "
                                              r"\(its q35 types: pc-q35-7.2, pc-q35-10.0\)"):
        parse_machine_help(MACHINE_HELP).resolve("qemu", "pc-q35-11.0")


def test_device_help_gives_types_and_defaults() -> None:
    properties = parse_device_help(DEVICE_HELP)
    assert properties["guest_uso4"].type == "bool"
    assert properties["guest_uso4"].default == "on"
    assert properties["host_mtu"].default == "0"
    assert properties["netdev"].default is None
    assert set(properties) == {"guest_uso4", "host_mtu", "netdev", "in_order"}


def test_a_binary_that_does_not_exist_or_is_not_qemu(tmp_path: Path) -> None:
    with pytest.raises(QemuBinaryError, match="no such file"):
        resolve_binary("/nonexistent/qemu-system-x86_64")
    plain = tmp_path / "qemu"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    with pytest.raises(QemuBinaryError, match="not an executable file"):
        resolve_binary(str(plain))
    with pytest.raises(QemuBinaryError, match="QEMU /bin/true: not QEMU"):
        run_bounded(qemu_version("/bin/true"))
