"""``--realtime-priority``: the relay at SCHED_FIFO, and the guard that a flood cannot beat.

The guard's decisions are tested pure; then a real ``vhostcompat proxy``
child runs at SCHED_FIFO in front of a real ``vhostcompat backend``, a
hostile front-end floods it, and the proxy is seen (in ``/proc``, by the
kernel's own record of its policy) to drop to normal scheduling, to come
back once the flood ends, and to serve QEMU's start-up afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.backend.helpers import Frontend, run
from tests.security.helpers import proxy_config, qemu_start_up, reference_backend
from vhostcompat import realtime
from vhostcompat.errors import HostError
from vhostcompat.lab.commands import run_proxy
from vhostcompat.lab.process import wait_until
from vhostcompat.realtime import (
    CpuGuard,
    GuardSettings,
    GuardState,
    check_priority,
    enter_realtime,
    is_realtime,
)

WAIT = 20.0
# GET_FEATURES, flags version 1, no payload: a request the proxy relays as often as sent.
GET_FEATURES = struct.pack("<III", 1, 1, 0)


def test_priorities_are_1_to_99() -> None:
    assert check_priority(1) == 1 and check_priority(99) == 99
    for bad in (0, 100, -1):
        with pytest.raises(ValueError, match="1 to 99"):
            check_priority(bad)


def test_the_guard_demotes_a_busy_window_and_promotes_after_the_cooldown() -> None:
    state = GuardState(GuardSettings(window=0.1, budget=0.2, cooldown=1.0))
    assert state.tick(0.0, 10.0) is None            # the first window starts
    assert state.tick(0.015, 10.1) is None          # 15 % of a CPU: within budget
    assert state.tick(0.040, 10.2) == "demote"      # 25 %
    assert (state.realtime, state.demotions) == (False, 1)
    assert round(state.last_share, 2) == 0.25
    assert state.tick(0.5, 10.7) is None            # still cooling down, however busy
    assert state.tick(0.5, 11.2) == "promote"       # 1 s after the demotion
    assert state.realtime


def test_a_late_window_is_measured_over_the_time_that_really_passed() -> None:
    state = GuardState(GuardSettings(window=0.1, budget=0.2))
    state.tick(0.0, 0.0)
    # 30 ms of CPU, but the timer ran 0.3 s late: 7.5 % of a CPU, not 30 %.
    assert state.tick(0.030, 0.4) is None


def test_the_guard_changes_the_policy_and_stays_normal_when_real_time_is_refused_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    cpu = iter([0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])  # one busy window, then idle

    def refuse(priority: int) -> None:
        calls.append(f"enter {priority}")
        raise HostError("not permitted")

    monkeypatch.setattr(realtime, "leave_realtime", lambda: calls.append("leave"))
    monkeypatch.setattr(realtime, "enter_realtime", refuse)

    async def guarded() -> CpuGuard:
        guard = CpuGuard(3, GuardSettings(window=0.01, budget=0.2, cooldown=0.02),
                         cpu_clock=lambda: next(cpu))
        guard.start()
        await wait_until(lambda: "enter 3" in calls, 5.0, "the promotion attempt")
        return guard

    guard = asyncio.run(guarded())
    assert calls == ["leave", "enter 3"]
    assert not guard.state.realtime and guard.state.demotions == 1


@pytest.mark.parametrize("settings", [
    {"window": 0.0}, {"budget": 0.0}, {"budget": 1.5}, {"window": 1.0, "cooldown": 0.5}])
def test_bad_guard_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="guard settings"):
        GuardSettings(**settings)


def test_not_being_allowed_is_one_sentence_naming_what_is_needed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(HostError, match=r"not permitted.*CAP_SYS_NICE.*LimitRTPRIO"):
        enter_realtime(5)


@pytest.mark.parametrize(("value", "message"), [
    ("0", "1 to 99, not 0"), ("100", "1 to 99, not 100"), ("high", "not a number: 'high'"),
    ("²", "not a number")])
def test_a_bad_priority_is_one_line_and_exit_2(value: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "vhostcompat.cli", "proxy", "--profile",
                             "x", "--frontend", "/nonexistent/a", "--backend", "/nonexistent/b",
                             "--realtime-priority", value],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


class _Flood:
    """A hostile front-end: GET_FEATURES as fast as the proxy takes them, the replies
    drained by a second thread, until stopped."""

    def __init__(self, path: Path) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.connect(os.fspath(path))
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._drain)]
        self.replies = 0

    def __enter__(self) -> _Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(10)
        self.socket.close()

    def _send(self) -> None:
        burst = GET_FEATURES * 256
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                self.socket.sendall(burst)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = self.socket.recv(1 << 16)
                if not data:
                    return
                self.replies += len(data) // 20  # a GET_FEATURES reply: 12 + 8 bytes


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_flooding_frontend_loses_real_time_and_the_proxy_gets_it_back(
        short_dir: Path) -> None:
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("SCHED_FIFO needs CAP_SYS_NICE (root)")

    async def scenario() -> None:
        async with reference_backend(short_dir) as backend:
            config = proxy_config(short_dir, backend.socket_path)
            config = dataclasses.replace(config, options=(*config.options,
                                                          "--realtime-priority", "1"))
            async with run_proxy(config, short_dir) as proxy:
                pid = proxy.process.pid
                assert is_realtime(pid)
                path = Path(config.frontend)
                with _Flood(path) as flood:
                    await wait_until(lambda: not is_realtime(pid), WAIT,
                                     "the flooded proxy to drop to normal scheduling",
                                     watch=[proxy.process])
                    assert flood.replies > 0  # relayed, not stuck
                log = proxy.process.log_text()
                assert "at real-time priority over the last 0.1 s (budget 20 %)" in log
                await wait_until(lambda: is_realtime(pid), WAIT,
                                 "the proxy back at SCHED_FIFO after the flood",
                                 watch=[proxy.process])
                assert "back to SCHED_FIFO priority 1" in proxy.process.log_text()
                # And it still serves QEMU's start-up.
                qemu = await Frontend.open(path, retry_for=WAIT)
                try:
                    assert await qemu_start_up(qemu) == 1
                finally:
                    qemu.close()
                # Only the relaying thread is real-time: threads it starts are not.
                others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
                assert not any(is_realtime(tid) for tid in others)

    run(scenario, timeout=90)
