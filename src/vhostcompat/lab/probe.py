"""A one-shot vhost-user probe: ask a backend socket for its features.

Connect, send GET_FEATURES, read the reply, close. It tells when a backend
actually serves (testpmd's socket exists ~0.9 s before DPDK answers on it)
and what it offers, independently of QEMU's account of it.

Deliberately independent of :mod:`vhostcompat.vhostuser`: the lab referees
the project's own backend and proxy, so it does not share their code. The
wire format is the vhost-user specification's (QEMU docs/interop/
vhost-user.rst, "Message Specification"): a header of three u32 in host
byte order (request, flags, payload size); flags carry the version (1) in
bits 0-1 and the reply bit 2; the GET_FEATURES reply payload is one u64.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path

from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import LabTimeoutError, VhostProbeError

GET_FEATURES = 1
VERSION = 0x1
VERSION_MASK = 0x3
REPLY_FLAG = 0x4
_HEADER = struct.Struct("=III")
_U64 = struct.Struct("=Q")


async def get_features(path: Path, timeout: float) -> VirtioFeature:
    """The backend's GET_FEATURES answer, waiting at most ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await _ask(path)
    except TimeoutError:
        raise LabTimeoutError(f"{path} to answer GET_FEATURES", timeout) from None


async def _ask(path: Path) -> VirtioFeature:
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError as error:
        raise VhostProbeError(str(path), f"cannot connect: {error}") from None
    try:
        writer.write(_HEADER.pack(GET_FEATURES, VERSION, 0))
        await writer.drain()
        request, flags, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if (request != GET_FEATURES or flags & VERSION_MASK != VERSION
                or not flags & REPLY_FLAG or size != _U64.size):
            raise VhostProbeError(str(path), f"bad reply header: request {request},"
                                  f" flags {flags:#x}, size {size}")
        (features,) = _U64.unpack(await reader.readexactly(_U64.size))
        return VirtioFeature(features)
    except (asyncio.IncompleteReadError, ConnectionError) as error:
        raise VhostProbeError(str(path), f"connection ended early: {error!r}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            # The backend may have closed first; the socket is closed either way.
            await writer.wait_closed()
