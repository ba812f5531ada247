"""The options of a command that listens for vhost-user peers (``proxy``, ``backend``).

Apart from :mod:`vhostcompat.cli.common` because they need
:mod:`vhostcompat.transport` (and the vhost-user codec under it), which the
commands that never listen (the manager's) do not load.
"""

from __future__ import annotations

import argparse
import grp

from vhostcompat.realtime import GUARD_BUDGET, GUARD_COOLDOWN, check_priority
from vhostcompat.transport import (
    DEFAULT_SOCKET_MODE,
    DEFAULT_STALL_TIMEOUTS,
    SocketPermissions,
    StallTimeouts,
)


def add_listening_options(parser: argparse.ArgumentParser) -> None:
    """``--socket-mode``/``--socket-group`` and the stall timeouts of a vhost-user server."""
    parser.add_argument("--socket-mode", type=_mode, default=DEFAULT_SOCKET_MODE,
                        metavar="MODE",
                        help=f"permissions of the sockets it listens on, octal (default "
                             f"{DEFAULT_SOCKET_MODE:04o}: owner and group; the umask plays "
                             "no part)")
    parser.add_argument("--socket-group", type=_group, metavar="GROUP",
                        help="group of the sockets it listens on (name or gid; default the "
                             "process's), e.g. the group QEMU runs in")
    first, message = DEFAULT_STALL_TIMEOUTS.first_message, DEFAULT_STALL_TIMEOUTS.message
    parser.add_argument("--handshake-timeout", type=float, default=first, metavar="SECONDS",
                        help=f"close a front-end that sends no message this long after "
                             f"connecting (default {first:g})")
    parser.add_argument("--message-timeout", type=float, default=message, metavar="SECONDS",
                        help=f"close a peer that stops this long in the middle of a message "
                             f"(default {message:g})")


def add_realtime_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--realtime-priority N``: relay at SCHED_FIFO (:mod:`vhostcompat.realtime`)."""
    parser.add_argument("--realtime-priority", type=_priority, metavar="N",
                        help=f"run {what} SCHED_FIFO at priority N (1-99; needs "
                             "CAP_SYS_NICE): the wake-ups of QEMU's and the back-end's "
                             "threads no longer delay a message, and what the proxy adds to "
                             "a migration's downtime falls; back to normal scheduling for "
                             f"{GUARD_COOLDOWN:g} s whenever it uses more than "
                             f"{GUARD_BUDGET * 100:.0f}%% of a CPU (default: normal scheduling)")


def socket_permissions_from(args: argparse.Namespace) -> SocketPermissions:
    return SocketPermissions(mode=args.socket_mode, group=args.socket_group)


def stall_timeouts_from(args: argparse.Namespace) -> StallTimeouts:
    return StallTimeouts(first_message=args.handshake_timeout, message=args.message_timeout)


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"not a permission mode (0 to 0777): {text!r}")
    return value


def _priority(text: str) -> int:
    if not (text.isascii() and text.removeprefix("-").isdigit()):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    try:
        return check_priority(int(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _group(text: str) -> int:
    if text.isdigit() and text.isascii():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such group: {text!r}") from None
