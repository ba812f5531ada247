"""The demo's real act says clearly what it skipped when QEMU or DPDK is missing."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from vhostcompat.demo import ACTS, Act, act_ovs_story, act_real_story, act_uso_story, run_demo


def test_the_real_acts_are_the_last_ones() -> None:
    assert [act.play for act in ACTS[-3:]] == [act_real_story, act_ovs_story, act_uso_story]


def test_without_qemu_10_the_uso_act_says_what_it_skipped_and_why(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VHOSTCOMPAT_QEMU10", str(tmp_path / "no-qemu-10"))
    out = io.StringIO()
    status = run_demo([Act("USO", act_uso_story)], out=out, workdir=tmp_path / "w")
    text = out.getvalue()
    assert status == 0, text
    assert f"QEMU 10.0 ({tmp_path / 'no-qemu-10'}: not found;" in text
    assert "Skipped: this act needs" in text
    assert not (tmp_path / "w" / "uso-a").exists()  # nothing was played


@pytest.mark.parametrize("absent", [("dpdk-testpmd",), ("qemu-system-x86_64", "dpdk-testpmd")])
def test_without_qemu_or_dpdk_the_real_act_says_what_it_skipped_and_why(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, absent: tuple[str, ...]) -> None:
    real_which = shutil.which

    def which(command: str) -> str | None:
        return None if command in absent else real_which(command)

    monkeypatch.setattr(shutil, "which", which)
    out = io.StringIO()
    status = run_demo([Act("Real", act_real_story)], out=out, workdir=tmp_path / "w")
    text = out.getvalue()
    assert status == 0, text
    assert f"  Skipped: not on the PATH: {', '.join(absent)}\n" in text
    assert "scripts/setup.sh installs them" in " ".join(text.split())
    assert not (tmp_path / "w" / "lab-a").exists()  # nothing was played


def test_without_ovs_dpdk_the_ovs_act_says_what_it_skipped_and_why(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("vhostcompat.demo.missing_ovs_tools",
                        lambda: ["/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"])
    out = io.StringIO()
    status = run_demo([Act("OVS", act_ovs_story)], out=out, workdir=tmp_path / "w")
    text = out.getvalue()
    assert status == 0, text
    assert "  Skipped: not installed: /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk\n" \
        in text
    assert "openvswitch-switch-dpdk" in " ".join(text.split())
