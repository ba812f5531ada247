"""What the proxy itself costs: the relay time of every message, in a bounded ring.

For each message the proxy relays, two ``time.monotonic_ns()`` stamps: when
the bytes that completed it came off the socket (``recvmsg`` returned), and
when the forwarded bytes were handed to the other socket (``sendmsg``
returned). Their difference is everything the proxy adds to that message:
decoding, the mode's checks, both sessions' rules, re-encoding, and any
wait behind the message before it.

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
     "samples": [["GET_FEATURES", "request", received_ns, forwarded_ns], ...],
     "summary": {"GET_FEATURES request": {"count": 2, "p50_us": 31.0, "p99_us": 40.2}, ...}}
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from vhostcompat.files import write_atomically

MAX_SAMPLES = 8192
REQUEST, REPLY = "request", "reply"


class Timing(NamedTuple):
    """One relayed message: what it was, and its two stamps (monotonic ns)."""

    request: str
    direction: str  # REQUEST (front-end to back-end) or REPLY (back-end to front-end)
    received_ns: int
    forwarded_ns: int

    @property
    def relay_us(self) -> float:
        return (self.forwarded_ns - self.received_ns) / 1000


class RelayTimings:
    """The latest relayed messages' stamps (shared by every relay of one proxy)."""

    def __init__(self, maxlen: int = MAX_SAMPLES) -> None:
        self.samples: deque[Timing] = deque(maxlen=maxlen)

    def add(self, request: str, direction: str, received_ns: int, forwarded_ns: int) -> None:
        self.samples.append(Timing(request, direction, received_ns, forwarded_ns))

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
    """count, p50 and p99 of the relay time (us) per ``"REQUEST direction"``, and ``all``."""
    groups: dict[str, list[float]] = {}
    for sample in samples:
        groups.setdefault(f"{sample.request} {sample.direction}", []).append(sample.relay_us)
        groups.setdefault("all", []).append(sample.relay_us)
    return {key: {"count": len(values), "p50_us": round(percentile(values, 0.5), 1),
                  "p99_us": round(percentile(values, 0.99), 1),
                  "mean_us": round(statistics.fmean(values), 1)}
            for key, values in sorted(groups.items())}


def timings_from_json(document: Mapping[str, object]) -> tuple[list[Timing], int]:
    """The samples of a stats file and its realtime offset (ns), for a benchmark."""
    raw = document.get("samples")
    offset = document.get("realtime_offset_ns")
    if not isinstance(raw, list) or not isinstance(offset, int):
        raise ValueError("not a proxy stats document")
    return [Timing(str(item[0]), str(item[1]), int(item[2]), int(item[3])) for item in raw], \
        offset
