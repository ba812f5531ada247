"""The ``vhostcompat`` command: one entry point, one module per subcommand group.

Each module listed in :data:`COMMAND_MODULES` exposes
``register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None``
and sets ``handler=`` (a callable taking the parsed namespace and returning an
exit status) on every parser it adds.

Exit statuses, for every subcommand:
  0  yes / success
  1  a clear "no" (incompatible, no common version)
  2  bad input or an unreachable host; the reason is one line on stderr

The boundary is total: whatever a handler raises ends as one line on
stderr. An unexpected exception (a bug, or input no check foresaw) is
``vhostcompat: internal error: ...`` with exit 2, its traceback shown only
with ``-v``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence

from vhostcompat import __version__
from vhostcompat.errors import VhostCompatError

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2

COMMAND_MODULES: tuple[str, ...] = (
    "vhostcompat.cli.catalog_commands",
    "vhostcompat.cli.host_commands",
    "vhostcompat.cli.manager_commands",
    "vhostcompat.cli.demo_command",
    "vhostcompat.cli.backend_commands",
    "vhostcompat.cli.proxy_commands",
    "vhostcompat.cli.libvirt_commands",
    "vhostcompat.cli.agent_command",
    "vhostcompat.cli.fleet_commands",
)

# Which module registers each command: a command imports only its own module
# (all of them cost half a second at start-up here; `versions` needs a few).
# A test checks this against what the modules register.
COMMANDS: Mapping[str, str] = {
    command: f"vhostcompat.cli.{module}"
    for module, commands in (
        ("catalog_commands", ("profiles", "profile", "qemu-args", "libvirt-xml")),
        ("host_commands", ("record", "publish", "assign")),
        ("manager_commands", ("versions", "select", "baseline", "provision",
                              "check-migration", "targets", "matrix")),
        ("demo_command", ("demo",)),
        ("backend_commands", ("backend", "probe")),
        ("proxy_commands", ("proxy", "proxy-status")),
        ("libvirt_commands", ("libvirt-hook",)),
        ("agent_command", ("agent",)),
        ("fleet_commands", ("fleet",)))
    for command in commands}

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with our exit status (2) and a one-line error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given ``argv``, only what its command needs is imported."""
    parser = _Parser(
        prog="vhostcompat",
        description="vhost-user compatibility versions for live migration.",
        epilog="Exit status: 0 yes/success, 1 a clear no, 2 bad input or unreachable host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug) on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES if argv is None else modules_for(argv):
        importlib.import_module(name).register(subparsers)
    return parser


def modules_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The command modules ``argv`` needs: its command's, or every one (for the
    top-level help, or to list the commands when the one given is unknown)."""
    for argument in argv:
        if argument in ("-h", "--help"):
            break
        if not argument.startswith("-"):
            module = COMMANDS.get(argument)
            return COMMAND_MODULES if module is None else (module,)
    return COMMAND_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="vhostcompat: %(name)s: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except VhostCompatError as error:
        print(f"vhostcompat: {_one_line(str(error))}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as error:  # the boundary: never a traceback unless asked for
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        detail = _one_line(str(error)) or "(no detail)"
        print(f"vhostcompat: internal error: {type(error).__name__}: {detail}"
              + ("" if args.verbose else " (run with -v for the traceback)"), file=sys.stderr)
        return EXIT_ERROR


def _one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line, cut to ``limit`` characters (a peer chose some of it)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."


if __name__ == "__main__":
    sys.exit(main())
