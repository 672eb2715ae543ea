#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Searches a live process's memory for secrets (run as root: reads /proc/PID/mem over every
# readable mapping of /proc/PID/maps). Usage: cmek-memscan.py PID NEEDLES_FILE
# NEEDLES_FILE: one "LABEL HEX" per line (the bytes to look for). Prints one line per hit
# (label, address, mapping) and exits 1 if anything was found, 0 if not. Labels starting with
# "control" are the opposite: bytes the process is known to hold (proof that the scan sees the
# heap); the exit code is 2 when one of them is not found.
import re
import sys


def main():
    pid, needles_file = int(sys.argv[1]), sys.argv[2]
    needles = []
    with open(needles_file) as f:
        for line in f:
            if line.strip():
                label, hx = line.split()
                needles.append((label, bytes.fromhex(hx)))
    hits = 0
    scanned = 0
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)", line)
            start, end, perms, name = int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4)
            if perms[0] != "r" or name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            # ASan's shadow memory: terabytes of untouched zero pages, never a heap
            if end - start > (64 << 30):
                continue
            # ASan's shadow and allocator reserve terabytes of address space; read in chunks and
            # skip what cannot be read
            chunk = 16 << 20
            prev_tail = b""
            for off in range(start, end, chunk):
                try:
                    mem.seek(off)
                    data = mem.read(min(chunk, end - off))
                except (OSError, ValueError, OverflowError):
                    prev_tail = b""
                    continue
                scanned += len(data)
                buf = prev_tail + data
                base = off - len(prev_tail)
                for label, nd in needles:
                    i = buf.find(nd)
                    while i >= 0:
                        found.add(label)
                        if label.startswith("control"):
                            break
                        print(f"{label} at {base + i:#x} in {name or '[anon]'} ({perms})")
                        hits += 1
                        i = buf.find(nd, i + 1)
                prev_tail = data[-128:]
    print(f"scanned {scanned} bytes, {len(needles)} needles, {hits} hits", file=sys.stderr)
    missing = [label for label, _ in needles if label.startswith("control") and label not in found]
    if missing:
        print(f"control needles not found (the scan does not see the heap?): {missing}", file=sys.stderr)
        return 2
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
