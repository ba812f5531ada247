"""What the enforcement proxy costs: direct vs through the proxy, side by side, one run.

Three measurements, each taken round-robin between the direct and the
proxied set-up so that drift of the machine hits both alike:

* **start**: QEMU spawn to vhost running (bench.bench_start's phases) with
  DPDK testpmd directly, and with testpmd behind ``vhostcompat proxy`` (a
  child process, as deployed, in the testpmd's own version); the ratio of
  the medians (target: at most 1.10);
* **migration**: two hosts (testpmd + QEMU, a qtest guest at DRIVER_OK),
  migrated from one to the other; QEMU's reported ``downtime`` and
  ``total-time``, direct vs with both interfaces behind proxies (target: no
  measurable downtime increase);
* **control messages**: GET_FEATURES round trips per second between two
  in-process peers, over a socket pair directly and through a
  :class:`~vhostcompat.proxy.Relay` in the same event loop (each round trip
  is two messages through the proxy).

End-to-end figures on a shared 2-core machine under TCG move by tens of
milliseconds between runs, so the proxy's own cost is also measured where
noise cannot hide it:

* **per message**: every proxy child writes the relay time of each message
  it relayed (``--stats-file``: received from one socket to forwarded on the
  other, :mod:`vhostcompat.proxy.timings`); p50 and p99 in microseconds by
  request and direction, over every proxied start and migration of the run
  (target: p50 at most 50 us);
* **per migration**: the relay time of the messages the two proxies relayed
  while the VM was stopped, from the source's device stop (the burst of
  source messages that ends at QMP's ``STOP`` event: QEMU stops vhost
  before it emits the event) to the end of the destination's device start
  (the burst that begins at ``RESUME``: QEMU emits it, then starts vhost,
  then the vCPUs); the sum is an upper bound on what the proxies add to the
  downtime, since QEMU waits only for the replies (target: at most 1 ms per
  interface).

The end-to-end ratios come with a 95 % bootstrap confidence interval
(resampling each variant's samples).

``--baseline-proxy SRC`` adds a third variant to the migrations: proxies
run from another vhostcompat tree (its ``src`` directory, e.g. a ``git
worktree`` of an older commit), round-robin with the others, so that two
versions of the proxy are compared in one run, on the same load.
``--realtime-priority N`` (default 1; 0: none) adds a variant to the
start-ups and the migrations: proxies run with ``--realtime-priority N``
(SCHED_FIFO, :mod:`vhostcompat.realtime`), round-robin with the others,
with the same figures; the per-message p50 and the per-migration median
come with 95 % intervals from resampling whole migrations.
``--proxy-cpus LIST`` runs every proxy on those CPUs only (an environment
choice: see the README's benchmark section for why and for figures both
ways).

    python -m bench.bench_proxy [--repeat 10] [--realtime-priority 1] [--baseline-proxy SRC]
                                [--proxy-cpus 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener

from bench.bench_start import PHASES, Sample, compare, dpdk_testpmd_backend, summarise
from bench.common import (
    BenchBackend,
    Document,
    bench_backend,
    bench_parser,
    check_repeat,
    run_bench,
)
from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature
from vhostcompat.lab import qmp
from vhostcompat.lab.commands import ProxyLaunch, ProxyMode
from vhostcompat.lab.hosts import dpdk_testpmd, source_and_destination
from vhostcompat.profiles import CompatProfile
from vhostcompat.proxy import ProxyPolicy, Relay
from vhostcompat.proxy.timings import (
    REPLY,
    REQUEST,
    RelayTimings,
    Timing,
    percentile,
    timings_from_json,
)
from vhostcompat.proxy.timings import summarise as summarise_timings
from vhostcompat.realtime import MAX_PRIORITY
from vhostcompat.transport import FdConnection, MessageConnection
from vhostcompat.vhostuser import U64, Channel, FrontendRequest, Message, Role, make_reply

# testpmd's own version: the proxy changes nothing in what is offered, so
# the cost measured is the relaying alone.
MODE = "debian12.dpdk-vhost.v22.11"
VHOST_TIMEOUT = 10.0
SAMPLE_TIMEOUT = 60.0
CONTROL_SECONDS = 2.0
BOOTSTRAP_RESAMPLES = 2000
# Messages closer than this belong to one burst (QEMU's device stop sends its
# requests back to back; the migration's RAM copy separates it from the
# start-of-migration messages by far more).
BURST_GAP_NS = 20_000_000
SETTLE_SECONDS = 3 * BURST_GAP_NS / 1e9
DIRECT, PROXIED, BASELINE = "direct", "proxy", "baseline proxy"
REALTIME = "proxy, SCHED_FIFO"
REALTIME_PRIORITY = 1
# Proxies started as the lab deploys them (normal scheduling, no other tree, no affinity).
AS_DEPLOYED = ProxyLaunch()


def proxied_variants(launch: ProxyLaunch = AS_DEPLOYED, realtime_priority: int | None = None,
                     baseline: Path | None = None) -> dict[str, ProxyMode]:
    """The proxied variants of a run: as deployed, at SCHED_FIFO ``realtime_priority``
    (``--realtime-priority``) and from the ``baseline`` tree, where given (pure)."""
    variants = {PROXIED: ProxyMode(MODE, launch=launch)}
    if realtime_priority is not None:
        variants[REALTIME] = ProxyMode(MODE, launch=dataclasses.replace(
            launch, realtime_priority=realtime_priority))
    if baseline is not None:
        variants[BASELINE] = ProxyMode(MODE, launch=dataclasses.replace(launch,
                                                                         source=baseline))
    return variants


def start_backends(variants: Mapping[str, ProxyMode]) -> dict[str, BenchBackend]:
    """testpmd directly, and behind ``vhostcompat proxy`` in testpmd's own version (each
    variant but the baseline: a start-up is the same code in both trees)."""
    backends = {DIRECT: dpdk_testpmd_backend}
    backends.update({name: bench_backend(dpdk_testpmd(), mode)
                     for name, mode in variants.items() if name != BASELINE})
    return backends


# -- migration downtime ------------------------------------------------------------------

def _event_ns(listener: EventListener, name: str) -> int:
    """CLOCK_REALTIME ns of the first ``name`` event a listener saw."""
    for event in listener.history:
        stamp = event.get("timestamp")
        if event.get("event") == name and isinstance(stamp, dict):
            return int(stamp["seconds"]) * 1_000_000_000 + int(stamp["microseconds"]) * 1000
    raise InputError(f"QEMU sent no {name} event during the migration")


def _read_stats(path: Path) -> tuple[list[Timing], int]:
    try:
        return timings_from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise InputError(f"proxy stats {path}: {error}") from None


def stop_started(timings: Sequence[Timing], offset_ns: int, stop_ns: int) -> int:
    """When the source's VM really stopped (CLOCK_REALTIME ns).

    QEMU stops the device (vhost: GET_VRING_BASE per ring...) in its stop
    notifiers and only then emits the STOP event: the messages of that
    stop come just before the event's timestamp. The stop started with the
    first of the burst of source messages that runs into the event (gaps
    under :data:`BURST_GAP_NS`); without such a burst, at the event.
    """
    received = sorted(timing.received_ns + offset_ns for timing in timings
                      if timing.received_ns + offset_ns <= stop_ns)
    if not received or stop_ns - received[-1] > BURST_GAP_NS:
        return stop_ns
    start = received[-1]
    for earlier in reversed(received[:-1]):
        if start - earlier > BURST_GAP_NS:
            break
        start = earlier
    return start


def stop_ended(timings: Sequence[Timing], offset_ns: int, resume_ns: int) -> int:
    """When the destination's VM really ran again (CLOCK_REALTIME ns).

    QEMU emits RESUME and then runs its start notifiers, which start the
    device (vhost: SET_FEATURES, SET_MEM_TABLE, the rings...) before the
    vCPUs run: the burst of destination messages that starts at the event
    (gaps under :data:`BURST_GAP_NS`) is still stopped time; it ends when
    the last of them was relayed.
    """
    after = sorted((timing.received_ns + offset_ns, timing.forwarded_ns + offset_ns)
                   for timing in timings if timing.received_ns + offset_ns >= resume_ns)
    if not after or after[0][0] - resume_ns > BURST_GAP_NS:
        return resume_ns
    end = after[0][1]
    for received, forwarded in after[1:]:
        if received - end > BURST_GAP_NS:
            break
        end = max(end, forwarded)
    return end


def stopped_share(timings: Sequence[Timing], offset_ns: int,
                  window: tuple[int, int]) -> dict[str, float]:
    """What one proxy relayed while the VM was stopped: the relay time of every
    message (an upper bound on what it added), how many, and the latency of
    the exchanges QEMU waited for (``waited_us``, see :func:`waited_for`)."""
    stop, resume = window
    inside = sorted((timing for timing in timings
                     if stop <= timing.received_ns + offset_ns <= resume),
                    key=lambda timing: timing.received_ns)
    return {"relay_us": round(sum(timing.relay_us for timing in inside), 1),
            "messages": len(inside), "waited_us": waited_for(inside)}


def waited_for(timings: Sequence[Timing]) -> float:
    """Latency (arrival to forwarded, us) of each reply and of the request it answers.

    QEMU sends most device start and stop messages without waiting; it waits
    where a reply is owed (GET_VRING_BASE, GET_STATUS, REPLY_ACK acks): those
    exchanges are where the proxy's time becomes downtime, each counted from
    the moment its bytes reached the proxy (waiting behind earlier messages
    included).
    """
    total = 0.0
    requests = [timing for timing in timings if timing.direction == REQUEST]
    for reply in (timing for timing in timings if timing.direction == REPLY):
        arrived = reply.arrived_ns or reply.received_ns
        answered = [request for request in requests
                    if request.request == reply.request and request.forwarded_ns <= arrived]
        if answered:
            total += answered[-1].latency_us
        total += reply.latency_us
    return round(total, 1)


async def migrate_once(mode: ProxyMode | None) -> MigrationSample:
    """One migration between two fresh hosts, each behind a proxy in ``mode`` if any:
    QEMU's figures and, proxied, the proxies'."""
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-bench-"))
    uri = f"unix:{run_dir / 'migration.sock'}"
    proxied = mode is not None
    try:
        async with asyncio.timeout(SAMPLE_TIMEOUT), source_and_destination(
                run_dir, uri, dpdk_testpmd(), dpdk_testpmd(), source_proxy=mode,
                destination_proxy=mode) as (a, b):
            await a.qemu.driver().initialise()
            await qmp.wait_for_vhost_started(a.qemu, VHOST_TIMEOUT)
            with a.qemu.qmp.listener("STOP") as stops, b.qemu.qmp.listener("RESUME") as resumes:
                result = await qmp.migrate(a.qemu, b.qemu, uri)
                await qmp.wait_for_vhost_started(b.qemu, VHOST_TIMEOUT)
                window = (_event_ns(stops, "STOP"), _event_ns(resumes, "RESUME"))
                # Keep the destination's teardown (its device stop) out of the
                # burst of its device start: a gap longer than BURST_GAP_NS.
                await asyncio.sleep(SETTLE_SECONDS)
        # The hosts are gone: the proxies wrote their stats as they exited.
        if result.get("status") != "completed":
            raise InputError(f"migration {'through the proxy' if proxied else 'direct'} "
                             f"ended {result.get('status')!r}")
        sample = MigrationSample(int(result["downtime"]), int(result["total-time"]))
        if proxied:
            source = _read_stats(run_dir / "a-proxy.stats.json")
            destination = _read_stats(run_dir / "b-proxy.stats.json")
            window = (stop_started(*source, window[0]), stop_ended(*destination, window[1]))
            for side, (timings, offset) in (("source", source), ("destination", destination)):
                sample.relayed.extend(timings)
                sample.stopped[side] = stopped_share(timings, offset, window)
        return sample
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclasses.dataclass
class MigrationSample:
    """One migration: QEMU's downtime and total time; through proxies, what they relayed."""

    downtime_ms: int
    total_time_ms: int
    stopped: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Per side (source, destination): relay time and count while the VM was stopped."""
    relayed: list[Timing] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"downtime_ms": self.downtime_ms,
                                    "total_time_ms": self.total_time_ms}
        if self.stopped:
            document["proxy_while_stopped"] = self.stopped
        return document


async def measure_migrations(repeat: int, proxied: Mapping[str, ProxyMode]
                             ) -> dict[str, list[MigrationSample]]:
    """``repeat`` migrations direct and through each proxied variant, round-robin."""
    variants: dict[str, ProxyMode | None] = {DIRECT: None, **proxied}
    samples: dict[str, list[MigrationSample]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, mode in variants.items():
            samples[name].append(await migrate_once(mode))
    return samples


# -- control messages --------------------------------------------------------------------

async def _answer_get_features(link: MessageConnection) -> None:
    while (message := await link.recv_message()) is not None:
        await link.send_message(make_reply(message, U64(0x1_4400_0000)))


async def _round_trips(link: MessageConnection, seconds: float) -> int:
    request = Message(FrontendRequest.GET_FEATURES)
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await link.send_message(request)
        if await link.recv_message() is None:
            raise InputError("the peer closed during the control benchmark")
        count += 1
    return count


async def control_rate(proxied: bool, seconds: float,
                       timings: RelayTimings | None = None) -> float:
    """GET_FEATURES round trips per second, direct or through one relay (whose
    per-message stamps go to ``timings``)."""
    front_peer, front_far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    frontend = MessageConnection(FdConnection(front_peer), Channel.FRONTEND, Role.FRONTEND)
    if proxied:
        back_near, back_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        profile = CompatProfile("bench.all", VirtioFeature(0xFFFF_FFFF_FFFF_FFFF))
        relay = Relay(ProxyPolicy(profile), FdConnection(front_far), FdConnection(back_near),
                      timings=timings)
        relaying: asyncio.Task[Any] = asyncio.create_task(relay.run())
        backend = MessageConnection(FdConnection(back_peer), Channel.FRONTEND, Role.BACKEND)
    else:
        relaying = asyncio.create_task(asyncio.sleep(0))
        backend = MessageConnection(FdConnection(front_far), Channel.FRONTEND, Role.BACKEND)
    answering = asyncio.create_task(_answer_get_features(backend))
    try:
        count = await _round_trips(frontend, seconds)
    finally:
        frontend.close()
        await asyncio.wait_for(asyncio.gather(relaying, answering, return_exceptions=True), 5)
        backend.close()
    return count / seconds


async def measure_control(repeat: int, seconds: float,
                          timings: RelayTimings) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {DIRECT: [], PROXIED: []}
    for _ in range(repeat):
        for name, proxied in ((DIRECT, False), (PROXIED, True)):
            rates[name].append(await control_rate(proxied, seconds / repeat, timings))
    return rates


# -- report ------------------------------------------------------------------------------

def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 1)


def _ratio(proxied: float, direct: float) -> float | None:
    return round(proxied / direct, 3) if direct else None


def bootstrap_interval(direct: Sequence[float], proxied: Sequence[float],
                       statistic: Callable[[Sequence[float], Sequence[float]], float], *,
                       resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 11) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``statistic(direct, proxied)``.

    Each variant's samples are resampled with replacement on their own (they
    are independent runs, interleaved in time); the seed is fixed so a
    document can be recomputed from its samples.
    """
    chooser = random.Random(seed)
    values = sorted(statistic(chooser.choices(direct, k=len(direct)),
                              chooser.choices(proxied, k=len(proxied)))
                    for _ in range(resamples))
    return (round(percentile(values, 0.025), 3), round(percentile(values, 0.975), 3))


