"""The demo plays the whole story and checks its own outcomes."""

from __future__ import annotations

import io
from pathlib import Path

from tests.cli.conftest import Cli
from vhostcompat.demo import ACTS, Act, Stage, run_demo
from vhostcompat.lab.ovs import missing_tools as missing_ovs_tools


def test_demo_tells_the_story(cli: Cli) -> None:
    result = cli("demo")
    assert result.status == 0, result.stdout
    out = result.stdout
    assert "$ vhostcompat select host-a host-b\n    upstream.ovs-dpdk.v2.6\n" in out
    assert ("destination lacks VIRTIO_RING_F_INDIRECT_DESC (bit 28) required by "
            "upstream.ovs-dpdk.v2.7") in out
    assert out.rstrip().endswith("Every outcome was the expected one.")
    if not missing_ovs_tools():  # the OVS-DPDK act played (CI installs it)
        assert "migration ovs-a -> ovs-b: completed" in out
        assert "dropped debian12.ovs-dpdk.v3.1-tso: " in out


def test_demo_keeps_a_given_workdir(cli: Cli, tmp_path: Path) -> None:
    workdir = tmp_path / "play"
    assert cli("demo", "--workdir", str(workdir)).status == 0
    assert (workdir / "host-a" / "vhostcompat-host.json").is_file()
    assert (workdir / "host-b" / "vhostcompat-host.json").is_file()


def test_an_added_act_runs_after_the_others_and_can_fail(tmp_path: Path) -> None:
    seen: list[str] = []

    def later_act(stage: Stage) -> None:
        seen.append(stage.workdir.name)
        status, _ = stage.vhostcompat("versions", "host-b")
        stage.expect(status == 0, "host-b is readable")
        stage.expect(False, "a deliberate surprise")

    out = io.StringIO()
    status = run_demo([*ACTS, Act("Later", later_act)], out=out, workdir=tmp_path / "w")
    assert status == 1
    assert seen == ["w"]
    assert f"== Act {len(ACTS) + 1}: Later" in out.getvalue()
    assert "  - a deliberate surprise" in out.getvalue()
