#!/usr/bin/env bash
# buildroot post-image: the same ISO, raw disk and qcow2 as the offline
# assembler, from buildroot's kernel (bzImage) and initramfs (rootfs.cpio.zst),
# written to $BINARIES_DIR. The image tools come from buildroot's host dir
# (xorriso, mtools, dosfstools, qemu-img, sfdisk, grub-mkimage) and isolinux
# from $BINARIES_DIR; the UKI stub is systemd-boot's (FLYNN_EFI_STUB, default
# Debian's systemd-boot-efi path on the build machine).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$BR2_EXTERNAL_FLYNN_PATH" log -1 --format=%ct)}
export FLYNN_ISOLINUX_BIN=${FLYNN_ISOLINUX_BIN:-$BINARIES_DIR/isolinux.bin}
export FLYNN_LDLINUX=${FLYNN_LDLINUX:-$BINARIES_DIR/ldlinux.c32}
flynn_make_images "$BINARIES_DIR/bzImage" "$BINARIES_DIR/rootfs.cpio.zst" "$BINARIES_DIR" flynn-x86_64