def _median_ratio(direct: Sequence[float], proxied: Sequence[float]) -> float:
    return statistics.median(proxied) / statistics.median(direct)


def _mean_difference(direct: Sequence[float], proxied: Sequence[float]) -> float:
    return statistics.fmean(proxied) - statistics.fmean(direct)


def cluster_interval(samples: Sequence[MigrationSample],
                     statistic: Callable[[Sequence[MigrationSample]], float], *,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 11
                     ) -> tuple[float, float] | None:
    """95 % bootstrap interval of ``statistic`` over migrations resampled whole.

    A migration's messages are not independent of each other (one slow
    moment of the machine slows a whole burst): resampling migrations, not
    messages, keeps that in the interval. None without samples.
    """
    if not samples:
        return None
    chooser = random.Random(seed)
    values = sorted(statistic(chooser.choices(samples, k=len(samples)))
                    for _ in range(resamples))
    return (round(percentile(values, 0.025), 1), round(percentile(values, 0.975), 1))


def relay_p50(samples: Sequence[MigrationSample]) -> float:
    """p50 of the relay time (us) of every message of ``samples``."""
    return percentile([timing.relay_us for sample in samples for timing in sample.relayed], 0.5)


def waited_median(samples: Sequence[MigrationSample]) -> float:
    """Median over migrations of what QEMU waited for on the proxies while stopped (us)."""
    return statistics.median(sum(share["waited_us"] for share in sample.stopped.values())
                             for sample in samples)


