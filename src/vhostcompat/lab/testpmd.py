"""DPDK testpmd as a real, third-party vhost-user backend.

testpmd's ``net_vhost`` vdev is DPDK's vhost library behind a port: two
configurations of it (``tso=0`` and ``tso=1``) offer different feature sets
and so behave like two backend versions, which is what the migration story
needs. Settings measured on this kind of machine (see FIELD-NOTES):

* ``--no-huge -m 256 --no-pci``: no hugepages, no devices needed (256 MiB
  starts in ~0.45 s here, 512 MiB in ~1.05 s: DPDK touches all of it);
* ``--file-prefix`` unique per instance, ``--no-shconf`` and
  ``RUNTIME_DIRECTORY`` in the run directory: instances never share state
  and nothing is left in /var/run/dpdk;
* interactive (``-i``) with stdin a pipe kept open: forwarding never starts,
  so testpmd uses no CPU (non-interactive it busy-polls a whole core), and
  the vhost-user control path works the same; at stdin EOF it would exit;
* ``--total-num-mbufs=8192``: the default pool does not fit in 512 MiB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from vhostcompat.errors import InputError
from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import LabError
from vhostcompat.lab.probe import get_features
from vhostcompat.lab.process import STOP_TIMEOUT, ChildProcess, managed_process, wait_until

logger = logging.getLogger(__name__)

TESTPMD_BINARY = "dpdk-testpmd"
START_TIMEOUT = 20.0
PROMPT = "testpmd> "
MAX_QUEUES = 128


@dataclasses.dataclass(frozen=True)
class TestpmdConfig:
    """One testpmd vhost-user port (``--vdev net_vhost0,...``).

    ``client``: False, testpmd listens on ``socket_path`` (QEMU connects);
    True, testpmd connects to QEMU's socket and retries until it exists.
    ``tso``: offer VIRTIO_NET_F_HOST_TSO4/6 (testpmd's ``tso=1``).
    """

    __test__ = False  # not a pytest test class, despite the name

    socket_path: Path
    queues: int = 1
    client: bool = False
    tso: bool = False
    memory_mib: int = 256
    lcores: str = "0-1"
    total_num_mbufs: int = 8192
    binary: str = TESTPMD_BINARY

    def __post_init__(self) -> None:
        if not 1 <= self.queues <= MAX_QUEUES:
            raise InputError(f"testpmd queues must be 1..{MAX_QUEUES}, not {self.queues}")
        if "," in str(self.socket_path):
            raise InputError(f"a DPDK devargs path cannot hold a comma: {self.socket_path}")
        if self.memory_mib < 64:
            raise InputError(f"testpmd memory_mib must be at least 64, not {self.memory_mib}")


def dpdk_testpmd_argv(config: TestpmdConfig, file_prefix: str) -> list[str]:
    """The testpmd command line (pure)."""
    vdev = (f"net_vhost0,iface={config.socket_path},queues={config.queues},"
            f"client={int(config.client)},tso={int(config.tso)}")
    return [
        config.binary,
        "--no-huge", "-m", str(config.memory_mib), "--no-pci",
        "--file-prefix", file_prefix, "--no-shconf",
        "-l", config.lcores,
        "--vdev", vdev,
        "--",
        "-i", f"--total-num-mbufs={config.total_num_mbufs}",
    ]


@dataclasses.dataclass(frozen=True)
class RunningTestpmd:
    """A started testpmd: its config, process and the socket QEMU uses.

    ``features`` is testpmd's own GET_FEATURES answer, asked directly (None
    when testpmd is the client and there is nothing to ask yet).
    """

    config: TestpmdConfig
    process: ChildProcess
    runtime_directory: Path
    features: VirtioFeature | None

    @property
    def socket_path(self) -> Path:
        return self.config.socket_path


def _prompt_shown(process: ChildProcess) -> bool:
    return PROMPT in process.log_text()


@contextlib.asynccontextmanager
async def run_testpmd(config: TestpmdConfig, run_dir: Path, name: str = "testpmd", *,
                      start_timeout: float = START_TIMEOUT,
                      stop_timeout: float = STOP_TIMEOUT) -> AsyncIterator[RunningTestpmd]:
    """Start testpmd and wait until its vhost-user port is ready; stop it on exit.

    Ready means the interactive prompt is shown (the port is started) and,
    as a server, the socket answers GET_FEATURES (one probe connection,
    closed at once; DPDK forgets it). Logs go to ``run_dir/NAME.log``.
    """
    if not config.client and config.socket_path.exists():
        # DPDK refuses to bind over it, and it may be another backend's.
        raise LabError(f"{name}: {config.socket_path} already exists")
    runtime_directory = run_dir / f"{name}.rt"
    runtime_directory.mkdir(exist_ok=True)
    file_prefix = f"vc{uuid.uuid4().hex[:12]}"
    async with managed_process(name, dpdk_testpmd_argv(config, file_prefix), run_dir,
                               env={"RUNTIME_DIRECTORY": str(runtime_directory)},
                               keep_stdin_open=True, stop_timeout=stop_timeout) as process:
        await wait_until(lambda: _prompt_shown(process), start_timeout,
                         f"{name} to show its prompt", watch=[process], interval=0.02)
        features = None
        if not config.client:
            await wait_until(config.socket_path.exists, start_timeout,
                             f"{config.socket_path} to exist", watch=[process])
            # DPDK answers on the socket only ~0.9 s after creating it; a
            # frontend started earlier just waits, so timings would blame it.
            features = await get_features(config.socket_path, start_timeout)
        logger.debug("%s ready on %s", name, config.socket_path)
        yield RunningTestpmd(config, process, runtime_directory, features)
