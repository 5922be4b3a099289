#!/usr/bin/env bash
# Benchmark: memory of the daemon (idle, and with N running containers) and of
# the per-container shim, beside `runc run -d` containers (no shim at all: the
# floor) measured in the same run. Prints figures; asserts nothing.
# Usage: agent/benches/memory.sh [N]   (default 100)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-100}
. scripts/deps.sh
flynn_install_deps jq

. agent/benches/lib.sh
bench_teardown() {
    for id in $("$bin" ps -aq 2>/dev/null); do "$bin" rm -f "$id" >/dev/null 2>&1 || true; done
    for i in $(seq 1 "$n"); do runc delete -f "mem-runc-$i" >/dev/null 2>&1 || true; done
}
bench_start mem

kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
stats() { sort -n | awk '{a[NR]=$1; s+=$1} END {printf "median %6d kB  mean %6.0f kB", a[int((NR+1)/2)], s/NR}'; }

sleep 1
idle=$(kib "$daemon")

for i in $(seq 1 "$n"); do "$bin" run -d busybox sleep 3600 >/dev/null; done
sleep 2
busy=$(kib "$daemon")
shim_rss=""; shim_pss=""; ctr_rss=""
for dir in "$work"/state/jobs/*/; do
    pid=$(cat "$dir/shim.pid")
    shim_rss+="$(kib "$pid")"$'\n'
    shim_pss+="$(pss "$pid")"$'\n'
    cpid=$(jq -r .pid "$dir/job.json")
    ctr_rss+="$(kib "$cpid")"$'\n'
done

# The floor: the same containers under runc, which leaves no process behind them.
id=$(ls "$work/state/jobs" | head -1)
mkdir -p "$work/bundle/rootfs"
cp -a "$work/state/jobs/$id/rootfs/." "$work/bundle/rootfs/"
jq '.root.path = "rootfs" | .process.args = ["sleep", "3600"] | del(.linux.cgroupsPath)' \
    "$work/state/jobs/$id/config.json" >"$work/bundle/config.json"
runc_rss=""
for i in $(seq 1 "$n"); do
    runc run -d --bundle "$work/bundle" "mem-runc-$i" </dev/null >/dev/null 2>&1
    rpid=$(runc state "mem-runc-$i" | jq .pid)
    runc_rss+="$(kib "$rpid")"$'\n'
done
leftover=$(pgrep -fc 'runc' || true)

echo "memory with $n containers running \`sleep 3600\` (RSS from /proc/PID/status):"
echo "  flynn-host daemon, idle            : $idle kB   (target < 15 MB)"
echo "  flynn-host daemon, $n running     : $busy kB"
echo "  per-container shim RSS             : $(printf '%s' "$shim_rss" | stats)   (target < 1.5 MB)"
echo "  per-container shim PSS             : $(printf '%s' "$shim_pss" | stats)"
echo "  container process (flynn-host)     : $(printf '%s' "$ctr_rss" | stats)"
echo "  container process (runc run -d)    : $(printf '%s' "$runc_rss" | stats)   (floor: runc leaves no shim; runc processes left: $leftover)"
