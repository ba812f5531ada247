"""Running a verb from synchronous code, on the event loop the CLI uses.

A fleet query is hundreds of short connections, each a few callbacks and
timers: with asyncio's own loop (pure Python) the loop's bookkeeping was the
largest single share of ``provision``'s CPU over 200 hosts. uvloop runs the
same coroutines with that part in C (``bench.bench_manager`` measures both,
side by side). The verbs themselves run on any asyncio loop: an orchestrator that has
its own keeps it and awaits them there.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a new uvloop event loop: the verb's result, or its exception."""
    import uvloop  # noqa: PLC0415  (here: importing the library does not load it, 7 ms)

    return uvloop.run(coroutine)
