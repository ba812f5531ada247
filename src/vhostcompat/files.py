"""Reading and writing the small files the commands take and leave, safely.

Every file a command reads (a catalog, a status file) may be anything the
user pointed at: a FIFO (opening it would block until a writer comes), a
device, a directory, a file too large to be one of ours. :func:`read_text`
opens it without blocking (``O_NONBLOCK``) and without making it a
controlling terminal, refuses anything but a regular file, bounds the size
and decodes it as UTF-8; every failure is one :class:`FileInputError` line
naming the file.

Every file a command leaves (a status file, a ready file) is written by
:func:`write_atomically`: into a temporary file created next to it with a
random name (``mkstemp``: ``O_CREAT | O_EXCL``, so a planted file or
symbolic link is never followed or reused), then renamed over the target.
Readers see the old file or the new one, never half of one; nothing outside
the target's directory is ever written.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from vhostcompat.errors import InputError

MAX_FILE_SIZE = 16 << 20  # bytes; far beyond any catalog or status file


class FileInputError(InputError):
    """A file we cannot use as input: missing, unreadable, not a regular file, too big."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_bytes(path: str | os.PathLike[str], *, limit: int = MAX_FILE_SIZE) -> bytes:
    """The whole content of the regular file ``path``; :class:`FileInputError` otherwise."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileInputError(where, "no such file") from None
    except OSError as error:
        raise FileInputError(where, f"cannot open: {error.strerror or error}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise FileInputError(where, f"not a regular file ({_kind(status.st_mode)})")
        if status.st_size > limit:
            raise FileInputError(where, f"{status.st_size} bytes, more than the {limit} "
                                        "accepted")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > limit:
                raise FileInputError(where, f"more than the {limit} bytes accepted")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise FileInputError(where, f"cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_FILE_SIZE) -> str:
    """:func:`read_bytes`, decoded as UTF-8."""
    data = read_bytes(path, limit=limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileInputError(os.fspath(path), f"not UTF-8 text ({error.reason})") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def write_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: a fresh temporary file beside it, then a rename.

    Raises ``OSError`` (the caller names what it was writing); the
    temporary file never outlives a failure.
    """
    where = os.fspath(path)
    directory, name = os.path.split(where)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
        os.replace(temporary, where)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
