"""Where a host's published data lives, behind one interface: :class:`HostStore`.

What a host publishes and records, in Open vSwitch database terms (DESIGN.md):

==============================================  ========================================
``Open_vSwitch . external_ids``
  ``vhost-compat-versions``                      supported versions, comma separated,
                                                 newest first
  ``vhost-compat-profile-<version>``             that version's profile, compact JSON
                                                 (self-describing, see profiles.model)
``Interface <name> options``
  ``vhost-compat-version``                       the compatibility mode chosen for it
``Interface <name> external_ids`` (agent)
  ``vhost-compat-acked-features``                virtio features the guest acked (hex)
  ``vhost-compat-acked-protocol-features``       protocol features negotiated (hex)
  ``vhost-compat-queue-pairs``                   queue pairs in use
  ``vhost-compat-ring-size``                     largest ring size in use
  ``vhost-compat-status``                        free text status from the agent
  ``vhost-compat-machine-type``                  the VM's QEMU machine type (pc-q35-7.2)
==============================================  ========================================

This module delivers the embedded store (:class:`EmbeddedHostStore`): a host
is a directory holding one JSON file, ``vhostcompat-host.json``, shaped like
those OVSDB rows::

    {"Open_vSwitch": {"external_ids": {"vhost-compat-versions": "v2,v1", ...}},
     "Interface": {"vhu0": {"options": {"vhost-compat-version": "v1"},
                            "external_ids": {"vhost-compat-acked-features": "0x..."}}}}

so that an OVSDB-backed store is a thin mapping: :func:`record_from_rows`
turns those rows into a :class:`HostRecord` for both. Addresses starting with
``unix:``, ``tcp:`` or ``ssl:`` name OVSDB remotes (:func:`open_host`; not
supported yet).

Writes are atomic and serialised: ``flock`` on a lock file in the directory,
read-modify-write, write a temporary file, ``fsync``, ``os.replace``, ``fsync``
the directory. Readers never see a torn file, a crash leaves the previous
version, and concurrent writers (processes or threads) do not lose updates.
Waits for the lock are bounded.

The interface is asynchronous because the OVSDB store will be, and a manager
queries many hosts at once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
ACKED_FEATURES_KEY = "vhost-compat-acked-features"
ACKED_PROTOCOL_FEATURES_KEY = "vhost-compat-acked-protocol-features"
QUEUE_PAIRS_KEY = "vhost-compat-queue-pairs"
RING_SIZE_KEY = "vhost-compat-ring-size"
STATUS_KEY = "vhost-compat-status"
MACHINE_TYPE_KEY = "vhost-compat-machine-type"
NEGOTIATED_KEYS = (ACKED_FEATURES_KEY, ACKED_PROTOCOL_FEATURES_KEY, QUEUE_PAIRS_KEY,
                   RING_SIZE_KEY, STATUS_KEY, MACHINE_TYPE_KEY)

OVSDB_SCHEMES = ("unix:", "tcp:", "ssl:")
HOST_FILE = "vhostcompat-host.json"
LOCK_FILE = ".vhostcompat-host.lock"
TEMP_SUFFIX = ".tmp"
LOCK_TIMEOUT = 10.0
MAX_INTERFACE_NAME = 255


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


class NotPublishedError(InputError):
    """A request for a version the host does not publish, or a missing interface."""

    def __init__(self, address: str, message: str) -> None:
        self.address = address
        super().__init__(f"host {address}: {message}")


@dataclass(frozen=True)
class InterfaceRecord:
    """One vhost-user interface as a host records it."""

    name: str
    version: str | None
    negotiated: NegotiatedState = field(default_factory=NegotiatedState)


@dataclass(frozen=True)
class HostRecord:
    """One consistent read of everything a host publishes."""

    address: str
    versions: tuple[str, ...]
    profiles: Mapping[str, CompatProfile]
    interfaces: Mapping[str, InterfaceRecord]

    def profile(self, version: str) -> CompatProfile | None:
        return self.profiles.get(version)

    def interface(self, name: str) -> InterfaceRecord:
        found = self.interfaces.get(name)
        if found is None:
            known = ", ".join(sorted(self.interfaces)) or "none"
            raise NotPublishedError(self.address,
                                    f"no interface {name!r} (interfaces: {known})")
        return found


class HostStore(abc.ABC):
    """A host's published data. Use as ``async with open_host(address) as store``."""

    def __init__(self, address: str) -> None:
        self.address = address

    @abc.abstractmethod
    async def read(self) -> HostRecord:
        """Everything the host publishes; :class:`HostError` if missing or unreadable."""

    @abc.abstractmethod
    async def publish(self, profiles: Sequence[CompatProfile]) -> HostRecord:
        """Replace the published versions (in this order) and their profiles.

        Creates the store if needed; interfaces are kept.
        """

    @abc.abstractmethod
    async def assign(self, interface: str, version: str) -> None:
        """Set an interface's compatibility mode; the host must publish ``version``."""

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


