#!/usr/bin/env python3
"""Markdown tables from spembed_bench's JSON (and torch_embedding_bag.py's).

Usage:
  bench_report.py SPEMBED_JSON [--torch TORCH_JSON] [-o OUT.md]

SPEMBED_JSON is Google Benchmark's output of spembed_bench
(--benchmark_out=FILE --benchmark_out_format=json). Each case (shape, ids,
dtype, pooling) gets one row per peer: median time, GB/s by the byte model,
% of the copy bandwidth spembed_bench measured, and spembed's speedup (the
peer's time over spembed's; on spembed's own row, over the fastest other
peer). Torch rows are rescaled to spembed_bench's copy bandwidth so the
column compares like with like. A second table checks the issue's targets.
"""

import argparse
import json
import sys

# "Large" shapes for the copy-bandwidth target: at least this many bytes by
# the model, well past L2 (50 MB on H100) so launch and tail effects are small.
LARGE_BYTES = 64e6
LARGE_TARGET_PCT = 85.0
SMALL_DIM_TARGET_PCT = 70.0
TORCH_TARGET_SPEEDUP = 1.5
PEER_ORDER = {"spembed": 0, "cusparse": 1, "naive": 2, "torch": 3}


def load_spembed(path):
    with open(path) as f:
        data = json.load(f)
    context = data.get("context", {})
    rows = []
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        parts = b["name"].split("/")
        if len(parts) < 6 or parts[0] not in ("eb", "eb_cpu"):
            continue
        row = {"case": "/".join(parts[1:5]), "peer": parts[5], "label": b.get("label", "")}
        if b.get("error_occurred"):
            row["error"] = b.get("error_message", "error")
        else:
            row.update(us=b["us"], GBps=b["GBps"], pct_copy_bw=b["pct_copy_bw"],
                       model_bytes=b.get("model_bytes", 0.0))
        rows.append(row)
    return context, rows


def load_torch(path, copy_gbps, rows_by_case):
    with open(path) as f:
        data = json.load(f)
    out = []
    for r in data.get("results", []):
        row = dict(r)
        if copy_gbps:
            row["pct_copy_bw"] = 100.0 * row["GBps"] / copy_gbps
        same_case = rows_by_case.get(row["case"], [])
        row["model_bytes"] = next((x["model_bytes"] for x in same_case if "model_bytes" in x), 0.0)
        out.append(row)
    return data, out


