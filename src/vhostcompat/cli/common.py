"""Shared pieces of the subcommands: options, output, and running async work."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

if TYPE_CHECKING:
    from vhostcompat.profiles import Catalog

# asyncio and the profiles are imported where they are used: every command loads this
# module, and the libvirt hook's pass-through calls need neither.

T = TypeVar("T")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2

HOST_HELP = ("a host: an OVSDB remote (unix:PATH, tcp:IP:PORT, or comma-separated members "
             "of one database) or a directory path (the embedded store)")


class Report(Protocol):
    """What a reporting command prints: human lines, or one JSON document."""

    def lines(self) -> Sequence[str]: ...

    def to_json(self) -> object: ...


def add_command(subparsers: Subparsers, name: str, handler: Handler, *, summary: str,
                description: str, catalog: bool = False,
                json: bool = True) -> argparse.ArgumentParser:
    """Add one subcommand with the options every command of its kind shares."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    if catalog:
        add_catalog_option(parser)
    if json:
        add_json_option(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_host_option(parser: argparse.ArgumentParser, *names: str, required: bool = True,
                    extra: str = "", **options: Any) -> None:
    """A HOST argument (``--db``, ``--from`` ... or positional ``hosts``) with the one help."""
    if names[0].startswith("-"):
        options["required"] = required
    parser.add_argument(*names, metavar="HOST", help=HOST_HELP + extra, **options)


def emit_report(args: argparse.Namespace, report: Report) -> None:
    """Print ``report`` as JSON with ``--json``, as lines otherwise."""
    if args.json:
        emit_json(report.to_json())
    else:
        emit_lines(report.lines())


def add_catalog_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog", action="append", metavar="PATH", default=None,
        help="catalog file or directory (repeatable; replaces the default: the shipped "
             "catalogs plus /etc/vhostcompat/catalog.d)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout")


def catalog_from(args: argparse.Namespace) -> Catalog:
    from vhostcompat.profiles import load_catalog_or_default  # noqa: PLC0415

    paths: list[str] | None = args.catalog
    return load_catalog_or_default(paths)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    import asyncio  # noqa: PLC0415

    return asyncio.run(coroutine)


def emit_json(document: object) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def emit_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(str(row[column])) for row in [headers, *rows])
              for column in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines
