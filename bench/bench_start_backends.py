"""Backends for the start-up bench beyond testpmd: the reference backend.

``reference``: ``vhostcompat backend`` as its own process (as deployed),
offering the catalog profile written from testpmd's measured answers
(``debian12.dpdk-vhost.v22.11``), so that both backends make QEMU negotiate
the very same features and the timings compare like with like. It runs
without ``-v``: logging is not what is measured.

    python -m bench.bench_start --backend testpmd --backend reference --repeat 10
"""

from __future__ import annotations

from bench.common import bench_backend
from vhostcompat.lab.hosts import reference_backend_process

REFERENCE_PROFILE = "debian12.dpdk-vhost.v22.11"

# The reference backend process listening on a socket in the run directory.
reference_backend = bench_backend(
    reference_backend_process(["--profile", REFERENCE_PROFILE], verbose=0))
