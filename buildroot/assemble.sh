#!/usr/bin/env bash
# The offline assembler: the appliance image from Debian's parts, no network and
# no buildroot needed. Inputs: Debian's kernel (linux-image-amd64) and the
# modules the appliance needs, busybox-static (the emergency shell and modprobe),
# mke2fs (formatting the state disk), our static flynn-host and its shim monitor
# (scripts/build-static.sh), the image archives of board/flynn/images.list, the
# shared board overlay. Outputs, in OUT_DIR (default: out/ at the repository root):
#   flynn-x86_64.vmlinuz     the kernel
#   flynn-x86_64.initramfs   the root file system (newc cpio: images zstd, the rest lz4)
#   flynn-x86_64.iso         hybrid ISO: BIOS (isolinux) and UEFI (GRUB), CD or USB
#   flynn-x86_64.raw         GPT disk: ESP with a UKI (UEFI), blank state partition
#   flynn-x86_64.qcow2       the raw disk as qcow2
#   SHA256SUMS
# The same inputs and SOURCE_DATE_EPOCH (default: the last commit's time) give
# byte-identical outputs.
#
# Usage: buildroot/assemble.sh [OUT_DIR]
# Environment: FLYNN_KERNEL_VERSION (default: the newest in /boot),
# FLYNN_STATIC_DIR (default: target/x86_64-unknown-linux-gnu/appliance),
# FLYNN_FIXTURES (where images.list's target/fixtures/ entries are found).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=board/flynn/lib.sh
. "$repo/buildroot/board/flynn/lib.sh"
out=${1:-$repo/out}
name=flynn-x86_64

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
export TZ=UTC LC_ALL=C

for tool in cpio zstd lz4 depmod objcopy mkfs.fat mmd mcopy syslinux sfdisk qemu-img xorriso grub-mkimage mke2fs; do
    command -v "$tool" >/dev/null || flynn_die "$tool is missing (scripts/deps.sh installs it)"
done

release=${FLYNN_KERNEL_VERSION:-$(cd /boot && ls vmlinuz-* 2>/dev/null | sed 's/^vmlinuz-//' | sort -V | tail -1)}
kernel=/boot/vmlinuz-$release
moddir=/lib/modules/$release
[ -n "$release" ] && [ -f "$kernel" ] && [ -f "$moddir/modules.dep" ] ||
    flynn_die "no kernel with modules in /boot and /lib/modules: apt-get install linux-image-amd64"
static=${FLYNN_STATIC_DIR:-$repo/target/x86_64-unknown-linux-gnu/appliance}
for bin in flynn-host flynn-shim-monitor; do
    [ -x "$static/$bin" ] || flynn_die "$static/$bin is missing: run scripts/build-static.sh"
done
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q static ||
    flynn_die "/bin/busybox is not busybox-static: apt-get install busybox-static"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root" "$out"
cp -a "$FLYNN_BOARD_DIR/rootfs-overlay/." "$root/"
rm -f "$root/usr/share/flynn/images/.keep"
for d in bin sbin usr/bin usr/sbin lib lib64 dev proc sys run tmp root var/lib/flynn var/log; do
    mkdir -p "$root/$d"
done
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
install -m 0755 "$static/flynn-host" "$static/flynn-shim-monitor" "$root/usr/bin/"
install -m 0755 /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list | LC_ALL=C sort); do
    case $applet in busybox | init | linuxrc) continue ;; esac
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
# The kernel asks /sbin/modprobe for a module it needs on demand.
ln -s ../bin/busybox "$root/sbin/modprobe"

# mke2fs with the shared libraries it needs (Debian ships no static one); a
# journalled ext4 is worth its ~1.5 MB over busybox's journal-less ext2.
install -m 0755 /sbin/mke2fs "$root/usr/sbin/mke2fs"
[ -f /etc/mke2fs.conf ] && install -m 0644 /etc/mke2fs.conf "$root/etc/mke2fs.conf"
for lib in $(ldd /sbin/mke2fs | awk '/=>/ {print $3} /^\s*\/lib/ {print $1}' | LC_ALL=C sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
if [ -e /lib64/ld-linux-x86-64.so.2 ] && [ ! -e "$root/lib64/ld-linux-x86-64.so.2" ]; then
    cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
fi

flynn_install_modules "$moddir" "$root" "$release"

fixtures=${FLYNN_FIXTURES:-$repo/target/fixtures}
while read -r entry; do
    entry=${entry%%#*}
    entry=$(echo "$entry" | tr -d '[:space:]')
    [ -n "$entry" ] || continue
    src=$repo/$entry
    case $entry in target/fixtures/*) src=$fixtures/${entry#target/fixtures/} ;; esac
    [ -f "$src" ] || flynn_die "image archive $src (images.list) is missing: run fixtures/build-images.sh"
    install -m 0644 "$src" "$root/usr/share/flynn/images/$(basename "$src")"
done <"$FLYNN_BOARD_DIR/images.list"

# The console node, for kernels without a built-in initramfs that has one.
mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true

install -m 0644 "$kernel" "$out/$name.vmlinuz.tmp" && mv "$out/$name.vmlinuz.tmp" "$out/$name.vmlinuz"
flynn_initramfs "$root" "$out/$name.initramfs"
flynn_make_images "$out/$name.vmlinuz" "$out/$name.initramfs" "$out" "$name"
touch -d "@$SOURCE_DATE_EPOCH" "$out/$name".*
(cd "$out" && sha256sum "$name.vmlinuz" "$name.initramfs" "$name.iso" "$name.raw" "$name.qcow2" >SHA256SUMS)
for f in iso raw qcow2 initramfs vmlinuz; do
    stat -c %s "$out/$name.$f" | awk -v n="$name.$f" '{ printf "%-28s %6.1f MiB\n", n, $1 / 1048576 }'
done
echo "kernel $release, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, written to $out"
