#!/usr/bin/env bash
# Builds flynn-host with the code it runs laid out together (agent/text-order.txt,
# see scripts/text-order.py and ARCHITECTURE.md, memory): a first build and link
# that keeps the symbol table, then a second link (only the binary's own small
# crate compiled again) in the order read from those symbols.
# Usage: scripts/link-ordered.sh OUT_DIR CARGO_ARGS...
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
shift
# The first link keeps the symbol table (a stripping profile drops it): the
# order file names symbols.
cargo rustc "$@" -p flynn-host --bin flynn-host -- -C strip=none
order="$out/flynn-host.text-order"
python3 scripts/text-order.py order agent/text-order.txt "$out/flynn-host" >"$order.tmp"
mv "$order.tmp" "$order"
# Not position-independent (as Debian's runc, etcd and skopeo are): a PIE of this
# size makes the dynamic loader apply some 57 000 relocations at every start, and
# copy on write the 1 MB of pages they touch; that was a third of the start-up of
# each CLI command and each shim (ARCHITECTURE.md, Decisions: not position-independent).
# The static appliance build asks for the same with -C relocation-model=static.
cargo rustc "$@" -p flynn-host --bin flynn-host -- \
    -C link-arg=-Wl,--symbol-ordering-file="$PWD/$order" \
    -C link-arg=-Wl,--no-warn-symbol-ordering -C link-arg=-no-pie 2>/dev/null
