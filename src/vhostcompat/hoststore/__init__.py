"""Where a host's published data lives, behind one interface: :class:`HostStore`.

* :mod:`~vhostcompat.hoststore.model`: the keys (DESIGN.md's, in Open vSwitch
  database terms), :class:`HostRecord`, :class:`InterfaceRecord` (with OVS's
  own ``Interface status``), the :class:`HostStore` interface and the checks
  every value read goes through;
* :mod:`~vhostcompat.hoststore.embedded`: a directory with one JSON file
  shaped like the rows (no ovsdb-server needed);
* :mod:`~vhostcompat.hoststore.ovsdb`: the host's real OVSDB, conditional
  writes (a ``wait`` on what was read).

:func:`open_host` picks the store from the address: an OVSDB remote
(``unix:PATH``, ``tcp:IP:PORT``, comma-separated members) or a filesystem
path (the embedded store). A malformed remote is refused in one line.
"""

from vhostcompat.errors import InputError
from vhostcompat.hoststore.embedded import HOST_FILE, LOCK_FILE, EmbeddedHostStore
from vhostcompat.hoststore.model import (
    ACKED_FEATURES_KEY,
    ACKED_PROTOCOL_FEATURES_KEY,
    INTERFACE_VERSION_KEY,
    MACHINE_TYPE_KEY,
    NEGOTIATED_KEYS,
    NO_MODE,
    PROFILE_KEY_PREFIX,
    PROVISION_ID_KEY,
    QUEUE_PAIRS_KEY,
    RING_SIZE_KEY,
    STATUS_KEY,
    VERSIONS_KEY,
    HostRecord,
    HostStore,
    HostStoreAccessError,
    HostStoreConflictError,
    HostStoreCorruptError,
    HostStoreMissingError,
    InterfaceRecord,
    ModeState,
    ModeWrite,
    NotPublishedError,
    OvsStatus,
    UnsupportedHostError,
    apply_mode_write,
    check_interface_name,
    decode_negotiated,
    decode_profile,
    decode_versions,
    encode_negotiated,
    encode_profile,
    encode_versions,
    record_from_rows,
)
from vhostcompat.hoststore.ovsdb import OvsdbHostStore
from vhostcompat.ovsdb.remotes import looks_like_remote


def open_host(address: str, *, hold: bool = False) -> HostStore:
    """The store for an address: an OVSDB remote list, else a directory path.

    ``hold``: an OVSDB store keeps a read's connection for the writes that follow
    (see :class:`OvsdbHostStore`); the embedded store has none to keep.
    """
    if not address or not address.strip():
        raise InputError("empty host address")
    if looks_like_remote(address):
        return OvsdbHostStore(address, hold=hold)
    return EmbeddedHostStore(address)


__all__ = [
    "ACKED_FEATURES_KEY",
    "ACKED_PROTOCOL_FEATURES_KEY",
    "HOST_FILE",
    "INTERFACE_VERSION_KEY",
    "LOCK_FILE",
    "MACHINE_TYPE_KEY",
    "NEGOTIATED_KEYS",
    "NO_MODE",
    "PROFILE_KEY_PREFIX",
    "PROVISION_ID_KEY",
    "QUEUE_PAIRS_KEY",
    "RING_SIZE_KEY",
    "STATUS_KEY",
    "VERSIONS_KEY",
    "EmbeddedHostStore",
    "HostRecord",
    "HostStore",
    "HostStoreAccessError",
    "HostStoreConflictError",
    "HostStoreCorruptError",
    "HostStoreMissingError",
    "InterfaceRecord",
    "ModeState",
    "ModeWrite",
    "NotPublishedError",
    "OvsStatus",
    "OvsdbHostStore",
    "UnsupportedHostError",
    "apply_mode_write",
    "check_interface_name",
    "decode_negotiated",
    "decode_profile",
    "decode_versions",
    "encode_negotiated",
    "encode_profile",
    "encode_versions",
    "open_host",
    "record_from_rows",
]
