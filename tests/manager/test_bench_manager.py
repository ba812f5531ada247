"""The manager benchmark: one tiny run against real ovsdb-servers, and its bad input."""

from __future__ import annotations

import json

import pytest
from bench.bench_manager import main

from tests.ovsdb.helpers import require_ovsdb


def test_a_tiny_run_measures_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    require_ovsdb()
    assert main(["--hosts", "3", "--repeat", "2", "--targets", "10", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    fleet = document["fleet"]
    for verb in ("select", "provision"):
        for variant in ("manager", "manager-asyncio", "vhostcompat-cli", "ovs-vsctl"):
            assert 0 < fleet[f"{verb}/{variant}"]["min_s"] <= fleet[f"{verb}/{variant}"]["max_s"]
        assert fleet[f"{verb}/ratio"] > 0
        assert fleet[f"{verb}/ratio-asyncio"] > 0
        assert fleet[f"{verb}/ratio-cli"] > 0
    # Two publication patterns in five cannot take the guest (too few queue pairs, too
    # few features).
    assert {figures["compatible"] for figures in document["targets"].values()} == {6}


def test_bad_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--hosts", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "bench_manager: --hosts must be at least 2 and --targets at least 1")