def _proxy_figures(samples: Sequence[MigrationSample]) -> dict[str, Any]:
    """What one proxied variant's migrations say about the proxy's own cost."""
    relayed = [timing for sample in samples for timing in sample.relayed]
    measured = [sample for sample in samples if sample.relayed]
    stopped = [sample for sample in samples if sample.stopped]
    return {"proxy_while_stopped": _share_summary(samples),
            "relay_us": summarise_timings(relayed),
            "relay_p50_ci95": cluster_interval(measured, relay_p50),
            "waited_per_migration_median_ci95": cluster_interval(stopped, waited_median)}


def _share_summary(samples: Sequence[MigrationSample]) -> dict[str, Any]:
    """The proxies' time while the VM was stopped, per side and per migration."""
    per_side: dict[str, dict[str, float]] = {}
    for side in ("source", "destination"):
        shares = [sample.stopped[side] for sample in samples if side in sample.stopped]
        if shares:
            relay = [share["relay_us"] for share in shares]
            waited = [share["waited_us"] for share in shares]
            per_side[side] = {"median_us": _median(relay), "max_us": round(max(relay), 1),
                              "waited_median_us": _median(waited),
                              "messages_median": _median([share["messages"]
                                                          for share in shares])}

    def per_migration(key: str) -> dict[str, float | None]:
        totals = [sum(share[key] for share in sample.stopped.values())
                  for sample in samples if sample.stopped]
        return {"median": _median(totals) if totals else None,
                "max": round(max(totals), 1) if totals else None}

    return {"per_side": per_side, "per_migration_us": per_migration("relay_us"),
            "waited_per_migration_us": per_migration("waited_us")}


