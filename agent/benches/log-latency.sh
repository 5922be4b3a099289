#!/usr/bin/env bash
# End-to-end latency of an app's log line: from the moment the job's output is
# captured (the time stamp its shim puts on the line) to `flynn log -f` printing
# it, through the agent's shipper, a log aggregator and the controller. The
# anchor, in the same run and on the same lines: `tail -f` of the job's own log
# file (the capture, written to disk, read back by the simplest follower).
# Median and 90th percentile over LINES lines, one every 50 ms.
#
#   bash agent/benches/log-latency.sh            (release build)
#   FLYNN_BIN=target/debug/flynn-host bash agent/benches/log-latency.sh
#
# Runs everything (etcd, daemon, aggregator, controller) in a network namespace
# of its own, on a veth pair of its own; needs root and Debian's etcd-server.
set -euo pipefail
cd "$(dirname "$0")/../.."
LINES=${LINES:-300}

if [ -z "${FLYNN_BIN:-}" ]; then
    cargo build --release --locked -p flynn-host --bin flynn-host -p flynn-runtime --bin flynn-shim-monitor >/dev/null 2>&1
    bin="$PWD/target/release/flynn-host"
else
    bin="$(realpath "$FLYNN_BIN")"
fi
bash fixtures/build-images.sh "$PWD/target/fixtures" >/dev/null
work=$(mktemp -d /var/tmp/flynn-loglat-XXXXXX)
netns="fb-loglat-$(basename "$work" | tr -dc 'a-zA-Z0-9' | tail -c 6)"
pids=()
stop() {
    # The job first (a stopped daemon leaves its containers running, by design).
    [ -n "${job:-}" ] && "$bin" rm -f "$job" >/dev/null 2>&1 || true
    # $! of `in_ns ... &` is the function's subshell and of a pipeline its last
    # command: the daemons, `tail -f` and `flynn log -f` outlive them, and a wait on
    # the pipeline waited for ever. Everything started here names the work dir.
    pkill -f "$work" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    umount -l "$work"/state/jobs/*/rootfs 2>/dev/null || true
    umount -l "$work"/state/netns/* "$work/state/netns" 2>/dev/null || true
    ip netns del "$netns" 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT
ip netns add "$netns"
in_ns() { nsenter --net="/run/netns/$netns" -- "$@"; }
ip -n "$netns" link set lo up
ip -n "$netns" link add d0 type veth peer name d1
ip -n "$netns" addr add 10.99.0.1/24 dev d0
ip -n "$netns" link set d0 up
ip -n "$netns" link set d1 up
ip -n "$netns" route add default dev d0
ip=10.99.0.1
etcd_url="http://$ip:2379"

in_ns etcd --name bench --data-dir "$work/etcd" --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" --listen-peer-urls "http://$ip:2380" \
    --initial-advertise-peer-urls "http://$ip:2380" --initial-cluster "bench=http://$ip:2380" \
    >"$work/etcd.log" 2>&1 &
pids+=($!)
export FLYNN_HOST="unix://$work/host.sock"
in_ns "$bin" daemon --state-dir "$work/state" --listen 127.0.0.1:1113 --socket "$work/host.sock" \
    --etcd "$etcd_url" --advertise "$ip" 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 1 100); do "$bin" version >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" import target/fixtures/busybox-docker.tar >/dev/null
token=logagg-bench-token-0123456789
key=logagg-bench-controller-key-0123456789
FLYNN_TOKEN=$token in_ns "$bin" logaggregator --syslog "$ip:5140" --http "$ip:5141" \
    --etcd "$etcd_url" 2>"$work/logagg.log" &
pids+=($!)
FLYNN_CONTROLLER_KEY=$key FLYNN_LOGAGG_TOKEN=$token in_ns "$bin" controller \
    --listen "$ip:8081" --etcd "$etcd_url" 2>"$work/controller.log" &
pids+=($!)
ln -s "$bin" "$work/flynn"
export FLYNNRC="$work/flynnrc"
for _ in $(seq 1 100); do
    in_ns "$work/flynn" cluster add default "http://$ip:8081" "$key" >/dev/null 2>&1 &&
        in_ns "$work/flynn" apps >/dev/null 2>&1 && break
    sleep 0.1
done
in_ns "$work/flynn" create bench >/dev/null
# The job waits for the followers to be in place before it writes.
job=$("$bin" run -d -l flynn.app=bench -l flynn.type=web busybox sh -c \
    "sleep 3; i=0; while [ \$i -lt $LINES ]; do i=\$((i+1)); echo \"lat \$i\"; sleep 0.05; done; exec sleep 1000")
logfile="$work/state/jobs/$job/log.json"
for _ in $(seq 1 50); do [ -f "$logfile" ] && break; sleep 0.1; done
for _ in $(seq 1 100); do grep -q "registered in discovery" "$work/logagg.log" && break; sleep 0.1; done

# Each follower's lines, stamped with the time they were read.
stamp() { python3 -u -c '
import sys, time
for l in sys.stdin:
    sys.stdout.write("%.6f %s" % (time.time(), l))
    sys.stdout.flush()
'; }
tail -n 0 -f "$logfile" | stamp >"$work/tail.out" &
pids+=($!)
in_ns "$work/flynn" -a bench log -f -n 0 | stamp >"$work/flynn.out" &
pids+=($!)
deadline=$((SECONDS + LINES / 10 + 60))
until grep -qF "lat $LINES\\n" "$work/tail.out" 2>/dev/null && grep -q ": lat $LINES\$" "$work/flynn.out" 2>/dev/null; do
    if [ $SECONDS -gt $deadline ]; then
        echo "not every line arrived: tail $(wc -l <"$work/tail.out"), flynn log $(wc -l <"$work/flynn.out")" >&2
        tail -5 "$work/daemon.log" "$work/logagg.log" "$work/controller.log" >&2
        exit 1
    fi
    sleep 0.2
done

python3 - "$work/tail.out" "$work/flynn.out" "$LINES" <<'EOF'
import json, sys, datetime

def ts(s):
    # RFC 3339 with nanoseconds and Z; microseconds are enough here.
    s = s.rstrip("Z")
    base, _, frac = s.partition(".")
    t = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() + float("0." + (frac or "0"))

def lat_tail(path):
    out = {}
    for l in open(path):
        at, _, rest = l.partition(" ")
        e = json.loads(rest)
        out[e["log"].strip()] = (float(at) - ts(e["time"])) * 1000
    return out

def lat_flynn(path):
    out = {}
    for l in open(path):
        at, _, rest = l.partition(" ")
        time, _, tail = rest.partition(" ")
        msg = tail.split("]: ", 1)[1].strip()
        out[msg] = (float(at) - ts(time)) * 1000
    return out

def stats(v):
    v = sorted(v)
    return v[len(v) // 2], v[int(len(v) * 0.9)]

t, f = lat_tail(sys.argv[1]), lat_flynn(sys.argv[2])
n = int(sys.argv[3])
keys = ["lat %d" % i for i in range(1, n + 1)]
missing = [k for k in keys if k not in t or k not in f]
if missing:
    sys.exit("missing lines: %s" % missing[:5])
(tm, t90), (fm, f90) = stats([t[k] for k in keys]), stats([f[k] for k in keys])
print("job write -> flynn log -f: median %.2f ms, p90 %.2f ms over %d lines (target < 100 ms)" % (fm, f90, n))
print("job write -> tail -f of its log file (anchor): median %.2f ms, p90 %.2f ms" % (tm, t90))
print("ratio flynn log / tail -f (medians): %.1f" % (fm / tm if tm > 0 else float("inf")))
EOF
