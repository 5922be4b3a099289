#!/usr/bin/env bash
# The cost of TLS on API calls: the median wall time of `flynn-host ps` (a new
# process, one GET /jobs) over plain HTTP on the daemon's loopback against HTTPS
# on an address off loopback (pin, and CA file), same daemon, same run, calls
# interleaved. The daemon runs in a network namespace of its own with a veth
# pair inside it (10.251.0.1), so no packet leaves this machine.
#
#   bash agent/benches/tls-latency.sh [CALLS]        (default 100 per kind)
#   FLYNN_BENCH_BIN=path/to/flynn-host ...           (default: a release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
calls=${1:-100}
if [ -n "${FLYNN_BENCH_BIN:-}" ]; then
    bin=$FLYNN_BENCH_BIN
else
    cargo build --release --locked -p flynn-host --bin flynn-host -p flynn-runtime --bin flynn-shim-monitor >/dev/null 2>&1
    bin="$PWD/target/release/flynn-host"
fi
work=$(mktemp -d /var/tmp/flynn-tlsbench-XXXXXX)
netns="fb-tls-$(basename "$work" | tr -dc 'a-zA-Z0-9' | tail -c 6)"
ip netns add "$netns"
stop() {
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    umount -l "$work"/state/netns/* "$work/state/netns" 2>/dev/null || true
    ip netns del "$netns" 2>/dev/null || true
    rm -rf "$work"
}
ip -n "$netns" link set lo up
ip -n "$netns" link add d0 type veth peer name d1
ip -n "$netns" link set d1 up
ip -n "$netns" addr add 10.251.0.1/24 dev d0
ip -n "$netns" link set d0 up
in_ns() { nsenter --net="/run/netns/$netns" -- "$@"; }
# nsenter execs the daemon, so $! is the daemon (a shell function here would put a
# subshell in between, and the kill at the end would miss the daemon).
nsenter --net="/run/netns/$netns" -- "$bin" daemon --state-dir "$work/state" --listen 0.0.0.0:1113 \
    --socket "$work/host.sock" 2>"$work/daemon.log" &
daemon=$!
trap stop EXIT
trap 'exit 1' INT TERM
export FLYNN_TOKEN
for _ in $(seq 1 200); do
    [ -f "$work/state/token" ] && FLYNN_TOKEN=$(cat "$work/state/token") &&
        in_ns "$bin" --host http://127.0.0.1:1113 version >/dev/null 2>&1 && break
    sleep 0.05
done
pin=$(in_ns "$bin" --host http://127.0.0.1:1113 tls pin)

# Runs one call; prints its wall time in microseconds.
timed() {
    local t0 t1
    t0=$(date +%s%N)
    in_ns "$bin" "$@" ps >/dev/null
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000))
}
: >"$work/plain" ; : >"$work/pin" ; : >"$work/ca"
for _ in 1 2 3; do timed --host http://127.0.0.1:1113 >/dev/null; done
for _ in $(seq 1 "$calls"); do
    timed --host http://127.0.0.1:1113 >>"$work/plain"
    timed --host https://10.251.0.1:1113 --tls-pin "$pin" >>"$work/pin"
    timed --host https://10.251.0.1:1113 --tls-ca "$work/state/tls/ca.pem" >>"$work/ca"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]/1000}'; }
plain=$(median "$work/plain"); pin_ms=$(median "$work/pin"); ca_ms=$(median "$work/ca")
echo "flynn-host ps, median of $calls calls each (a new process per call):"
echo "  plain HTTP (loopback):   $plain ms"
echo "  HTTPS, --tls-pin:        $pin_ms ms  ($(awk -v a="$pin_ms" -v b="$plain" 'BEGIN{printf "%+.2f ms", a-b}'))"
echo "  HTTPS, --tls-ca FILE:    $ca_ms ms  ($(awk -v a="$ca_ms" -v b="$plain" 'BEGIN{printf "%+.2f ms", a-b}'))"
