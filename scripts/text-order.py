#!/usr/bin/env python3
"""Orders the daemon's code so that what it runs sits together.

The kernel maps a binary's code into a process 64 kB at a time around each page
it touches (fault-around), so code touched at start-up that is spread over the
whole 20 MB of .text makes most of it resident. Linking the functions the daemon
runs next to each other (lld's --symbol-ordering-file) keeps its resident code
to about their size.

  text-order.py profile BINARY CALLGRIND_OUT... > agent/text-order.txt
      the functions of BINARY that callgrind runs executed, as keys
  text-order.py order KEYS BINARY > FILE
      the symbols of BINARY (built with symbols) whose keys are in KEYS, for
      --symbol-ordering-file

A key is a symbol with its crate disambiguators removed: they change with the
cargo profile, the target and dependency versions, the functions do not.
"""
import re
import subprocess
import sys

# v0 mangling: a crate root is `C`, an optional disambiguator `s<base62>_`, then
# the length-prefixed name; legacy mangling ends in a 16-digit hash.
V0_CRATE = re.compile(r"Cs[0-9A-Za-z]*_(?=\d)")
LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")


def key(symbol):
    return LEGACY_HASH.sub("E", V0_CRATE.sub("C", symbol))


def code_symbols(binary):
    out = subprocess.run(["nm", "--defined-only", binary], check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            yield parts[2]


def profile(binary, *callgrind_outs):
    ours = set(code_symbols(binary))
    seen = []
    for callgrind_out in callgrind_outs:
        obj = ""
        for line in open(callgrind_out, encoding="utf-8", errors="replace"):
            if line.startswith("ob="):
                obj = line[3:].strip()
            elif line.startswith("fn="):
                name = line[3:].strip()
                # The C library is in the static binary: its functions count too.
                if name in ours or "libc.so" in obj or "libm.so" in obj:
                    seen.append(name)
    for k in dict.fromkeys(key(n) for n in seen):
        print(k)


def order(keys_file, binary):
    wanted = [k.strip() for k in open(keys_file) if k.strip() and not k.startswith("#")]
    by_key = {}
    for sym in code_symbols(binary):
        by_key.setdefault(key(sym), []).append(sym)
    # A local symbol can appear once per object that has a copy: name it once.
    for sym in dict.fromkeys(sym for k in wanted for sym in by_key.get(k, [])):
        print(sym)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("profile", "order"):
        sys.exit(__doc__)
    if sys.argv[1] == "order" and len(sys.argv) != 4:
        sys.exit(__doc__)
    {"profile": profile, "order": order}[sys.argv[1]](*sys.argv[2:])
