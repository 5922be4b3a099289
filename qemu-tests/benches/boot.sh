#!/usr/bin/env bash
# Boot-time and size benchmark of the appliance (not a timed test: it prints
# figures and ratios against anchors measured in the same run).
#
# Boot time under QEMU TCG, QEMU start to the agent answering its API (a
# `flynn-host version` through the forwarded port, polled every 50 ms), with a
# formatted state disk (steady state: the images were imported at first boot),
# against the anchor: the same kernel, QEMU arguments and direct kernel boot with
# a busybox-only initramfs whose /init mounts /proc and powers off at once
# (QEMU start to QEMU exit). Median of RUNS (default 3) each. Also the ISO on
# SeaBIOS, for reference. Sizes of the images against Talos' ~55 MB initramfs.
#
# Usage: qemu-tests/benches/boot.sh   (after buildroot/assemble.sh; as root)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${FLYNN_APPLIANCE_OUT:-$repo/out}
bin=$repo/target/x86_64-unknown-linux-gnu/appliance/flynn-host
runs=${RUNS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in vmlinuz initramfs iso raw qcow2; do
    [ -f "$out/flynn-x86_64.$f" ] || { echo "$out/flynn-x86_64.$f missing: run buildroot/assemble.sh" >&2; exit 1; }
done

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# A port nobody listens on (ss is in iproute2).
port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
}
common=(-nographic -no-reboot -monitor none -machine q35 -m 1024 -smp 2 -accel tcg -cpu max)

# The anchor's initramfs: busybox only.
mkdir -p "$work/bb/bin" "$work/bb/proc" "$work/bb/dev"
cp /bin/busybox "$work/bb/bin/"
ln -s busybox "$work/bb/bin/sh"
printf '#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho BENCH-SHELL-UP\n/bin/busybox poweroff -f\n' >"$work/bb/init"
chmod +x "$work/bb/init"
(cd "$work/bb" && find . | sort | cpio --quiet -o -H newc -R 0:0 | gzip -1 >"$work/bb.cpio.gz")

