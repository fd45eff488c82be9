#!/usr/bin/env python3
"""Markdown tables from spembed_bench's JSON (and the torch scripts').

Usage:
  bench_report.py SPEMBED_JSON [--torch TORCH_JSON] [--torch-backward TORCH_BWD_JSON]
                  [--torch-attention TORCH_ATTN_JSON] [-o OUT.md]

SPEMBED_JSON is Google Benchmark's output of spembed_bench
(--benchmark_out=FILE --benchmark_out_format=json). Each case (shape, ids,
dtype, pooling) gets one row per peer: median time, GB/s by the byte model,
% of the copy bandwidth spembed_bench measured, and spembed's speedup (the
peer's time over spembed's; on spembed's own row, over the fastest other
peer). Torch rows are rescaled to spembed_bench's copy bandwidth so the
column compares like with like. A second table checks the targets (the
constants below; docs/design.md, "Benchmarks").

The backward's benchmarks (names ebb/...) get their own tables: each case
(shape, ids, output: grad, rows, or an optimizer) one row per peer (spembed =
deterministic, spembed_atomic, stock, torch_dense, torch_sparse from
torch_embedding_bag_backward.py), and the backward's targets: deterministic
backward + row-wise Adagrad >= 60% of copy bandwidth on the large uniform
shapes; deterministic within 1.15x the atomic path's time (dense gradient,
every ids distribution); >= 3x PyTorch's backward + optimizer step (the faster
of its dense and sparse=True variants) on every shape.

The attention benchmarks (names attn/<shape>/<dtype>/<fwd|bwd>/<peer>) get one
table: a row per (shape, dtype, direction), the peers side by side (median
us, TFLOP/s by the FLOP model, and spembed's speedup over that peer: the
peer's time over spembed's; spembed's cells name the kernels that ran,
[tensor-core], [simt] or [cpu], and the spembed_simt column runs the SIMT
kernels on the same inputs), with torch_attention.py's peers merged in
(--torch-attention; the table is complete without it, on CPU runs too). Then
the attention targets (GPU runs), judged per case: fp16 / bf16
forward >= 1.2x FA2 varlen (the faster of torch_varlen and
flash_attn_varlen) and >= 2x the best padded SDPA backend; backward >= 1.0x
FA2 varlen; fp32 (forward and backward) >= 2x torch's memory-efficient SDPA;
the long case >= 0.8x the best peer, whichever it is (the other targets are
not applied to it).
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
PEER_ORDER = {"spembed": 0, "spembed_atomic": 1, "cusparse": 2, "naive": 3, "stock": 4,
              "torch": 5, "torch_dense": 6, "torch_sparse": 7}
# Backward targets.
BWD_ROWWISE_TARGET_PCT = 60.0
BWD_ATOMIC_RATIO = 1.15
BWD_TORCH_TARGET_SPEEDUP = 3.0
OPTIMIZER_OUTPUTS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
# Attention: peers in column order, and the targets.
ATTN_PEERS = ("spembed", "stock", "torch_varlen", "flash_attn_varlen", "torch_flash",
              "torch_efficient", "torch_cudnn", "torch_math")
ATTN_FA2_PEERS = ("torch_varlen", "flash_attn_varlen")
ATTN_PADDED_PEERS = ("torch_flash", "torch_efficient", "torch_cudnn", "torch_math")
ATTN_FWD_FA2_SPEEDUP = 1.2
ATTN_FWD_PADDED_SPEEDUP = 2.0
ATTN_BWD_FA2_SPEEDUP = 1.0
ATTN_FP32_EFFICIENT_SPEEDUP = 2.0
ATTN_LONG_BEST_PEER_RATIO = 0.8


def load_spembed(path):
    """(context, forward rows, backward rows, attention rows)."""
    with open(path) as f:
        data = json.load(f)
    context = data.get("context", {})
    rows = []
    bwd_rows = []
    attn_rows = []
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        parts = b["name"].split("/")
        if len(parts) >= 5 and parts[0] in ("attn", "attn_cpu"):
            row = {"case": "/".join(parts[1:4]), "peer": parts[4], "label": b.get("label", "")}
            if b.get("error_occurred"):
                row["error"] = b.get("error_message", "error")
            else:
                row.update(us=b["us"], TFLOPs=b["TFLOPs"])
            attn_rows.append(row)
            continue
        if len(parts) < 6 or parts[0] not in ("eb", "eb_cpu", "ebb", "ebb_cpu"):
            continue
        row = {"case": "/".join(parts[1:5]), "peer": parts[5], "label": b.get("label", "")}
        if b.get("error_occurred"):
            row["error"] = b.get("error_message", "error")
        else:
            row.update(us=b["us"], GBps=b["GBps"], pct_copy_bw=b["pct_copy_bw"],
                       model_bytes=b.get("model_bytes", 0.0))
        (bwd_rows if parts[0].startswith("ebb") else rows).append(row)
    return context, rows, bwd_rows, attn_rows


def load_torch(path, copy_gbps, rows_by_case):
    with open(path) as f:
        data = json.load(f)
    out = []
    for r in data.get("results", []):
        row = dict(r)
        if "error" in row:
            out.append(row)
            continue
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
    parser.add_argument("--torch-backward",
                        help="torch_embedding_bag_backward.py --json output")
    parser.add_argument("--torch-attention", help="torch_attention.py --json output")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args()

    try:
        context, rows, bwd_rows, attn_rows = load_spembed(args.spembed_json)
    except (OSError, ValueError) as e:
        print(f"bench_report: cannot read {args.spembed_json}: {e}", file=sys.stderr)
        return 1
    if not rows and not bwd_rows and not attn_rows:
        print(f"bench_report: no embedding bag or attention results in {args.spembed_json}",
              file=sys.stderr)
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
    bwd_by_case = {}
    for r in bwd_rows:
        bwd_by_case.setdefault(r["case"], []).append(r)
    torch_bwd_info = None
    if args.torch_backward:
        try:
            torch_bwd_info, torch_bwd_rows = load_torch(args.torch_backward, copy_gbps,
                                                        bwd_by_case)
        except (OSError, ValueError) as e:
            print(f"warning: torch backward results not read: {e}", file=sys.stderr)
            torch_bwd_rows = []
        for r in torch_bwd_rows:
            if r.get("case") in bwd_by_case or not bwd_rows:
                bwd_by_case.setdefault(r["case"], []).append(r)

    torch_attn_info = None
    if args.torch_attention:
        try:
            with open(args.torch_attention) as f:
                torch_attn_info = json.load(f)
        except (OSError, ValueError) as e:
            print(f"warning: torch attention results not read: {e}", file=sys.stderr)
    if torch_attn_info is not None:
        attn_rows = attn_rows + [dict(r) for r in torch_attn_info.get("results", [])]

    lines = []
    torch_version = (torch_info or torch_bwd_info or torch_attn_info or {}).get("torch")
    lines.append(f"Device: {context.get('device', context.get('host_name', '?'))}; "
                 f"path: {context.get('path', '?')}; copy bandwidth {fmt(copy_gbps, 0)} GB/s "
                 f"(read + write)"
                 + (f"; torch {torch_version}" if torch_version else ""))
    lines.append("")
    lines.append(f"Timing: {context.get('timing', '?')}.")
    lines.append("")
    gpu = context.get("path", "").startswith("gpu")
    if rows:
        lines.extend(forward_section(context, by_case, torch_info is not None, gpu))
    if bwd_rows:
        lines.extend(backward_section(context, bwd_by_case, torch_bwd_info is not None, gpu))
    if attn_rows:
        lines.extend(attention_section(context, attn_rows, torch_attn_info, gpu))
    return write(args.output, lines)


def forward_section(context, by_case, have_torch, gpu):
    lines = ["### Forward", ""]
    lines.append(f"Byte model: {context.get('byte_model', '?')}.")
    lines.append("")
    lines.append("| shape | ids | dtype | pool | peer | us | GB/s | % copy BW | spembed speedup |")
    lines.append("|---|---|---|---|---|---:|---:|---:|---|")
    checks = []
    for case, case_rows in by_case.items():
        shape, dist, dtype, pool = case.split("/")
        mine, rows = bandwidth_rows([shape, dist, dtype, pool], case_rows,
                                    lambda peer: peer != "spembed")
        lines.extend(rows)
        checks.extend(target_checks(case, mine, case_rows, have_torch))
    lines.extend(targets_table(checks, gpu))
    return lines


def bandwidth_rows(lead, case_rows, is_rival):
    """Table rows of one case's peers (sorted in place), each after the `lead`
    cells: us, GB/s, % copy BW and the speedup of spembed over that peer (on
    spembed's own row: over the fastest rival). Returns (spembed's row or
    None, the lines)."""
    case_rows.sort(key=lambda r: PEER_ORDER.get(r["peer"], 9))
    ok_rows = [r for r in case_rows if "error" not in r]
    mine = next((r for r in ok_rows if r["peer"] == "spembed"), None)
    others = [r for r in ok_rows if is_rival(r["peer"])]
    head = "| " + " | ".join(lead) + " | "
    lines = []
    for r in case_rows:
        peer = r["peer"] + (f" ({r['label']})" if r.get("label") else "")
        if "error" in r:
            lines.append(f"{head}{peer} | {r['error']} | | | |")
            continue
        speedup = ""
        if mine is not None and r is not mine:
            speedup = f"{r['us'] / mine['us']:.2f}x"
        elif mine is not None and others:
            best = min(others, key=lambda o: o["us"])
            speedup = f"{best['us'] / mine['us']:.2f}x vs {best['peer']}"
        lines.append(f"{head}{peer} | {fmt(r['us'])} | {fmt(r['GBps'])} | "
                     f"{fmt(r['pct_copy_bw'])} | {speedup} |")
    return mine, lines


def targets_table(checks, gpu):
    lines = [""]
    if not gpu:
        lines.append("CPU smoke run on reduced shapes: the targets apply to GPU runs only.")
        lines.append("")
        return lines
    lines.append("Targets:")
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
                 f" ({len(checks) - len(judged)} not judged: a peer has no result, or the "
                 f"case did not fit in memory).")
    lines.append("")
    return lines


def backward_section(context, by_case, have_torch, gpu):
    lines = ["### Backward", ""]
    lines.append(context.get("backward_byte_model", "Backward byte model: ?").strip())
    lines.append("")
    lines.append("| shape | ids | output | peer | us | GB/s | % copy BW | spembed speedup |")
    lines.append("|---|---|---|---|---:|---:|---:|---|")
    checks = []
    for case, case_rows in by_case.items():
        shape, dist, _dtype, what = case.split("/")
        mine, rows = bandwidth_rows([shape, dist, what], case_rows,
                                    lambda peer: not peer.startswith("spembed"))
        lines.extend(rows)
        checks.extend(backward_checks(case, mine, case_rows, have_torch))
    lines.extend(targets_table(checks, gpu))
    return lines


def backward_checks(case, mine, rows, have_torch):
    """(case, target, value, met) of the backward's targets for one case."""
    shape, dist, _dtype, what = case.split("/")
    if mine is None:
        err = next((r["error"] for r in rows if r["peer"] == "spembed" and "error" in r),
                   "no result")
        # A case the device has no memory for is not judged.
        return [(case, "spembed ran", err, None if "cannot allocate" in err else False)]
    out = []
    if what == "rowwise_adagrad" and dist == "uniform" and mine.get("model_bytes", 0.0) >= \
            LARGE_BYTES:
        out.append((case, f">= {BWD_ROWWISE_TARGET_PCT:.0f}% of copy BW (large, uniform)",
                    f"{mine['pct_copy_bw']:.1f}%",
                    mine["pct_copy_bw"] >= BWD_ROWWISE_TARGET_PCT))
    if what == "grad":
        atomic = next((r for r in rows if r["peer"] == "spembed_atomic"), None)
        target = f"deterministic <= {BWD_ATOMIC_RATIO}x atomic time"
        if atomic is None or "error" in atomic:
            out.append((case, target, "atomic: " + (atomic or {}).get("error", "no result"),
                        None))
        else:
            ratio = mine["us"] / atomic["us"]
            out.append((case, target, f"{ratio:.2f}x", ratio <= BWD_ATOMIC_RATIO))
    if what in OPTIMIZER_OUTPUTS and have_torch:
        torch_rows = [r for r in rows if r["peer"].startswith("torch") and "error" not in r]
        target = f">= {BWD_TORCH_TARGET_SPEEDUP:.0f}x torch backward + step (faster variant)"
        if not torch_rows:
            out.append((case, target, "no torch result", None))
        else:
            best = min(torch_rows, key=lambda r: r["us"])
            s = best["us"] / mine["us"]
            out.append((case, target, f"{s:.2f}x vs {best['peer']}",
                        s >= BWD_TORCH_TARGET_SPEEDUP))
    return out


