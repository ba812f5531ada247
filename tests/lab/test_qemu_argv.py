"""The QEMU command line built from a QemuVm (pure; no QEMU started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhostcompat.errors import InputError
from vhostcompat.lab.qemu import QemuPaths, QemuVm, device_properties, qemu_argv

PATHS = QemuPaths(firmware=Path("/tmp/r/halt.bin"), qmp=Path("/tmp/r/q.qmp"),
                  qtest=Path("/tmp/r/q.qtest"))


def option(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [argv[index + 1] for index, word in enumerate(argv) if word == flag]


def properties(argv: list[str]) -> dict[str, str]:
    (device,) = option(argv, "-device")
    driver, *pairs = device.split(",")
    assert driver == "virtio-net-pci"
    return dict(pair.split("=", 1) for pair in pairs)


def test_minimal_vm_uses_tcg_shared_memory_and_no_option_rom() -> None:
    vm = QemuVm(Path("/tmp/r/vhost.sock"))
    argv = qemu_argv(vm, PATHS)
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-accel") == ["tcg"]
    assert option(argv, "-m") == ["128M"]
    assert option(argv, "-object") == ["memory-backend-memfd,id=mem,size=128M,share=on"]
    assert option(argv, "-machine") == ["q35,memory-backend=mem"]
    assert option(argv, "-bios") == [str(PATHS.firmware)]
    assert option(argv, "-chardev") == ["socket,id=c0,path=/tmp/r/vhost.sock"]
    assert option(argv, "-netdev") == ["vhost-user,id=n0,chardev=c0"]
    assert option(argv, "-qmp") == ["unix:/tmp/r/q.qmp,server=on,wait=off"]
    assert option(argv, "-qtest") == ["unix:/tmp/r/q.qtest"]
    props = properties(argv)
    assert props["romfile"] == ""
    assert props["disable-legacy"] == "on"
    assert props["netdev"] == "n0"
    assert props["mac"] == vm.mac
    assert props["id"] == vm.device_id
    assert "mq" not in props
    assert "-S" not in argv and "-incoming" not in argv


def test_server_role_multiqueue_ring_sizes_incoming_and_paused() -> None:
    vm = QemuVm(Path("/tmp/r/v.sock"), chardev_server=True, queues=4, rx_queue_size=1024,
                tx_queue_size=512, memory_mib=256, incoming="unix:/tmp/r/mig",
                qtest=False, paused=True, mac="52:54:00:aa:bb:cc")
    argv = qemu_argv(vm, PATHS)
    assert option(argv, "-chardev") == ["socket,id=c0,path=/tmp/r/v.sock,server=on,wait=off"]
    assert option(argv, "-netdev") == ["vhost-user,id=n0,chardev=c0,queues=4"]
    assert option(argv, "-m") == ["256M"]
    assert option(argv, "-incoming") == ["unix:/tmp/r/mig"]
    assert option(argv, "-qtest") == []
    assert "-S" in argv
    props = properties(argv)
    assert props["mq"] == "on"
    assert props["rx_queue_size"] == "1024"
    assert props["tx_queue_size"] == "512"
    assert props["mac"] == "52:54:00:aa:bb:cc"


def test_extra_device_properties_are_added_and_override_ours() -> None:
    vm = QemuVm(Path("/tmp/r/v.sock"), queues=2,
                device_properties={"indirect_desc": "off", "mq": "off"})
    props = device_properties(vm)
    assert props["indirect_desc"] == "off"
    assert props["mq"] == "off"  # ours said "on" for queues=2
    assert properties(qemu_argv(vm, PATHS)) == props


def test_device_properties_are_copied() -> None:
    extra = {"indirect_desc": "off"}
    vm = QemuVm(Path("/tmp/r/v.sock"), device_properties=extra)
    extra["event_idx"] = "off"
    assert "event_idx" not in device_properties(vm)


def test_commas_in_paths_are_doubled() -> None:
    vm = QemuVm(Path("/tmp/a,b/v.sock"))
    argv = qemu_argv(vm, QemuPaths(Path("/tmp/h.bin"), Path("/tmp/a,b/q"), Path("/tmp/t")))
    assert option(argv, "-chardev") == ["socket,id=c0,path=/tmp/a,,b/v.sock"]
    assert option(argv, "-qmp") == ["unix:/tmp/a,,b/q,server=on,wait=off"]


def test_paths_live_in_the_run_directory() -> None:
    paths = QemuPaths.in_directory(Path("/tmp/x"), "src")
    assert paths.qmp == Path("/tmp/x/src.qmp")
    assert paths.qtest == Path("/tmp/x/src.qtest")
    assert paths.firmware.parent == Path("/tmp/x")


@pytest.mark.parametrize("kwargs", [
    {"queues": 0},
    {"queues": 65},
    {"mac": "52:54:00:12:34"},
    {"mac": "zz:54:00:12:34:56"},
    {"rx_queue_size": 300},
    {"tx_queue_size": 128},
    {"rx_queue_size": 2048},
    {"memory_mib": 8},
    {"device_id": "net 0"},
    {"device_properties": {"indirect_desc": "off,event_idx=off"}},
    {"device_properties": {"bad name": "on"}},
])
def test_bad_configurations_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        QemuVm(Path("/tmp/r/v.sock"), **kwargs)  # type: ignore[arg-type]


def test_a_tap_vm_on_another_binary_and_machine_type() -> None:
    vm = QemuVm(None, tap="vct1x0", binary="/opt/qemu-10/qemu", machine="pc-q35-7.2",
                device_properties={"host_uso": "off"})
    argv = qemu_argv(vm, QemuPaths.in_directory(Path("/tmp/r"), "a"))
    assert argv[0] == "/opt/qemu-10/qemu"
    assert option(argv, "-machine") == ["pc-q35-7.2,memory-backend=mem"]
    assert option(argv, "-netdev") == [
        "tap,id=n0,ifname=vct1x0,script=no,downscript=no,vhost=off"]
    assert option(argv, "-chardev") == []
    assert option(argv, "-qmp") == ["unix:/tmp/r/a.qmp,server=on,wait=off",
                                    "unix:/tmp/r/a-mgmt.qmp,server=on,wait=off"]
    assert properties(argv)["netdev"] == "n0"
    assert properties(argv)["host_uso"] == "off"


def test_a_vm_without_a_backend_has_a_device_without_netdev() -> None:
    argv = qemu_argv(QemuVm(None), PATHS)
    assert option(argv, "-netdev") == []
    assert "netdev" not in properties(argv)


@pytest.mark.parametrize("kwargs", [
    {"socket_path": Path("/tmp/r/v.sock"), "tap": "vct0"},
    {"socket_path": None, "tap": "a-name-longer-than-15"},
    {"socket_path": None, "tap": "bad/name"},
    {"socket_path": None, "tap": "vct0", "queues": 2},
    {"socket_path": None, "machine": "q35,accel=kvm"},
])
def test_tap_and_machine_values_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        QemuVm(**kwargs)  # type: ignore[arg-type]
