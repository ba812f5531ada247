"""Child processes: logs, stop by PID (TERM then KILL), bounded condition waits."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import run_bounded
from vhostcompat.lab.errors import LabTimeoutError, ProcessExitedError
from vhostcompat.lab.process import managed_process, start_process, wait_for_path, wait_until

PYTHON = sys.executable


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return run_bounded(coroutine, timeout)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_output_goes_to_the_log_and_the_status_is_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = await start_process(
            "talker", [PYTHON, "-c", "import sys; print('out line'); "
                       "print('err line', file=sys.stderr); sys.exit(3)"], tmp_path)
        assert await child.wait(10) == 3
        assert child.returncode == 3
        assert not child.running
        text = child.log_text()
        assert "out line" in text and "err line" in text
        assert child.log_path == tmp_path / "talker.log"

    run(scenario())


def test_log_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = await start_process(
            "counter", [PYTHON, "-c", "for i in range(50): print(f'line {i}')"], tmp_path)
        await child.wait(10)
        assert child.log_tail(3).splitlines() == ["line 47", "line 48", "line 49"]

    run(scenario())


def test_stop_terminates_with_sigterm_and_reaps(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = await start_process("sleeper", ["sleep", "30"], tmp_path)
        assert child.running
        status = await child.stop(timeout=5)
        assert status == -signal.SIGTERM
        assert not _pid_alive(child.pid)

    run(scenario())


def test_stop_falls_back_to_sigkill(tmp_path: Path) -> None:
    async def scenario() -> None:
        # An ignored signal stays ignored across exec: this child ignores SIGTERM.
        child = await start_process(
            "stubborn", ["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"], tmp_path)
        await wait_until(lambda: "ready" in child.log_text(), 5, "the child to start",
                         watch=[child])
        started = time.monotonic()
        status = await child.stop(timeout=0.3)
        assert status == -signal.SIGKILL
        assert time.monotonic() - started < 5
        assert not _pid_alive(child.pid)

    run(scenario())


def test_stop_of_an_exited_child_returns_its_status(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = await start_process("quick", ["sh", "-c", "exit 7"], tmp_path)
        await child.wait(10)
        assert await child.stop() == 7

    run(scenario())


def test_managed_process_stops_the_child_when_the_block_fails(tmp_path: Path) -> None:
    pids: list[int] = []

    async def scenario() -> None:
        async with managed_process("sleeper", ["sleep", "30"], tmp_path) as child:
            pids.append(child.pid)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        run(scenario())
    assert pids and not _pid_alive(pids[0])


def test_stdin_pipe_stays_open_until_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        # `cat` exits at stdin EOF: it is still running only if the pipe is open.
        async with managed_process("cat", ["cat"], tmp_path, keep_stdin_open=True) as child:
            with pytest.raises(LabTimeoutError):
                await child.wait(0.3)
            assert child.running
        assert child.returncode is not None

    run(scenario())


def test_devnull_stdin_means_eof_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = await start_process("cat", ["cat"], tmp_path)
        assert await child.wait(10) == 0

    run(scenario())


def test_environment_is_added(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = await start_process("env", ["sh", "-c", "echo value=$LAB_TEST_VALUE"], tmp_path,
                                    env={"LAB_TEST_VALUE": "xyz"})
        await child.wait(10)
        assert "value=xyz" in child.log_text()

    run(scenario())


def test_wait_until_returns_when_the_condition_holds(tmp_path: Path) -> None:
    async def scenario() -> None:
        marker = tmp_path / "marker"
        child = await start_process(
            "toucher", ["sh", "-c", f"sleep 0.1; touch {marker}; exec sleep 30"], tmp_path)
        try:
            await wait_for_path(marker, 5, watch=[child])
            assert marker.exists()
        finally:
            await child.stop()

    run(scenario())


def test_wait_until_accepts_async_conditions() -> None:
    calls: list[int] = []

    async def condition() -> bool:
        calls.append(1)
        return len(calls) >= 3

    run(wait_until(condition, 5, "three calls"))
    assert len(calls) == 3


def test_wait_until_times_out_with_the_reason(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(LabTimeoutError) as caught:
        run(wait_until(lambda: False, 0.2, "something that never happens"))
    assert time.monotonic() - started < 5
    assert caught.value.what == "something that never happens"
    assert caught.value.timeout == 0.2
    assert "something that never happens" in str(caught.value)


def test_wait_until_stops_early_when_a_watched_child_exits(tmp_path: Path) -> None:
    async def scenario() -> None:
        child = await start_process(
            "crasher", ["sh", "-c", "echo 'fatal: no socket' >&2; exit 4"], tmp_path)
        with pytest.raises(ProcessExitedError) as caught:
            await wait_until(lambda: False, 30, "a socket", watch=[child])
        assert caught.value.returncode == 4
        assert caught.value.name == "crasher"
        assert "fatal: no socket" in caught.value.log_tail
        assert "fatal: no socket" in str(caught.value)
        assert "\n" not in str(caught.value)

    started = time.monotonic()
    run(scenario())
    assert time.monotonic() - started < 10


def test_wait_with_a_timeout_raises_but_leaves_the_child(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with managed_process("sleeper", ["sleep", "30"], tmp_path) as child:
            with pytest.raises(LabTimeoutError):
                await child.wait(0.1)
            assert child.running

    run(scenario())
