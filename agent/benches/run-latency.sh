#!/usr/bin/env bash
# Benchmark: start-to-exit latency of `flynn-host run --rm busybox true` against
# `runc run` of an equivalent bundle (the same OCI spec our shim generated for a
# `--net none` job, on the same rootfs: a new, empty network namespace, as runc
# makes), measured in the same run; `runc run` of the plain spec `runc spec` writes
# (no seccomp: the start a runc user sees, the figure to beat); and the default
# (bridge) network beside them; and the floor (runtime/benches/floor/start.rs: the
# namespaces, a cgroup move, pivot_root and exec, nothing more), the start no
# runtime can beat on this kernel.
# The daemon runs in a network namespace of its own. Prints medians and the ratio.
# Measured twice: with the host's cgroup2 mount as it is, and with the
# `favordynmods` option the appliance's init mounts it with (moving a process into
# a cgroup then no longer waits for an RCU grace period). Both runtimes run under
# each setting. The mount's options are given back afterwards, but Linux 6.1 keeps
# favordynmods once it was set (until reboot): a second run measures it twice.
# Not a test: it asserts nothing, it reports. Usage: agent/benches/run-latency.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-50}
. scripts/deps.sh
flynn_install_deps hyperfine jq

. agent/benches/lib.sh
# The cgroup2 mount (/sys/fs/cgroup on a pure v2 host, .../unified on a hybrid one).
cg2= cg2_opts=
read -r cg2 cg2_opts < <(awk '$3 == "cgroup2" { print $2, $4; exit }' /proc/mounts) || true
bench_teardown() {
    if [ -n "$cg2" ]; then mount -o "remount,$cg2_opts" "$cg2" 2>/dev/null || true; fi
    "$bin" rm -f bench-spec >/dev/null 2>&1 || true
}
bench_start run

# The equivalent runc bundle: the spec our shim wrote for a job, with its rootfs
# copied to a plain directory, running `true`.
id=$("$bin" run -d --net none --name bench-spec busybox sleep 600)
mkdir -p "$work/bundle/rootfs"
cp -a "$work/state/jobs/$id/rootfs/." "$work/bundle/rootfs/"
# The job's /etc/hosts, hostname and resolv.conf are bind mounts from its job
# directory, which goes with the job: the bundle keeps copies.
cp -a "$work/state/jobs/$id/etc" "$work/bundle/etc"
jq --arg job "$work/state/jobs/$id" --arg bundle "$work/bundle" \
    '.root.path = "rootfs" | .process.args = ["true"] | .linux.cgroupsPath = "/flynn-bench/runc"
     | .mounts |= map(if (.source // "") | startswith($job) then .source |= ($bundle + ltrimstr($job)) else . end)' \
    "$work/state/jobs/$id/config.json" >"$work/bundle/config.json"
"$bin" rm -f bench-spec >/dev/null
# And the plain spec `runc spec` writes (no seccomp, no cgroup limits, runc's own
# mounts and capabilities) on the same rootfs: the start a runc user sees.
mkdir -p "$work/plain"
(cd "$work/plain" && runc spec)
jq --arg root "$work/bundle/rootfs" '.process.args = ["true"] | .process.terminal = false | .root.path = $root' \
    "$work/plain/config.json" >"$work/plain/config.json.new"
mv "$work/plain/config.json.new" "$work/plain/config.json"

cargo build --release --locked -q -p flynn-runtime --example start-floor
floor=$PWD/target/release/examples/start-floor
[ -n "$cg2" ] || { echo "run-latency: no cgroup2 mount for the floor program" >&2; exit 1; }

measure() { # LABEL
    hyperfine ${HYPERFINE_ARGS:-} --warmup 5 --runs "$runs" -N --export-json "$work/result.json" \
        --command-name flynn-host "$bin run --rm --net none busybox true" \
        --command-name flynn-bridge "$bin run --rm busybox true" \
        --command-name runc "runc run --bundle $work/bundle bench-runc" \
        --command-name runc-plain "runc run --bundle $work/plain bench-plain" \
        --command-name floor "$floor $work/bundle/rootfs $cg2" >/dev/null
    flynn=$(jq '.results[] | select(.command=="flynn-host") | .median' "$work/result.json")
    bridge=$(jq '.results[] | select(.command=="flynn-bridge") | .median' "$work/result.json")
    runc=$(jq '.results[] | select(.command=="runc") | .median' "$work/result.json")
    plain=$(jq '.results[] | select(.command=="runc-plain") | .median' "$work/result.json")
    fl=$(jq '.results[] | select(.command=="floor") | .median' "$work/result.json")
    awk -v f="$flynn" -v b="$bridge" -v r="$runc" -v p="$plain" -v fl="$fl" -v n="$runs" -v label="$1" 'BEGIN {
        printf "run latency, median of %d (busybox true, start to exit, removed), %s:\n", n, label
        printf "  flynn-host run --rm --net none : %7.2f ms\n", f * 1000
        printf "  flynn-host run --rm (bridge)   : %7.2f ms (the bridge adds %.2f ms)\n", b * 1000, (b - f) * 1000
        printf "  runc run (our spec)            : %7.2f ms\n", r * 1000
        printf "  runc run (runc spec, plain)    : %7.2f ms\n", p * 1000
        printf "  ratio flynn/runc (same work)   : %7.2f   (target <= 0.5)\n", f / r
        printf "  floor (namespaces, cgroup, pivot_root, exec): %7.2f ms\n", fl * 1000
        printf "  ratio flynn/runc (plain spec)  : %7.2f\n", f / p
        printf "  ratio flynn/floor              : %7.2f   (runc plain/floor %.2f)\n", f / fl, p / fl
    }'
}
measure "cgroup2 mounted as found ($cg2_opts)"
if [ -n "$cg2" ] && mount -o "remount,$cg2_opts,favordynmods" "$cg2" 2>/dev/null; then
    measure "cgroup2 with favordynmods (as the appliance mounts it)"
else
    echo "this kernel has no favordynmods (Linux 6.0+): measured as found only"
fi
