#!/usr/bin/env bash
# Set up everything vhostcompat needs on a fresh Debian machine, idempotently:
# the Debian packages for the real components (when root), then a virtual
# environment in .venv with the package and its development tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# dpdk only *recommends* the vhost PMD and the ring mempool that testpmd needs:
# keep recommends on, and name those two so they can never be dropped.
DEBIAN_PACKAGES=(qemu-system-x86 openvswitch-common openvswitch-switch openvswitch-switch-dpdk
                 dpdk dpdk-dev librte-net-vhost23 librte-mempool-ring23 iproute2
                 libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu librsvg2-bin)
COMMANDS=(qemu-system-x86_64 ovsdb-server ovsdb-tool ovs-vsctl dpdk-testpmd
          /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk ip libvirtd virsh rsvg-convert)

missing() {
    local item
    if command -v dpkg-query >/dev/null 2>&1; then
        for item in "${DEBIAN_PACKAGES[@]}"; do
            dpkg-query -W -f='${Status}\n' "$item" 2>/dev/null |
                grep -q "install ok installed" || echo "$item"
        done
    else
        for item in "${COMMANDS[@]}"; do
            command -v "$item" >/dev/null 2>&1 || echo "$item"
        done
    fi
}

if [ -n "$(missing)" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: ${DEBIAN_PACKAGES[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        # A mirror hiccup should not fail a whole CI run: three bounded tries.
        for attempt in 1 2 3; do
            if apt-get update -q >/dev/null &&
               apt-get install -y -q "${DEBIAN_PACKAGES[@]}" >/dev/null; then
                break
            fi
            if [ "$attempt" -eq 3 ]; then
                echo "setup: apt-get failed three times" >&2
                exit 1
            fi
            sleep $((attempt * 5))
        done
    else
        echo "setup: not root (or no apt-get): not installing ${DEBIAN_PACKAGES[*]};" \
             "tests needing $(missing | tr '\n' ' ')will skip outside CI" >&2
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
# Byte-compile the tree: an editable install compiles nothing, and where
# PYTHONDONTWRITEBYTECODE is set (as on CI machines) every `vhostcompat`
# process (a proxy child, the agent, each command) would compile every module
# again on start: 0.75 s against 0.5 s for `vhostcompat --version` here.
# Python checks each .pyc against its source, so a stale one is never used.
.venv/bin/python -m compileall -q src >/dev/null

# QEMU 10.0 (bookworm-backports) beside the installed 7.2, unpacked privately by
# scripts/qemu10.sh, which leaves a wrapper in .venv/bin (see FIELD-NOTES).
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    bash scripts/qemu10.sh
else
    echo "setup: not root: not unpacking QEMU 10.0; tests needing it skip outside CI" >&2
fi
