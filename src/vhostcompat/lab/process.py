"""Child processes of the lab: started, logged, waited for and stopped by PID.

QEMU and testpmd run as children of the test (or of ``vhostcompat demo``).
Each one writes stdout and stderr to its own log file in the run directory,
so a failure can be shown (and asserted on: QEMU's destination prints
``Features 0x... unsupported`` there). Stopping is always by PID: SIGTERM, a
bounded wait, then SIGKILL, and the child is always reaped.

Every wait here is bounded. A condition is polled with a short sleep between
checks; the sleep never stands in for the condition itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path

from vhostcompat.lab.errors import LabTimeoutError, ProcessExitedError

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
STOP_TIMEOUT = 5.0
# After SIGKILL the kernel tears the process down; this only bounds a wait
# that cannot legitimately be long.
KILL_TIMEOUT = 5.0
POLL_INTERVAL = 0.01

Condition = Callable[[], bool | Awaitable[bool]]


class ChildProcess:
    """A running child with its log file; stop it with :meth:`stop`."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.log_path = log_path
        self._process = process

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def running(self) -> bool:
        return self._process.returncode is None

    def log_text(self) -> str:
        """Everything the child wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def exited_error(self, waiting_for: str | None = None) -> ProcessExitedError:
        returncode = self._process.returncode
        return ProcessExitedError(self.name, -1 if returncode is None else returncode,
                                  self.log_tail(), waiting_for)

    def ensure_running(self, waiting_for: str | None = None) -> None:
        """Raise :class:`ProcessExitedError` (with the log tail) if the child exited."""
        if self._process.returncode is not None:
            raise self.exited_error(waiting_for)

    async def wait(self, timeout: float) -> int:
        """Wait (bounded) for the child to exit by itself; return its status."""
        try:
            return await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            raise LabTimeoutError(f"{self.name} (pid {self.pid}) to exit", timeout,
                                  self.log_tail()) from None

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; always reap. Returns the status."""
        if self._process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), timeout)
            except TimeoutError:
                logger.warning("%s (pid %d) ignored SIGTERM for %gs; sending SIGKILL",
                               self.name, self.pid, timeout)
                self._signal(signal.SIGKILL)
                await self.wait(KILL_TIMEOUT)
        self._close_stdin()
        returncode = self._process.returncode
        assert returncode is not None  # reaped by one of the waits above
        logger.debug("%s (pid %d) stopped with status %d", self.name, self.pid, returncode)
        return returncode

    async def kill(self) -> int:
        """SIGKILL (a crash, for the tests that need one) and reap; the status."""
        if self._process.returncode is None:
            self._signal(signal.SIGKILL)
        returncode = await self.wait(KILL_TIMEOUT)
        self._close_stdin()
        return returncode

    def _signal(self, signum: signal.Signals) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            # It exited and was reaped between our check and the kill: the
            # wait that follows returns its status at once.
            logger.debug("%s (pid %d) already gone before %s", self.name, self.pid,
                         signum.name)

    def _close_stdin(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.close()


async def start_process(name: str, argv: Sequence[str], log_dir: Path, *,
                        env: Mapping[str, str] | None = None,
                        keep_stdin_open: bool = False) -> ChildProcess:
    """Start ``argv`` with stdout+stderr going to ``log_dir/NAME.log``.

    ``env`` adds to (and overrides) this process's environment.
    ``keep_stdin_open`` gives the child a pipe that stays open until
    :meth:`ChildProcess.stop` (an interactive testpmd exits at EOF); otherwise
    stdin is /dev/null.
    """
    log_path = log_dir / f"{name}.log"
    child_env = dict(os.environ)
    if env is not None:
        child_env.update(env)
    with log_path.open("wb") as log_file:
        # The child keeps its own copy of the descriptor; ours can close.
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if keep_stdin_open else asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env,
            # Its own session: a Ctrl-C meant for the test runner does not
            # reach the children before we stop them in order.
            start_new_session=True,
        )
    logger.debug("started %s (pid %d): %s", name, process.pid, " ".join(argv))
    return ChildProcess(name, argv, log_path, process)


@contextlib.asynccontextmanager
async def managed_process(name: str, argv: Sequence[str], log_dir: Path, *,
                          env: Mapping[str, str] | None = None,
                          keep_stdin_open: bool = False,
                          stop_timeout: float = STOP_TIMEOUT) -> AsyncIterator[ChildProcess]:
    """:func:`start_process`, stopped and reaped when the block exits, however it exits."""
    child = await start_process(name, argv, log_dir, env=env, keep_stdin_open=keep_stdin_open)
    try:
        yield child
    finally:
        await child.stop(stop_timeout)


async def wait_until(condition: Condition, timeout: float, what: str, *,
                     watch: Iterable[ChildProcess] = (),
                     interval: float = POLL_INTERVAL) -> None:
    """Poll ``condition`` until true, at most ``timeout`` seconds.

    Any process in ``watch`` that exits meanwhile ends the wait at once with
    :class:`ProcessExitedError` (its log tail included) instead of a timeout.
    """
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while True:
        for child in watched:
            child.ensure_running(what)
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            tail = "\n".join(child.log_tail(5) for child in watched)
            raise LabTimeoutError(what, timeout, tail)
        await asyncio.sleep(interval)


async def wait_for_path(path: Path, timeout: float, *,
                        watch: Iterable[ChildProcess] = ()) -> None:
    """Wait (bounded) until ``path`` exists, e.g. a socket a child creates."""
    await wait_until(path.exists, timeout, f"{path} to exist", watch=watch)


async def bounded_output(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run a short command to its end (stdout and stderr together), at most ``timeout``
    seconds: ``(returncode, output)``. On timeout the command is killed, reaped, and
    TimeoutError raised; OSError when it cannot be started."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return -1 if process.returncode is None else process.returncode, \
        out.decode(errors="replace")