def report(start: Mapping[str, Sequence[Sample]],
           migrations: Mapping[str, Sequence[MigrationSample]],
           control: Mapping[str, Sequence[float]], repeat: int,
           control_timings: Sequence[Timing] = ()) -> dict[str, Any]:
    start_medians = {name: {phase: summary["median_ms"]
                            for phase, summary in summarise(samples).items()}
                     for name, samples in start.items()}
    downtimes = {name: [float(sample.downtime_ms) for sample in samples]
                 for name, samples in migrations.items()}
    migration_medians = {name: {"downtime_ms": _median(downtimes[name]),
                                "total_time_ms": _median([s.total_time_ms for s in samples])}
                         for name, samples in migrations.items()}
    # QEMU's downtime under TCG comes in steps of ~40 ms: the mean says more
    # than the median about a shift of a few milliseconds.
    downtime_means = {name: round(statistics.mean(values), 1)
                      for name, values in downtimes.items()}
    control_medians = {name: _median(rates) for name, rates in control.items()}
    started = {name: [sample.vhost_started for sample in samples]
               for name, samples in start.items()}
    proxy = _proxy_figures(migrations[PROXIED])
    document: dict[str, Any] = {
        "benchmark": "vhostcompat proxy: direct vs through the proxy",
        "repeat": repeat,
        "start_ms": {"median": start_medians,
                     "ratio": {phase: _ratio(start_medians[PROXIED][phase],
                                             start_medians[DIRECT][phase]) for phase in PHASES},
                     "vhost_started_ratio_ci95": list(bootstrap_interval(
                         started[DIRECT], started[PROXIED], _median_ratio)),
                     "samples": {name: [sample.milliseconds() for sample in samples]
                                 for name, samples in start.items()}},
        "migration_ms": {"median": migration_medians,
                         "downtime_mean": downtime_means,
                         "downtime_difference": _downtime_difference(downtimes, PROXIED),
                         "samples": {name: [sample.to_json() for sample in samples]
                                     for name, samples in migrations.items()}},
        "proxy_while_stopped": proxy["proxy_while_stopped"],
        "proxy_ci95": {key: proxy[key] for key in ("relay_p50_ci95",
                                                   "waited_per_migration_median_ci95")},
        "relay_us": {"qemu_and_testpmd": proxy["relay_us"],
                     "in_process_get_features": summarise_timings(control_timings)},
        "control_round_trips_per_s": {
            "median": control_medians,
            "messages_per_s_through_proxy": round(2 * control_medians[PROXIED]),
            "samples": {name: [round(rate) for rate in rates] for name, rates in control.items()}},
    }
    if REALTIME in migrations:
        # The same figures for the proxies at SCHED_FIFO, from the same run.
        realtime = _proxy_figures(migrations[REALTIME])
        realtime["downtime_difference"] = _downtime_difference(downtimes, REALTIME)
        if REALTIME in start:
            realtime["vhost_started_ratio"] = _ratio(start_medians[REALTIME]["vhost_started"],
                                                     start_medians[DIRECT]["vhost_started"])
            realtime["vhost_started_ratio_ci95"] = list(bootstrap_interval(
                started[DIRECT], started[REALTIME], _median_ratio))
        document["realtime"] = realtime
    if BASELINE in migrations:
        # The same figures for the proxies of the other tree, from the same run.
        document["baseline"] = _proxy_figures(migrations[BASELINE])
    return document


