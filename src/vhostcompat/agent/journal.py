"""The agent's state directory: what it must not forget across its own restarts.

One JSON file, ``agent-state.json``, replaced atomically (temporary file,
``fsync``, rename, ``fsync`` of the directory)::

    {"interfaces": {"vhu0": {"frontend_path": "/run/qemu/vhu0.sock",
                             "pending": null | {"bridge": ..., "port": ..., "interface": ...}}}}

* ``frontend_path``: QEMU's socket, also kept on the row
  (``external_ids:vhost-compat-frontend-path``); the journal is the second
  copy, so that QEMU's path survives someone removing that key;
* ``pending``: a port being re-created, written before its removal and
  cleared after its insertion; an agent that finds one at start inserts the
  port again if the database lacks it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vhostcompat.agent.ports import PortCopy
from vhostcompat.errors import InputError

STATE_FILE = "agent-state.json"


class JournalError(InputError):
    """A state directory or file the agent cannot use; names it."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(f"state {path}: {detail}")


@dataclass
class Entry:
    frontend_path: str | None = None
    pending: PortCopy | None = None


@dataclass
class Journal:
    directory: Path
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def open(cls, directory: Path) -> Journal:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as error:
            raise JournalError(directory, f"cannot create: {error.strerror}") from None
        journal = cls(directory)
        try:
            text = journal.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return journal
        except (OSError, UnicodeDecodeError) as error:
            raise JournalError(journal.path, f"cannot read: {error}") from None
        try:
            data = json.loads(text)
            for name, entry in data["interfaces"].items():
                pending = entry.get("pending")
                journal.entries[str(name)] = Entry(
                    entry.get("frontend_path"),
                    None if pending is None else PortCopy.from_json(pending))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise JournalError(journal.path, f"unreadable ({error}); move it away to start "
                                             "afresh") from None
        return journal

    def entry(self, name: str) -> Entry:
        return self.entries.setdefault(name, Entry())

    def frontends(self) -> dict[str, str]:
        return {name: entry.frontend_path for name, entry in self.entries.items()
                if entry.frontend_path}

    def forget(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self.save()

    def save(self) -> None:
        document: dict[str, Any] = {"interfaces": {
            name: {"frontend_path": entry.frontend_path,
                   "pending": None if entry.pending is None else entry.pending.to_json()}
            for name, entry in sorted(self.entries.items())}}
        data = (json.dumps(document, indent=2) + "\n").encode()
        temporary = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
