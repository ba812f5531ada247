"""A host's published data, whatever store holds it: keys, records, the HostStore interface.

What a host publishes and records, in Open vSwitch database terms (DESIGN.md):

==============================================  ========================================
``Open_vSwitch . external_ids``
  ``vhost-compat-versions``                      supported versions, comma separated,
                                                 newest first
  ``vhost-compat-profile-<version>``             that version's profile, compact JSON
                                                 (self-describing, see profiles.model)
``Interface <name> options``
  ``vhost-compat-version``                       the compatibility mode chosen for it
  ``vhost-compat-provision-id``                  the provisioning run that wrote it
                                                 (what the next run's write waits on)
``Interface <name> external_ids`` (agent)
  ``vhost-compat-acked-features``                virtio features the guest acked (hex)
  ``vhost-compat-acked-protocol-features``       protocol features negotiated (hex)
  ``vhost-compat-queue-pairs``                   queue pairs in use
  ``vhost-compat-ring-size``                     largest ring size in use
  ``vhost-compat-status``                        free text status from the agent
  ``vhost-compat-machine-type``                  the VM's QEMU machine type (pc-q35-7.2)
``Interface <name> status`` (written by OVS)
  ``features``, ``num_of_vrings``,               what OVS-DPDK itself negotiated
  ``vring_<N>_size``                             (read only, see :class:`OvsStatus`)
==============================================  ========================================

Every store hands its rows to :func:`record_from_rows`, which checks every
value (they come from a file or a database anyone may have written) and
builds one :class:`HostRecord`. A value that does not parse is a
:class:`HostStoreCorruptError` naming the key, never a traceback.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from vhostcompat.errors import HostError, InputError
from vhostcompat.features import MASK64, ProtocolFeature, VirtioFeature
from vhostcompat.profiles.model import (
    VERSION_PATTERN,
    CompatProfile,
    NegotiatedState,
    profile_from_mapping,
    profile_to_mapping,
)

# Keys, exactly as DESIGN.md names them.
VERSIONS_KEY = "vhost-compat-versions"
PROFILE_KEY_PREFIX = "vhost-compat-profile-"
INTERFACE_VERSION_KEY = "vhost-compat-version"
PROVISION_ID_KEY = "vhost-compat-provision-id"
ACKED_FEATURES_KEY = "vhost-compat-acked-features"
ACKED_PROTOCOL_FEATURES_KEY = "vhost-compat-acked-protocol-features"
QUEUE_PAIRS_KEY = "vhost-compat-queue-pairs"
RING_SIZE_KEY = "vhost-compat-ring-size"
STATUS_KEY = "vhost-compat-status"
MACHINE_TYPE_KEY = "vhost-compat-machine-type"
NEGOTIATED_KEYS = (ACKED_FEATURES_KEY, ACKED_PROTOCOL_FEATURES_KEY, QUEUE_PAIRS_KEY,
                   RING_SIZE_KEY, STATUS_KEY, MACHINE_TYPE_KEY)

OVS_FEATURES_KEY = "features"
OVS_VRINGS_KEY = "num_of_vrings"
MAX_INTERFACE_NAME = 255
MAX_COUNT_DIGITS = 10


class HostStoreMissingError(HostError):
    """No store at that address (never published)."""

    def __init__(self, address: str, detail: str = "no such host store") -> None:
        self.address = address
        super().__init__(f"host {address}: {detail} (run `vhostcompat publish` first)")


class HostStoreCorruptError(HostError):
    """The store exists but its content cannot be read; names what is wrong."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        self.detail = detail
        super().__init__(f"host {address}: corrupt store: {detail}")


class HostStoreAccessError(HostError):
    """An operating-system error reading or writing a store, or a lock timeout."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        self.detail = detail
        super().__init__(f"host {address}: {detail}")


class UnsupportedHostError(HostError):
    """An address naming a kind of store this version cannot reach."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        super().__init__(f"host {address}: {detail}")


class HostStoreConflictError(HostError):
    """A conditional write lost a race: what it read changed meanwhile; nothing written."""

    def __init__(self, address: str, what: str) -> None:
        self.address = address
        super().__init__(f"host {address}: conflict: {what} changed while this write was "
                         "prepared (another writer); nothing written, try again")


class NotPublishedError(InputError):
    """A request for a version the host does not publish, or a missing interface."""

    def __init__(self, address: str, message: str) -> None:
        self.address = address
        super().__init__(f"host {address}: {message}")