def open_host(address: str) -> HostStore:
    """The store for an address: a filesystem path, or an OVSDB remote (later)."""
    if not address or not address.strip():
        raise InputError("empty host address")
    if address.startswith(OVSDB_SCHEMES):
        raise UnsupportedHostError(address, "OVSDB hosts are not supported yet "
                                   "(use a directory path for an embedded store)")
    return EmbeddedHostStore(address)


# --- the data model, shared by every store -----------------------------------

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
        value = int(text, 16)
    except ValueError:
        raise HostStoreCorruptError(address, f"{key}={text!r} is not a hex mask") from None
    if not 0 <= value <= MASK64:
        raise HostStoreCorruptError(address, f"{key}={text!r} is not a 64-bit mask")
    return value


def _decode_count(address: str, key: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise HostStoreCorruptError(address, f"{key}={text!r} is not a positive integer")
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


def decode_profile(address: str, key: str, text: str) -> CompatProfile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise HostStoreCorruptError(address, f"{key} is not JSON ({error.msg})") from None
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
                     ) -> HostRecord:
    """A :class:`HostRecord` from OVSDB-shaped rows.

    ``interfaces`` maps an Interface name to its ``(options, external_ids)``.
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
        negotiated = decode_negotiated(address, external_ids)
        if version is None and negotiated.is_empty():
            continue
        records[name] = InterfaceRecord(name, version, negotiated)
    return HostRecord(address, versions, profiles, records)


def check_interface_name(name: str) -> str:
    if not name or len(name) > MAX_INTERFACE_NAME or not name.isprintable() or any(
            character.isspace() for character in name):
        raise InputError(f"invalid interface name {name!r} (printable, no spaces, "
                         f"1-{MAX_INTERFACE_NAME} characters)")
    return name


# --- the embedded store ------------------------------------------------------

@dataclass
class Document:
    """The embedded store's file: the Open_vSwitch row's external_ids and Interface rows."""

    external_ids: dict[str, str] = field(default_factory=dict)
    # Interface name -> column ("options", "external_ids") -> key -> value.
    interfaces: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def interface_row(self, name: str) -> dict[str, dict[str, str]]:
        return self.interfaces.setdefault(name, {"options": {}, "external_ids": {}})

    def to_json(self) -> dict[str, object]:
        return {"Open_vSwitch": {"external_ids": self.external_ids},
                "Interface": self.interfaces}

    def record(self, address: str) -> HostRecord:
        rows = {name: (row["options"], row["external_ids"])
                for name, row in self.interfaces.items()}
        return record_from_rows(address, self.external_ids, rows)


def _string_map(address: str, where: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and isinstance(item, str) for key, item in value.items()):
        raise HostStoreCorruptError(address, f"{where} is not a map of strings")
    return dict(value)


def parse_document(address: str, text: str) -> Document:
    """Validate the file's JSON structure; the values are checked by record_from_rows."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise HostStoreCorruptError(address, f"{HOST_FILE} is not JSON ({error.msg} at "
                                    f"line {error.lineno})") from None
    if not isinstance(data, dict) or set(data) != {"Open_vSwitch", "Interface"}:
        raise HostStoreCorruptError(address, f"{HOST_FILE} must be an object with exactly "
                                    "'Open_vSwitch' and 'Interface'")
    root = data["Open_vSwitch"]
    if not isinstance(root, dict) or set(root) != {"external_ids"}:
        raise HostStoreCorruptError(address, "Open_vSwitch must hold only external_ids")
    document = Document(_string_map(address, "Open_vSwitch external_ids",
                                    root["external_ids"]))
    rows = data["Interface"]
    if not isinstance(rows, dict):
        raise HostStoreCorruptError(address, "Interface is not an object")
    for name, row in rows.items():
        if not isinstance(row, dict) or not set(row) <= {"options", "external_ids"}:
            raise HostStoreCorruptError(address, f"Interface {name!r} must hold options "
                                        "and external_ids only")
        document.interfaces[name] = {
            column: _string_map(address, f"Interface {name!r} {column}", row.get(column, {}))
            for column in ("options", "external_ids")}
    return document


