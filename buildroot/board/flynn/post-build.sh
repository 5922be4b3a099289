#!/usr/bin/env bash
# buildroot post-build: $1 is TARGET_DIR. The board overlay is already in place;
# this adds what the offline assembler adds too: the module load lists (empty
# when the kernel has everything built in), the kernel's on-demand modprobe, and the
# baked image archives.
set -euo pipefail
target=$1
. "$(dirname "$0")/lib.sh"
repo=$BR2_EXTERNAL_FLYNN_PATH/..
for dir in "$target"/lib/modules/*/; do
    [ -f "$dir/modules.dep" ] && flynn_module_lists "$dir"
done
# No module directory at all (everything built in): an empty list for the running release.
[ -d "$target/lib/modules" ] || mkdir -p "$target/lib/modules"
ln -sf ../bin/busybox "$target/sbin/modprobe"
mkdir -p "$target/usr/share/flynn/images" "$target/var/lib/flynn"
rm -f "$target/usr/share/flynn/images/.keep"
while read -r entry; do
    entry=${entry%%#*}
    entry=$(echo "$entry" | tr -d '[:space:]')
    [ -n "$entry" ] || continue
    [ -f "$repo/$entry" ] || flynn_die "image archive $repo/$entry (images.list) is missing: run fixtures/build-images.sh"
    install -m 0644 "$repo/$entry" "$target/usr/share/flynn/images/$(basename "$entry")"
done <"$FLYNN_BOARD_DIR/images.list"
