#!/usr/bin/env bash
# Builds the statically linked flynn-host for VM images and the appliance:
# target/x86_64-unknown-linux-gnu/appliance/flynn-host (glibc static-pie,
# libseccomp and zlib-ng linked in). Needs the packages of scripts/deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
# --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile appliance -p flynn-host --target x86_64-unknown-linux-gnu
bin=target/x86_64-unknown-linux-gnu/appliance/flynn-host
if ! file "$bin" | grep -q 'static'; then
    echo "build-static: $bin is not statically linked" >&2
    exit 1
fi
echo "$bin"