def attention_section(context, attn_rows, torch_info, gpu):
    lines = ["### Attention", ""]
    lines.append(context.get("attention_flop_model", "Attention FLOP model: ?").strip())
    if torch_info is not None:
        lines.append(f"PyTorch peers: torch_attention.py, torch {torch_info.get('torch', '?')} "
                     f"on {torch_info.get('device', '?')}, {torch_info.get('iters', '?')} timed "
                     f"runs each.")
    else:
        lines.append("PyTorch peers: no torch_attention.py results (no GPU or no PyTorch, "
                     "or --torch-attention not given).")
    lines.append("")
    by_case = {}
    for r in attn_rows:
        by_case.setdefault(r["case"], {})[r["peer"]] = r
    present = [p for p in ATTN_PEERS if any(p in peers for peers in by_case.values())]
    present += sorted({p for peers in by_case.values() for p in peers} - set(present))
    lines.append("Each cell: median us / TFLOP/s; on other peers' cells, spembed's speedup "
                 "(that peer's time / spembed's).")
    lines.append("")
    lines.append("| shape | dtype | dir | " + " | ".join(present) + " |")
    lines.append("|---|---|---|" + "---:|" * len(present))
    errors = []
    checks = []
    for case, peers in by_case.items():
        shape, dtype, direction = case.split("/")
        mine = peers.get("spembed")
        if mine is not None and "error" in mine:
            mine_ok = None
        else:
            mine_ok = mine
        cells = []
        for p in present:
            r = peers.get(p)
            if r is None:
                cells.append("")
            elif "error" in r:
                errors.append(f"{case} {p}: {r['error']}")
                cells.append(f"error [{len(errors)}]")
            else:
                cell = f"{fmt(r['us'])} / {r['TFLOPs']:.3g}"
                if mine_ok is not None and p != "spembed":
                    cell += f" / {r['us'] / mine_ok['us']:.2f}x"
                kernels = attention_kernels(r)
                if kernels:
                    cell += f" [{kernels}]"
                cells.append(cell)
        lines.append(f"| {shape} | {dtype} | {direction} | " + " | ".join(cells) + " |")
        checks.extend(attention_checks(case, peers, torch_info is not None))
    if errors:
        lines.append("")
        lines.append("Errors and skips:")
        lines.append("")
        for i, e in enumerate(errors, 1):
            lines.append(f"{i}. {e}")
    lines.extend(targets_table(checks, gpu))
    return lines


