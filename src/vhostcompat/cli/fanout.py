"""What every fleet-querying subcommand shares: ``--concurrency``, ``--timeout``, a progress bar.

The progress bar (rich) is drawn on stderr only when stderr is a terminal
and ``--json`` is not given, so scripts and pipes never see it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from vhostcompat.cli.fleet_commands import add_fleet_options, fleet_source
from vhostcompat.manager import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    HostStores,
    ProgressCallback,
    RecordSource,
)


def add_fanout_options(parser: argparse.ArgumentParser) -> None:
    add_fleet_options(parser)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                        help=f"ask at most N hosts at a time (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="give up on a host after this long; it is then reported as "
                             f"unreachable, never as compatible (default {DEFAULT_TIMEOUT:g})")


def record_source(args: argparse.Namespace) -> RecordSource:
    """Each host's own store, or with ``--fleet`` the fleet database (hosts by fleet name)."""
    if args.fleet is not None:
        return fleet_source(args)
    return HostStores(concurrency=args.concurrency, timeout=args.timeout)


def wants_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "json", False) and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(args: argparse.Namespace, what: str) -> Iterator[ProgressCallback | None]:
    """A callback drawing a bar on a terminal's stderr, or None (no terminal, --json)."""
    if not wants_progress(args):
        yield None
        return
    # rich only on a terminal: its import is a sixth of a command's start-up.
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn(f"{what}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[host]}"), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(what, total=None, host="")

    def advance(address: str, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, host=address)

    with bar:
        yield advance
