# Shared by the offline assembler (buildroot/assemble.sh) and buildroot's
# post-build and post-image scripts: module resolution, the initramfs, and the
# bootable images. Every output is a function of its inputs and
# SOURCE_DATE_EPOCH: fixed times, sorted archives, fixed ids and GUIDs.
# shellcheck shell=bash

FLYNN_BOARD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Fixed identifiers (the images' own, not secrets): GPT disk and partitions,
# FAT volume ids, the ISO volume id.
FLYNN_DISK_GUID=6a5b3c1e-0f1a-4c7e-9d2b-464c594e0001
FLYNN_ESP_GUID=6a5b3c1e-0f1a-4c7e-9d2b-464c594e0002
FLYNN_STATE_GUID=6a5b3c1e-0f1a-4c7e-9d2b-464c594e0003
FLYNN_FAT_ID=464c594e
FLYNN_ISO_VOLID=FLYNN
FLYNN_ESP_MIB=128
FLYNN_RAW_MIB=1024

flynn_die() {
    echo "flynn-image: $*" >&2
    exit 1
}

# flynn_resolve_modules MODULES_DIR LIST_FILE: prints the module files (relative
# to MODULES_DIR) to load, dependencies first, each once. modules.dep lists a
# module's whole dependency closure, to be inserted from its end.
flynn_resolve_modules() {
    local dir=$1 list=$2
    awk -v listfile="$list" '
        BEGIN {
            while ((getline line < listfile) > 0) {
                sub(/#.*/, "", line); gsub(/[ \t]/, "", line)
                if (line != "") { gsub(/-/, "_", line); want[++n] = line }
            }
        }
        {
            mod = $1; sub(/:$/, "", mod)
            name = mod; sub(/.*\//, "", name); sub(/\.ko.*$/, "", name); gsub(/-/, "_", name)
            path[name] = mod
            d = ""
            for (i = NF; i >= 2; i--) d = d " " $i
            deps[mod] = d
        }
        END {
            for (i = 1; i <= n; i++) {
                m = want[i]
                if (!(m in path)) { missing = missing " " m; continue }
                k = split(deps[path[m]], ds, " ")
                for (j = 1; j <= k; j++) if (!(ds[j] in seen)) { seen[ds[j]] = 1; print ds[j] }
                if (!(path[m] in seen)) { seen[path[m]] = 1; print path[m] }
            }
            if (missing != "") { print "missing:" missing > "/dev/stderr" }
        }' "$dir/modules.dep"
}

# flynn_module_names [WHEN]: the names of modules.list ('_' spelling), all of
# them or those loaded WHEN (boot, jobs, device, demand).
flynn_module_names() {
    sed 's/#.*//; s/-/_/g' "$FLYNN_BOARD_DIR/modules.list" |
        awk -v when="${1:-}" 'NF && (when == "" || $2 == when) { print $1 }'
}

# flynn_builtin_modules MODULES_DIR: the listed modules the kernel has built in
# (they need no file).
flynn_builtin_modules() {
    local dir=$1 m
    [ -f "$dir/modules.builtin" ] || return 0
    flynn_module_names | while read -r m; do
        sed 's|.*/||; s/\.ko$//; s/-/_/g' "$dir/modules.builtin" | grep -qx "$m" && echo "$m"
    done
    return 0
}

# flynn_module_lists MODULES_DIR: writes the init's load lists, flynn.boot and
# flynn.jobs, without the built-in modules.
flynn_module_lists() {
    local dir=$1 builtin when
    builtin=$(flynn_builtin_modules "$dir")
    for when in boot jobs; do
        flynn_module_names "$when" | grep -v -x -F -e "${builtin:-//none//}" >"$dir/flynn.$when" || true
    done
}

# flynn_install_modules SRC_MODULES_DIR ROOT RELEASE: copies the listed modules
# and their dependencies into ROOT/lib/modules/RELEASE, writes the load lists,
# and indexes them (depmod: modules.dep for the dependencies, modules.alias for
# the devices' drivers, and busybox modprobe for the kernel's own requests).
flynn_install_modules() {
    local src=$1 root=$2 release=$3
    local dst=$root/lib/modules/$release rel resolved builtin
    mkdir -p "$dst"
    builtin=$(flynn_builtin_modules "$src")
    flynn_module_names | grep -v -x -F -e "${builtin:-//none//}" >"$dst/.wanted" || true
    resolved=$(flynn_resolve_modules "$src" "$dst/.wanted" 2>"$dst/.missing")
    if [ -s "$dst/.missing" ]; then
        flynn_die "kernel $release lacks modules the appliance needs: $(cat "$dst/.missing")"
    fi
    rm -f "$dst/.wanted" "$dst/.missing"
    for rel in $resolved; do
        mkdir -p "$dst/$(dirname "$rel")"
        cp "$src/$rel" "$dst/$rel"
    done
    for f in modules.order modules.builtin modules.builtin.modinfo; do
        [ -f "$src/$f" ] && cp "$src/$f" "$dst/$f"
    done
    depmod -b "$root" "$release"
    flynn_module_lists "$dst"
}

# flynn_initramfs ROOT OUT: newc cpio archives of ROOT, sorted, owned by root,
# every time set to SOURCE_DATE_EPOCH, in two compressed segments of one file
# (the kernel unpacks concatenated archives, each compressed its own way):
#  1. the baked image archives (usr/share/flynn/images, with its parent
#     directories), zstd -19: 28 MB of tar that shrinks to 8 MB;
#  2. everything else, lz4 -12 (legacy frame, what the kernel reads): it decodes
#     about twice as fast as zstd under TCG, where the boot is slowest.
# Under TCG the kernel unpacked all of it from zstd -19 (19.5 MB) in 2.7 s, and
# unpacks these two in 1.2 s (27 MB). lz4's legacy frame has no end marker, so
# its segment must come last. (xz -9e took 5.1 s for a smaller tree than this.)
flynn_initramfs() {
    local root=$1 out=$2 images=usr/share/flynn/images
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    (
        cd "$root"
        {
            if [ -d "$images" ]; then
                printf '%s\n' ./usr ./usr/share ./usr/share/flynn "./$images"
                find "./$images" -mindepth 1
            fi
        } | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible | zstd -q -19 -T1
        find . -mindepth 1 ! -path "./$images/*" | LC_ALL=C sort |
            cpio --quiet -o -H newc -R 0:0 --reproducible | lz4 -q -l -12
    ) >"$out.tmp"
    mv "$out.tmp" "$out"
}

# flynn_fat IMAGE SIZE_KIB LABEL SRC_DIR: a FAT image holding SRC_DIR's tree.
flynn_fat() {
    local img=$1 kib=$2 label=$3 src=$4 fat=()
    rm -f "$img"
    [ "$kib" -ge 65536 ] && fat=(-F 32 -s 1)
    mkfs.fat "${fat[@]}" -n "$label" -i "$FLYNN_FAT_ID" --invariant -C "$img" "$kib" >/dev/null
    (cd "$src" && find . -mindepth 1 -type d | LC_ALL=C sort | sed 's|^\./||') | while read -r d; do
        mmd -i "$img" "::/$d"
    done
    (cd "$src" && find . -type f | LC_ALL=C sort | sed 's|^\./||') | while read -r f; do
        mcopy -i "$img" -m "$src/$f" "::/$f"
    done
}

# flynn_put_le32 FILE OFFSET VALUE: writes VALUE as 4 little-endian bytes.
flynn_put_le32() {
    local v=$3
    # shellcheck disable=SC2059
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((v & 255)) $((v >> 8 & 255)) $((v >> 16 & 255)) $((v >> 24 & 255)))" |
        dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# flynn_uki KERNEL INITRD CMDLINE OUT: a unified kernel image (systemd's EFI
# stub with the kernel, initramfs, command line and os-release as sections):
# one EFI binary that firmware boots directly, no boot loader, no config.
flynn_uki() {
    local kernel=$1 initrd=$2 cmdline=$3 out=$4 stub=${FLYNN_EFI_STUB:-/usr/lib/systemd/boot/efi/linuxx64.efi.stub}
    local tmp
    tmp=$(mktemp -d)
    [ -f "$stub" ] || flynn_die "$stub missing: apt-get install systemd-boot-efi"
    printf '%s' "$cmdline" >"$tmp/cmdline"
    cp "$FLYNN_BOARD_DIR/rootfs-overlay/etc/os-release" "$tmp/os-release"
    local linux_size
    linux_size=$(stat -c %s "$kernel")
    # Sections sit above the stub; the initramfs goes after the kernel, aligned.
    local initrd_vma=$(( (0x2000000 + linux_size + 0xfffff) & ~0xfffff ))
    objcopy \
        --add-section .osrel="$tmp/os-release" --change-section-vma .osrel=0x20000 \
        --add-section .cmdline="$tmp/cmdline" --change-section-vma .cmdline=0x30000 \
        --add-section .linux="$kernel" --change-section-vma .linux=0x2000000 \
        --add-section .initrd="$initrd" --change-section-vma .initrd="$(printf '0x%x' $initrd_vma)" \
        "$stub" "$out"
    # objcopy stamps the PE header with the current time: put SOURCE_DATE_EPOCH
    # there instead, and clear the checksum that covered it (0: none; firmware
    # does not check it for applications).
    local pe
    pe=$(od -An -tu4 -j60 -N4 "$out" | tr -d ' ')
    flynn_put_le32 "$out" $((pe + 8)) "$SOURCE_DATE_EPOCH"
    flynn_put_le32 "$out" $((pe + 88)) 0
    rm -rf "$tmp"
}

# flynn_grub_efi OUT: GRUB for the ISO's UEFI boot. It reads the kernel and
# initramfs from the ISO 9660 tree that isolinux also uses, so the ISO holds
# them once (a UKI in the ISO's EFI image would hold them twice).
flynn_grub_efi() {
    local out=$1 tmp
    tmp=$(mktemp -d)
    sed "s/@VOLID@/$FLYNN_ISO_VOLID/" "$FLYNN_BOARD_DIR/grub-early.cfg" >"$tmp/early.cfg"
    grub-mkimage -O x86_64-efi -o "$out" -p /boot/grub -c "$tmp/early.cfg" \
        normal configfile search search_label iso9660 part_gpt part_msdos fat \
        linux echo test serial terminal efi_gop
    rm -rf "$tmp"
}

# flynn_make_images KERNEL INITRD OUT_DIR NAME: OUT_DIR/NAME.{iso,raw,qcow2}.
flynn_make_images() {
    local kernel=$1 initrd=$2 out=$3 name=$4
    local cmdline work
    cmdline=$(tr -s '[:space:]' ' ' <"$FLYNN_BOARD_DIR/cmdline" | sed 's/ $//')
    work=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN

    # Raw GPT disk, UEFI and BIOS: the ESP with the UKI as the removable-media
    # path (UEFI), and the kernel, initramfs and syslinux for BIOS machines (the
    # protective MBR's boot code is syslinux's gptmbr, which starts the partition
    # marked legacy-BIOS-bootable); a blank "flynn-state" partition that the init
    # formats at first boot.
    mkdir -p "$work/esp/EFI/BOOT" "$work/esp/boot" "$work/esp/syslinux"
    flynn_uki "$kernel" "$initrd" "$cmdline" "$work/esp/EFI/BOOT/BOOTX64.EFI"
    cp "$kernel" "$work/esp/boot/vmlinuz"
    cp "$initrd" "$work/esp/boot/initrd.img"
    sed "s|@CMDLINE@|$cmdline|" "$FLYNN_BOARD_DIR/isolinux.cfg" >"$work/esp/syslinux/syslinux.cfg"
    find "$work/esp" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    flynn_fat "$work/esp.img" $((FLYNN_ESP_MIB * 1024)) FLYNN-ESP "$work/esp"
    # mtools-based: works on the image file, no mount.
    syslinux --install --directory /syslinux "$work/esp.img" ||
        flynn_die "syslinux could not install on the ESP (apt-get install syslinux)"
    local raw=$out/$name.raw
    rm -f "$raw.tmp"
    truncate -s "${FLYNN_RAW_MIB}M" "$raw.tmp"
    local esp_start=2048 esp_sectors=$((FLYNN_ESP_MIB * 2048))
    sfdisk --quiet --no-reread --no-tell-kernel "$raw.tmp" <<SFDISK
label: gpt
label-id: $FLYNN_DISK_GUID
first-lba: 2048
start=$esp_start, size=$esp_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$FLYNN_ESP_GUID, name="EFI system", attrs="LegacyBIOSBootable"
start=$((esp_start + esp_sectors)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$FLYNN_STATE_GUID, name="flynn-state"
SFDISK
    dd if="$work/esp.img" of="$raw.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="${FLYNN_GPTMBR:-/usr/lib/syslinux/mbr/gptmbr.bin}" of="$raw.tmp" bs=440 count=1 \
        conv=notrunc status=none
    mv "$raw.tmp" "$raw"
    rm -f "$out/$name.qcow2"
    qemu-img convert -q -c -f raw -O qcow2 "$raw" "$out/$name.qcow2"

    # Hybrid ISO: isolinux (BIOS, El Torito and MBR) and GRUB in an EFI image
    # (UEFI, El Torito and a GPT/MBR partition), one kernel and initramfs.
    local iso=$work/iso
    mkdir -p "$iso/isolinux" "$iso/boot/grub" "$work/efi/EFI/BOOT"
    cp "${FLYNN_ISOLINUX_BIN:-/usr/lib/ISOLINUX/isolinux.bin}" \
        "${FLYNN_LDLINUX:-/usr/lib/syslinux/modules/bios/ldlinux.c32}" "$iso/isolinux/"
    sed "s|@CMDLINE@|$cmdline|" "$FLYNN_BOARD_DIR/isolinux.cfg" >"$iso/isolinux/isolinux.cfg"
    sed "s|@CMDLINE@|$cmdline|" "$FLYNN_BOARD_DIR/grub.cfg" >"$iso/boot/grub/grub.cfg"
    cp "$kernel" "$iso/boot/vmlinuz"
    cp "$initrd" "$iso/boot/initrd.img"
    flynn_grub_efi "$work/efi/EFI/BOOT/BOOTX64.EFI"
    find "$work/efi" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    local efi_kib=$(( ($(stat -c %s "$work/efi/EFI/BOOT/BOOTX64.EFI") / 1024) + 512 ))
    flynn_fat "$iso/boot/efi.img" "$efi_kib" FLYNN-EFI "$work/efi"
    find "$iso" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    local stamp
    stamp=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S00)
    xorriso -as mkisofs -quiet -o "$out/$name.iso.tmp" \
        -V "$FLYNN_ISO_VOLID" -R -J \
        --modification-date="$stamp" \
        -isohybrid-mbr "${FLYNN_ISOHDPFX:-/usr/lib/ISOLINUX/isohdpfx.bin}" \
        -c isolinux/boot.cat -b isolinux/isolinux.bin \
        -no-emul-boot -boot-load-size 4 -boot-info-table \
        -eltorito-alt-boot -e boot/efi.img -no-emul-boot -isohybrid-gpt-basdat \
        "$iso" 2>&1 | grep -v -e '^xorriso' -e '^libisofs' -e '^Drive current' -e '^Media' -e '^Added' -e '^Writing' -e 'completed' -e '^ISO image produced' -e '^Written' -e '^$' || true
    [ -s "$out/$name.iso.tmp" ] || flynn_die "xorriso wrote no ISO"
    mv "$out/$name.iso.tmp" "$out/$name.iso"
}
