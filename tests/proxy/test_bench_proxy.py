"""The proxy benchmark: its statistics, and one short run with real QEMU and DPDK."""

from __future__ import annotations

import asyncio
import json

import pytest
from bench.bench_proxy import DIRECT, PROXIED, control_rate, main, render, report
from bench.bench_start import PHASES, Sample

from tests.helpers import require_tool


def test_control_rates_are_measured_direct_and_through_a_relay() -> None:
    async def both() -> tuple[float, float]:
        return await control_rate(False, 0.2), await control_rate(True, 0.2)

    direct, proxied = asyncio.run(both())
    assert direct > 0 and proxied > 0
    # A relay in the same event loop does the peers' work and more: never faster.
    assert proxied < direct


def test_report_ratios_and_differences_come_from_the_samples() -> None:
    start = {DIRECT: [Sample(0.03, 0.10, 0.12), Sample(0.05, 0.12, 0.14)],
             PROXIED: [Sample(0.04, 0.11, 0.13), Sample(0.04, 0.13, 0.15)]}
    migrations = {DIRECT: [{"downtime_ms": 100, "total_time_ms": 300},
                           {"downtime_ms": 140, "total_time_ms": 340}],
                  PROXIED: [{"downtime_ms": 110, "total_time_ms": 310},
                            {"downtime_ms": 150, "total_time_ms": 330}]}
    control = {DIRECT: [1000.0, 1200.0], PROXIED: [500.0, 700.0]}
    document = json.loads(json.dumps(report(start, migrations, control, 2)))
    assert document["start_ms"]["median"][DIRECT]["vhost_started"] == 130.0
    assert document["start_ms"]["ratio"]["vhost_started"] == round(140.0 / 130.0, 3)
    assert document["migration_ms"]["downtime_difference"] == {"median": 10.0, "mean": 10.0}
    assert document["control_round_trips_per_s"]["messages_per_s_through_proxy"] == 1200
    text = render(document)
    assert all(f"start to {phase} (ms)" in text for phase in PHASES)
    assert "control messages/s through the proxy: 1200" in text


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_one_short_run_with_qemu_and_testpmd(capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("qemu-system-x86_64", "dpdk-testpmd")
    assert main(["--repeat", "1", "--control-seconds", "0.2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["start_ms"]["median"]) == {DIRECT, PROXIED}
    assert document["start_ms"]["ratio"]["vhost_started"] > 0
    assert len(document["migration_ms"]["samples"][PROXIED]) == 1


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repeat", "0"]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err
