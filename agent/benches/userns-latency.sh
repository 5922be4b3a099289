#!/usr/bin/env bash
# Benchmark: start-to-exit latency of `flynn-host run --rm --net none busybox true`
# with a user namespace (`--userns`: a slice of the host's ids, the image's layers
# mounted idmapped) against the same run without (`--userns=host`), interleaved in
# the same hyperfine run; and the chowned-copy fallback (a daemon started with
# FLYNN_USERNS_NO_IDMAP=1), which copies the image per job. Prints medians and
# ratios. Not a test: it asserts nothing, it reports.
# Usage: agent/benches/userns-latency.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-50}
. scripts/deps.sh
flynn_install_deps hyperfine jq

. agent/benches/lib.sh
bench_start userns
# A job in a user namespace walks to its rootfs without the host's privileges:
# the scratch dir (mktemp's 0700) must be searchable by others.
chmod 711 "$work"

measure() { # OUT.json
    hyperfine ${HYPERFINE_ARGS:-} --warmup 5 --runs "$runs" -N --export-json "$1" \
        --command-name host "$bin run --rm --net none --userns=host busybox true" \
        --command-name userns "$bin run --rm --net none --userns busybox true" >/dev/null
}
median() { jq ".results[] | select(.command==\"$2\") | .median" "$1"; }

measure "$work/idmap.json"

# exec into a running job: libcontainer's tenant builder (--userns=host) against
# runtime::join, which also joins the job's user namespace (--userns).
plain=$("$bin" run -d --net none --userns=host busybox sleep 3600)
inns=$("$bin" run -d --net none --userns busybox sleep 3600)
hyperfine ${HYPERFINE_ARGS:-} --warmup 5 --runs "$runs" -N --export-json "$work/exec.json" \
    --command-name host "$bin exec $plain true" \
    --command-name userns "$bin exec $inns true" >/dev/null
"$bin" rm -f "$plain" "$inns" >/dev/null

# The fallback: the same daemon, restarted with idmapped mounts turned off.
kill "$daemon"; wait "$daemon" 2>/dev/null || true
FLYNN_USERNS_NO_IDMAP=1 nsenter --net="/run/netns/$netns" -- "$bin" daemon --state-dir "$work/state" \
    --listen 127.0.0.1:1113 --socket "$work/host.sock" 2>>"$work/daemon.log" &
daemon=$!
for _ in $(seq 1 100); do "$bin" version >/dev/null 2>&1 && break; sleep 0.05; done
measure "$work/copy.json"

awk -v h="$(median "$work/idmap.json" host)" -v u="$(median "$work/idmap.json" userns)" \
    -v h2="$(median "$work/copy.json" host)" -v c="$(median "$work/copy.json" userns)" \
    -v eh="$(median "$work/exec.json" host)" -v eu="$(median "$work/exec.json" userns)" \
    -v n="$runs" 'BEGIN {
    printf "run latency, median of %d (busybox true, --net none, start to exit, removed):\n", n
    printf "  --userns=host                  : %7.2f ms\n", h * 1000
    printf "  --userns (idmapped layers)     : %7.2f ms   ratio %.2f\n", u * 1000, u / h
    printf "  --userns=host (second daemon)  : %7.2f ms\n", h2 * 1000
    printf "  --userns (chowned copy)        : %7.2f ms   ratio %.2f\n", c * 1000, c / h2
    printf "exec latency, median of %d (exec JOB true, to exit):\n", n
    printf "  --userns=host (libcontainer)   : %7.2f ms\n", eh * 1000
    printf "  --userns (runtime::join)       : %7.2f ms   ratio %.2f\n", eu * 1000, eu / eh
}'
