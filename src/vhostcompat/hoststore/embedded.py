"""The embedded host store: a directory holding one JSON file shaped like the OVSDB rows.

For a host without ovsdb-server (tests, demos, a manager's scratch copy). The
file, ``vhostcompat-host.json``, holds what the OVSDB store keeps in rows
(see :mod:`vhostcompat.hoststore.model`)::

    {"Open_vSwitch": {"external_ids": {"vhost-compat-versions": "v2,v1", ...}},
     "Interface": {"vhu0": {"options": {"vhost-compat-version": "v1"},
                            "external_ids": {"vhost-compat-acked-features": "0x..."},
                            "status": {"features": "0x..."}}}}

(``status`` optional: OVS's own column, written by no tool of ours.)

Writes are atomic and serialised: ``flock`` on a lock file in the directory,
read-modify-write, write a temporary file, ``fsync``, ``os.replace``, ``fsync``
the directory. Readers never see a torn file, a crash leaves the previous
version, and concurrent writers (processes or threads) do not lose updates.
Waits for the lock are bounded.

The directory is trusted to be the host's, its contents are not: the lock
file is opened with ``O_NOFOLLOW`` (a planted symlink, dangling or not, is
refused, and nothing is ever created outside the directory), the temporary
file is created by ``mkstemp`` in the directory (``O_EXCL``, ``O_NOFOLLOW``,
a random name), and a file that does not parse, nests too deeply or holds
impossible numbers is a one-line corrupt-store error.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vhostcompat.hoststore.model import (
    INTERFACE_VERSION_KEY,
    HostRecord,
    HostStore,
    HostStoreAccessError,
    HostStoreCorruptError,
    HostStoreMissingError,
    ModeWrite,
    apply_mode_write,
    check_interface_name,
    load_json,
    negotiated_external_ids,
    published_external_ids,
    record_from_rows,
    require_published,
)
from vhostcompat.profiles.model import CompatProfile, NegotiatedState

HOST_FILE = "vhostcompat-host.json"
LOCK_FILE = ".vhostcompat-host.lock"
TEMP_PREFIX = f".{HOST_FILE}."
TEMP_SUFFIX = ".tmp"
LOCK_TIMEOUT = 10.0
COLUMNS = ("options", "external_ids", "status")


@dataclass
class Document:
    """The embedded store's file: the Open_vSwitch row's external_ids and Interface rows."""

    external_ids: dict[str, str] = field(default_factory=dict)
    # Interface name -> column (COLUMNS; "status" is OVS's, only ever read) -> key -> value.
    interfaces: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def interface_row(self, name: str) -> dict[str, dict[str, str]]:
        return self.interfaces.setdefault(name, {"options": {}, "external_ids": {}})

    def to_json_row(self, name: str) -> dict[str, dict[str, str]]:
        row = self.interfaces[name]
        return {column: values for column, values in row.items()
                if column != "status" or values}

    def to_json(self) -> dict[str, object]:
        return {"Open_vSwitch": {"external_ids": self.external_ids},
                "Interface": {name: self.to_json_row(name) for name in self.interfaces}}

    def record(self, address: str) -> HostRecord:
        rows = {name: (row["options"], row["external_ids"])
                for name, row in self.interfaces.items()}
        statuses = {name: row.get("status", {}) for name, row in self.interfaces.items()}
        return record_from_rows(address, self.external_ids, rows, statuses)


def _string_map(address: str, where: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and isinstance(item, str) for key, item in value.items()):
        raise HostStoreCorruptError(address, f"{where} is not a map of strings")
    return dict(value)


def parse_document(address: str, text: str) -> Document:
    """Validate the file's JSON structure; the values are checked by record_from_rows."""
    data = load_json(address, HOST_FILE, text)
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
        if not isinstance(row, dict) or not set(row) <= set(COLUMNS):
            raise HostStoreCorruptError(address, f"Interface {name!r} must hold options, "
                                        "external_ids and status only")
        document.interfaces[name] = {
            column: _string_map(address, f"Interface {name!r} {column}", row.get(column, {}))
            for column in COLUMNS}
    return document


class EmbeddedHostStore(HostStore):
    """A host as a directory with one JSON file; see the module docstring."""

    def __init__(self, address: str, lock_timeout: float = LOCK_TIMEOUT) -> None:
        super().__init__(address)
        self.directory = Path(address)
        self.path = self.directory / HOST_FILE
        self.lock_timeout = lock_timeout

    async def read(self, *, interfaces: bool | tuple[str, ...] = True) -> HostRecord:
        record = self._load().record(self.address)
        if interfaces is True:
            return record
        return replace(record, interfaces={} if interfaces is False else {
            name: found for name, found in record.interfaces.items() if name in interfaces})

    async def publish(self, profiles: Sequence[CompatProfile]) -> HostRecord:
        published_external_ids({}, profiles)  # refuses bad input before any file is touched

        def update(document: Document) -> None:
            document.external_ids = published_external_ids(document.external_ids, profiles)

        self._create_directory()
        return await self._update(update, create=True)

    async def assign(self, interface: str, version: str) -> None:
        check_interface_name(interface)

        def update(document: Document) -> None:
            require_published(self.address, document.external_ids, version)
            row = document.interface_row(interface)
            row["options"][INTERFACE_VERSION_KEY] = version

        await self._update(update)

    async def write_mode(self, change: ModeWrite) -> None:
        check_interface_name(change.interface)

        def update(document: Document) -> None:
            row = document.interface_row(change.interface)
            updated_ids, row["options"] = apply_mode_write(
                self.address, change, document.external_ids, row["options"])
            if updated_ids is not None:
                document.external_ids = updated_ids
            if not any(row.values()):
                # Restored to nothing: no row, exactly as before the first write.
                del document.interfaces[change.interface]

        await self._update(update)

    async def record_negotiated(self, interface: str, state: NegotiatedState) -> None:
        check_interface_name(interface)

        def update(document: Document) -> None:
            row = document.interface_row(interface)
            row["external_ids"] = negotiated_external_ids(row["external_ids"], state)

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
            # O_NOFOLLOW: a symlink planted at the lock's name (dangling or not)
            # is refused, so the lock is never created outside the directory.
            fd = os.open(self.directory / LOCK_FILE,
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            raise HostStoreMissingError(self.address) from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise HostStoreAccessError(self.address, f"the lock file {LOCK_FILE} is a "
                                           "symbolic link: refused") from None
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
        for stale in self.directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            # Left by a writer that crashed; we hold the lock, so no writer owns it.
            # (unlink removes a symlink itself, never what it points to.)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        data = (json.dumps(document.to_json(), indent=2, sort_keys=True) + "\n").encode()
        temporary: Path | None = None
        try:
            # mkstemp: O_CREAT | O_EXCL | O_NOFOLLOW with a random name, in the
            # directory itself so the rename stays on one filesystem.
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX,
                                        dir=self.directory)
            temporary = Path(name)
            os.fchmod(fd, 0o644)
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
            if temporary is not None:
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
