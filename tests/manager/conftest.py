"""The CLI runner of tests/cli, for the manager's command-line checks."""

from tests.cli.conftest import cli, no_system_catalog

__all__ = ["cli", "no_system_catalog"]
