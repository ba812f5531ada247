"""Errors raised by the lab (QEMU, qtest, QMP, testpmd and their processes).

::

    VhostCompatError
     +-- LabError                    a lab component failed or misbehaved (exit 2)
          +-- LabTimeoutError        a bounded wait ran out
          +-- ProcessExitedError     a child process exited when it should run
          +-- QtestError             the qtest peer refused or garbled a command
          +-- VirtioDriverError      the virtio-pci device refused a driver step
          +-- QmpCommandError        a QMP command failed or answered unexpectedly
          +-- VhostProbeError        a backend socket did not answer GET_FEATURES properly

Every error carries the process log tail when one is at hand, so a failing
test shows why QEMU or testpmd gave up.
"""

from __future__ import annotations

from vhostcompat.errors import VhostCompatError


class LabError(VhostCompatError):
    """A lab component (QEMU, testpmd, qtest, QMP) failed or misbehaved."""


def _with_tail(message: str, log_tail: str) -> str:
    # The CLI prints one line, so the tail is joined into it rather than
    # printed on its own lines.
    tail = " | ".join(line for line in log_tail.splitlines() if line.strip())
    return f"{message} (log: {tail})" if tail else message


class LabTimeoutError(LabError):
    """A bounded wait for a condition ran out."""

    def __init__(self, what: str, timeout: float, log_tail: str = "") -> None:
        self.what = what
        self.timeout = timeout
        self.log_tail = log_tail
        super().__init__(_with_tail(f"timed out after {timeout:g}s waiting for {what}", log_tail))


class ProcessExitedError(LabError):
    """A child process exited while something still depended on it."""

    def __init__(self, name: str, returncode: int, log_tail: str = "",
                 waiting_for: str | None = None) -> None:
        self.name = name
        self.returncode = returncode
        self.log_tail = log_tail
        self.waiting_for = waiting_for
        message = f"{name} exited with status {returncode}"
        if waiting_for is not None:
            message += f" while waiting for {waiting_for}"
        super().__init__(_with_tail(message, log_tail))


class QtestError(LabError):
    """A qtest command was refused, or its reply was not understood."""

    def __init__(self, command: str, reply: str) -> None:
        self.command = command
        self.reply = reply
        super().__init__(f"qtest command {command!r} failed: {reply!r}")


class VirtioDriverError(LabError):
    """The virtio-pci device refused a step of driver initialisation."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        self.message = message
        super().__init__(f"virtio-pci driver, {step}: {message}")


class QmpCommandError(LabError):
    """A QMP command failed, or its answer lacked what we asked for."""

    def __init__(self, command: str, message: str) -> None:
        self.command = command
        self.message = message
        super().__init__(f"QMP {command}: {message}")


class VhostProbeError(LabError):
    """A vhost-user backend socket did not answer our probe as the spec says."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"vhost-user probe of {path}: {message}")
