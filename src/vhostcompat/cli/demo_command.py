"""``vhostcompat demo``: play the upstream proposal's story (see vhostcompat.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vhostcompat.cli.common import Subparsers
from vhostcompat.demo import run_demo


def demo(args: argparse.Namespace) -> int:
    workdir: Path | None = args.workdir
    return run_demo(workdir=workdir)


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="play the upstream proposal's story with embedded hosts",
        description="Publish the shipped catalogs into embedded hosts in a temporary "
                    "directory, then show selection, a refused and a passing migration "
                    "check. Exit 0 if every outcome was the expected one, 1 otherwise.")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="play in DIR and keep it (default: a temporary directory, "
                             "removed afterwards)")
    parser.set_defaults(handler=demo)