def _downtime_difference(downtimes: Mapping[str, Sequence[float]], name: str
                         ) -> dict[str, Any]:
    """Downtime through ``name``'s proxies minus direct: medians, means and the mean's CI."""
    proxied, direct = downtimes[name], downtimes[DIRECT]
    return {"median": round(statistics.median(proxied) - statistics.median(direct), 1),
            "mean": round(statistics.fmean(proxied) - statistics.fmean(direct), 1),
            "mean_ci95": list(bootstrap_interval(direct, proxied, _mean_difference))}


def render(document: Document) -> str:
    start = document["start_ms"]
    migration = document["migration_ms"]
    control = document["control_round_trips_per_s"]
    conditions = ""
    if document.get("steal_percent") is not None:
        conditions += f", CPU time stolen by the hypervisor {document['steal_percent']} %"
    if document.get("proxy_cpus") is not None:
        conditions += f", proxies on CPUs {document['proxy_cpus']}"
    lines = [f"vhostcompat proxy vs direct, {document['repeat']} run(s) each (medians)"
             f"{conditions}",
             f"{'':<28}{'direct':>12}{'proxy':>12}{'ratio':>9}"]
    for phase in PHASES:
        ratio = start["ratio"][phase]
        lines.append(f"{'start to ' + phase + ' (ms)':<28}{start['median'][DIRECT][phase]:>12.1f}"
                     f"{start['median'][PROXIED][phase]:>12.1f}"
                     f"{ratio if ratio is not None else float('nan'):>9.3f}")
    for key, label in (("downtime_ms", "migration downtime (ms)"),
                       ("total_time_ms", "migration total time (ms)")):
        lines.append(f"{label:<28}{migration['median'][DIRECT][key]:>12.1f}"
                     f"{migration['median'][PROXIED][key]:>12.1f}")
    means = migration["downtime_mean"]
    lines.append(f"{'  downtime, mean (ms)':<28}{means[DIRECT]:>12.1f}{means[PROXIED]:>12.1f}")
    lines.append(f"{'GET_FEATURES round trips/s':<28}{control['median'][DIRECT]:>12.0f}"
                 f"{control['median'][PROXIED]:>12.0f}")
    lines.append(f"control messages/s through the proxy: "
                 f"{control['messages_per_s_through_proxy']}")
    low, high = start["vhost_started_ratio_ci95"]
    lines.append(f"start to vhost running, ratio of medians: {start['ratio']['vhost_started']}"
                 f" (95% CI {low}-{high})")
    low, high = migration["downtime_difference"]["mean_ci95"]
    lines.append(f"downtime, proxy minus direct (mean): "
                 f"{migration['downtime_difference']['mean']} ms (95% CI {low} to {high})")
    lines += _proxy_lines({"proxy_while_stopped": document["proxy_while_stopped"],
                           "relay_us": document["relay_us"]["qemu_and_testpmd"],
                           **document["proxy_ci95"]})
    realtime = document.get("realtime")
    if realtime is not None:
        low, high = realtime["downtime_difference"]["mean_ci95"]
        lines.append(f"proxy at SCHED_FIFO (--realtime-priority "
                     f"{document.get('realtime_priority')}), same run: downtime minus direct "
                     f"(mean) {realtime['downtime_difference']['mean']} ms (95% CI {low} to "
                     f"{high})")
        if "vhost_started_ratio" in realtime:
            low, high = realtime["vhost_started_ratio_ci95"]
            lines.append(f"  start to vhost running, ratio of medians: "
                         f"{realtime['vhost_started_ratio']} (95% CI {low}-{high})")
        lines += _proxy_lines(realtime)
    baseline = document.get("baseline")
    if baseline is not None:
        lines.append(f"baseline proxy ({document.get('baseline_proxy')}), same run:")
        lines += _proxy_lines(baseline)
    in_process = document["relay_us"]["in_process_get_features"].get("all")
    if in_process:
        lines.append(f"  in-process GET_FEATURES, all: p50 {in_process['p50_us']} us, "
                     f"p99 {in_process['p99_us']} us")
    return "\n".join(lines)


