"""Real-time scheduling for the thread that relays vhost-user messages, with a CPU guard.

Why: what a proxy adds to a migration's downtime is mostly time it spends
*waiting to run*, not running. Under the default policy (``SCHED_OTHER``)
the wake-up of a back-end thread the proxy has just written to (DPDK's
``vhost-events``, OVS's ``ovs_vhost``) preempts the proxy on its own CPU,
and QEMU's busy threads hold it runnable behind them; both showed up as
milliseconds at SET_MEM_TABLE and GET_VRING_BASE (README, "Direct vs through
the proxy"). A ``SCHED_FIFO`` thread is never preempted by a normal one and
runs as soon as its message is there: it relays, then blocks again.

The risk of ``SCHED_FIFO`` is a peer that makes the relay busy: a front-end
flooding it with messages would hold a CPU against every normal task there
(the kernel's RT throttling still leaves them 5 %). :class:`CpuGuard`
bounds that: it measures the relay thread's CPU time over short windows and,
when a window's share exceeds its budget (far above what QEMU's bursts
need: a device start is a few milliseconds of CPU), drops the thread back
to ``SCHED_OTHER`` for a cool-down and says so; it then tries real time
again. A flood therefore gets at most one window's budget at real-time
priority per cool-down.

Only the calling thread is changed (``sched_setscheduler(0, ...)`` acts on
a thread), with ``SCHED_RESET_ON_FORK``: threads and processes it starts
later run normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator

from vhostcompat.errors import HostError

# Under the proxy's logger: its daemon log says what it decides (INFO).
_log = logging.getLogger("vhostcompat.proxy.realtime")

MIN_PRIORITY, MAX_PRIORITY = 1, 99
GUARD_WINDOW = 0.1
GUARD_BUDGET = 0.2
GUARD_COOLDOWN = 2.0


def check_priority(priority: int) -> int:
    """``priority`` if it is a ``SCHED_FIFO`` priority, else ValueError (pure)."""
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"a SCHED_FIFO priority is {MIN_PRIORITY} to {MAX_PRIORITY}, "
                         f"not {priority}")
    return priority


def enter_realtime(priority: int) -> None:
    """Run the calling thread ``SCHED_FIFO`` at ``priority``; HostError when not allowed."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(check_priority(priority)))
    except PermissionError:
        raise HostError(f"cannot run SCHED_FIFO at priority {priority}: not permitted "
                        "(it needs CAP_SYS_NICE, e.g. root, or an RLIMIT_RTPRIO of at least "
                        f"{priority}: LimitRTPRIO= in a systemd unit)") from None
    except OSError as error:
        raise HostError(f"cannot run SCHED_FIFO at priority {priority}: "
                        f"{error.strerror or error}") from None


def leave_realtime() -> None:
    """Run the calling thread under the normal policy again."""
    os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))


def is_realtime(tid: int = 0) -> bool:
    """Whether thread ``tid`` (0: the calling one) runs ``SCHED_FIFO``."""
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    """The guard's window (s), the share of one CPU the window may use at real-time
    priority, and how long the thread then runs normally (s)."""

    window: float = GUARD_WINDOW
    budget: float = GUARD_BUDGET
    cooldown: float = GUARD_COOLDOWN

    def __post_init__(self) -> None:
        if not (self.window > 0 and 0 < self.budget <= 1 and self.cooldown >= self.window):
            raise ValueError(f"bad real-time guard settings: {self}")


class GuardState:
    """The guard's decisions, without clocks or system calls (pure, for tests).

    :meth:`tick` is given the thread's CPU time and the monotonic time (s) at
    the end of each window and says what to do: ``"demote"``, ``"promote"``
    or ``None``. The share is CPU over the wall time really elapsed (a late
    timer does not inflate it).
    """

    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.realtime = True
        self.demotions = 0
        self.last_share = 0.0
        self._last: tuple[float, float] | None = None
        self._demoted_at = 0.0

    def tick(self, cpu: float, now: float) -> str | None:
        last, self._last = self._last, (cpu, now)
        if last is None or now <= last[1]:
            return None
        self.last_share = (cpu - last[0]) / (now - last[1])
        if self.realtime:
            if self.last_share > self.settings.budget:
                self.realtime = False
                self.demotions += 1
                self._demoted_at = now
                return "demote"
            return None
        if now - self._demoted_at >= self.settings.cooldown:
            self.realtime = True
            return "promote"
        return None


class CpuGuard:
    """Keeps the event loop's thread ``SCHED_FIFO`` while it stays within its budget.

    Started on the loop's thread (:meth:`start`, after :func:`enter_realtime`);
    its timer runs there, where the policy is changed.
    """

    def __init__(self, priority: int, settings: GuardSettings | None = None, *,
                 cpu_clock: Callable[[], float] = time.thread_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.priority = check_priority(priority)
        self.state = GuardState(settings or GuardSettings())
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.state.tick(self._cpu_clock(), self._clock())
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.state.settings.window,
                                                            self._check)

    def _check(self) -> None:
        match self.state.tick(self._cpu_clock(), self._clock()):
            case "demote":
                leave_realtime()
                settings = self.state.settings
                _log.warning("used %.0f %% of a CPU at real-time priority over the last "
                             "%g s (budget %.0f %%): normal scheduling for %g s",
                             100 * self.state.last_share, settings.window,
                             100 * settings.budget, settings.cooldown)
            case "promote":
                try:
                    enter_realtime(self.priority)
                except HostError as error:
                    # Allowed at start, not now (the limit was lowered): say so, stay normal.
                    self.state.realtime = False
                    self._timer = None
                    _log.error("%s; staying under normal scheduling", error)
                    return
                _log.info("back to SCHED_FIFO priority %d", self.priority)
        self._schedule()


@contextlib.contextmanager
def realtime_scheduling(priority: int | None,
                        settings: GuardSettings | None = None) -> Iterator[CpuGuard | None]:
    """The calling thread (an event loop's, running) ``SCHED_FIFO`` at ``priority`` under
    a :class:`CpuGuard` until the block ends; nothing when ``priority`` is None."""
    if priority is None:
        yield None
        return
    enter_realtime(priority)
    guard = CpuGuard(priority, settings)
    guard.start()
    _log.info("relaying at SCHED_FIFO priority %d (CPU guard: %.0f %% of a CPU over %g s)",
              priority, 100 * guard.state.settings.budget, guard.state.settings.window)
    try:
        yield guard
    finally:
        guard.stop()
        leave_realtime()
