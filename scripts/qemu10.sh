#!/usr/bin/env bash
# QEMU 10.0 from bookworm-backports, unpacked privately beside Debian 12's QEMU
# 7.2 (which stays installed and untouched), idempotently:
#   .cache/qemu-10.0/               the unpacked packages
#   .venv/bin/qemu-system-x86_64-10.0  a wrapper that sets QEMU_MODULE_DIR and the
#                                   firmware paths, so it is used like any binary.
# Needs root (apt-get download of a suite that may need adding to apt's sources).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/.cache/qemu-10.0
wrapper=.venv/bin/qemu-system-x86_64-10.0
stamp=$root/.complete
SUITE=bookworm-backports
PACKAGES=(qemu-system-x86/$SUITE qemu-system-data/$SUITE qemu-system-common/$SUITE
          seabios/$SUITE ipxe-qemu qemu-system-modules-opengl/$SUITE
          qemu-system-gui/$SUITE qemu-system-modules-spice/$SUITE qemu-block-extra/$SUITE)

if [ ! -f "$stamp" ]; then
    if ! grep -rqs "$SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "setup: adding $SUITE to apt's sources (nothing is installed from it)" >&2
        cat > /etc/apt/sources.list.d/vhostcompat-backports.sources <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
        apt-get update -q >/dev/null
    fi
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    echo "setup: fetching QEMU 10.0 from $SUITE into $root" >&2
    for attempt in 1 2 3; do
        if (cd "$download" && apt-get download -q -o APT::Sandbox::User=root \
                "${PACKAGES[@]}" >/dev/null); then
            break
        fi
        if [ "$attempt" -eq 3 ]; then
            echo "setup: apt-get download of QEMU 10.0 failed three times" >&2
            exit 1
        fi
        apt-get update -q >/dev/null || true
        sleep $((attempt * 5))
    done
    rm -rf "$root.partial"
    mkdir -p "$root.partial"
    for deb in "$download"/*.deb; do
        dpkg -x "$deb" "$root.partial"
    done
    rm -rf "$root"
    mv "$root.partial" "$root"
    touch "$stamp"
fi

mkdir -p "$(dirname "$wrapper")"
cat > "$wrapper.partial" <<WRAPPER
#!/bin/sh
# QEMU 10.0 unpacked by scripts/qemu10.sh: its own modules and firmware, never 7.2's.
export QEMU_MODULE_DIR="$root/usr/lib/x86_64-linux-gnu/qemu"
exec "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios" \\
    -L "$root/usr/lib/ipxe/qemu" "\$@"
WRAPPER
chmod 755 "$wrapper.partial"
mv "$wrapper.partial" "$wrapper"
