#!/usr/bin/env bash
# Set up everything vhostcompat needs on a fresh Debian machine, idempotently:
# the Debian packages for the real components (when root), then a virtual
# environment in .venv with the package and its development tools.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(qemu-system-x86 openvswitch-common openvswitch-switch dpdk dpdk-dev)
COMMANDS=(qemu-system-x86_64 ovsdb-server ovsdb-tool ovs-vsctl dpdk-testpmd)

missing_commands() {
    local cmd
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || echo "$cmd"
    done
}

if [ -n "$(missing_commands)" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: ${DEBIAN_PACKAGES[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${DEBIAN_PACKAGES[@]}" >/dev/null
    else
        echo "setup: not root (or no apt-get): not installing ${DEBIAN_PACKAGES[*]};" \
             "tests needing $(missing_commands | tr '\n' ' ')will skip outside CI" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.vhostcompat-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
