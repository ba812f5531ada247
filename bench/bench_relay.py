"""The relay's own cost per message, without QEMU: QEMU 7.2's messages replayed through it.

:class:`~vhostcompat.proxy.warm.ScriptedFrontend` plays QEMU 7.2's
vhost-user start-up for one queue pair, its device start (memory table,
rings) and the device stop of a migration (GET_VRING_BASE), over and over,
through a :class:`~vhostcompat.proxy.ProxyServer` to the reference
back-end, all in this process. Every relayed message's relay time (wall
clock and the proxy thread's CPU time, :mod:`vhostcompat.proxy.timings`)
is collected; p50 and p99 per request are printed.

Nothing else runs in the event loop while the relay handles a message, so
the figures are the relay's code path alone (decode, the mode's checks,
both sessions, encode, send); on a loaded machine the CPU column is the one
to read. Run the same command against two source trees (``PYTHONPATH``) to
compare them side by side.

    python -m bench.bench_relay [--connections 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Document, bench_parser, run_bench
from vhostcompat.backend import BackendConfig, serve_backend
from vhostcompat.errors import InputError
from vhostcompat.features import ProtocolFeature, VirtioFeature
from vhostcompat.profiles import CompatProfile
from vhostcompat.proxy import Endpoint, ProxyOptions, ProxyPolicy, ProxyServer, SocketRole
from vhostcompat.proxy.timings import RelayTimings, summarise
from vhostcompat.proxy.warm import ScriptedFrontend, guest_memory
from vhostcompat.transport import MessageConnection, connect
from vhostcompat.vhostuser import Channel, Role

F = VirtioFeature
P = ProtocolFeature
OFFER = (F.VIRTIO_F_VERSION_1 | F.VHOST_USER_F_PROTOCOL_FEATURES | F.VIRTIO_NET_F_MQ
         | F.VHOST_F_LOG_ALL)
PROTOCOL = P.MQ | P.REPLY_ACK | P.LOG_SHMFD | P.STATUS


async def measure(connections: int) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="vc-relay-"))
    config = BackendConfig.from_options(OFFER, PROTOCOL, queue_pairs=2)
    # A mode that withholds nothing: the relay's work, not the policy's refusals.
    profile = CompatProfile("bench.all", VirtioFeature(0xFFFF_FFFF_FFFF_FFFF),
                            protocol_features=ProtocolFeature(0xFFFF_FFFF))
    timings = RelayTimings(cpu=True)
    memory_fd = guest_memory()
    try:
        async with serve_backend(config, run_dir / "backend.sock"), ProxyServer(
                ProxyPolicy(profile), Endpoint(str(run_dir / "proxy.sock"), SocketRole.SERVER),
                Endpoint(str(run_dir / "backend.sock"), SocketRole.CLIENT),
                options=ProxyOptions(short_relay=0.0), timings=timings) as server:
            for _ in range(connections):
                connection = await connect(run_dir / "proxy.sock", name="bench-qemu")
                link = MessageConnection(connection, Channel.FRONTEND, Role.FRONTEND)
                try:
                    await ScriptedFrontend(link, memory_fd).start_up_and_stop()
                finally:
                    link.close()
                await server.wait_idle(10)
    finally:
        os.close(memory_fd)
        for path in run_dir.iterdir():
            path.unlink()
        run_dir.rmdir()
    samples = list(timings.samples)
    return {"benchmark": "vhostcompat relay: QEMU 7.2's messages replayed in-process",
            "connections": connections, "messages": len(samples),
            "relay_us": summarise(samples)}


def render(document: Document) -> str:
    lines = [f"relay time per message (us), {document['connections']} replayed QEMU start-ups "
             f"and stops, {document['messages']} messages",
             f"  {'request':<36}{'count':>7}{'p50':>9}{'p99':>9}{'cpu p50':>9}{'cpu p99':>9}"]
    for key, figures in document["relay_us"].items():
        lines.append(f"  {key:<36}{figures['count']:>7}{figures['p50_us']:>9.1f}"
                     f"{figures['p99_us']:>9.1f}{figures['cpu_p50_us']:>9.1f}"
                     f"{figures['cpu_p99_us']:>9.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("bench_relay", __doc__ or "")
    parser.add_argument("--connections", type=int, default=200,
                        help="replayed start-ups (default 200; 37 messages each)")
    args: argparse.Namespace = parser.parse_args(argv)

    def checked() -> Document:
        if args.connections < 1:
            raise InputError("--connections must be at least 1")
        return asyncio.run(measure(args.connections))

    return run_bench("bench_relay", checked, render, args.json)


if __name__ == "__main__":
    sys.exit(main())