anchor() {
    local t0 t1
    t0=$(now)
    qemu-system-x86_64 "${common[@]}" -serial "file:$work/anchor.log" -nic none \
        -kernel "$out/flynn-x86_64.vmlinuz" -initrd "$work/bb.cpio.gz" \
        -append "console=ttyS0 quiet rdinit=/init" >/dev/null 2>&1
    t1=$(now)
    grep -q BENCH-SHELL-UP "$work/anchor.log" || { echo "anchor VM did not reach its shell" >&2; exit 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

# Boots with QEMU_ARGS..., returns seconds from QEMU start to the API answering,
# then powers the VM off through QMP. Each poll is cut at 0.5 s: before the
# guest listens, QEMU's port forward accepts the connection and the request
# would otherwise hang in it.
boot_to_api() {
    local p t0 t1 pid token= pin=
    p=$(port)
    rm -f "$work/vm.log" "$work/qmp"
    t0=$(now)
    qemu-system-x86_64 "${common[@]}" -serial "file:$work/vm.log" \
        -qmp "unix:$work/qmp,server=on,wait=off" \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$p-:1113" -device virtio-net-pci,netdev=n0 \
        "$@" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 6000); do
        if [ -z "$token" ] && [ -f "$work/vm.log" ]; then
            token=$(sed -n 's/.*flynn-init: ready: API [^ ]* token \([0-9a-zA-Z_-]*\) (.*/\1/p' "$work/vm.log" | head -1)
        fi
        # The API is HTTPS off the guest's loopback: the ready line ends with its pin.
        if [ -z "$pin" ] && [ -f "$work/vm.log" ]; then
            pin=$(sed -n 's/.*flynn-init: ready: API .* tls-pin \([^ ]*\).*/\1/p' "$work/vm.log" | head -1)
        fi
        # Known before the ready line once the state disk kept them.
        if [ -z "$token" ] && [ -f "$work/token" ]; then token=$(cat "$work/token"); fi
        if [ -z "$pin" ] && [ -f "$work/pin" ]; then pin=$(cat "$work/pin"); fi
        if [ -n "$token" ] && [ -n "$pin" ] && FLYNN_HOST=https://127.0.0.1:$p FLYNN_TOKEN=$token FLYNN_TLS_PIN=$pin timeout 0.5 "$bin" version >/dev/null 2>&1; then
            break
        fi
        sleep 0.05
    done
    t1=$(now)
    [ -n "$token" ] && echo "$token" >"$work/token"
    [ -n "$pin" ] && echo "$pin" >"$work/pin"
    printf '{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n' | socat -t 2 - "UNIX-CONNECT:$work/qmp" >/dev/null || kill "$pid"
    wait "$pid" || true
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

qemu-img create -q -f qcow2 "$work/state.qcow2" 4G
disk=(-drive "file=$work/state.qcow2,format=qcow2,if=none,id=d0" -device virtio-blk-pci,drive=d0)
kernel=(-kernel "$out/flynn-x86_64.vmlinuz" -initrd "$out/flynn-x86_64.initramfs" -append "console=ttyS0 quiet")
echo "first boot (formats the state disk, imports the images): $(boot_to_api "${kernel[@]}" "${disk[@]}") s"
: >"$work/anchor.txt"; : >"$work/appliance.txt"; : >"$work/iso.txt"
for i in $(seq 1 "$runs"); do
    anchor >>"$work/anchor.txt"
    boot_to_api "${kernel[@]}" "${disk[@]}" >>"$work/appliance.txt"
    # Where the guest's own time went, for the last kernel+initramfs run.
    grep -a 'boot timeline' "$work/vm.log" >"$work/timeline.txt" || true
    boot_to_api -drive "file=$out/flynn-x86_64.iso,media=cdrom,readonly=on,if=none,id=cd0" \
        -device ide-cd,drive=cd0,bootindex=0 "${disk[@]}" >>"$work/iso.txt"
done
a=$(median <"$work/anchor.txt"); b=$(median <"$work/appliance.txt"); c=$(median <"$work/iso.txt")
printf 'boot, TCG, median of %d:\n' "$runs"
printf '  anchor: busybox initramfs, QEMU start to power-off  %6.2f s  (runs: %s)\n' "$a" "$(tr '\n' ' ' <"$work/anchor.txt")"
printf '  appliance, kernel+initramfs, QEMU start to API up   %6.2f s  (runs: %s)  ratio %.2f (target <= 1.30)\n' "$b" "$(tr '\n' ' ' <"$work/appliance.txt")" "$(awk -v x="$b" -v y="$a" 'BEGIN { print x / y }')"
sed 's/^.*flynn-init: /    guest: /' "$work/timeline.txt"
printf '  appliance, ISO on SeaBIOS, QEMU start to API up     %6.2f s  (runs: %s)  ratio %.2f\n' "$c" "$(tr '\n' ' ' <"$work/iso.txt")" "$(awk -v x="$c" -v y="$a" 'BEGIN { print x / y }')"
talos=$((55 * 1000 * 1000))
echo "sizes (anchor: Talos initramfs ~55 MB):"
for f in iso raw qcow2 initramfs vmlinuz; do
    size=$(stat -c %s "$out/flynn-x86_64.$f")
    used=$(( $(stat -c %b "$out/flynn-x86_64.$f") * $(stat -c %B "$out/flynn-x86_64.$f") ))
    printf '  %-22s %7.1f MB (%7.1f MB allocated)  ratio to Talos %.2f\n' "flynn-x86_64.$f" \
        "$(awk -v x="$size" 'BEGIN { print x / 1e6 }')" "$(awk -v x="$used" 'BEGIN { print x / 1e6 }')" \
        "$(awk -v x="$used" -v t="$talos" 'BEGIN { print x / t }')"
done
