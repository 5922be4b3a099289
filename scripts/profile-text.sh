#!/usr/bin/env bash
# Writes agent/text-order.txt: the functions the daemon runs from its start to
# idling with a container (start-up, the store and network opened, a job run,
# listed, inspected and removed), recorded by valgrind's callgrind. Run it again
# when the daemon's start-up path changes much; a stale list only orders less.
# Usage: scripts/profile-text.sh   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
flynn_install_deps valgrind
cargo build --release --locked -p flynn-host --bin flynn-host -p flynn-runtime --bin flynn-shim-monitor
bash fixtures/build-images.sh "$PWD/target/fixtures" >/dev/null
bin=$PWD/target/release/flynn-host
work=$(mktemp -d /var/tmp/flynn-profile-XXXXXX)
netns=fb-profile-$$
cleanup() {
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    umount -l "$work"/state/jobs/*/rootfs "$work"/state/netns/* "$work/state/netns" 2>/dev/null || true
    ip netns del "$netns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$netns"
ip -n "$netns" link set lo up
export FLYNN_HOST="unix://$work/host.sock"
start() { # the daemon, under "$@"
    nsenter --net="/run/netns/$netns" -- "$@" "$bin" daemon --state-dir "$work/state" \
        --listen 127.0.0.1:1113 --socket "$work/host.sock" 2>>"$work/daemon.log" &
    daemon=$!
    for _ in $(seq 1 600); do "$bin" version >/dev/null 2>&1 && return; sleep 0.1; done
    echo "the daemon did not start: $(tail -5 "$work/daemon.log")" >&2
    exit 1
}
callgrind() { # OUT
    start valgrind --tool=callgrind --callgrind-out-file="$1" \
        --dump-instr=no --compress-strings=no --compress-pos=no --demangle=no
}
stop() { kill "$daemon"; wait "$daemon" || true; daemon=; }
# valgrind does not know openat2, which unpacking relies on: an import under it
# fails at the first file of a layer (it records all that comes before, and the
# failure path), and the image is imported again without it.
callgrind "$work/import.out"
"$bin" import target/fixtures/busybox-docker.tar >/dev/null 2>&1 || true
stop
start
"$bin" import target/fixtures/busybox-docker.tar >/dev/null
stop
callgrind "$work/run.out"
id=$("$bin" run -d busybox sleep 60)
"$bin" ps >/dev/null
"$bin" inspect "$id" >/dev/null
"$bin" logs "$id" >/dev/null
"$bin" status >/dev/null
"$bin" images >/dev/null
"$bin" rm -f "$id" >/dev/null
sleep 2
stop
{
    echo "# Functions the daemon runs (scripts/profile-text.sh), keys of scripts/text-order.py."
    python3 scripts/text-order.py profile "$bin" "$work/run.out" "$work/import.out"
} >agent/text-order.txt
echo "agent/text-order.txt: $(grep -vc '^#' agent/text-order.txt) functions"
