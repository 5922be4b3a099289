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
echo "== fixtures (at ${SECONDS}s)"
export FLYNN_FIXTURES="$PWD/target/fixtures"
bash fixtures/build-images.sh "$FLYNN_FIXTURES"
echo "== cargo test: building the tests (at ${SECONDS}s)"
cargo test --workspace --locked --no-run

# The VM test binaries, listed now: they are run directly, later, while cargo may
# still hold the build directory's lock for the other tests.
mapfile -t vm_tests < <(cargo test -p qemu-tests --locked --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
[ ${#vm_tests[@]} -gt 0 ] || { echo "no qemu-tests binaries found" >&2; exit 1; }

# Each test binary's start, in seconds from the beginning: where a slow run went.
stamp() {
    local line
    while IFS= read -r line; do
        case $line in
        *"Running "*) echo "[${SECONDS}s] $line" ;;
        *) echo "$line" ;;
        esac
    done
}
# The tests that need no VM run first, in the background, while the appliance is
# built: they mostly wait (on daemons, hosts in namespaces, etcd), and the build,
# niced, takes the CPU they leave. The VM tests (CPU-bound emulation, and the
# most sensitive to a loaded machine) come after the build, when little else runs.
# --include-ignored: the unit tests that need root are ignored in the fast tier only.
# --no-fail-fast: one failing test file does not hide how the others fare.
rest_log="$PWD/target/tests.log"
echo "== cargo test of all but the VM tests (at ${SECONDS}s), in the background: $rest_log"
cargo test --workspace --exclude qemu-tests --locked --no-fail-fast -- --include-ignored "$@" 2>&1 |
    stamp >"$rest_log" &
rest_pid=$!

echo "== static flynn-host (for the VM tests) (at ${SECONDS}s)"
nice -n 10 bash scripts/build-static.sh
echo "== appliance images (out/) (at ${SECONDS}s)"
# The epoch is set here so that qemu-tests/tests/reproducible.rs builds its second
# copy with the same one and compares it with this out/ (one assembly fewer).
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH FLYNN_REPRO_BASELINE="$PWD/out"
nice -n 10 bash buildroot/assemble.sh
echo "== qemu-tests (at ${SECONDS}s)"
vm=0
if ! (
    cd qemu-tests
    failed=0
    for t in "${vm_tests[@]}"; do
        echo "     Running $t"
        "$t" --include-ignored "$@" || failed=1
    done
    exit $failed
) 2>&1 | stamp; then
    vm=1
fi
rest=0
wait "$rest_pid" || rest=$?
echo "== the other tests (ran in the background; ended by ${SECONDS}s)"
cat "$rest_log"
if [ "$rest" != 0 ] || [ "$vm" != 0 ]; then
    echo "== tests failed: qemu-tests $vm, the others $rest" >&2
    exit 1
fi
