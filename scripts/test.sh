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
echo "== cargo test: building the tests (at ${SECONDS}s)"
export FLYNN_FIXTURES="$PWD/target/fixtures"
cargo test --workspace --locked --no-run
# The VM tests run beside the others: they keep the CPUs busy emulating, while the
# others mostly wait on daemons, hosts in namespaces and etcd, so the two together
# take little longer than the longer of them. The VM test binaries are run directly
# (cargo would hold the build directory's lock for as long as it runs tests); their
# output follows the others'.
mapfile -t vm_tests < <(cargo test -p qemu-tests --locked --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
vm_log="$PWD/target/qemu-tests.log"
echo "== cargo test (at ${SECONDS}s): ${#vm_tests[@]} VM test binaries beside the rest, logged to $vm_log"
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
(
    cd qemu-tests
    rc=0
    for t in "${vm_tests[@]}"; do
        echo "     Running $t"
        "$t" --include-ignored "$@" || rc=1
    done
    exit $rc
) 2>&1 | stamp >"$vm_log" &
vm_pid=$!
# --include-ignored: the unit tests that need root are ignored in the fast tier only.
# --no-fail-fast: one failing test file does not hide how the others fare.
rest=0
cargo test --workspace --exclude qemu-tests --locked --no-fail-fast -- --include-ignored "$@" 2>&1 | stamp || rest=$?
vm=0
wait "$vm_pid" || vm=$?
echo "== qemu-tests (ran beside the above; ended at ${SECONDS}s)"
cat "$vm_log"
if [ "$rest" != 0 ] || [ "$vm" != 0 ]; then
    echo "== tests failed: workspace $rest, qemu-tests $vm" >&2
    exit 1
fi
