"""The command line imports only the module of the command it runs.

:data:`vhostcompat.cli.COMMANDS` says which module registers each command;
it must say exactly what the modules register, or a command would be missing
(or registered twice) when it is run alone.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from vhostcompat.cli import COMMAND_MODULES, COMMANDS, build_parser, modules_for


def _registered() -> dict[str, str]:
    registered: dict[str, str] = {}
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    for name in COMMAND_MODULES:
        before = set(subparsers.choices)
        importlib.import_module(name).register(subparsers)
        registered.update(dict.fromkeys(set(subparsers.choices) - before, name))
    return registered


def test_the_table_says_exactly_which_module_registers_each_command() -> None:
    assert _registered() == dict(COMMANDS)


@pytest.mark.parametrize(("argv", "expected"), [
    (["versions", "unix:/run/db.sock"], ("vhostcompat.cli.manager_commands",)),
    (["-v", "proxy", "--help"], ("vhostcompat.cli.proxy_commands",)),
    (["--help"], COMMAND_MODULES),
    (["-h", "versions"], COMMAND_MODULES),
    (["no-such-command"], COMMAND_MODULES),
    ([], COMMAND_MODULES),
])
def test_only_the_command_given_is_imported(argv: list[str], expected: tuple[str, ...]) -> None:
    assert modules_for(argv) == expected


def test_a_command_run_alone_parses_as_in_the_whole_parser() -> None:
    argv = ["check-migration", "--from", "a", "--to", "b", "--iface", "vhu0"]
    alone = vars(build_parser(argv).parse_known_args(argv)[0])
    whole = vars(build_parser().parse_known_args(argv)[0])
    assert alone == whole


def test_versions_does_not_import_the_other_commands() -> None:
    probe = ("import sys\nfrom vhostcompat.cli import build_parser\n"
             "build_parser(['versions', 'unix:/x'])\n"
             "print(sorted(m for m in sys.modules if m.startswith('vhostcompat.cli.')))")
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    assert "manager_commands" in output
    for other in ("libvirt_commands", "demo_command", "agent_command", "proxy_commands"):
        assert other not in output


PROVISION_NEEDS_NONE_OF = ("vhostcompat.vhostuser", "vhostcompat.transport",
                           "vhostcompat.verify", "'rich", "xml.sax")
# libvirt runs the hook on every start, stop and release of every domain: the calls
# it only lets through need the arguments checked, nothing else.
PASS_THROUGH_NEEDS_NONE_OF = ("vhostcompat.hoststore", "vhostcompat.profiles",
                              "vhostcompat.manager", "vhostcompat.libvirt.domain", "'asyncio",
                              "xml.")


@pytest.mark.parametrize(("argv", "expected", "status", "absent"), [
    (["provision", "--iface", "vhu0", "{missing}"], "vhostcompat.manager.provision", 2,
     PROVISION_NEEDS_NONE_OF),
    (["libvirt-hook", "--db", "{missing}", "vm1", "release", "end", "-"],
     "vhostcompat.libvirt.calls", 0, PASS_THROUGH_NEEDS_NONE_OF),
], ids=["provision", "hook-pass-through"])
def test_a_command_loads_only_what_it_needs(tmp_path: Path, argv: list[str], expected: str,
                                            status: int, absent: tuple[str, ...]) -> None:
    """What a command imports is most of its start-up: provision over one host took
    0.44 s before and 0.29 s after; a hook call libvirt makes on every domain stop,
    0.31 s before and 0.1 s after."""
    argv = [arg.format(missing=tmp_path / "none") for arg in argv]
    probe = ("import sys\nfrom vhostcompat.cli import main\n"
             f"code = main({argv!r})\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('vhostcompat', 'rich', 'xml', 'asyncio')))\n"
             "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == status, done.stderr
    loaded = done.stdout
    assert expected in loaded
    for heavy in absent:
        assert heavy not in loaded, heavy
