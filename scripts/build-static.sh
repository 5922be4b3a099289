#!/usr/bin/env bash
# Builds the statically linked flynn-host for VM images and the appliance, and
# the lean per-container monitor that goes beside it:
# target/x86_64-unknown-linux-gnu/appliance/{flynn-host,flynn-shim-monitor}
# (glibc, libseccomp and zlib-ng linked in; not position-independent). Needs scripts/deps.sh's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
# --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
# v0 mangling as in .cargo/config.toml, which RUSTFLAGS replaces.
# relocation-model=static: a static non-PIE executable, as scripts/link-ordered.sh
# explains.
# getrandom_backend: in a static binary the getrandom crate cannot find glibc's
# wrapper (dlsym) and falls back to polling /dev/random, which never makes the
# kernel gather jitter entropy: minutes of waiting on a machine without RDRAND.
# The syscall itself waits about a second there (agent/src/random.rs).
export RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -C symbol-mangling-version=v0 --cfg getrandom_backend=\"linux_getrandom\""
args=(--locked --profile appliance --target x86_64-unknown-linux-gnu)
cargo build "${args[@]}" -p flynn-runtime --bin flynn-shim-monitor
dir=target/x86_64-unknown-linux-gnu/appliance
# flynn-host itself is built by link-ordered.sh: its first link (with symbols)
# is the build, so the binary is linked twice, not three times.
bash scripts/link-ordered.sh "$dir" "${args[@]}"
for bin in "$dir/flynn-host" "$dir/flynn-shim-monitor"; do
    if ! file "$bin" | grep -q 'static'; then
        echo "build-static: $bin is not statically linked" >&2
        exit 1
    fi
    echo "$bin"
done
