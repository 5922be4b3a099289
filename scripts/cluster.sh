#!/usr/bin/env bash
# The main job's cluster form (`bash scripts/main.sh --nodes N`, N = 2..9): N
# appliances booted from out/flynn-x86_64.iso, each with a state disk kept in
# out/cluster/ and a NoCloud seed (token, peers, host name, static address), on
# a bridge inside the network namespace `flynn-main` that this script makes
# (10.90.0.1/24, nodes at 10.90.0.11...; no other interface, no route anywhere).
# The nodes bootstrap themselves (the lowest address runs the bootstrap once all
# answer). Ports on 127.0.0.1 reach into the namespace through socat (one socat
# per connection enters the namespace: no link between the namespaces):
#   1211N -> node N's API (1113); 12080 -> node 1's router (80); 12081 -> node 1's
#   router's TCP route to the controllers (81).
# `cluster.sh start N` (main.sh --nodes N) boots them and waits; `cluster.sh stop`
# (main.sh stop) presses every node's power button; the state disks stay.
# Called by scripts/main.sh after the images are built.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/out/cluster
ns=flynn-main
memory=${FLYNN_NODE_MEMORY:-768}
mkdir -p "$dir"

addr() { echo "10.90.0.$((10 + $1))"; }
running() { [ -f "$dir/node$1.pid" ] && kill -0 "$(cat "$dir/node$1.pid")" 2>/dev/null; }
nodes_known() { ls "$dir"/node*.pid 2>/dev/null | sed -n 's/.*node\([0-9]*\)\.pid/\1/p' | sort -n; }

stop_forwards() {
    if [ -f "$dir/forwards.pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$dir/forwards.pids"
        rm -f "$dir/forwards.pids"
    fi
}

if [ "${1:-}" = stop ]; then
    any=0
    for i in $(nodes_known); do
        running "$i" || { rm -f "$dir/node$i.pid"; continue; }
        any=1
        printf '{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n' |
            socat -t 2 - "UNIX-CONNECT:$dir/node$i.qmp" >/dev/null
    done
    for i in $(nodes_known); do
        pid=$(cat "$dir/node$i.pid" 2>/dev/null) || continue
        for _ in $(seq 1 900); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "node$i did not power off within 90 s; killing QEMU" >&2
            kill "$pid"
        fi
        echo "node$i: $(grep -a 'flynn-init:' "$dir/node$i-console.log" | tail -n 1)"
        rm -f "$dir/node$i.pid"
    done
    stop_forwards
    ip netns del "$ns" 2>/dev/null || true
    [ "$any" = 1 ] || echo "no cluster node is running"
    exit 0
fi

[ "${1:-}" = start ] || { echo "usage: cluster.sh start N | stop" >&2; exit 2; }
n=${2:-3}
case "$n" in [2-9]) ;; *) echo "--nodes takes 2 to 9" >&2; exit 2 ;; esac

