"""How fast the host agent runs an interface in the mode written on its row.

One OVS-DPDK instance (ovsdb-server + ovs-vswitchd-dpdk, as the lab runs
it), two published versions, one ``dpdkvhostuserclient`` port, and
``vhostcompat agent`` as a child process (as deployed). Each round, in
turn:

* **assign**: ``ovs-vsctl set Interface vhu0 options:vhost-compat-version=V1``
  on a port that has no mode: the agent starts the proxy (listening) and
  re-creates the port on its socket (two transactions, the second once
  vswitchd applied the first). *Serving* is the end of that re-creation:
  OVS registers the port on a socket the proxy already listens on;
* **change**: V1 -> V2 on the redirected port: the proxy is restarted in
  the new mode (the port stays);
* then the mode is removed (QEMU's path restored; not measured).

Times run from just before ``ovs-vsctl`` is spawned (its own run time is
reported apart) to the agent's log line for the step (``proxy-started``,
``redirected``), whose timestamps come from the same clock. Target: the
assign median at most 100 ms.

    python -m bench.bench_agent [--repeat 10] [--json]
"""

from __future__ import annotations

import asyncio
import calendar
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import Document, bench_parser, check_repeat, run_bench
from vhostcompat.hoststore import encode_profile
from vhostcompat.lab.commands import RunningAgent, run_agent
from vhostcompat.lab.ovs import OvsConfig, RunningOvs, rss_kib, run_ovs
from vhostcompat.lab.process import wait_until
from vhostcompat.profiles import load_default_catalog

V1, V2 = "debian12.ovs-dpdk.v3.1-base", "debian12.ovs-dpdk.v3.1"
STEP_TIMEOUT = 20.0
TARGET_MS = 100.0


def event_times(agent: RunningAgent, name: str) -> list[float]:
    """The wall-clock times (s) of the agent's log lines of event ``name``."""
    times = []
    for line in agent.events(name):
        stamp = line.split(" ", 1)[0].removeprefix("ts=").removesuffix("Z")
        seconds, _, millis = stamp.partition(".")
        times.append(calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S"))
                     + int(millis or 0) / 1000)
    return times


async def timed_set(ovs: RunningOvs, agent: RunningAgent, arguments: Sequence[str],
                    events: Sequence[str]) -> dict[str, float]:
    """Run one ``ovs-vsctl`` and wait for a new log line of each event; ms from the start."""
    before = {name: len(event_times(agent, name)) for name in events}
    started = time.time()
    await ovs.vsctl(*arguments)
    vsctl_ms = (time.time() - started) * 1000
    await wait_until(lambda: all(len(event_times(agent, name)) > before[name]
                                 for name in events), STEP_TIMEOUT,
                     f"the agent to log {', '.join(events)}", watch=[agent.process],
                     interval=0.005)
    sample = {"vsctl": vsctl_ms}
    for name in events:
        sample[name] = (event_times(agent, name)[before[name]] - started) * 1000
    return sample


async def measure_async(repeat: int) -> tuple[dict[str, list[dict[str, float]]], int | None]:
    catalog = load_default_catalog()
    run_dir = Path(tempfile.mkdtemp(prefix="vc-bench-", dir="/tmp"))
    samples: dict[str, list[dict[str, float]]] = {"assign": [], "change": []}
    try:
        async with run_ovs(OvsConfig("bench"), run_dir / "ovs") as ovs:
            profiles = [catalog.get(V2), catalog.get(V1)]
            await ovs.vsctl("set", "Open_vSwitch", ".",
                            "external_ids:vhost-compat-versions="
                            + json.dumps(",".join(profile.version for profile in profiles)),
                            *[f"external_ids:vhost-compat-profile-{profile.version}="
                              + json.dumps(encode_profile(profile)) for profile in profiles])
            await ovs.add_vhost_client_port("vhu0", run_dir / "qemu.sock")
            async with run_agent(ovs.remote, run_dir / "agent", run_dir) as agent:
                mode = "options:vhost-compat-version"
                for _ in range(repeat):
                    samples["assign"].append(await timed_set(
                        ovs, agent, ["set", "Interface", "vhu0", f"{mode}={V1}"],
                        ["proxy-started", "redirected"]))
                    samples["change"].append(await timed_set(
                        ovs, agent, ["set", "Interface", "vhu0", f"{mode}={V2}"],
                        ["proxy-started"]))
                    await timed_set(ovs, agent, ["remove", "Interface", "vhu0", "options",
                                                 "vhost-compat-version"], ["restored"])
                rss = rss_kib(agent.process.pid)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return samples, rss


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1),
            "stdev": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0}


def report(samples: Mapping[str, Sequence[Mapping[str, float]]], repeat: int,
           agent_rss_kib: int | None = None) -> Document:
    steps: dict[str, Any] = {}
    for variant, rows in samples.items():
        steps[variant] = {name: spread([row[name] for row in rows]) for name in rows[0]}
    served = steps["assign"]["redirected"]["median"]
    return {"repeat": repeat, "ms": steps, "assign_served_median_ms": served,
            "target_ms": TARGET_MS, "within_target": served <= TARGET_MS,
            "agent_rss_kib": agent_rss_kib}


def render(document: Document) -> str:
    lines = [f"agent: ovs-vsctl set ... options:vhost-compat-version to serving "
             f"({document['repeat']} rounds, ms: median / min / max / stdev)"]
    labels = {"vsctl": "ovs-vsctl itself", "proxy-started": "proxy listening",
              "redirected": "port re-created on the proxy (serving)"}
    for variant, steps in document["ms"].items():
        for name, values in steps.items():
            lines.append(f"  {variant:7} {labels[name]:40} {values['median']:7.1f} "
                         f"{values['min']:7.1f} {values['max']:7.1f} {values['stdev']:6.1f}")
    verdict = "within" if document["within_target"] else "ABOVE"
    lines.append(f"assign, median to serving: {document['assign_served_median_ms']} ms "
                 f"({verdict} the {document['target_ms']:g} ms target)")
    if document.get("agent_rss_kib") is not None:
        lines.append(f"agent resident memory after the rounds: "
                     f"{document['agent_rss_kib'] / 1024:.1f} MiB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("bench_agent", __doc__ or "")
    parser.add_argument("--repeat", type=int, default=10, help="rounds (default 10)")
    args = parser.parse_args(argv)
    check_repeat(args.repeat)

    def measure() -> Document:
        samples, rss = asyncio.run(measure_async(args.repeat))
        return report(samples, args.repeat, rss)

    return run_bench("bench_agent", measure, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
