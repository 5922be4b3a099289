# Shared by the agent's bench scripts (sourced from the repository root): a
# release build (or FLYNN_BENCH_BIN, a flynn-host built already), the fixture
# images, and a daemon of its own in a network namespace of its own, reached on
# its local root socket as a user on the host
# would. bench_start sets $bin, $work (a scratch dir), $netns and $daemon (the
# daemon's pid: nsenter execs it), exports FLYNN_HOST, imports busybox, and
# installs an EXIT trap that calls the script's optional bench_teardown, then
# stops the daemon and removes everything it made.

bench_bin() { # sets $bin: FLYNN_BENCH_BIN, or the release build as it ships (ordered, not PIE)
    if [ -n "${FLYNN_BENCH_BIN:-}" ]; then
        # A flynn-host built already (its flynn-shim-monitor beside it).
        bin=$FLYNN_BENCH_BIN
    else
        cargo build --release --locked -p flynn-host --bin flynn-host -p flynn-runtime --bin flynn-shim-monitor >/dev/null 2>&1
        bash scripts/link-ordered.sh target/release --release --locked >/dev/null
        bin="$PWD/target/release/flynn-host"
    fi
}

bench_start() { # NAME (a short word for the scratch dir and the namespace)
    local name=$1
    bench_bin
    bash fixtures/build-images.sh "$PWD/target/fixtures" >/dev/null
    work=$(mktemp -d "/var/tmp/flynn-$name-XXXXXX")
    netns="fb-$name-$(basename "$work" | tr -dc 'a-zA-Z0-9' | tail -c 6)"
    ip netns add "$netns"
    ip -n "$netns" link set lo up
    export FLYNN_HOST="unix://$work/host.sock"
    nsenter --net="/run/netns/$netns" -- "$bin" daemon --state-dir "$work/state" \
        --listen 127.0.0.1:1113 --socket "$work/host.sock" 2>"$work/daemon.log" &
    daemon=$!
    trap bench_stop EXIT
    for _ in $(seq 1 100); do "$bin" version >/dev/null 2>&1 && break; sleep 0.05; done
    "$bin" import target/fixtures/busybox-docker.tar >/dev/null
}

bench_stop() {
    if declare -F bench_teardown >/dev/null; then bench_teardown || true; fi
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    umount -l "$work"/state/jobs/*/rootfs 2>/dev/null || true
    umount -l "$work"/state/netns/* "$work/state/netns" 2>/dev/null || true
    ip netns del "$netns" 2>/dev/null || true
    rm -rf "$work"
}
