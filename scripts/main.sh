#!/usr/bin/env bash
# The main job: installs what is missing, builds flynn-host, starts the daemon
# (state in /var/lib/flynn, API on 127.0.0.1:1113), imports the busybox test
# image and runs a first container. The daemon stays running. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
flynn_install_deps

cargo build --release --locked -p flynn-host --bin flynn-host -p flynn-runtime --bin flynn-shim-monitor
bin="$PWD/target/release/flynn-host"
bash fixtures/build-images.sh "$PWD/target/fixtures"

if ! "$bin" version >/dev/null 2>&1; then
    mkdir -p /var/log/flynn
    nohup "$bin" daemon >>/var/log/flynn/daemon.log 2>&1 &
    for _ in $(seq 1 100); do
        "$bin" version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
"$bin" version
"$bin" import target/fixtures/busybox-docker.tar
"$bin" run --rm busybox echo "hello from a flynn-host container"
cat <<MSG

flynn-host is running (API http://127.0.0.1:1113, state /var/lib/flynn, log /var/log/flynn/daemon.log).
  $bin run --rm busybox uname -a
  $bin run -d --name web -m 64M --cpus 0.5 busybox httpd -f -p 8080
  $bin ps; $bin logs web; $bin rm -f web
Stop the daemon with: pkill -f 'flynn-host daemon'   (running containers keep running)
MSG
