"""The proxy benchmark: its statistics, and one short run with real QEMU and DPDK."""

from __future__ import annotations

import asyncio
import json

import pytest
from bench.bench_proxy import (
    BASELINE,
    DIRECT,
    PROXIED,
    REALTIME,
    MigrationSample,
    cluster_interval,
    control_rate,
    cpu_ticks,
    main,
    relay_p50,
    render,
    report,
    steal_percent,
    stop_ended,
    stop_started,
    stopped_share,
    waited_for,
    waited_median,
)
from bench.bench_start import PHASES, Sample

from tests.helpers import require_tool
from vhostcompat.proxy.timings import Timing


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
    relayed = [Timing("GET_FEATURES", "request", 0, 30_000),
               Timing("GET_VRING_BASE", "request", 1_000_000, 1_040_000)]
    migrations = {DIRECT: [MigrationSample(100, 300), MigrationSample(140, 340)],
                  PROXIED: [MigrationSample(110, 310, {"source": {"relay_us": 40.0, "messages": 1,
                                                                  "waited_us": 0.0}},
                                            relayed),
                            MigrationSample(150, 330, {"source": {"relay_us": 60.0, "messages": 2,
                                                                  "waited_us": 20.0}})]}
    control = {DIRECT: [1000.0, 1200.0], PROXIED: [500.0, 700.0]}
    document = json.loads(json.dumps(report(start, migrations, control, 2)))
    assert document["start_ms"]["median"][DIRECT]["vhost_started"] == 130.0
    assert document["start_ms"]["ratio"]["vhost_started"] == round(140.0 / 130.0, 3)
    difference = document["migration_ms"]["downtime_difference"]
    assert (difference["median"], difference["mean"]) == (10.0, 10.0)
    assert document["control_round_trips_per_s"]["messages_per_s_through_proxy"] == 1200
    assert document["proxy_while_stopped"]["per_migration_us"] == {"median": 50.0, "max": 60.0}
    assert document["proxy_while_stopped"]["waited_per_migration_us"] == {"median": 10.0,
                                                                          "max": 20.0}
    relay = document["relay_us"]["qemu_and_testpmd"]
    assert relay["GET_VRING_BASE request"] == {"count": 1, "p50_us": 40.0, "p99_us": 40.0,
                                               "mean_us": 40.0}
    assert relay["all"]["count"] == 2
    low, high = document["migration_ms"]["downtime_difference"]["mean_ci95"]
    assert low <= 10.0 <= high
    text = render(document)
    assert all(f"start to {phase} (ms)" in text for phase in PHASES)
    assert "control messages/s through the proxy: 1200" in text
    assert "baseline" not in document and "baseline proxy" not in text
    # A baseline tree's proxies: the same figures beside, from their own samples.
    with_baseline = {**migrations, BASELINE: [MigrationSample(
        120, 320, {"source": {"relay_us": 80.0, "messages": 1, "waited_us": 70.0}},
        [Timing("GET_FEATURES", "request", 0, 90_000)])]}
    document = json.loads(json.dumps(report(start, with_baseline, control, 2)))
    assert document["baseline"]["relay_us"]["all"]["p50_us"] == 90.0
    assert document["baseline"]["proxy_while_stopped"]["waited_per_migration_us"] == {
        "median": 70.0, "max": 70.0}
    assert document["relay_us"]["qemu_and_testpmd"]["all"]["count"] == 2  # unchanged
    assert "baseline proxy" in render(document)


def test_a_realtime_variant_gets_its_own_figures_from_its_own_samples() -> None:
    start = {DIRECT: [Sample(0.03, 0.10, 0.12)], PROXIED: [Sample(0.04, 0.11, 0.13)],
             REALTIME: [Sample(0.03, 0.10, 0.24)]}
    shares = [{"source": {"relay_us": 40.0, "messages": 1, "waited_us": waited}}
              for waited in (300.0, 900.0)]
    migrations = {DIRECT: [MigrationSample(100, 300), MigrationSample(140, 340)],
                  PROXIED: [MigrationSample(110, 310, shares[0],
                                            [Timing("GET_FEATURES", "request", 0, 30_000)]),
                            MigrationSample(150, 330, shares[1])],
                  REALTIME: [MigrationSample(90, 310, shares[0],
                                             [Timing("GET_FEATURES", "request", 0, 20_000),
                                              Timing("GET_STATUS", "reply", 0, 60_000)]),
                             MigrationSample(130, 330, shares[1])]}
    control = {DIRECT: [1000.0], PROXIED: [500.0]}
    document = json.loads(json.dumps(report(start, migrations, control, 2)))
    realtime = document["realtime"]
    assert realtime["vhost_started_ratio"] == 2.0
    assert realtime["downtime_difference"]["mean"] == -10.0
    assert realtime["relay_us"]["all"]["p50_us"] == 40.0
    assert document["relay_us"]["qemu_and_testpmd"]["all"]["p50_us"] == 30.0
    # Resampling whole migrations: the median of two totals lies between them.
    low, high = realtime["waited_per_migration_median_ci95"]
    assert 300.0 <= low <= high <= 900.0
    assert document["proxy_ci95"]["relay_p50_ci95"] == [30.0, 30.0]
    assert "proxy at SCHED_FIFO" in render(document)


