"""tap: the offload questions honour the kernel's dependencies; errors name the device."""

from __future__ import annotations

import errno
import fcntl
from pathlib import Path

import pytest

from vhostcompat import tap
from vhostcompat.features import VirtioFeature
from vhostcompat.tap import (
    OFFLOAD_QUESTIONS,
    TapOffloads,
    TapProbeError,
    TunOffload,
    accepted_offloads,
    probe_tap_offloads,
    probe_vhost_net,
)

ALL = TunOffload(0x7F)
USO = TunOffload.TUN_F_USO4 | TunOffload.TUN_F_USO6


def test_every_question_carries_what_it_depends_on() -> None:
    for asked in OFFLOAD_QUESTIONS:
        assert TunOffload.TUN_F_CSUM in asked
        if TunOffload.TUN_F_TSO_ECN in asked:
            assert asked & (TunOffload.TUN_F_TSO4 | TunOffload.TUN_F_TSO6)
        assert asked & USO in (TunOffload(0), USO), "USO4 and USO6 only as a pair"
    assert TunOffload(0x61) in OFFLOAD_QUESTIONS  # CSUM|USO4|USO6: QEMU's own probe


def kernel(accepts: TunOffload) -> object:
    """A fake ioctl: TUNSETIFF succeeds, TUNSETOFFLOAD takes only subsets of ``accepts``."""
    def ioctl(fd: int, request: int, argument: object) -> int:
        if request == tap.TUNSETOFFLOAD:
            assert isinstance(argument, int)
            if argument & ~int(accepts):
                raise OSError(errno.EINVAL, "Invalid argument")
        return 0
    return ioctl


@pytest.mark.parametrize("accepts", [ALL, ALL & ~USO, TunOffload.TUN_F_CSUM, TunOffload(0)])
def test_accepted_offloads_are_what_the_kernel_takes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, accepts: TunOffload) -> None:
    device = tmp_path / "tun"
    device.write_bytes(b"")
    monkeypatch.setattr(fcntl, "ioctl", kernel(accepts))
    found = probe_tap_offloads(device)
    assert found.accepted == accepts
    assert bool(found.guest_features & VirtioFeature.VIRTIO_NET_F_GUEST_USO6) is (
        USO in accepts)


def test_answers_combine_into_the_accepted_set() -> None:
    answers = [(asked, asked & USO == TunOffload(0)) for asked in OFFLOAD_QUESTIONS]
    assert accepted_offloads(answers) == ALL & ~USO


def test_no_tun_device_is_named(tmp_path: Path) -> None:
    with pytest.raises(TapProbeError, match=r"tap probe: .*/tun: no such device"):
        probe_tap_offloads(tmp_path / "tun")


def test_eperm_says_cap_net_admin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    device = tmp_path / "tun"
    device.write_bytes(b"")

    def refuse(fd: int, request: int, argument: object) -> int:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fcntl, "ioctl", refuse)
    with pytest.raises(TapProbeError, match="needs CAP_NET_ADMIN"):
        probe_tap_offloads(device)


def test_no_vhost_net_is_reported_not_raised(tmp_path: Path) -> None:
    found = probe_vhost_net(tmp_path / "vhost-net")
    assert not found.present and found.features is None
    assert found.to_json()["present"] is False


def test_json_names_the_flags() -> None:
    document = TapOffloads(TunOffload(0x61), "/dev/net/tun").to_json()
    assert document == {"device": "/dev/net/tun", "mask": "0x61",
                        "names": ["TUN_F_CSUM", "TUN_F_USO4", "TUN_F_USO6"]}
