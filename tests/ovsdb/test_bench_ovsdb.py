"""The OVSDB benchmark: its arithmetic, and one tiny run against real ovsdb-servers."""

from __future__ import annotations

import json

import pytest
from bench.bench_ovsdb import (
    COMMAND,
    FLOOR,
    FLOOR_NO_SCHEMA,
    IN_PROCESS,
    PARALLEL_8,
    SEQUENTIAL,
    VARIANTS,
    WITH_SCHEMA,
    fleet_report,
    latency,
    main,
    render,
    vsctl_versions,
)

from tests.ovsdb.helpers import require_ovsdb


def test_ratios_are_of_medians() -> None:
    timings = {IN_PROCESS: [0.1, 0.2, 0.3], WITH_SCHEMA: [0.4, 0.4, 0.4], COMMAND: [0.5, 0.5, 0.5],
               SEQUENTIAL: [4.0, 4.0, 5.0], PARALLEL_8: [1.0, 1.2, 2.0], FLOOR: [0.1, 0.1, 0.1],
               FLOOR_NO_SCHEMA: [0.05, 0.05, 0.05]}
    report = fleet_report(timings, 200)
    assert report["ratio_sequential"] == 20.0 and report["ratio_parallel"] == 6.0
    assert report["ratio_sequential_vs_process"] == 8.0
    assert report["ratio_sequential_with_get_schema"] == 10.0
    assert report["ratio_sequential_vs_floor"] == 80.0
    assert report["seconds"][PARALLEL_8] == {"median": 1.2, "min": 1.0, "max": 2.0,
                                             "samples": [1.0, 1.2, 2.0]}
    document = {"repeat": 3, "round_trip": {kind: latency([100.0, 120.0, 900.0])
                                            for kind in ("unix", "tcp", "bare_unix")},
                "versions_over_fleet": report}
    text = render(document)
    assert "ratio sequential / in-process: 20.0 (target >= 20)" in text
    assert all(variant in text for variant in VARIANTS)


def test_vsctl_output_is_read_as_versions() -> None:
    assert vsctl_versions('"a.v2,a.v1"\n') == ("a.v2", "a.v1")
    assert vsctl_versions("a.v1\n") == ("a.v1",)


@pytest.mark.e2e
def test_one_tiny_run_with_real_servers(capsys: pytest.CaptureFixture[str]) -> None:
    require_ovsdb()
    assert main(["--hosts", "2", "--repeat", "1", "--round-trips", "5", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["round_trip"]["unix"]["samples"] == 5
    assert set(document["versions_over_fleet"]["seconds"]) == set(VARIANTS)


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--hosts", "0"]) == 2
    assert "--hosts and --round-trips must be at least 1" in capsys.readouterr().err
    assert main(["--repeat", "0"]) == 2
