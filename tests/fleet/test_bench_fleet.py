"""The fleet benchmark runs end to end on a tiny fleet, agrees with itself, refuses bad input."""

from __future__ import annotations

import json

import pytest
from bench.bench_fleet import FAN_OUT, FLEET, main, stats

from tests.fleet.helpers import require_ovsdb

pytestmark = pytest.mark.e2e


def test_a_tiny_run_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    require_ovsdb()
    assert main(["--hosts", "4", "--repeat", "1", "--kills", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["hosts"] == 4
    for what in ("select_seconds", "provision_seconds"):
        assert set(document[what]) == {FLEET, FAN_OUT}
    assert document["registration"]["batched_hosts_per_s"] > 0
    assert len(document["recovery_samples"]) == 1
    assert 0 < document["recovery_samples"][0] < 30


def test_bad_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--hosts", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert stats([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
