#!/usr/bin/env bash
# Benchmark: getting a Debian image (~250 MB unpacked, one gzip layer; built by
# fixtures/build-debian.sh) into the store as a user does it, through the CLI and a
# daemon on its local socket:
#   import-dir   flynn-host import ./debian-oci --tag ...   (the layout sent as a tar stream)
#   import-tar   flynn-host import debian-oci.tar --tag ... (an OCI archive file, sent as is)
#   import-path  POST /images/import {"path": ...}          (no upload: the daemon reads the layout)
#   pull         flynn-host pull 127.0.0.1:PORT/bench/debian (Debian's docker-registry, same netns)
# against the floor of the same unavoidable work, `tar -xzf` of the layer into a
# fresh directory plus `sync -f`. Rounds are interleaved; each removes the image (and
# its layer) before the next. Prints medians and the ratios. Not a test: it reports.
# Usage: agent/benches/import.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
. scripts/deps.sh
flynn_install_deps jq skopeo docker-registry curl

fixtures=${FLYNN_BENCH_FIXTURES:-/var/tmp/flynn-bench-fixtures}
bash fixtures/build-debian.sh "$fixtures" >/dev/null
layout="$fixtures/debian-oci"

. agent/benches/lib.sh
bench_teardown() {
    if [ -n "${registry:-}" ]; then kill "$registry" 2>/dev/null || true; fi
}
bench_start import

# The same layout as an OCI archive file, and the layer alone for the floor.
tar -C "$layout" -cf "$work/debian-oci.tar" .
manifest=$(jq -r '.manifests[0].digest' "$layout/index.json")
layer=$(jq -r '.layers[0].digest' "$layout/blobs/sha256/${manifest#sha256:}")
layer_file="$layout/blobs/sha256/${layer#sha256:}"

# A registry in the daemon's namespace, with the image pushed once.
port=5000
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry/data
http:
  addr: 127.0.0.1:$port
EOF
nsenter --net="/run/netns/$netns" -- docker-registry serve "$work/registry/config.yml" \
    >"$work/registry/log" 2>&1 &
registry=$!
for _ in $(seq 1 100); do
    nsenter --net="/run/netns/$netns" -- curl -s "http://127.0.0.1:$port/v2/" >/dev/null && break
    sleep 0.1
done
nsenter --net="/run/netns/$netns" -- skopeo copy -q --dest-tls-verify=false \
    "oci:$layout:bookworm" "docker://127.0.0.1:$port/bench/debian:1"

now() { date +%s.%N; }
remove() { "$bin" rmi "$1" >/dev/null 2>&1 || true; }
declare -A times
record() { times[$1]+="$2 "; }

for round in $(seq 1 "$rounds"); do
    t0=$(now); "$bin" import "$layout" --tag bench/debian:dir >/dev/null; t1=$(now)
    record import-dir "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"; remove bench/debian:dir

    t0=$(now); "$bin" import "$work/debian-oci.tar" --tag bench/debian:tar >/dev/null; t1=$(now)
    record import-tar "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"; remove bench/debian:tar

    t0=$(now)
    curl -sf --unix-socket "$work/host.sock" -H 'Content-Type: application/json' \
        -d "{\"path\": \"$layout\", \"tag\": \"bench/debian:path\"}" http://localhost/images/import >/dev/null
    t1=$(now)
    record import-path "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"; remove bench/debian:path

    t0=$(now); "$bin" pull "127.0.0.1:$port/bench/debian:1" >/dev/null; t1=$(now)
    record pull "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"; remove "127.0.0.1:$port/bench/debian:1"

    rm -rf "$work/floor"; mkdir "$work/floor"
    t0=$(now); tar -xzf "$layer_file" -C "$work/floor"; sync -f "$work/floor"; t1=$(now)
    record floor "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
    echo "round $round done" >&2
done
rm -rf "$work/floor"

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
floor=$(echo "${times[floor]}" | median)
echo "Debian image ($(du -sh "$layer_file" | cut -f1) gzip layer), median of $rounds interleaved rounds:"
for what in import-dir import-tar import-path pull floor; do
    m=$(echo "${times[$what]}" | median)
    awk -v w="$what" -v m="$m" -v f="$floor" 'BEGIN { printf "  %-12s %6.2f s   %5.2f x the floor (tar -xzf + sync)\n", w, m, m / f }'
done
