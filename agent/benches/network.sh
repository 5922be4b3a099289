#!/usr/bin/env bash
# Benchmark: the host network, in a network namespace of its own (the machine's own
# networking is never touched). In one run, on the same machine:
#  1. TCP throughput between two jobs on the bridge (iperf3 inside the containers)
#     against two bare network namespaces joined by a veth pair (the same iperf3 on
#     the host): ratio, target >= 0.9.
#  2. The start latency a bridge network adds: `run --rm busybox true` against the
#     same with `--net none`, alternating, medians: target < 5 ms added. Beside it the
#     floor: the kernel's share of the same wiring (a network namespace, a veth pair
#     on a bridge, addresses, links up, a default route) done by two `ip -batch`, less
#     two empty ones (the processes' own start).
# Not a test: it asserts nothing, it reports. Usage: agent/benches/network.sh [RUNS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-50}
secs=${2:-5}
. scripts/deps.sh
flynn_install_deps hyperfine jq

# The binary as the other benches run it (lib.sh: ordered and not position-independent,
# or FLYNN_BENCH_BIN): a plain PIE build starts every CLI command and shim slower.
. agent/benches/lib.sh
bench_bin
bash fixtures/build-images.sh "$PWD/target/fixtures" >/dev/null

work=$(mktemp -d /var/tmp/flynn-bench-XXXXXX)
tag=$(basename "$work" | tr -dc 'a-zA-Z0-9' | tail -c 6)
host="fb-host-$tag" a="fb-a-$tag" b="fb-b-$tag"
ip netns add "$host"; ip netns add "$a"; ip netns add "$b"
for ns in "$host" "$a" "$b"; do ip -n "$ns" link set lo up; done
# br_netfilter, when some other software loaded it (this dev machine has it; the
# appliance does not), hands every bridged frame to the IP hooks. NO_BR_NETFILTER=1
# turns that off in the bench's own namespace only, to show its cost.
if [ "${NO_BR_NETFILTER:-0}" = 1 ] && [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    ip netns exec "$host" sysctl -qw net.bridge.bridge-nf-call-iptables=0
fi
brnf=$(ip netns exec "$host" cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo "not loaded")
inhost() { nsenter --net="/run/netns/$host" -- "$@"; }
port=1113
export FLYNN_HOST="unix://$work/host.sock"
# nsenter itself, not the inhost function: $! must be the daemon (nsenter execs
# it), not a subshell whose kill would leave the daemon running.
nsenter --net="/run/netns/$host" -- "$bin" daemon --state-dir "$work/state" --listen "127.0.0.1:$port" --socket "$work/host.sock" 2>"$work/daemon.log" &
daemon=$!
cleanup() {
    for id in $("$bin" ps -aq 2>/dev/null); do "$bin" rm -f "$id" >/dev/null 2>&1 || true; done
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    umount -l "$work"/state/jobs/*/rootfs 2>/dev/null || true
    umount -l "$work"/state/netns/* "$work/state/netns" 2>/dev/null || true
    for ns in "$host" "$a" "$b"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do "$bin" version >/dev/null 2>&1 && break; sleep 0.05; done
"$bin" import target/fixtures/iperf3-docker.tar >/dev/null
"$bin" import target/fixtures/busybox-docker.tar >/dev/null

gbits() { jq '.end.sum_received.bits_per_second / 1e9'; }

# 1a. The anchor: veth between two bare namespaces, MTU as on the bridge.
mtu=$(inhost cat /sys/class/net/flynnbr0/mtu 2>/dev/null || echo 1500)
ip -n "$a" link add v0 type veth peer name v1 netns "$b"
ip -n "$a" link set v0 mtu "$mtu" up; ip -n "$b" link set v1 mtu "$mtu" up
ip -n "$a" addr add 10.201.0.1/24 dev v0; ip -n "$b" addr add 10.201.0.2/24 dev v1
ip netns exec "$a" iperf3 -s -1 -D -I "$work/anchor.pid" >/dev/null
sleep 0.3
veth=$(ip netns exec "$b" iperf3 -c 10.201.0.1 -t "$secs" -J | gbits)

# 1b. Job to job across the bridge.
"$bin" run -d --name iperf-server flynn-test/iperf3 iperf3 -s >/dev/null
srv_ip=$("$bin" inspect iperf-server | jq -r '.[0].network.ip')
sleep 0.3
bridge=$("$bin" run --rm flynn-test/iperf3 iperf3 -c "$srv_ip" -t "$secs" -J | gbits)
"$bin" rm -f iperf-server >/dev/null

# 2. Start latency, bridge against none.
hyperfine --warmup 5 --runs "$runs" -N --export-json "$work/latency.json" \
    --command-name bridge "$bin run --rm busybox true" \
    --command-name none "$bin run --rm --net none busybox true" >/dev/null
lat_bridge=$(jq '.results[] | select(.command=="bridge") | .median' "$work/latency.json")
lat_none=$(jq '.results[] | select(.command=="none") | .median' "$work/latency.json")

# 2b. The floor, in the daemon's namespace, on a bridge of its own. Each timed run
# wires a fresh namespace; the previous one is removed before it, untimed.
inhost ip link add flbr0 type bridge
inhost ip addr add 10.202.0.1/24 dev flbr0
inhost ip link set flbr0 up
# `ip -batch` takes no `-n` per line: the outside and the inside are two batches.
printf 'netns add fl\nlink add flv0 type veth peer name eth0 netns fl\nlink set flv0 master flbr0 up\n' >"$work/outer.batch"
printf 'link set lo up\naddr add 10.202.0.2/24 dev eth0\nlink set eth0 up\nroute add default via 10.202.0.1\n' >"$work/inner.batch"
: >"$work/empty.batch"
# The veth goes first: removing the namespace alone frees its pair only later.
hyperfine --warmup 5 --runs "$runs" -N --export-json "$work/floor.json" \
    --prepare "nsenter --net=/run/netns/$host -- sh -c 'ip link del flv0 2>/dev/null; ip netns del fl 2>/dev/null; true'" \
    --command-name floor "nsenter --net=/run/netns/$host -- sh -c 'ip -batch $work/outer.batch && ip -n fl -batch $work/inner.batch'" \
    --command-name empty "nsenter --net=/run/netns/$host -- sh -c 'ip -batch $work/empty.batch && ip -batch $work/empty.batch'" >/dev/null
inhost ip link del flv0 2>/dev/null || true
inhost ip netns del fl 2>/dev/null || true
lat_floor=$(jq '.results[] | select(.command=="floor") | .median' "$work/floor.json")
lat_empty=$(jq '.results[] | select(.command=="empty") | .median' "$work/floor.json")

awk -v v="$veth" -v b="$bridge" -v lb="$lat_bridge" -v ln="$lat_none" -v lf="$lat_floor" -v le="$lat_empty" -v n="$runs" -v s="$secs" -v m="$mtu" -v brnf="$brnf" 'BEGIN {
    printf "TCP throughput, iperf3 %d s, MTU %d, bridge-nf-call-iptables %s:\n", s, m, brnf
    printf "  veth between bare namespaces : %7.2f Gbit/s\n", v
    printf "  job to job on the bridge     : %7.2f Gbit/s\n", b
    printf "  ratio bridge/veth            : %7.2f   (target >= 0.9)\n", b / v
    printf "start latency, median of %d (run --rm busybox true):\n", n
    printf "  --net none                   : %7.2f ms\n", ln * 1000
    printf "  bridge (default)             : %7.2f ms\n", lb * 1000
    printf "  added by the network         : %7.2f ms (target < 5)\n", (lb - ln) * 1000
    printf "  floor (ip -batch, the same wiring, less the processes): %.2f ms (%.2f - %.2f)\n", (lf - le) * 1000, lf * 1000, le * 1000
}'
