"""The reference vhost-user net backend: advertises exactly what it is told.

Tests and demos use it to play an "old host" and a "new host": started with
a compatibility profile (or explicit features), it offers that and nothing
else, carries QEMU through device start and live migration, and refuses
what a frontend may not do (features never offered, rings beyond its
limit, bad memory tables), naming the feature or limit in one log line.

Modules:

* :mod:`~vhostcompat.backend.config`: :class:`BackendConfig`, the offer
  (``from_profile``, ``from_options``, ``warnings``);
* :mod:`~vhostcompat.backend.memory`: guest memory regions (mmap,
  bounds-checked translation) and the dirty log;
* :mod:`~vhostcompat.backend.virtqueue`: the TX sink over split rings;
* :mod:`~vhostcompat.backend.device`: :class:`NetDevice`, the request
  handlers behind one connection;
* :mod:`~vhostcompat.backend.server`: :func:`serve_backend`, one task per
  connection.

Use::

    config = BackendConfig.from_profile(catalog.get("upstream.ovs-dpdk.v2.7"))
    async with serve_backend(config, "/tmp/x/vhost.sock") as server:
        ...   # server.devices: live connections; server.closed: ended ones

or from a shell: ``vhostcompat -v backend --socket PATH --profile VERSION``.
"""

from vhostcompat.backend.config import BackendConfig
from vhostcompat.backend.device import DeviceRequestError, NetDevice, UnsupportedRequestError
from vhostcompat.backend.memory import DirtyLog, GuestMemory, GuestMemoryError
from vhostcompat.backend.server import BackendServer, ClosedConnection, serve_backend
from vhostcompat.backend.virtqueue import RingError, Virtqueue

__all__ = [
    "BackendConfig",
    "BackendServer",
    "ClosedConnection",
    "DeviceRequestError",
    "DirtyLog",
    "GuestMemory",
    "GuestMemoryError",
    "NetDevice",
    "RingError",
    "UnsupportedRequestError",
    "Virtqueue",
    "serve_backend",
]
