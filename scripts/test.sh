#!/usr/bin/env bash
# Set up, then run every check: ruff, mypy --strict and the whole pytest suite
# (unit, property, fuzz and the end-to-end tests with real QEMU, DPDK testpmd
# and ovsdb-server). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