# One token for the cluster, made once and kept with the state disks.
[ -s "$dir/token" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$dir/token"
token=$(cat "$dir/token")
peers=$(for i in $(seq 1 "$n"); do addr "$i"; done | paste -sd,)

ip netns add "$ns" 2>/dev/null || true
ip -n "$ns" link set lo up
ip -n "$ns" link show br0 >/dev/null 2>&1 || ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr replace 10.90.0.1/24 dev br0
ip -n "$ns" link set br0 up

for i in $(seq 1 "$n"); do
    if running "$i"; then
        echo "node$i is running (QEMU pid $(cat "$dir/node$i.pid")): keeping it"
        continue
    fi
    ip -n "$ns" link show "tap$i" >/dev/null 2>&1 || ip -n "$ns" tuntap add dev "tap$i" mode tap
    ip -n "$ns" link set "tap$i" master br0 up
    [ -f "$dir/node$i-state.qcow2" ] || qemu-img create -q -f qcow2 "$dir/node$i-state.qcow2" 8G
    seed=$dir/node$i-seed
    rm -rf "$seed.d" "$seed.img"
    mkdir -p "$seed.d"
    cat >"$seed.d/user-data" <<EOF
flynn.token=$token
flynn.peers=$peers
flynn.hostname=node$i
flynn.ip=$(addr "$i")::10.90.0.1:255.255.255.0:node$i::off
EOF
    printf 'instance-id: flynn-main-node%s\nlocal-hostname: node%s\n' "$i" "$i" >"$seed.d/meta-data"
    mkfs.fat -n CIDATA -C "$seed.img" 2048 >/dev/null
    mcopy -i "$seed.img" "$seed.d/user-data" "$seed.d/meta-data" ::/
    rm -f "$dir/node$i-console.log" "$dir/node$i.qmp"
    ip netns exec "$ns" qemu-system-x86_64 -daemonize -pidfile "$dir/node$i.pid" \
        -display none -monitor none \
        -serial "file:$dir/node$i-console.log" -qmp "unix:$dir/node$i.qmp,server=on,wait=off" \
        -machine q35 -m "$memory" -smp 1 -accel tcg -cpu max \
        -drive "file=$PWD/out/flynn-x86_64.iso,media=cdrom,readonly=on,if=none,id=cd0" \
        -device ide-cd,drive=cd0,bootindex=0 \
        -drive "file=$dir/node$i-state.qcow2,format=qcow2,if=none,id=state" \
        -device virtio-blk-pci,drive=state \
        -drive "file=$seed.img,format=raw,if=none,id=seed" \
        -device virtio-blk-pci,drive=seed \
        -netdev "tap,id=n0,ifname=tap$i,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=52:54:00:90:00:$(printf %02x $((10 + i)))"
    echo "booting node$i at $(addr "$i") (QEMU pid $(cat "$dir/node$i.pid"), console $dir/node$i-console.log)"
done

# 127.0.0.1 ports into the namespace (socat enters it for each connection).
stop_forwards
# $1: the port on 127.0.0.1; $2: ADDRESS:PORT in the namespace (socat's EXEC
# splits on unescaped colons, so the inner address's colons are escaped).
forward() {
    setsid socat "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr,fork" \
        "EXEC:ip netns exec $ns socat STDIO TCP\:${2/:/\\:}" </dev/null >/dev/null 2>&1 &
    echo $! >>"$dir/forwards.pids"
}
for i in $(seq 1 "$n"); do forward "$((12110 + i))" "$(addr "$i"):1113"; done
forward 12080 "$(addr 1):80"
forward 12081 "$(addr 1):81"

ready='flynn-init: ready: API [^ ]+ token [^ ]+ \('
for i in $(seq 1 "$n"); do
    for _ in $(seq 1 6000); do
        grep -aEq "$ready" "$dir/node$i-console.log" 2>/dev/null && break
        running "$i" || { echo "node$i stopped while booting; its console:" >&2; cat "$dir/node$i-console.log" >&2; exit 1; }
        sleep 0.1
    done
    grep -aEq "$ready" "$dir/node$i-console.log" || { echo "node$i did not get ready within 600 s" >&2; exit 1; }
    echo "node$i: $(grep -aE "$ready" "$dir/node$i-console.log" | tail -n 1 | sed 's/ token [^ ]*/ token (see below)/')"
done
echo "waiting for node1 to bootstrap the cluster (Layer 0 and Layer 1; ~10 minutes under TCG)"
for _ in $(seq 1 1800); do
    grep -aq 'flynn.peers: the cluster is up' "$dir/node1-console.log" && break
    running 1 || { echo "node1 stopped; console $dir/node1-console.log" >&2; exit 1; }
    sleep 1
done
grep -aq 'flynn.peers: the cluster is up' "$dir/node1-console.log" ||
    { echo "no 'the cluster is up' on node1's console after 30 minutes: $dir/node1-console.log" >&2; exit 1; }
# The key from the bootstrap's last line (on the first boot; a later boot's
# bootstrap finds the controller running and prints the same line).
add_line=$(grep -a 'flynn cluster add -p ' "$dir/node1-console.log" | tail -n 1)
key=$(awk '{for(i=1;i<=NF;i++) if($i=="add") print $(i+5)}' <<<"$add_line")
cluster_pin=$(awk '{for(i=1;i<=NF;i++) if($i=="-p") print $(i+1)}' <<<"$add_line")
# The cluster's CA is node1's (the bootstrap adopts the lowest address's), so
# its ready line's pin verifies every node once the cluster is up.
pin=$(grep -aE "$ready" "$dir/node1-console.log" | tail -n 1 | awk '{for(i=1;i<=NF;i++) if($i=="tls-pin") print $(i+1)}')
bin=$PWD/target/x86_64-unknown-linux-gnu/appliance/flynn-host
ln -sf "$bin" "$dir/flynn"
# The demo app (web=3, busybox's httpd serving each job's id), deployed once
# through the controller; a later run finds it and leaves it as it is. The CLI's
# clusters file is the script's own, and it runs outside any git repository
# (`flynn create` adds a remote to the one it runs in).
export FLYNNRC="$dir/flynnrc"
rm -f "$FLYNNRC"
flynn() { (cd / && "$dir/flynn" "$@"); }
flynn cluster add -p "${cluster_pin:-$pin}" default https://127.0.0.1:12081 "$key" >/dev/null
if ! flynn apps | awk '{print $1}' | grep -qx demo; then
    echo "deploying the demo app (web=3) through the controller"
    flynn create demo >/dev/null
    flynn -a demo release add busybox --process \
        'web=mkdir -p /tmp/w && echo "hello from $FLYNN_JOB_ID" > /tmp/w/index.html && exec httpd -f -p $PORT -h /tmp/w' >/dev/null
    flynn -a demo scale web=3 >/dev/null
fi
# One answer is enough: while a restored cluster settles, a router may still answer
# 503 now and then (a second check here once failed on that).
answered=
for _ in $(seq 1 300); do
    if curl -sf -m 5 -H 'Host: demo.cluster.local' http://127.0.0.1:12080/ >/dev/null; then
        answered=1
        break
    fi
    sleep 1
done
[ -n "$answered" ] ||
    { echo "the demo app does not answer through node1's router after 300 s: $dir/flynn -a demo ps" >&2; exit 1; }
unset -f flynn

echo
echo "The cluster of $n appliances is up (token $token). Each node's API, from this host:"
for i in $(seq 1 "$n"); do
    echo "  node$i: export FLYNN_HOST=https://127.0.0.1:$((12110 + i)) FLYNN_TOKEN=$token FLYNN_TLS_PIN=$pin   # $(addr "$i"):1113"
done
cat <<MSG
  $bin cluster hosts
Commands that reach the scheduler (cluster ps, scale, formations, drain) dial the
nodes' own addresses (10.90.0.x), which only the namespace routes: run them in it,
  nsenter --net=/run/netns/$ns env FLYNN_HOST=https://$(addr 1):1113 $bin cluster ps
The controller, through node1's router (127.0.0.1:12081 -> 10.90.0.11:81, HTTPS
verified by the cluster's pin; HTTP on 127.0.0.1:12080 -> its port 80):
  $dir/flynn cluster add -p ${cluster_pin:-${pin:-PIN}} default https://127.0.0.1:12081 ${key:-KEY-from-node1-console}
  $dir/flynn apps
The demo app (web=3 over the nodes), through node1's router:
  curl -H 'Host: demo.cluster.local' http://127.0.0.1:12080/
Consoles: $dir/nodeN-console.log. Stop them all (power buttons; state disks kept):
  bash scripts/main.sh stop
MSG