@dataclass(frozen=True)
class OvsStatus:
    """What OVS-DPDK wrote in the Interface's ``status`` column (absent keys: None)."""

    features: int | None = None  # the virtio features the guest acked, as OVS saw them
    vrings: int | None = None    # num_of_vrings (two per queue pair)
    ring_size: int | None = None  # the largest vring_N_size

    @property
    def queue_pairs(self) -> int | None:
        return None if self.vrings is None else max(1, self.vrings // 2)

    def is_empty(self) -> bool:
        return self.features is None and self.vrings is None and self.ring_size is None


@dataclass(frozen=True)
class InterfaceRecord:
    """One vhost-user interface as a host records it (and as OVS reports it)."""

    name: str
    version: str | None
    negotiated: NegotiatedState = field(default_factory=NegotiatedState)
    ovs_status: OvsStatus = field(default_factory=OvsStatus)
    provision_id: str | None = None
    """The provisioning run that last wrote the mode (``options:vhost-compat-provision-id``)."""

    @property
    def mode_state(self) -> ModeState:
        return ModeState(self.version, self.provision_id)

    def disagreements(self) -> tuple[str, ...]:
        """Where OVS's own status and what the proxy recorded differ, one line each."""
        recorded, ovs = self.negotiated, self.ovs_status
        lines = []
        if (recorded.acked_features is not None and ovs.features is not None
                and int(recorded.acked_features) != ovs.features):
            lines.append(f"OVS status features={ovs.features:#x} but the proxy recorded "
                         f"acked features {int(recorded.acked_features):#x}")
        if (recorded.queue_pairs is not None and ovs.queue_pairs is not None
                and recorded.queue_pairs != ovs.queue_pairs):
            lines.append(f"OVS status num_of_vrings={ovs.vrings} ({ovs.queue_pairs} queue "
                         f"pairs) but the proxy recorded {recorded.queue_pairs}")
        if (recorded.ring_size is not None and ovs.ring_size is not None
                and recorded.ring_size != ovs.ring_size):
            lines.append(f"OVS status ring size {ovs.ring_size} but the proxy recorded "
                         f"{recorded.ring_size}")
        return tuple(lines)

    def effective_negotiated(self) -> NegotiatedState:
        """What a migration check must honour: both sources, the larger demand of each.

        Never a false "compatible": when OVS and the proxy disagree, every
        feature either saw acked and the larger of each limit in use count.
        """
        recorded, ovs = self.negotiated, self.ovs_status
        if ovs.is_empty():
            return recorded
        features = recorded.acked_features
        if ovs.features is not None:
            features = VirtioFeature((int(features) if features is not None else 0)
                                     | ovs.features)
        # Everything else (protocol features, machine type, status) as recorded.
        return dataclasses.replace(
            recorded, acked_features=features,
            queue_pairs=_larger(recorded.queue_pairs, ovs.queue_pairs),
            ring_size=_larger(recorded.ring_size, ovs.ring_size))


def _larger(first: int | None, second: int | None) -> int | None:
    present = [value for value in (first, second) if value is not None]
    return max(present) if present else None


@dataclass(frozen=True)
class HostRecord:
    """One consistent read of everything a host publishes."""

    address: str
    versions: tuple[str, ...]
    profiles: Mapping[str, CompatProfile]
    interfaces: Mapping[str, InterfaceRecord]
    basis: object = field(default=None, compare=False, repr=False)
    """What the store read this record from, kept for its own conditional writes
    (opaque, store-specific; ``None``: a write reads again)."""

    def profile(self, version: str) -> CompatProfile | None:
        return self.profiles.get(version)

    def interface(self, name: str) -> InterfaceRecord:
        found = self.interfaces.get(name)
        if found is None:
            known = ", ".join(sorted(self.interfaces)) or "none"
            raise NotPublishedError(self.address,
                                    f"no interface {name!r} (interfaces: {known})")
        return found


@dataclass(frozen=True)
class ModeState:
    """An interface's provisioning state on a host: its mode and the run that wrote it."""

    mode: str | None
    provision_id: str | None = None

    def describe(self) -> str:
        return self.mode or "no mode"


NO_MODE = ModeState(None)


@dataclass(frozen=True)
class ModeWrite:
    """A conditional write of an interface's mode: from ``expected`` to ``wanted``, or nothing.

    ``publish`` (with ``expected_versions``, the versions as read) also
    replaces the host's published profiles in the same transaction (a host
    that supports a version by content publishes it before it is assigned;
    a restore puts the old list back). ``require_published``: the wanted mode
    must be among the published versions (a restore of what was there before
    does not insist).
    """

    interface: str
    expected: ModeState
    wanted: ModeState
    expected_versions: tuple[str, ...] | None = None
    publish: tuple[CompatProfile, ...] | None = None
    require_published: bool = True
    basis: object = field(default=None, compare=False, repr=False)
    """The :attr:`HostRecord.basis` this write was planned from: a store that
    recognises its own may commit waiting on it, without reading again."""

    def inverse(self, versions_written: tuple[str, ...] | None,
                profiles_before: tuple[CompatProfile, ...] | None) -> ModeWrite:
        """The restore of this write, itself conditional on what this write left."""
        return ModeWrite(self.interface, self.wanted, self.expected,
                         versions_written if self.publish is not None else None,
                         profiles_before if self.publish is not None else None,
                         require_published=False)


def apply_mode_write(address: str, change: ModeWrite, external_ids: Mapping[str, str],
                     options: Mapping[str, str]) -> tuple[dict[str, str] | None, dict[str, str]]:
    """The new Open_vSwitch external_ids (None: unchanged) and Interface options.

    Raises :class:`HostStoreConflictError` (naming host and interface) when
    the row no longer holds what the write expects: nothing is written.
    """
    current = ModeState(options.get(INTERFACE_VERSION_KEY), options.get(PROVISION_ID_KEY))
    if current != change.expected:
        raise HostStoreConflictError(
            address, f"interface {change.interface}'s mode ({change.expected.describe()} "
            f"when read, {current.describe()} now)")
    updated_ids: dict[str, str] | None = None
    if change.publish is not None:
        versions = tuple(decode_versions(address, external_ids.get(VERSIONS_KEY, "")))
        if versions != change.expected_versions:
            raise HostStoreConflictError(address, "the published versions")
        updated_ids = published_external_ids(external_ids, change.publish)
    if change.wanted.mode is not None and change.require_published:
        require_published(address, updated_ids or external_ids, change.wanted.mode)
    updated = {key: value for key, value in options.items()
               if key not in (INTERFACE_VERSION_KEY, PROVISION_ID_KEY)}
    if change.wanted.mode is not None:
        updated[INTERFACE_VERSION_KEY] = change.wanted.mode
    if change.wanted.provision_id is not None:
        updated[PROVISION_ID_KEY] = change.wanted.provision_id
    return updated_ids, updated


class HostStore(abc.ABC):
    """A host's published data. Use as ``async with open_host(address) as store``."""

    def __init__(self, address: str) -> None:
        self.address = address

    @abc.abstractmethod
    async def read(self, *, interfaces: bool | tuple[str, ...] = True) -> HostRecord:
        """Everything the host publishes; :class:`HostError` if missing or unreadable.

        ``interfaces=False``: its published versions and profiles only, no
        interface records (what ``versions`` and ``select`` need: an OVSDB
        host then answers one ``select`` instead of two). A tuple of names:
        only those interfaces' records (those that exist; what ``provision``
        needs of a host with many ports)."""

    @abc.abstractmethod
    async def publish(self, profiles: Sequence[CompatProfile]) -> HostRecord:
        """Replace the published versions (in this order) and their profiles.

        Creates the store if needed; interfaces are kept.
        """

    @abc.abstractmethod
    async def assign(self, interface: str, version: str) -> None:
        """Set an interface's compatibility mode; the host must publish ``version``."""

    @abc.abstractmethod
    async def write_mode(self, change: ModeWrite) -> None:
        """One conditional write (:class:`ModeWrite`), atomic: all of it or nothing.

        :class:`HostStoreConflictError` when the interface (or the published
        versions) no longer hold what ``change`` expects.
        """

    @abc.abstractmethod
    async def record_negotiated(self, interface: str, state: NegotiatedState) -> None:
        """Record what an interface negotiated (fields left ``None`` are cleared)."""

    async def close(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release connections; the embedded store has none."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()


Row = dict[str, str]


def encode_profile(profile: CompatProfile) -> str:
    """The compact JSON published under ``vhost-compat-profile-<version>``."""
    return json.dumps(profile_to_mapping(profile), separators=(",", ":"), sort_keys=True)


def encode_versions(versions: Sequence[str]) -> str:
    return ",".join(versions)


def encode_negotiated(state: NegotiatedState) -> Row:
    """An interface's negotiated state as external_ids entries (absent fields omitted)."""
    row: Row = {}
    if state.acked_features is not None:
        row[ACKED_FEATURES_KEY] = f"{int(state.acked_features):#x}"
    if state.acked_protocol_features is not None:
        row[ACKED_PROTOCOL_FEATURES_KEY] = f"{int(state.acked_protocol_features):#x}"
    if state.queue_pairs is not None:
        row[QUEUE_PAIRS_KEY] = str(state.queue_pairs)
    if state.ring_size is not None:
        row[RING_SIZE_KEY] = str(state.ring_size)
    if state.status is not None:
        row[STATUS_KEY] = state.status
    if state.machine_type is not None:
        row[MACHINE_TYPE_KEY] = state.machine_type
    return row


def _decode_mask(address: str, key: str, text: str) -> int:
    try:
        if not text.isascii() or len(text) > 2 + 16 + 16:
            raise ValueError(text)
        value = int(text, 16)
    except ValueError:
        raise HostStoreCorruptError(address, f"{key}={text!r} is not a hex mask") from None
    if not 0 <= value <= MASK64:
        raise HostStoreCorruptError(address, f"{key}={text!r} is not a 64-bit mask")
    return value


def _decode_count(address: str, key: str, text: str) -> int:
    # ASCII digits only ("²" is a digit to str.isdigit but not to int()), and
    # few of them (int() refuses more than 4300 digits with a ValueError).
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_COUNT_DIGITS
            and int(text) >= 1):
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"
        raise HostStoreCorruptError(address, f"{key}={shown!r} is not a positive integer")
    return int(text)


def decode_negotiated(address: str, row: Mapping[str, str]) -> NegotiatedState:
    """The negotiated state from an Interface row's external_ids."""
    acked = row.get(ACKED_FEATURES_KEY)
    protocol = row.get(ACKED_PROTOCOL_FEATURES_KEY)
    pairs = row.get(QUEUE_PAIRS_KEY)
    ring = row.get(RING_SIZE_KEY)
    return NegotiatedState(
        acked_features=None if acked is None else VirtioFeature(
            _decode_mask(address, ACKED_FEATURES_KEY, acked)),
        acked_protocol_features=None if protocol is None else ProtocolFeature(
            _decode_mask(address, ACKED_PROTOCOL_FEATURES_KEY, protocol)),
        queue_pairs=None if pairs is None else _decode_count(address, QUEUE_PAIRS_KEY, pairs),
        ring_size=None if ring is None else _decode_count(address, RING_SIZE_KEY, ring),
        status=row.get(STATUS_KEY),
        machine_type=row.get(MACHINE_TYPE_KEY),
    )


def decode_versions(address: str, text: str) -> tuple[str, ...]:
    versions = tuple(part.strip() for part in text.split(",") if part.strip())
    for version in versions:
        if not VERSION_PATTERN.fullmatch(version):
            raise HostStoreCorruptError(address, f"{VERSIONS_KEY} holds an invalid "
                                        f"version {version!r}")
    if len(set(versions)) != len(versions):
        raise HostStoreCorruptError(address, f"{VERSIONS_KEY} lists a version twice")
    return versions


def load_json(address: str, what: str, text: str) -> object:
    """JSON from a store: malformed or too deeply nested is a one-line corrupt-store error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise HostStoreCorruptError(address, f"{what} is not JSON ({error.msg} at line "
                                    f"{error.lineno})") from None
    except RecursionError:
        raise HostStoreCorruptError(address, f"{what} is JSON nested too deeply") from None


def decode_ovs_status(address: str, name: str, status: Mapping[str, str]) -> OvsStatus:
    """OVS's ``Interface status``: features (hex), num_of_vrings, vring_N_size."""
    features = status.get(OVS_FEATURES_KEY)
    vrings = status.get(OVS_VRINGS_KEY)
    sizes = [_decode_count(address, f"interface {name} status:{key}", value)
             for key, value in status.items()
             if key.startswith("vring_") and key.endswith("_size")]
    return OvsStatus(
        features=None if features is None else _decode_mask(
            address, f"interface {name} status:{OVS_FEATURES_KEY}", features),
        vrings=None if vrings is None else _decode_count(
            address, f"interface {name} status:{OVS_VRINGS_KEY}", vrings),
        ring_size=max(sizes) if sizes else None)


def decode_profile(address: str, key: str, text: str) -> CompatProfile:
    """A published profile; the same text (as most hosts of a fleet publish) is decoded once."""
    known = _PROFILES.get((key, text))
    if known is not None:
        return known
    profile = _decode_profile(address, key, text)
    if len(_PROFILES) >= PROFILE_CACHE_ENTRIES:
        _PROFILES.clear()
    _PROFILES[(key, text)] = profile
    return profile


# Decoded profiles by (key, text): CompatProfile is frozen, so sharing is safe.
_PROFILES: dict[tuple[str, str], CompatProfile] = {}
PROFILE_CACHE_ENTRIES = 1024


def _decode_profile(address: str, key: str, text: str) -> CompatProfile:
    data = load_json(address, key, text)
    if not isinstance(data, dict):
        raise HostStoreCorruptError(address, f"{key} is not a JSON object")
    try:
        profile = profile_from_mapping(data)
    except InputError as error:
        raise HostStoreCorruptError(address, f"{key}: {error}") from None
    if PROFILE_KEY_PREFIX + profile.version != key:
        raise HostStoreCorruptError(address, f"{key} holds version {profile.version!r}")
    return profile


def record_from_rows(address: str, open_vswitch_external_ids: Mapping[str, str],
                     interfaces: Mapping[str, tuple[Mapping[str, str], Mapping[str, str]]],
                     statuses: Mapping[str, Mapping[str, str]] | None = None,
                     basis: object = None) -> HostRecord:
    """A :class:`HostRecord` from OVSDB-shaped rows (``basis``: its
    :attr:`HostRecord.basis`).

    ``interfaces`` maps an Interface name to its ``(options, external_ids)``;
    ``statuses`` (optional) an Interface name to OVS's ``status`` column.
    Rows of interfaces without any ``vhost-compat-`` key are left out.
    """
    versions = decode_versions(address, open_vswitch_external_ids.get(VERSIONS_KEY, ""))
    profiles: dict[str, CompatProfile] = {}
    for key, text in open_vswitch_external_ids.items():
        if key.startswith(PROFILE_KEY_PREFIX):
            profile = decode_profile(address, key, text)
            profiles[profile.version] = profile
    records: dict[str, InterfaceRecord] = {}
    for name, (options, external_ids) in interfaces.items():
        version = options.get(INTERFACE_VERSION_KEY)
        if version is not None and not VERSION_PATTERN.fullmatch(version):
            raise HostStoreCorruptError(address, f"interface {name}: "
                                        f"{INTERFACE_VERSION_KEY}={version!r} is invalid")
        provision_id = options.get(PROVISION_ID_KEY)
        if provision_id is not None and not VERSION_PATTERN.fullmatch(provision_id):
            raise HostStoreCorruptError(address, f"interface {name}: "
                                        f"{PROVISION_ID_KEY}={provision_id!r} is invalid")
        negotiated = decode_negotiated(address, external_ids)
        if version is None and provision_id is None and negotiated.is_empty():
            continue
        status = decode_ovs_status(address, name, (statuses or {}).get(name, {}))
        records[name] = InterfaceRecord(name, version, negotiated, status, provision_id)
    return HostRecord(address, versions, profiles, records, basis)


def published_versions(profiles: Sequence[CompatProfile]) -> list[str]:
    """The versions to publish, in order; refuses nothing or a version twice."""
    if not profiles:
        raise InputError("nothing to publish: no profiles")
    versions = [profile.version for profile in profiles]
    if len(set(versions)) != len(versions):
        raise InputError("a version is listed twice")
    return versions


def published_external_ids(external_ids: Mapping[str, str],
                           profiles: Sequence[CompatProfile]) -> dict[str, str]:
    """The Open_vSwitch row's external_ids after publishing ``profiles`` (others kept)."""
    versions = published_versions(profiles)
    updated = {key: value for key, value in external_ids.items()
               if not key.startswith(PROFILE_KEY_PREFIX)}
    updated[VERSIONS_KEY] = encode_versions(versions)
    for profile in profiles:
        updated[PROFILE_KEY_PREFIX + profile.version] = encode_profile(profile)
    return updated


def require_published(address: str, external_ids: Mapping[str, str], version: str) -> None:
    """Refuse to assign a version the host does not publish (or a corrupt version list)."""
    versions = decode_versions(address, external_ids.get(VERSIONS_KEY, ""))
    if version not in versions:
        raise NotPublishedError(address, f"does not publish {version!r} "
                                f"(it publishes: {', '.join(versions) or 'nothing'})")


def negotiated_external_ids(external_ids: Mapping[str, str],
                            state: NegotiatedState) -> dict[str, str]:
    """An Interface's external_ids with the negotiated keys replaced by ``state``'s."""
    updated = {key: value for key, value in external_ids.items() if key not in NEGOTIATED_KEYS}
    updated.update(encode_negotiated(state))
    return updated


def check_interface_name(name: str) -> str:
    if not name or len(name) > MAX_INTERFACE_NAME or not name.isprintable() or any(
            character.isspace() for character in name):
        raise InputError(f"invalid interface name {name!r} (printable, no spaces, "
                         f"1-{MAX_INTERFACE_NAME} characters)")
    return name


