"""What the lab benchmarks share: their backend plug-in shape and their command-line frame.

* :data:`BenchBackend`: what a start-up benchmark measures QEMU against, a
  callable taking a run directory and returning an async context manager
  that yields the vhost-user socket path (the ``--backend-factory`` shape);
  :func:`bench_backend` makes one of a lab backend factory, optionally
  behind ``vhostcompat proxy``;
* :func:`bench_parser`, :func:`check_repeat` and :func:`run_bench`: the
  options, checks and output every benchmark command has in common (one
  JSON document with ``--json``, else a table; bad input is one line on
  stderr and the error's exit status).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from vhostcompat.errors import InputError, VhostCompatError
from vhostcompat.lab.commands import ProxyMode
from vhostcompat.lab.hosts import BackendFactory, run_backend

BenchBackend = Callable[[Path], AbstractAsyncContextManager[Path]]
"""run directory -> async context manager yielding the vhost-user socket path QEMU uses."""

Document = Mapping[str, Any]


def bench_backend(factory: BackendFactory[Any], proxy: ProxyMode | None = None) -> BenchBackend:
    """A lab backend ``factory`` as a :data:`BenchBackend`; behind the proxy in ``proxy`` mode."""

    @contextlib.asynccontextmanager
    async def backend(run_dir: Path) -> AsyncIterator[Path]:
        async with run_backend(run_dir, "vhost", factory, proxy) as (_, _, socket_path):
            yield socket_path

    return backend


def bench_parser(module: str, description: str) -> argparse.ArgumentParser:
    """``python -m bench.MODULE``'s parser: the module docstring as help, and ``--json``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def check_repeat(repeat: int) -> None:
    """``--repeat`` below 1 is bad input (exit 2)."""
    if repeat < 1:
        raise InputError("--repeat must be at least 1")


def run_bench(name: str, measure: Callable[[], Document],
              render: Callable[[Document], str], as_json: bool) -> int:
    """Measure and print the document (JSON or ``render``ed); a VhostCompatError is one line."""
    try:
        document = measure()
    except VhostCompatError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return error.exit_status
    print(json.dumps(document, indent=2) if as_json else render(document))
    return 0
