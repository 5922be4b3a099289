#!/usr/bin/env bash
# Longer fuzzing than the suite's bounded runs: every property-based fuzzer with N cases
# each (PROPTEST_CASES; the suite runs 256) and schemathesis with N/10 cases per
# operation (the suite runs 25). As root: the layer fuzzer unpacks in a chrooted jail
# and schemathesis drives a real daemon in a network namespace.
#   scripts/fuzz.sh [N]        (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
flynn_install_deps
N="${1:-10000}"
export PROPTEST_CASES="$N"
export FLYNN_SCHEMATHESIS_EXAMPLES="$(( N / 10 > 25 ? N / 10 : 25 ))"
echo "== property fuzzers, $N cases each"
cargo test --locked -p flynn-image --test fuzz -- --include-ignored --nocapture
cargo test --locked -p flynn-image --lib -- fuzz
cargo test --locked -p flynn-init --lib -- fuzz
cargo test --locked -p flynn-host --lib -- fuzz
echo "== schemathesis, $FLYNN_SCHEMATHESIS_EXAMPLES cases per operation"
cargo test --locked -p flynn-host --test schemathesis -- --nocapture schemathesis_finds_nothing
