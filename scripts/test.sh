#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, builds
# the fixture images, and runs every test (as root: real namespaces, cgroups,
# overlayfs). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

# --fast: the tier to run while working: the pure tests (unit tests of every crate:
# spec building, config merging, parsers, scheduling logic), no root, no VMs, no
# daemons. The full suite below stays the test command.
if [ "${1:-}" = "--fast" ]; then
    shift
    if [ "$(id -u)" = 0 ]; then
        flynn_install_deps
    else
        flynn_check_deps
    fi
    exec cargo test --workspace --lib --bins --locked -- "$@"
fi

flynn_install_deps
# Each phase prints when it began, and the end says how long the whole took: what a
# slow CI run spent its time on.
trap 'echo "== test.sh ended after ${SECONDS}s"' EXIT
# A clean clone builds once: incremental caches would only double the disk it takes
# (tens of GB for this workspace), which a CI machine may not have.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt (at ${SECONDS}s)"
cargo fmt --all -- --check
echo "== cargo clippy (at ${SECONDS}s)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== static flynn-host (for the VM tests) (at ${SECONDS}s)"
bash scripts/build-static.sh
echo "== fixtures (at ${SECONDS}s)"
bash fixtures/build-images.sh "$PWD/target/fixtures"
echo "== appliance images (out/) (at ${SECONDS}s)"
# The epoch is set here so that qemu-tests/tests/reproducible.rs builds its second
# copy with the same one and compares it with this out/ (one assembly fewer).
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH FLYNN_REPRO_BASELINE="$PWD/out"
FLYNN_FIXTURES="$PWD/target/fixtures" bash buildroot/assemble.sh
echo "== cargo test (at ${SECONDS}s)"
# --include-ignored: the unit tests that need root are ignored in the fast tier only.
# --no-fail-fast: one failing test file does not hide how the others fare.
FLYNN_FIXTURES="$PWD/target/fixtures" cargo test --workspace --locked --no-fail-fast -- --include-ignored "$@"
