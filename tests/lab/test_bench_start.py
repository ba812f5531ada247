"""The start-up benchmark's pure parts: statistics, report, backend plug-in."""

from __future__ import annotations

import json

import pytest
from bench.bench_start import (
    PHASES,
    Sample,
    build_parser,
    dpdk_testpmd_backend,
    load_factory,
    render,
    report,
    summarise,
)

from vhostcompat.errors import InputError


def test_summary_is_median_and_minimum_in_milliseconds() -> None:
    samples = [Sample(0.9, 1.0, 1.01), Sample(0.7, 0.8, 0.82), Sample(1.1, 1.3, 1.4)]
    summary = summarise(samples)
    assert set(summary) == set(PHASES)
    assert summary["qmp_ready"] == {"median_ms": 900.0, "min_ms": 700.0}
    assert summary["vhost_started"] == {"median_ms": 1010.0, "min_ms": 820.0}


def test_report_is_json_and_renders_one_row_per_backend() -> None:
    document = report({"testpmd": [Sample(0.5, 0.6, 0.7)], "ours": [Sample(0.1, 0.2, 0.3)]}, 1)
    assert json.loads(json.dumps(document)) == document
    assert document["backends"]["ours"]["samples_ms"] == [
        {"qmp_ready": 100.0, "driver_ok": 200.0, "vhost_started": 300.0}]
    rows = render(document).splitlines()
    assert [row.split()[0] for row in rows[2:]] == ["testpmd", "ours"]


def test_a_backend_factory_is_loaded_by_dotted_name() -> None:
    name, factory = load_factory("again=bench.bench_start:dpdk_testpmd_backend")
    assert name == "again"
    assert factory is dpdk_testpmd_backend


@pytest.mark.parametrize("spec", ["nameonly", "x=bench.bench_start", "=m:f",
                                  "x=no.such.module:f", "x=bench.bench_start:missing",
                                  "x=bench.bench_start:PHASES"])
def test_bad_factories_are_refused(spec: str) -> None:
    with pytest.raises(InputError):
        load_factory(spec)


def test_command_line_defaults() -> None:
    args = build_parser().parse_args([])
    assert args.repeat == 5 and not args.json and args.backend is None
