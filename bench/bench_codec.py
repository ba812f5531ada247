"""Benchmark of the vhost-user codec: messages encoded and decoded per second.

Run from the repository root::

    .venv/bin/python -m bench.bench_codec            # human-readable figures
    .venv/bin/python -m bench.bench_codec --json     # one JSON document
    .venv/bin/python -m bench.bench_codec --seconds 3

The mix is what QEMU sends to a net back-end when it starts and when the
guest driver starts the device (features, memory table with its fd, ring
setup with kick/call fds). Decoding is measured two ways: one ``feed`` per
message with its fds, as ``recvmsg`` delivers them from QEMU, and one large
``feed`` of fd-free messages, as a busy stream delivers them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

from vhostcompat.vhostuser import (
    U64,
    Channel,
    Decoder,
    FrontendRequest,
    HeaderFlags,
    MemoryRegion,
    MemoryTable,
    Message,
    Role,
    VringAddress,
    VringAddressFlags,
    VringFile,
    VringState,
    encode,
)

F = FrontendRequest


def message_mix(fd: int) -> list[Message]:
    """QEMU's start-up and device start for one queue pair, fds all being ``fd``."""
    need_reply = HeaderFlags.VERSION_1 | HeaderFlags.NEED_REPLY
    mix = [
        Message(F.GET_FEATURES),
        Message(F.GET_PROTOCOL_FEATURES),
        Message(F.SET_PROTOCOL_FEATURES, U64(0x10CB7)),
        Message(F.GET_QUEUE_NUM),
        Message(F.SET_OWNER),
        Message(F.SET_FEATURES, U64(0x1_4000_8000)),
        Message(F.SET_MEM_TABLE, MemoryTable((MemoryRegion(0, 1 << 30, 0x7F00_0000_0000, 0),)),
                need_reply, (fd,)),
    ]
    for ring in (0, 1):
        base = 0x7F00_0000_0000 + ring * 0x10000
        mix += [
            Message(F.SET_VRING_NUM, VringState(ring, 256)),
            Message(F.SET_VRING_BASE, VringState(ring, 0)),
            Message(F.SET_VRING_ADDR, VringAddress(ring, VringAddressFlags(0), base,
                                                   base + 0x2000, base + 0x1000, 0)),
            Message(F.SET_VRING_KICK, VringFile(ring), fds=(fd,)),
            Message(F.SET_VRING_CALL, VringFile(ring), fds=(fd,)),
            Message(F.SET_VRING_ENABLE, VringState(ring, 1)),
        ]
    return mix


def rate(run_once: Callable[[], int], seconds: float) -> float:
    """Messages per second of ``run_once`` (returns its message count), over ``seconds``."""
    count = 0
    started = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        count += run_once()
        elapsed = time.perf_counter() - started
    return count / elapsed


def measure(seconds: float) -> dict[str, float]:
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mix = message_mix(fd)
        encoded = [encode(message) for message in mix]
        fd_free = [data for data, fds in encoded if not fds] * 64
        stream = b"".join(fd_free)

        def encode_all() -> int:
            for message in mix:
                encode(message)
            return len(mix)

        def decode_per_recvmsg() -> int:
            decoder = Decoder(Channel.FRONTEND, sender=Role.FRONTEND)
            count = 0
            for data, fds in encoded:
                decoder.feed(data, fds)
                while decoder.next_message() is not None:
                    count += 1
            return count

        def decode_stream() -> int:
            decoder = Decoder(Channel.FRONTEND, sender=Role.FRONTEND)
            decoder.feed(stream)
            return sum(1 for _ in decoder)

        return {
            "encode_messages_per_second": rate(encode_all, seconds),
            "decode_messages_per_second": rate(decode_per_recvmsg, seconds),
            "decode_stream_messages_per_second": rate(decode_stream, seconds),
        }
    finally:
        # Valid messages never make the decoder close fds: only this one to close.
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="time spent on each measurement (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    figures = measure(args.seconds)
    if args.json:
        document = {"python": platform.python_version(), "machine": platform.machine(),
                    **{name: round(value) for name, value in figures.items()}}
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        for name, value in figures.items():
            print(f"{name.replace('_', ' '):40} {value:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
