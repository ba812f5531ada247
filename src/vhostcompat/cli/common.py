"""Shared pieces of the subcommands: options, output, and running async work."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeAlias, TypeVar

from vhostcompat.profiles import Catalog, load_catalog_or_default

T = TypeVar("T")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_catalog_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog", action="append", metavar="PATH", default=None,
        help="catalog file or directory (repeatable; replaces the default: the shipped "
             "catalogs plus /etc/vhostcompat/catalog.d)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout")


def catalog_from(args: argparse.Namespace) -> Catalog:
    paths: list[str] | None = args.catalog
    return load_catalog_or_default(paths)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
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
