"""Backends for the start-up bench beyond testpmd: the reference backend.

``reference``: ``vhostcompat backend`` as its own process (as deployed),
offering the catalog profile written from testpmd's measured answers
(``debian12.dpdk-vhost.v22.11``), so that both backends make QEMU negotiate
the very same features and the timings compare like with like. It runs
without ``-v``: logging is not what is measured.

    python -m bench.bench_start --backend testpmd --backend reference --repeat 10
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from vhostcompat.lab.backend_hosts import run_reference_backend

REFERENCE_PROFILE = "debian12.dpdk-vhost.v22.11"


@contextlib.asynccontextmanager
async def reference_backend(run_dir: Path) -> AsyncIterator[Path]:
    """The reference backend process listening on a socket in ``run_dir``."""
    async with run_reference_backend(run_dir, "reference", ["--profile", REFERENCE_PROFILE],
                                     verbose=0) as backend:
        yield backend.socket_path