def attention_kernels(row):
    """The kernel variant spembed_bench names in a row's label ("kernels: simt; ...")."""
    label = row.get("label", "")
    if not label.startswith("kernels: "):
        return ""
    return label[len("kernels: "):].split(";")[0]


def attention_checks(case, peers, have_torch):
    """(case, target, value, met) of the attention targets for one case."""
    shape, dtype, direction = case.split("/")
    mine = peers.get("spembed")
    if mine is None or "error" in mine:
        err = (mine or {}).get("error", "no result")
        return [(case, "spembed ran", err, None if "cannot allocate" in err else False)]
    # Peers are other libraries: spembed's own variants (spembed_simt) are not.
    ok = {p: r for p, r in peers.items()
          if "error" not in r and p != "spembed" and not p.startswith("spembed_")}

    def versus(names, factor, what):
        target = f">= {factor}x {what}"
        got = [ok[p] for p in names if p in ok]
        if not got:
            why = "no torch results" if not have_torch else "no result from " + "/".join(names)
            return (case, target, why, None)
        best = min(got, key=lambda r: r["us"])
        s = best["us"] / mine["us"]
        return (case, target, f"{s:.2f}x vs {best['peer']}", s >= factor)

    if shape.startswith("long_"):
        target = f">= {ATTN_LONG_BEST_PEER_RATIO}x the best peer"
        if not ok:
            return [(case, target, "no peer result", None)]
        best = min(ok.values(), key=lambda r: r["us"])
        s = best["us"] / mine["us"]
        return [(case, target, f"{s:.2f}x vs {best['peer']}", s >= ATTN_LONG_BEST_PEER_RATIO)]
    if dtype == "fp32":
        return [versus(("torch_efficient",), ATTN_FP32_EFFICIENT_SPEEDUP,
                       "torch efficient SDPA (fp32)")]
    if direction == "fwd":
        return [versus(ATTN_FA2_PEERS, ATTN_FWD_FA2_SPEEDUP, "FA2 varlen"),
                versus(ATTN_PADDED_PEERS, ATTN_FWD_PADDED_SPEEDUP, "best padded SDPA backend")]
    return [versus(ATTN_FA2_PEERS, ATTN_BWD_FA2_SPEEDUP, "FA2 varlen")]


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
