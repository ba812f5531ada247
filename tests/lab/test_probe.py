"""The GET_FEATURES probe against scripted backends."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from vhostcompat.features import VirtioFeature
from vhostcompat.lab.errors import LabTimeoutError, VhostProbeError
from vhostcompat.lab.probe import get_features

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OFFER = (VirtioFeature.VIRTIO_F_VERSION_1 | VirtioFeature.VHOST_F_LOG_ALL
         | VirtioFeature.VIRTIO_RING_F_INDIRECT_DESC)



def probe_against(handler: Handler, directory: Path, timeout: float = 5.0) -> VirtioFeature:
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readexactly(12))
        await handler(reader, writer)
        writer.close()

    async def scenario() -> VirtioFeature:
        path = directory / "backend.sock"
        server = await asyncio.start_unix_server(serve, path=str(path))
        async with server:
            return await get_features(path, timeout)

    features = asyncio.run(scenario())
    assert requests == [struct.pack("=III", 1, 1, 0)]
    return features


def reply(flags: int = 0x5, size: int = 8, request: int = 1, value: int = int(OFFER)) -> Handler:
    async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("=III", request, flags, size) + struct.pack("=Q", value))
        await writer.drain()

    return handler


def test_a_correct_reply_gives_the_features(short_dir: Path) -> None:
    assert probe_against(reply(), short_dir) == OFFER


@pytest.mark.parametrize("handler", [
    reply(flags=0x1),  # no reply bit
    reply(flags=0x6),  # version 2
    reply(request=2),  # answer to another request
    reply(size=4),
])
def test_a_malformed_reply_is_refused(short_dir: Path, handler: Handler) -> None:
    with pytest.raises(VhostProbeError):
        probe_against(handler, short_dir)


def test_a_backend_hanging_up_is_refused(short_dir: Path) -> None:
    async def hang_up(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        return

    with pytest.raises(VhostProbeError):
        probe_against(hang_up, short_dir)


def test_a_silent_backend_times_out(short_dir: Path) -> None:
    async def silent(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the probe gives up and closes

    with pytest.raises(LabTimeoutError):
        probe_against(silent, short_dir, timeout=0.2)


def test_no_socket_is_refused(short_dir: Path) -> None:
    with pytest.raises(VhostProbeError, match="cannot connect"):
        asyncio.run(get_features(short_dir / "missing.sock", 1))