def _proxy_lines(figures: Mapping[str, Any]) -> list[str]:
    """One proxied variant: its share of the stops, and its relay time per message."""
    share = figures["proxy_while_stopped"]
    waited = share["waited_per_migration_us"]
    lines = ["while the VM was stopped, per migration (us, median / max): relay time "
             f"{share['per_migration_us']['median']} / {share['per_migration_us']['max']}"
             f", of it on exchanges QEMU waited for {waited['median']} / {waited['max']}"
             f"{_interval(figures.get('waited_per_migration_median_ci95'))}"]
    for side, side_figures in share["per_side"].items():
        lines.append(f"  {side}: {side_figures['messages_median']:g} messages, relay time "
                     f"median {side_figures['median_us']} us (max {side_figures['max_us']}), "
                     f"waited for {side_figures['waited_median_us']} us")
    lines.append("relay time per message (us), QEMU + testpmd runs (wall; proxy CPU), "
                 f"p50 of all{_interval(figures.get('relay_p50_ci95'))}:")
    return lines + _relay_table(figures["relay_us"])


def _interval(interval: Sequence[float] | None) -> str:
    return "" if interval is None else f" (median's 95% CI {interval[0]} to {interval[1]})"


def _relay_table(summary: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = [f"  {'request':<36}{'count':>7}{'p50':>9}{'p99':>9}{'cpu p50':>9}{'cpu p99':>9}"]
    for key, figures in summary.items():
        cpu = (f"{figures['cpu_p50_us']:>9.1f}{figures['cpu_p99_us']:>9.1f}"
               if "cpu_p50_us" in figures else "")
        lines.append(f"  {key:<36}{figures['count']:>7}{figures['p50_us']:>9.1f}"
                     f"{figures['p99_us']:>9.1f}{cpu}")
    return lines


def cpu_ticks() -> tuple[int, int]:
    """All CPUs' time so far and the part of it stolen by the hypervisor (clock ticks,
    /proc/stat): a run on a busy host says so."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    return sum(fields), fields[7]


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[0] - before[0]
    return round(100 * (after[1] - before[1]) / total, 1) if total > 0 else None


async def measure(repeat: int, control_seconds: float, *, launch: ProxyLaunch = AS_DEPLOYED,
                  realtime_priority: int | None = REALTIME_PRIORITY,
                  baseline: Path | None = None) -> dict[str, Any]:
    ticks = cpu_ticks()
    variants = proxied_variants(launch, realtime_priority, baseline)
    start = await compare(start_backends(variants), repeat)
    migrations = await measure_migrations(repeat, variants)
    timings = RelayTimings()
    control = await measure_control(repeat, control_seconds, timings)
    document = report(start, migrations, control, repeat, list(timings.samples))
    document["steal_percent"] = steal_percent(ticks, cpu_ticks())
    document["proxy_cpus"] = None if launch.cpus is None else sorted(launch.cpus)
    document["realtime_priority"] = realtime_priority
    if baseline is not None:
        document["baseline_proxy"] = str(baseline)
    return document


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("bench_proxy", __doc__)
    parser.add_argument("--repeat", type=int, default=10,
                        help="samples of each (default 10: migration downtime is noisy)")
    parser.add_argument("--control-seconds", type=float, default=CONTROL_SECONDS,
                        help=f"time spent on the control-message rate (default "
                             f"{CONTROL_SECONDS:g})")
    parser.add_argument("--baseline-proxy", type=Path, metavar="SRC",
                        help="also migrate through proxies run from this vhostcompat source "
                             "directory (another tree's src), round-robin with the others")
    parser.add_argument("--realtime-priority", type=int, default=REALTIME_PRIORITY,
                        metavar="N",
                        help=f"also run proxies with --realtime-priority N (SCHED_FIFO), "
                             f"round-robin with the others (default {REALTIME_PRIORITY}; 0 "
                             "leaves that variant out)")
    parser.add_argument("--proxy-cpus", metavar="LIST",
                        help="run every proxy on these CPUs only (comma separated numbers)")
    return parser


def _cpu_list(text: str | None) -> frozenset[int] | None:
    if text is None:
        return None
    try:
        return frozenset(int(item) for item in text.split(","))
    except ValueError:
        raise InputError(f"--proxy-cpus takes CPU numbers separated by commas, not {text!r}"
                         ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def checked_measure() -> Document:
        check_repeat(args.repeat)
        if args.control_seconds <= 0:
            raise InputError("--control-seconds must be positive")
        launch = ProxyLaunch(cpus=_cpu_list(args.proxy_cpus))
        if not 0 <= args.realtime_priority <= MAX_PRIORITY:
            raise InputError(f"--realtime-priority is 1 to {MAX_PRIORITY}, or 0 for none")
        baseline = args.baseline_proxy
        if baseline is not None and not (baseline / "vhostcompat" / "cli").is_dir():
            raise InputError(f"--baseline-proxy {baseline}: not a vhostcompat src directory")
        return asyncio.run(measure(args.repeat, args.control_seconds, launch=launch,
                                   realtime_priority=args.realtime_priority or None,
                                   baseline=None if baseline is None else baseline.resolve()))

    return run_bench("bench_proxy", checked_measure, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
