#!/usr/bin/env bash
# The main job: installs what is missing, builds flynn-host and the appliance
# image (out/), boots a one-node appliance under QEMU (the ISO, with a state disk
# that persists across runs), waits until its agent answers, runs a first
# container through it, and leaves it running. Idempotent: a running appliance
# is reused. `bash scripts/main.sh stop` presses its power button.
# `bash scripts/main.sh --nodes N` boots N appliances instead, on a network of
# their own, which bootstrap themselves into a cluster (scripts/cluster.sh);
# `stop` powers those off too.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=
if [ "${1:-}" = --nodes ]; then
    nodes=${2:?--nodes takes a number}
    shift 2
fi
out=$PWD/out
pidfile=$out/appliance.pid
console=$out/appliance-console.log
qmp=$out/appliance.qmp
port=${FLYNN_APPLIANCE_PORT:-11113}
api=http://127.0.0.1:$port

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
    bash scripts/cluster.sh stop
    if ! running; then
        echo "no single appliance is running"
        exit 0
    fi
    pid=$(cat "$pidfile")
    printf '{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n' |
        socat -t 2 - "UNIX-CONNECT:$qmp" >/dev/null
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "the appliance did not power off within 60 s; killing QEMU" >&2
        kill "$pid"
    fi
    tail -n 4 "$console"
    rm -f "$pidfile"
    exit 0
fi

. scripts/deps.sh
flynn_install_deps

bash scripts/build-static.sh
bin=$PWD/target/x86_64-unknown-linux-gnu/appliance/flynn-host
bash fixtures/build-images.sh "$PWD/target/fixtures"
if [ -n "$nodes" ]; then
    # Nodes that run keep their images; the ISO is rebuilt only when none does.
    compgen -G "out/cluster/node*.pid" >/dev/null ||
        FLYNN_FIXTURES="$PWD/target/fixtures" bash buildroot/assemble.sh "$out"
    exec bash scripts/cluster.sh start "$nodes"
fi
if running; then
    echo "an appliance is running (pid $(cat "$pidfile")): keeping it and its images"
else
    FLYNN_FIXTURES="$PWD/target/fixtures" bash buildroot/assemble.sh "$out"
    # The state disk: blank at first (the appliance formats it), kept across runs.
    [ -f "$out/appliance-state.qcow2" ] || qemu-img create -q -f qcow2 "$out/appliance-state.qcow2" 8G
    accel=(-accel tcg -cpu max)
    if [ "${FLYNN_QEMU_KVM:-}" = 1 ] && [ -e /dev/kvm ]; then accel=(-accel kvm -cpu host); fi
    rm -f "$console" "$qmp"
    # User-mode network, isolated (restrict=on): only the API port is forwarded,
    # from 127.0.0.1 on this host.
    qemu-system-x86_64 -daemonize -pidfile "$pidfile" -display none -monitor none \
        -serial "file:$console" -qmp "unix:$qmp,server=on,wait=off" \
        -machine q35 -m 2048 -smp 2 "${accel[@]}" \
        -drive "file=$out/flynn-x86_64.iso,media=cdrom,readonly=on,if=none,id=cd0" \
        -device ide-cd,drive=cd0,bootindex=0 \
        -drive "file=$out/appliance-state.qcow2,format=qcow2,if=none,id=state" \
        -device virtio-blk-pci,drive=state \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:1113" \
        -device virtio-net-pci,netdev=n0
    echo "booting the appliance (QEMU pid $(cat "$pidfile"), console $console)"
fi

# The whole line: the token is followed by where it came from, in parentheses.
ready='flynn-init: ready: API [^ ]+ token [^ ]+ \('
for _ in $(seq 1 3000); do
    grep -Eq "$ready" "$console" 2>/dev/null && break
    if ! running; then
        echo "the appliance stopped while booting; its console:" >&2
        cat "$console" >&2
        exit 1
    fi
    sleep 0.1
done
line=$(grep -E "$ready" "$console" | tail -n 1) ||
    { echo "the appliance did not get ready within 300 s; console: $console" >&2; exit 1; }
token=$(echo "$line" | sed -n 's/.* token \([^ ]*\).*/\1/p')
# A single appliance serves HTTPS off its loopback; the line ends with its CA's pin.
pin=$(echo "$line" | sed -n 's/.* tls-pin \([^ ]*\).*/\1/p')
if [ -n "$pin" ]; then api=${api/http:/https:}; fi
export FLYNN_HOST=$api FLYNN_TOKEN=$token FLYNN_TLS_PIN=$pin
grep '^flynn-init:' "$console" | sed 's/ token [^ ]*/ token (see below)/'
"$bin" version
"$bin" run --rm busybox echo "hello from a container on the Flynn appliance"
cat <<MSG

The Flynn appliance is running under QEMU (state disk out/appliance-state.qcow2,
console $console). Reach its agent with:
  export FLYNN_HOST=$api FLYNN_TOKEN=$token FLYNN_TLS_PIN=$pin
  $bin run --rm busybox uname -a
  $bin run -d --name web -m 64M busybox httpd -f -p 8080
  $bin ps; $bin logs web; $bin rm -f web
Stop it (power button, clean shutdown) with: bash scripts/main.sh stop
MSG
