"""What the proxy itself costs: the relay time of every message, in a bounded ring.

For each message the proxy relays, two ``time.monotonic_ns()`` stamps: when
it was there to handle (the bytes that completed it came off the socket, or,
when QEMU sent a burst that arrived in one ``recvmsg``, when the proxy was
done with the messages before it), and when the forwarded bytes were handed
to the other socket (``sendmsg`` returned). Their difference is what the
proxy spends on that message: decoding, the mode's checks, both sessions'
rules, re-encoding, sending. Stamping a burst's later messages at the
chunk's arrival instead would count the earlier messages' time again in
each (a burst of ten 50 us messages would sum to 2.75 ms for 0.5 ms of
work), which is wrong for the sum over a migration's stop.

Why this shape: the stamps are always taken, because they are cheap (two
clock reads and one tuple appended to a ``deque`` with a ``maxlen``, about
0.3 us against a relay time of tens of microseconds) and a measurement that
must be switched on is never there when a slow migration needs explaining.
Nothing is computed while relaying: percentiles and the JSON document are
made only when asked (``vhostcompat proxy --stats-file``, written when the
proxy exits), so the relay's own timing is not disturbed by its report.
The ring keeps the latest :data:`MAX_SAMPLES` messages: memory is bounded
whatever a long-lived proxy sees.

The stats file::

    {"pid": 1234, "realtime_offset_ns": N,     # add to a stamp: CLOCK_REALTIME ns
     "samples": [["GET_FEATURES", "request", received_ns, forwarded_ns, cpu_ns,
                  arrived_ns], ...],
     "summary": {"GET_FEATURES request": {"count": 2, "p50_us": 31.0, "p99_us": 40.2,
                                          "mean_us": 33.1, "cpu_p50_us": 25.2, ...}, ...}}
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from vhostcompat.files import write_atomically

MAX_SAMPLES = 8192
REQUEST, REPLY = "request", "reply"


class Timing(NamedTuple):
    """One relayed message: what it was, its stamps (monotonic ns), and the proxy's
    CPU time over its relay (ns; 0 when not measured).

    ``arrived_ns`` is when its bytes came in; ``received_ns`` when the relay
    was free for it (later than arrival for a message behind others of one
    burst): relay time counts from ``received_ns``, the latency QEMU sees
    from ``arrived_ns``.
    """

    request: str
    direction: str  # REQUEST (front-end to back-end) or REPLY (back-end to front-end)
    received_ns: int
    forwarded_ns: int
    cpu_ns: int = 0
    arrived_ns: int = 0

    @property
    def latency_us(self) -> float:
        return (self.forwarded_ns - (self.arrived_ns or self.received_ns)) / 1000

    @property
    def relay_us(self) -> float:
        return (self.forwarded_ns - self.received_ns) / 1000

    @property
    def cpu_us(self) -> float:
        return self.cpu_ns / 1000


class RelayTimings:
    """The latest relayed messages' stamps (shared by every relay of one proxy).

    With ``cpu=True`` each message also gets the proxy thread's CPU time
    over its relay (``time.thread_time_ns``, a system call: about 1 us a
    message, so only when asked, as ``--stats-file`` does): unlike the
    wall-clock relay time, it does not grow when QEMU's TCG threads take the
    CPU from the proxy in the middle of a message.
    """

    def __init__(self, maxlen: int = MAX_SAMPLES, *, cpu: bool = False) -> None:
        self.samples: deque[Timing] = deque(maxlen=maxlen)
        self.cpu_clock: Callable[[], int] | None = time.thread_time_ns if cpu else None

    def add(self, timing: Timing) -> None:
        self.samples.append(timing)

    def summary(self) -> dict[str, dict[str, float]]:
        return summarise(self.samples)

    def to_json(self) -> dict[str, object]:
        return {"pid": os.getpid(),
                "realtime_offset_ns": time.time_ns() - time.monotonic_ns(),
                "samples": [list(sample) for sample in self.samples],
                "summary": self.summary()}

    def write(self, path: str | os.PathLike[str]) -> None:
        write_atomically(path, (json.dumps(self.to_json()) + "\n").encode())


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (linear between the closest ranks)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(samples: Iterable[Timing]) -> dict[str, dict[str, float]]:
    """count, p50, p99 and mean of the relay time (us) per ``"REQUEST direction"`` and
    ``all``; the same of the CPU time (``cpu_p50_us``...) where it was measured."""
    groups: dict[str, list[Timing]] = {}
    for sample in samples:
        groups.setdefault(f"{sample.request} {sample.direction}", []).append(sample)
        groups.setdefault("all", []).append(sample)
    summary: dict[str, dict[str, float]] = {}
    for key, members in sorted(groups.items()):
        figures = _figures([sample.relay_us for sample in members], "")
        if all(sample.cpu_ns for sample in members):
            figures.update(_figures([sample.cpu_us for sample in members], "cpu_"))
        summary[key] = {"count": len(members), **figures}
    return summary


def _figures(values: Sequence[float], prefix: str) -> dict[str, float]:
    return {f"{prefix}p50_us": round(percentile(values, 0.5), 1),
            f"{prefix}p99_us": round(percentile(values, 0.99), 1),
            f"{prefix}mean_us": round(statistics.fmean(values), 1)}


def timings_from_json(document: Mapping[str, object]) -> tuple[list[Timing], int]:
    """The samples of a stats file and its realtime offset (ns), for a benchmark."""
    raw = document.get("samples")
    offset = document.get("realtime_offset_ns")
    if not isinstance(raw, list) or not isinstance(offset, int):
        raise ValueError("not a proxy stats document")
    return [Timing(str(item[0]), str(item[1]), int(item[2]), int(item[3]),
                   int(item[4]) if len(item) > 4 else 0,
                   int(item[5]) if len(item) > 5 else 0) for item in raw], offset
