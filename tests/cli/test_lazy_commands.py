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


def test_a_manager_verb_loads_neither_the_vhost_user_codec_nor_rich_off_a_terminal(
        tmp_path: Path) -> None:
    """What a command imports is most of its start-up (0.44 s before, 0.29 s after, for
    provision over one host): the codec, the transport, rich (a progress bar needs a
    terminal) and xml.sax (urllib, email) are not a manager verb's."""
    probe = ("import sys\nfrom vhostcompat.cli import main\n"
             f"code = main(['provision', '--iface', 'vhu0', {str(tmp_path / 'none')!r}])\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('vhostcompat', 'rich', 'xml')))\n"
             "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr  # the host does not exist: one line, exit 2
    loaded = done.stdout
    assert "vhostcompat.manager.provision" in loaded
    for heavy in ("vhostcompat.vhostuser", "vhostcompat.transport", "vhostcompat.verify",
                  "'rich", "xml.sax"):
        assert heavy not in loaded, heavy
