"""Fixtures for the backend tests: the CLI runner of tests/cli."""

from __future__ import annotations

from tests.cli.conftest import cli, no_system_catalog

__all__ = ["cli", "no_system_catalog"]

