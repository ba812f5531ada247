"""Time from QEMU start to a running vhost-user device, per backend, side by side.

Each sample starts a fresh backend (not timed), then times QEMU from spawn to:

* ``qmp_ready``: QMP answered (QEMU finished its start, which includes the
  vhost-user handshake: QEMU blocks until the backend answers);
* ``driver_ok``: the qtest driver reached DRIVER_OK (QEMU sends the memory
  table and rings to the backend inside that write);
* ``vhost_started``: ``x-query-virtio-status`` reports vhost started.

A backend is any callable taking a run directory and returning an async
context manager that yields the vhost-user socket path QEMU connects to
(:data:`bench.common.BenchBackend`); testpmd and the reference backend
(:mod:`bench.bench_start_backends`) are built in, others are plugged in with
``--backend-factory NAME=package.module:callable``. Backends are measured
round-robin so that drift of the machine hits them alike.

    python -m bench.bench_start --repeat 10 --json
    python -m bench.bench_start --backend testpmd --backend reference --repeat 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.bench_start_backends import reference_backend
from bench.common import (
    BenchBackend,
    Document,
    bench_backend,
    bench_parser,
    check_repeat,
    run_bench,
)
from vhostcompat.errors import InputError
from vhostcompat.lab import qmp
from vhostcompat.lab.hosts import dpdk_testpmd
from vhostcompat.lab.qemu import QemuVm, run_qemu

PHASES = ("qmp_ready", "driver_ok", "vhost_started")
VHOST_TIMEOUT = 10.0
SAMPLE_TIMEOUT = 60.0


# DPDK testpmd (interactive, tso=0) listening on a socket in the run directory.
dpdk_testpmd_backend = bench_backend(dpdk_testpmd())

BUILTIN_BACKENDS: dict[str, BenchBackend] = {
    "testpmd": dpdk_testpmd_backend,
    "reference": reference_backend,
}


@dataclasses.dataclass(frozen=True)
class Sample:
    """Seconds from QEMU's spawn to each phase."""

    qmp_ready: float
    driver_ok: float
    vhost_started: float

    def milliseconds(self) -> dict[str, float]:
        """Each phase in milliseconds (rounded to 0.1)."""
        return {phase: round(getattr(self, phase) * 1e3, 1) for phase in PHASES}


async def measure_once(backend: BenchBackend) -> Sample:
    """One sample in a fresh short run directory (removed afterwards)."""
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-bench-"))
    try:
        async with asyncio.timeout(SAMPLE_TIMEOUT), backend(run_dir) as socket_path:
            started = time.monotonic()
            async with run_qemu(QemuVm(socket_path), run_dir, "qemu") as qemu:
                qmp_ready = time.monotonic() - started
                await qemu.driver().initialise()
                driver_ok = time.monotonic() - started
                await qmp.wait_for_vhost_started(qemu, VHOST_TIMEOUT)
                vhost_started = time.monotonic() - started
        return Sample(qmp_ready, driver_ok, vhost_started)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def compare(backends: Mapping[str, BenchBackend], repeat: int) -> dict[str, list[Sample]]:
    """``repeat`` samples of every backend, taken round-robin."""
    samples: dict[str, list[Sample]] = {name: [] for name in backends}
    for _ in range(repeat):
        for name, backend in backends.items():
            samples[name].append(await measure_once(backend))
    return samples


def summarise(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Median and minimum of each phase, in milliseconds."""
    return {
        phase: {
            "median_ms": round(statistics.median(getattr(s, phase) for s in samples) * 1e3, 1),
            "min_ms": round(min(getattr(s, phase) for s in samples) * 1e3, 1),
        }
        for phase in PHASES
    }


def report(samples: Mapping[str, Sequence[Sample]], repeat: int) -> dict[str, Any]:
    return {
        "benchmark": "qemu start to vhost running",
        "repeat": repeat,
        "backends": {
            name: {"summary": summarise(runs),
                   "samples_ms": [sample.milliseconds() for sample in runs]}
            for name, runs in samples.items()
        },
    }


def render(document: Document) -> str:
    lines = [f"QEMU start -> vhost running, {document['repeat']} run(s) each (ms, median / min)",
             f"{'backend':<16}" + "".join(f"{phase:>22}" for phase in PHASES)]
    for name, result in document["backends"].items():
        summary = result["summary"]
        cells = "".join(
            f"{summary[phase]['median_ms']:>13.1f} / {summary[phase]['min_ms']:>6.1f}"
            for phase in PHASES)
        lines.append(f"{name:<16}{cells}")
    return "\n".join(lines)


def load_factory(spec: str) -> tuple[str, BenchBackend]:
    """``NAME=package.module:callable`` -> (NAME, the callable)."""
    name, _, target = spec.partition("=")
    module_name, _, attribute = target.partition(":")
    if not name or not module_name or not attribute:
        raise InputError(f"--backend-factory wants NAME=package.module:callable, not {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise InputError(f"--backend-factory {spec!r}: {error}") from None
    if not callable(factory):
        raise InputError(f"--backend-factory {spec!r} is not callable")
    return name, factory


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("bench_start", __doc__)
    parser.add_argument("--repeat", type=int, default=5, help="samples per backend (default 5)")
    parser.add_argument("--backend", action="append", choices=sorted(BUILTIN_BACKENDS),
                        help="a built-in backend (default: testpmd); repeatable")
    parser.add_argument("--backend-factory", action="append", default=[],
                        metavar="NAME=MODULE:CALLABLE",
                        help="another backend: a callable(run_dir) returning an async context"
                             " manager that yields the vhost-user socket path; repeatable")
    return parser


def chosen_backends(args: argparse.Namespace) -> dict[str, BenchBackend]:
    """The built-in backends named, then the plugged-in ones; testpmd when none."""
    backends = {name: BUILTIN_BACKENDS[name] for name in (args.backend or [])}
    for spec in args.backend_factory:
        name, factory = load_factory(spec)
        backends[name] = factory
    return backends or {"testpmd": dpdk_testpmd_backend}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def measure() -> Document:
        check_repeat(args.repeat)
        backends = chosen_backends(args)
        return report(asyncio.run(compare(backends, args.repeat)), args.repeat)

    return run_bench("bench_start", measure, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
