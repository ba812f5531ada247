#!/usr/bin/env bash
# Set up, then run the main job: the upstream proposal's story, played by
# vhostcompat (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vhostcompat demo "$@"