class EmbeddedHostStore(HostStore):
    """A host as a directory with one JSON file; see the module docstring."""

    def __init__(self, address: str, lock_timeout: float = LOCK_TIMEOUT) -> None:
        super().__init__(address)
        self.directory = Path(address)
        self.path = self.directory / HOST_FILE
        self.lock_timeout = lock_timeout

    async def read(self) -> HostRecord:
        return self._load().record(self.address)

    async def publish(self, profiles: Sequence[CompatProfile]) -> HostRecord:
        if not profiles:
            raise InputError("nothing to publish: no profiles")
        versions = [profile.version for profile in profiles]
        if len(set(versions)) != len(versions):
            raise InputError("a version is listed twice")

        def update(document: Document) -> None:
            external_ids = document.external_ids
            for key in [key for key in external_ids if key.startswith(PROFILE_KEY_PREFIX)]:
                del external_ids[key]
            external_ids[VERSIONS_KEY] = encode_versions(versions)
            for profile in profiles:
                external_ids[PROFILE_KEY_PREFIX + profile.version] = encode_profile(profile)

        self._create_directory()
        return await self._update(update, create=True)

    async def assign(self, interface: str, version: str) -> None:
        check_interface_name(interface)

        def update(document: Document) -> None:
            versions = decode_versions(self.address,
                                       document.external_ids.get(VERSIONS_KEY, ""))
            if version not in versions:
                raise NotPublishedError(self.address, f"does not publish {version!r} "
                                        f"(it publishes: {', '.join(versions) or 'nothing'})")
            row = document.interface_row(interface)
            row["options"][INTERFACE_VERSION_KEY] = version

        await self._update(update)

    async def record_negotiated(self, interface: str, state: NegotiatedState) -> None:
        check_interface_name(interface)
        entries = encode_negotiated(state)

        def update(document: Document) -> None:
            row = document.interface_row(interface)
            for key in NEGOTIATED_KEYS:
                row["external_ids"].pop(key, None)
            row["external_ids"].update(entries)

        await self._update(update)

    # -- file handling --

    def _create_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise HostStoreAccessError(self.address, "exists and is not a directory") from None
        except OSError as error:
            raise HostStoreAccessError(self.address, f"cannot create: {error.strerror}") from None

    def _load(self, missing_ok: bool = False) -> Document:
        if self.directory.exists() and not self.directory.is_dir():
            raise HostStoreMissingError(self.address, "not a host store directory")
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_ok:
                return Document()
            raise HostStoreMissingError(self.address) from None
        except UnicodeDecodeError:
            raise HostStoreCorruptError(self.address, f"{HOST_FILE} is not UTF-8") from None
        except OSError as error:
            raise HostStoreAccessError(self.address, f"cannot read {HOST_FILE}: "
                                       f"{error.strerror}") from None
        return parse_document(self.address, text)

    async def _update(self, change: Callable[[Document], None],
                      create: bool = False) -> HostRecord:
        """Read-modify-write under the lock; the change may raise to abort."""
        if not create and not self.path.exists():
            self._load()  # raises the precise "missing" error
        async with self._locked():
            document = self._load(missing_ok=create)
            # Refuse to build on a store we cannot read back: a corrupt file
            # stays as it is for an operator to look at.
            document.record(self.address)
            change(document)
            record = document.record(self.address)
            self._write(document)
        return record

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        try:
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
        except FileNotFoundError:
            raise HostStoreMissingError(self.address) from None
        except OSError as error:
            raise HostStoreAccessError(self.address, f"cannot open the lock file: "
                                       f"{error.strerror}") from None
        try:
            await self._acquire(fd)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    async def _acquire(self, fd: int) -> None:
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise HostStoreAccessError(self.address,
                                               f"cannot lock: {error.strerror}") from None
            if time.monotonic() >= deadline:
                raise HostStoreAccessError(
                    self.address, f"store locked by another writer for more than "
                    f"{self.lock_timeout:g} s")
            # Another writer holds the lock for a few milliseconds at most: poll
            # the lock (the condition) with a growing pause, bounded by the deadline.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _write(self, document: Document) -> None:
        """Write-then-rename, with fsync of the file and of the directory."""
        for stale in self.directory.glob(f".{HOST_FILE}.*{TEMP_SUFFIX}"):
            # Left by a writer that crashed; we hold the lock, so no writer owns it.
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        temporary = self.directory / f".{HOST_FILE}.{os.getpid()}{TEMP_SUFFIX}"
        data = (json.dumps(document.to_json(), indent=2, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            self._fsync_directory()
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise HostStoreAccessError(self.address, f"cannot write {HOST_FILE}: "
                                       f"{error.strerror or error}") from None

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
