"""Tap devices for lab VMs: created by the lab, left down, deleted afterwards.

A QEMU ``-netdev tap`` needs a tap device; the lab makes its own with
``ip tuntap add dev NAME mode tap`` (persistent until deleted, so QEMU only
opens it), never brings it up and gives it no address: no packet leaves the
machine, and a guest's transmitted frames are simply dropped by the kernel.
Names are short (at most 15 bytes) and unique per process and call, so
parallel tests never meet each other's devices.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator

from vhostcompat.lab.errors import LabError
from vhostcompat.lab.process import bounded_output

IP = "ip"
IP_TIMEOUT = 10.0
_counter = itertools.count()


def unique_tap_name(prefix: str = "vct") -> str:
    """``vct<pid><n>``, at most 15 characters."""
    name = f"{prefix}{os.getpid() % 100000}x{next(_counter)}"
    if len(name) > 15:
        raise LabError(f"tap name {name!r} is longer than 15 bytes")
    return name


async def _ip(*args: str) -> None:
    try:
        status, out = await bounded_output([IP, *args], IP_TIMEOUT)
    except TimeoutError:
        raise LabError(f"ip {' '.join(args)}: no answer within {IP_TIMEOUT:g} s") from None
    except OSError as error:
        raise LabError(f"ip {' '.join(args)}: cannot run: {error.strerror}") from None
    if status != 0:
        raise LabError(f"ip {' '.join(args)}: exit {status}: {out.strip()}")


@contextlib.asynccontextmanager
async def tap_device(name: str | None = None) -> AsyncIterator[str]:
    """A tap device (down, no address) for the duration of the block; yields its name."""
    name = unique_tap_name() if name is None else name
    await _ip("tuntap", "add", "dev", name, "mode", "tap")
    try:
        yield name
    finally:
        await _ip("link", "delete", name)
