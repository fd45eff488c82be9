#!/usr/bin/env python3
"""Reads the ptxas resource reports that the build keeps beside each CUDA
object (<object>.ptxas.log, see cmake/nvcc_with_ptxas_log.sh), prints one line
per kernel and architecture, and fails if any kernel spills registers or uses
a stack frame (local memory)."""
import pathlib
import re
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return out if len(out) == len(names) else names
    except (OSError, subprocess.CalledProcessError):
        return names


def main(build_dir):
    logs = sorted(pathlib.Path(build_dir).rglob("*.ptxas.log"))
    if not logs:
        print(f"check_kernel_resources: no ptxas logs under {build_dir}", file=sys.stderr)
        return 1
    rows = []
    for log in logs:
        current = None
        for line in log.read_text().splitlines():
            if m := ENTRY.search(line):
                current = {"kernel": m.group(1), "arch": m.group(2), "log": log.name}
            elif current and (m := PROPS.search(line)):
                current.update(stack=int(m.group(1)), spill_st=int(m.group(2)),
                               spill_ld=int(m.group(3)))
            elif current and (m := REGS.search(line)):
                current["regs"] = int(m.group(1))
                rows.append(current)
                current = None
    if not rows:
        print("check_kernel_resources: the logs hold no kernel reports", file=sys.stderr)
        return 1
    names = demangle([r["kernel"] for r in rows])
    bad = 0
    print(f"{'arch':7} {'regs':>4} {'stack':>5} {'spill':>5}  kernel")
    for r, name in zip(rows, names):
        spills = r.get("spill_st", 0) + r.get("spill_ld", 0)
        flag = ""
        if r.get("stack", 0) or spills:
            flag = "   <-- local memory / spills"
            bad += 1
        short = name if len(name) <= 150 else name[:147] + "..."
        print(f"{r['arch']:7} {r['regs']:4} {r.get('stack', 0):5} {spills:5}  {short}{flag}")
    print(f"check_kernel_resources: {len(rows)} kernel builds, {bad} with stack frames or spills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build"))
