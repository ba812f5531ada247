"""``vhostcompat backend`` as a real child process, for tests without an event loop."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vhostcompat.lab.commands import reference_backend_argv

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02


@dataclass
class BackendProcess:
    socket_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Signal by PID, wait (bounded), SIGKILL if it must; always reaped."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return self.process.returncode


@contextlib.contextmanager
def backend_process(run_dir: Path, options: Sequence[str],
                    name: str = "backend") -> Iterator[BackendProcess]:
    """Start ``vhostcompat -v backend ... OPTIONS``; ready once its ready file exists."""
    socket_path = run_dir / f"{name}.sock"
    ready = run_dir / f"{name}.ready"
    log_path = run_dir / f"{name}.log"
    argv = reference_backend_argv(socket_path, ready, options)
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    backend = BackendProcess(socket_path, process, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if process.poll() is not None:
                raise AssertionError(f"backend exited {process.returncode}: {backend.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"backend not ready in {START_TIMEOUT}s: {backend.log()}")
            time.sleep(POLL_INTERVAL)
        assert ready.read_text() == f"{socket_path}\n"
        yield backend
    finally:
        backend.stop()
