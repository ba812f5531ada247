"""The CLI runner (and no machine catalog) for the fleet tests, as the CLI tests have them."""

from tests.cli.conftest import cli, no_system_catalog

__all__ = ["cli", "no_system_catalog"]
