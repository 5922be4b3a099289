#!/usr/bin/env bash
# Cluster benchmark under QEMU (TCG, 1 vCPU per VM): runs the cluster test
# (three appliances) and the one-appliance baseline ROUNDS times each (default 1;
# each round of the pair takes some 8 minutes on two shared cores) and prints every
# BENCH line they print, then the median of each figure:
#   3 VMs: VMs started -> cluster bootstrapped (Layer 0 + Layer 1); a VM's
#   SIGKILL -> it is out of the hosts and the other two serve the controller
#   through their routers; its boot -> rejoined and serving; full power-off ->
#   all three serving again.
#   1 VM: started -> bootstrapped (flynn-host bootstrap from the test); SIGKILL ->
#   booted again and serving; power-off -> booted again and serving.
# Needs the ISO (buildroot/assemble.sh) and the static flynn-host (scripts/build-static.sh).
# Usage: bash qemu-tests/benches/cluster.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-1}
export CARGO_INCREMENTAL=0
log=${FLYNN_BENCH_LOG:-target/qemu-logs/cluster-bench.log}
mkdir -p "$(dirname "$log")"
: >"$log"
for r in $(seq 1 "$rounds"); do
    for t in three_appliances one_appliance_baseline; do
        echo "== round $r: $t" | tee -a "$log"
        cargo test -q -p qemu-tests --test cluster -- --ignored --exact --nocapture "$(
            case $t in
            three_appliances) echo three_appliances_bootstrap_survive_a_killed_vm_and_a_full_restart ;;
            *) echo one_appliance_baseline_bootstrap_kill_and_restart ;;
            esac
        )" 2>&1 | tee -a "$log" | grep -a 'BENCH\|test result\|panicked' || true
    done
done
echo "== medians over $rounds round(s)"
grep -a '^BENCH' "$log" | sed -E 's/ [0-9]+\.[0-9] s / N s /; s/\(same id [^)]*\)//' | sort -u | while read -r figure; do
    pattern=$(printf '%s' "$figure" | sed -E 's/[][\.*^$()]/\\&/g; s/ N s / ([0-9]+\\.[0-9]) s /')
    values=$(grep -a '^BENCH' "$log" | sed -E 's/\(same id [^)]*\)//' | sed -nE "s/^$pattern.*/\1/p" | sort -n)
    count=$(echo "$values" | grep -c . || true)
    [ "$count" -gt 0 ] || continue
    median=$(echo "$values" | awk -v n="$count" 'NR == int((n + 1) / 2) { print }')
    echo "$figure: median $median s over $count"
done
