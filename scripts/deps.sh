#!/usr/bin/env bash
# Installs what building and testing flynn-host needs on Debian 12, by package
# name. Idempotent: installs only what is missing; `apt-get update` runs only then.
# Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail

FLYNN_APT_PACKAGES=(
    build-essential pkg-config cmake      # zlib-ng (flate2) builds with cmake
    libseccomp-dev                        # libcontainer's seccomp
    protobuf-compiler libprotobuf-dev     # etcd-client's build (protoc + well-known types)
    busybox-static                        # test images and the appliance's shell
    umoci skopeo                          # writing fixture images in OCI/docker formats
    runc                                  # benchmark anchor
    qemu-system-x86 linux-image-amd64     # VM tests: pure cgroup v2, the appliance
    iproute2 procps psmisc file util-linux iperf3
    docker-registry apache2-utils openssl python3   # pull tests: a real registry, htpasswd, token certs
    debootstrap                           # the Debian benchmark image
    etcd-server                           # the grid's etcd: tests run it; fixtures make its image
    ethtool                               # grid tests: GRO on the test underlay, as real NICs have
    curl nftables                         # grid tests: raw API calls; dropped traffic between test hosts
    git                                   # the git receiver (git-http-backend) and the git push tests
    golang-go nodejs                      # the toolchains of flynn/slugbuilder's Go and Node.js buildpacks
    python3-venv                          # schemathesis's venv (flynn_install_schemathesis)
    # the appliance image (buildroot/assemble.sh) and booting it (qemu-tests, main.sh)
    kmod cpio zstd lz4 e2fsprogs dosfstools mtools fdisk xorriso isolinux syslinux-common
    syslinux                              # BIOS boot of the raw disk (installs on its FAT ESP)
    systemd-boot-efi grub-efi-amd64-bin qemu-utils ovmf socat
)

flynn_install_deps() {
    if [ "$(id -u)" != 0 ]; then
        echo "run as root: flynn-host manages namespaces, cgroups and mounts" >&2
        exit 1
    fi
    # Twice: installing one package can remove another that was installed (the
    # machine may have a newer qemu-utils from backports, which conflicts with
    # bookworm's qemu-system-x86), so what is missing is looked at again after.
    local round missing pkg
    for round in 1 2; do
        missing=()
        for pkg in "${FLYNN_APT_PACKAGES[@]}" "$@"; do
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
        done
        [ ${#missing[@]} -eq 0 ] && break
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        [ "$round" = 1 ] && apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    done
    for pkg in "${FLYNN_APT_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            { echo "deps: $pkg is still not installed after apt-get install" >&2; exit 1; }
    done
    if ! command -v cargo >/dev/null; then
        [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
    flynn_install_schemathesis
    rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}

# schemathesis (PyPI), for agent/tests/schemathesis.rs: in a venv of its own, pinned, so
# the test runs the same checks everywhere. Idempotent.
FLYNN_VENV="${FLYNN_VENV:-/var/tmp/flynn-venv}"
FLYNN_SCHEMATHESIS_VERSION=4.32.5
flynn_install_schemathesis() {
    if "$FLYNN_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$FLYNN_SCHEMATHESIS_VERSION"; then
        return
    fi
    python3 -m venv "$FLYNN_VENV"
    "$FLYNN_VENV/bin/pip" install -q "schemathesis==$FLYNN_SCHEMATHESIS_VERSION"
}

# As a user other than root: says what is missing (and how to get it) instead of
# installing it.
flynn_check_deps() {
    local pkg missing=()
    for pkg in "${FLYNN_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing packages: ${missing[*]}; run this once as root to install them" >&2
        exit 1
    fi
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
}