def fmt(x, digits=1):
    return f"{x:,.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spembed_json")
    parser.add_argument("--torch", help="torch_embedding_bag.py --json output")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args()

    try:
        context, rows = load_spembed(args.spembed_json)
    except (OSError, ValueError) as e:
        print(f"bench_report: cannot read {args.spembed_json}: {e}", file=sys.stderr)
        return 1
    if not rows:
        print(f"bench_report: no embedding bag results in {args.spembed_json}", file=sys.stderr)
        return 1
    copy_gbps = float(context.get("copy_GBps", 0.0) or 0.0)
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    torch_info = None
    if args.torch:
        try:
            torch_info, torch_rows = load_torch(args.torch, copy_gbps, by_case)
        except (OSError, ValueError) as e:
            print(f"warning: torch results not read: {e}", file=sys.stderr)
            torch_rows = []
        for r in torch_rows:
            by_case.setdefault(r["case"], []).append(r)

    lines = []
    lines.append(f"Device: {context.get('device', context.get('host_name', '?'))}; "
                 f"path: {context.get('path', '?')}; copy bandwidth {fmt(copy_gbps, 0)} GB/s "
                 f"(read + write)"
                 + (f"; torch {torch_info.get('torch')}" if torch_info else ""))
    lines.append("")
    lines.append(f"Byte model: {context.get('byte_model', '?')}.")
    lines.append(f"Timing: {context.get('timing', '?')}.")
    lines.append("")
    lines.append("| shape | ids | dtype | pool | peer | us | GB/s | % copy BW | spembed speedup |")
    lines.append("|---|---|---|---|---|---:|---:|---:|---|")
    checks = []
    for case, case_rows in by_case.items():
        shape, dist, dtype, pool = case.split("/")
        case_rows.sort(key=lambda r: PEER_ORDER.get(r["peer"], 9))
        ok_rows = [r for r in case_rows if "error" not in r]
        mine = next((r for r in ok_rows if r["peer"] == "spembed"), None)
        others = [r for r in ok_rows if r["peer"] != "spembed"]
        for r in case_rows:
            peer = r["peer"] + (f" ({r['label']})" if r.get("label") else "")
            if "error" in r:
                lines.append(f"| {shape} | {dist} | {dtype} | {pool} | {peer} | "
                             f"{r['error']} | | | |")
                continue
            speedup = ""
            if mine is not None and r is not mine:
                speedup = f"{r['us'] / mine['us']:.2f}x"
            elif mine is not None and others:
                best = min(others, key=lambda o: o["us"])
                speedup = f"{best['us'] / mine['us']:.2f}x vs {best['peer']}"
            lines.append(f"| {shape} | {dist} | {dtype} | {pool} | {peer} | {fmt(r['us'])} | "
                         f"{fmt(r['GBps'])} | {fmt(r['pct_copy_bw'])} | {speedup} |")
        checks.extend(target_checks(case, mine, case_rows, torch_info is not None))

    if not context.get("path", "").startswith("gpu"):
        lines.append("")
        lines.append("CPU smoke run on reduced shapes: the issue's targets apply to GPU runs only.")
        return write(args.output, lines)
    lines.append("")
    lines.append("Targets (from the issue):")
    lines.append("")
    lines.append("| case | target | value | met |")
    lines.append("|---|---|---:|---|")
    for case, target, value, met in checks:
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {case} | {target} | {value} | {verdict} |")
    judged = [c for c in checks if c[3] is not None]
    met = sum(1 for c in judged if c[3])
    lines.append("")
    lines.append(f"{met} of {len(judged)} target checks met"
                 f" ({len(checks) - len(judged)} not judged: the peer has no result).")
    return write(args.output, lines)


def write(path, lines):
    text = "\n".join(lines) + "\n"
    if path:
        with open(path, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def target_checks(case, mine, rows, have_torch):
    """(case, target, value, met) for spembed's row of one case; met is None
    where the peer has no result to compare with."""
    if mine is None:
        return [(case, "spembed ran", "no result", False)]
    shape, dist = case.split("/")[:2]
    out = []
    if dist == "uniform" and mine.get("model_bytes", 0.0) >= LARGE_BYTES:
        out.append((case, f">= {LARGE_TARGET_PCT:.0f}% of copy BW (large, uniform)",
                    f"{mine['pct_copy_bw']:.1f}%", mine["pct_copy_bw"] >= LARGE_TARGET_PCT))
    if "_D16_" in shape and "_L1_" in shape:
        out.append((case, f">= {SMALL_DIM_TARGET_PCT:.0f}% of copy BW (D=16, L=1)",
                    f"{mine['pct_copy_bw']:.1f}%", mine["pct_copy_bw"] >= SMALL_DIM_TARGET_PCT))
    for r in rows:
        if "error" in r:
            if r["peer"] in ("cusparse", "torch"):
                out.append((case, f"ahead of {r['peer']}", f"{r['peer']}: {r['error']}", None))
            continue
        if r["peer"] == "cusparse":
            s = r["us"] / mine["us"]
            out.append((case, "ahead of cuSPARSE", f"{s:.2f}x", s > 1.0))
        if r["peer"] == "torch":
            s = r["us"] / mine["us"]
            out.append((case, f">= {TORCH_TARGET_SPEEDUP}x F.embedding_bag", f"{s:.2f}x",
                        s >= TORCH_TARGET_SPEEDUP))
    if have_torch and not any(r["peer"] == "torch" for r in rows):
        out.append((case, f">= {TORCH_TARGET_SPEEDUP}x F.embedding_bag", "no torch result", False))
    return out


if __name__ == "__main__":
    sys.exit(main())
