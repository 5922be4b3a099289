#!/usr/bin/env bash
# The router against the reverse proxies a user would pick instead, in one run, on
# one backend: Debian's nginx and haproxy, each proxying to the same nginx serving a
# small file over keep-alive connections. wrk loads each in turn (interleaved rounds;
# medians), with keep-alive client connections and with a new connection per request.
# Prints requests per second, p99 latency and the router's ratio to each anchor.
#
#   bash router/benches/router.sh [ROUNDS] [SECONDS]
#   FLYNN_BIN=PATH bash router/benches/router.sh   (an optimised flynn-host already built)
#
# Everything listens on 127.0.0.1 only. Needs root for apt only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECS=${2:-8}
CONNS=${CONNS:-64}

need=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy etcd:etcd-server curl:curl; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    # The packages' own services are not wanted: only our configurations run.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi
if [ -z "${FLYNN_BIN:-}" ]; then
    cargo build --release -q -p flynn-host --bin flynn-host
    BIN=$PWD/target/release/flynn-host
else
    # Any optimised build will do, e.g. the appliance's static binary
    # (target/x86_64-unknown-linux-gnu/appliance/flynn-host).
    BIN=$(realpath "$FLYNN_BIN")
fi

work=$(mktemp -d /tmp/router-bench.XXXXXX)
chmod 755 "$work"   # nginx workers (www-data) read the backend's file
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

BACKEND=18080 NGINX=18081 HAPROXY=18082 ROUTER=18083 ETCD=23790 ETCD_PEER=23800
mkdir -p "$work/www" "$work/nginx"
printf 'hello from the backend\n' > "$work/www/index.html"

cat > "$work/backend.conf" <<EOF
worker_processes 1;
pid $work/backend.pid;
error_log $work/backend.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$BACKEND; root $work/www; }
}
EOF
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAPROXY
    default_backend be
backend be
    server b1 127.0.0.1:$BACKEND
EOF

nginx -c "$work/backend.conf" -g 'daemon off;' & pids+=($!)
nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
etcd --name b --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD" --advertise-client-urls "http://127.0.0.1:$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "b=http://127.0.0.1:$ETCD_PEER" >"$work/etcd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ETCD/health" >/dev/null && break; sleep 0.1; done

# The route and the backend's instance, written as discovery writes them (etcd's
# JSON gateway: keys and values base64).
put() {
    curl -sf "http://127.0.0.1:$ETCD/v3/kv/put" \
        -d "{\"key\":\"$(printf %s "$1" | base64 -w0)\",\"value\":\"$(printf %s "$2" | base64 -w0)\"}" >/dev/null
}
put /flynn/routes/bench '{"id":"bench","kind":"http","service":"bench","domain":"bench.local"}'
put /flynn/services/bench/b1 "{\"service\":\"bench\",\"id\":\"b1\",\"addr\":\"127.0.0.1:$BACKEND\",\"host_id\":\"h\",\"registered_at\":\"2026-01-01T00:00:00Z\"}"
FLYNN_LOG=warn "$BIN" router --http "127.0.0.1:$ROUTER" --https off --etcd "http://127.0.0.1:$ETCD" \
    --sticky-key "$(printf '%064d' 0)" & pids+=($!)
for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.local' "http://127.0.0.1:$ROUTER/")" = 200 ] && break
    sleep 0.1
done
for port in $NGINX $HAPROXY $ROUTER; do
    curl -sf -H 'Host: bench.local' "http://127.0.0.1:$port/" | grep -q hello \
        || { echo "the proxy on $port does not serve the backend" >&2; exit 1; }
done

# One wrk run: prints "RPS P99_MS".
load() {
    local port=$1; shift
    wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H 'Host: bench.local' "$@" "http://127.0.0.1:$port/" \
        | awk '/Requests\/sec/ {rps=$2} /^ +99%/ {v=$2; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000} p99=v} END {printf "%.0f %.2f\n", rps, p99}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for mode in keepalive close; do
    extra=()
    [ "$mode" = close ] && extra=(-H 'Connection: close')
    declare -A rps=() p99=()
    for r in $(seq "$ROUNDS"); do
        for name in nginx haproxy router; do
            case $name in nginx) port=$NGINX;; haproxy) port=$HAPROXY;; router) port=$ROUTER;; esac
            read -r q l < <(load "$port" "${extra[@]}")
            rps[$name]+="$q "; p99[$name]+="$l "
        done
    done
    echo "== $mode connections ($ROUNDS rounds of ${SECS}s, $CONNS connections, medians)"
    for name in nginx haproxy router; do
        q=$(tr ' ' '\n' <<<"${rps[$name]}" | grep . | median)
        l=$(tr ' ' '\n' <<<"${p99[$name]}" | grep . | median)
        printf '%-8s %8s req/s   p99 %6s ms\n' "$name" "$q" "$l"
        eval "RPS_$name=$q P99_$name=$l"
    done
    awk -v r="$RPS_router" -v n="$RPS_nginx" -v h="$RPS_haproxy" -v lr="$P99_router" -v ln="$P99_nginx" -v lh="$P99_haproxy" \
        'BEGIN {printf "router/nginx: throughput %.2f, p99 %.2f   router/haproxy: throughput %.2f, p99 %.2f\n", r/n, lr/ln, r/h, lr/lh}'
    unset rps p99
done
