"""The enforcement proxy: a compatibility mode in front of any vhost-user back-end.

Real back-ends (OVS-DPDK, DPDK's vhost library) cannot be changed from here,
so the mode is enforced on the control channel between the front-end (QEMU)
and an unmodified back-end. The data path (guest memory, kick and call
eventfds) never crosses the proxy: fds are passed through, so the proxy costs
nothing per packet.

* :mod:`~vhostcompat.proxy.policy` (pure): :class:`ProxyPolicy` says what to
  offer (backend ∩ profile), what to refuse (:class:`Refusal`) and what to
  record (:func:`negotiated_from`);
* :mod:`~vhostcompat.proxy.relay`: :class:`Relay`, one front-end connection
  relayed to one back-end connection (asyncio), with the back-end channel;
* :mod:`~vhostcompat.proxy.server`: :class:`ProxyServer`, the socket roles
  (:class:`Endpoint`) and restarts of both sides;
* :mod:`~vhostcompat.proxy.status`: :class:`StatusBoard` and the status
  file / host store reports.

Use::

    policy = ProxyPolicy(catalog.get("debian12.dpdk-vhost.v22.11"))
    board = StatusBoard(policy.version, sinks=[StatusFile("/run/vhu0.json")])
    board.start()
    async with ProxyServer(policy, Endpoint.parse("/run/vhu0.sock", SocketRole.SERVER),
                           Endpoint.parse("/run/dpdk/vhu0", SocketRole.CLIENT),
                           board=board):
        await stopped.wait()
    await board.close()
"""

from vhostcompat.proxy.policy import (
    RELAYABLE_PROTOCOL_FEATURES,
    Negotiated,
    Offer,
    ProxyPolicy,
    Refusal,
    negotiated_from,
)
from vhostcompat.proxy.relay import REPLY_TIMEOUT, Relay, RelayOutcome, RelayResult
from vhostcompat.proxy.server import Endpoint, ProxyOptions, ProxyServer, SocketRole
from vhostcompat.proxy.status import (
    HostStoreSink,
    ProxyState,
    ProxyStatus,
    StatusBoard,
    StatusFile,
    StatusFileError,
    read_status_file,
)

__all__ = [
    "RELAYABLE_PROTOCOL_FEATURES",
    "REPLY_TIMEOUT",
    "Endpoint",
    "HostStoreSink",
    "Negotiated",
    "Offer",
    "ProxyOptions",
    "ProxyPolicy",
    "ProxyServer",
    "ProxyState",
    "ProxyStatus",
    "Refusal",
    "Relay",
    "RelayOutcome",
    "RelayResult",
    "SocketRole",
    "StatusBoard",
    "StatusFile",
    "StatusFileError",
    "negotiated_from",
    "read_status_file",
]