def test_the_cluster_interval_resamples_migrations_whole() -> None:
    samples = [MigrationSample(0, 0, relayed=[Timing("GET_FEATURES", "request", 0, ns)] * 3)
               for ns in (10_000, 20_000, 90_000)]
    low, high = cluster_interval(samples, relay_p50) or (0.0, 0.0)
    assert 10.0 <= low <= 20.0 <= high <= 90.0
    assert cluster_interval([], relay_p50) is None
    assert waited_median([MigrationSample(0, 0, {"source": {"waited_us": 5.0},
                                                 "destination": {"waited_us": 7.0}})]) == 12.0


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_one_short_run_with_qemu_and_testpmd(capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("qemu-system-x86_64", "dpdk-testpmd")
    assert main(["--repeat", "1", "--control-seconds", "0.2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["start_ms"]["median"]) == {DIRECT, PROXIED, REALTIME}
    assert document["start_ms"]["ratio"]["vhost_started"] > 0
    assert len(document["migration_ms"]["samples"][PROXIED]) == 1
    # The SCHED_FIFO proxies relayed the same migration's messages.
    assert document["realtime"]["relay_us"]["all"]["count"] > 0


def test_only_messages_received_while_the_vm_was_stopped_count() -> None:
    timings = [Timing("GET_FEATURES", "request", 100, 200),              # before the stop
               Timing("GET_VRING_BASE", "request", 1_000, 31_000),       # inside
               Timing("GET_VRING_BASE", "reply", 32_000, 42_000),        # inside
               Timing("SEND_RARP", "request", 90_000, 90_500)]           # after the resume
    share = stopped_share(timings, offset_ns=5_000, window=(5_500, 50_000))
    # The reply (10 us) and the request it answers (30 us) are what QEMU waited for.
    assert share == {"relay_us": 40.0, "messages": 2, "waited_us": 40.0}


def test_the_stop_starts_with_the_burst_that_runs_into_the_stop_event() -> None:
    ms = 1_000_000
    timings = [Timing("SET_LOG_BASE", "request", 0, 10),               # migration start
               Timing("GET_VRING_BASE", "request", 200 * ms, 200 * ms + 10),
               Timing("GET_VRING_BASE", "request", 205 * ms, 205 * ms + 10)]
    assert stop_started(timings, 0, 210 * ms) == 200 * ms
    assert stop_started(timings, 0, 300 * ms) == 300 * ms  # no burst runs into it


def test_the_stop_ends_with_the_burst_that_starts_at_the_resume_event() -> None:
    ms = 1_000_000
    timings = [Timing("SET_FEATURES", "request", 100 * ms, 100 * ms + 50),
               Timing("SET_MEM_TABLE", "request", 101 * ms, 102 * ms),
               Timing("SEND_RARP", "request", 400 * ms, 400 * ms + 10)]  # long after
    assert stop_ended(timings, 0, 99 * ms) == 102 * ms
    assert stop_ended(timings, 0, 200 * ms) == 200 * ms  # nothing right after RESUME


def test_what_qemu_waited_for_counts_queueing_before_the_request() -> None:
    # GET_STATUS arrived at 0 behind SET_VRING_NUM, was handled from 50 to 80 us,
    # its reply took 20 us; SET_VRING_NUM (no reply) is not waited for.
    timings = [Timing("SET_VRING_NUM", "request", 1, 50_000, 0, 1),
               Timing("GET_STATUS", "request", 50_000, 80_000, 0, 1),
               Timing("GET_STATUS", "reply", 200_000, 220_000, 0, 200_000)]
    assert waited_for(timings) == 100.0


def test_the_hosts_steal_time_is_a_share_of_all_cpu_time() -> None:
    total, stolen = cpu_ticks()
    assert total > 0 and 0 <= stolen <= total
    assert steal_percent((100, 5), (300, 15)) == 5.0
    assert steal_percent((100, 5), (100, 5)) is None


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repeat", "0"]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err
    assert main(["--proxy-cpus", "one"]) == 2
    assert "--proxy-cpus takes CPU numbers" in capsys.readouterr().err
    assert main(["--realtime-priority", "100"]) == 2
    assert "--realtime-priority is 1 to 99" in capsys.readouterr().err
    assert main(["--baseline-proxy", "/nonexistent"]) == 2
    assert "not a vhostcompat src directory" in capsys.readouterr().err
