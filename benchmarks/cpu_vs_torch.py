#!/usr/bin/env python3
"""spembed's CPU path side by side with torch's on CPU tensors, in one run.

  forward            spembed.ops.embedding_bag            vs F.embedding_bag (same table)
  module forward     spembed.nn.EmbeddingBag              vs torch.nn.EmbeddingBag (own tables)
  fwd + bwd + step   EmbeddingBagCollection(optimizer=)   vs F.embedding_bag(sparse=True)
                     (fused SGD / Adagrad)                   + torch.optim.SGD / Adagrad
  table-batched      EmbeddingBagCollection (T tables)    vs T F.embedding_bag calls + cat
  varlen attention   spembed.ops.varlen_attention         vs padded F.scaled_dot_product_attention
                     (forward, forward + backward; SASRec / HSTU self-attention,
                     target attention of candidates over the history)

Both sides use torch.get_num_threads() threads (--threads sets it; the op
layer passes torch's count on to spembed). Times are the best of --reps runs
after a warm-up, with the same ids every run. GB/s counts the rows gathered
(ids x dim x element size). ratio = torch ms / spembed ms (> 1: spembed is
faster). Prints a markdown section (and --json writes one JSON line a case).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from torch_bench_util import make_ids


# time.perf_counter (wall), or with --cpu-time time.process_time: the CPU
# seconds of all threads, which time slicing on a shared machine does not
# inflate (with one thread, the wall time of an idle machine).
CLOCK = [time.perf_counter]


def best_of(fn, reps):
    fn()
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = CLOCK[0]()
        fn()
        best = min(best, CLOCK[0]() - t0)
    return best


class Report:
    def __init__(self, json_path):
        self.rows = []
        self.json = open(json_path, "w") if json_path else None

    def add(self, case, shape, ours, theirs, gathered_bytes=None, torch_impl="torch"):
        row = dict(case=case, shape=shape, spembed_ms=round(ours * 1e3, 3),
                   torch_ms=round(theirs * 1e3, 3), torch_impl=torch_impl,
                   ratio=round(theirs / ours, 2))
        if gathered_bytes:
            row["spembed_GBps"] = round(gathered_bytes / ours / 1e9, 1)
            row["torch_GBps"] = round(gathered_bytes / theirs / 1e9, 1)
        self.rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if self.json:
            print(json.dumps(row), file=self.json, flush=True)

    def markdown(self, header):
        out = [header, "",
               "| case | shape | spembed ms | torch ms | spembed GB/s | torch GB/s | ratio |",
               "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            out.append(f"| {r['case']} | {r['shape']} | {r['spembed_ms']} | {r['torch_ms']} "
                       f"({r['torch_impl']}) | {r.get('spembed_GBps', '')} | "
                       f"{r.get('torch_GBps', '')} | {r['ratio']}x |")
        return "\n".join(out) + "\n"


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def bench_forward(rep, gen, reps, quick):
    import spembed
    # (rows, dim, batch, pooling, dist, dtype)
    cases = [(1 << 20, 64, 4096, 20, "uniform", "fp32"),
             (1 << 20, 64, 4096, 20, "zipf_1.05", "fp32"),
             (1 << 20, 64, 4096, 20, "zipf_1.2", "fp32"),
             (1 << 20, 64, 4096, 20, "uniform", "fp16"),
             (1 << 20, 64, 4096, 20, "uniform", "bf16"),
             (1 << 20, 64, 16384, 20, "uniform", "fp32"),
             (100_000, 128, 8192, 50, "uniform", "fp32"),
             (10_000, 16, 65536, 1, "uniform", "fp32")]
    if quick:
        cases = cases[:1] + cases[3:5]
    for rows, dim, batch, pool, dist, dt in cases:
        weight = torch.randn(rows, dim, generator=gen).to(DTYPES[dt])
        ids = make_ids(dist, batch * pool, rows, gen)
        offs = torch.arange(0, batch * pool + 1, pool)
        ours = best_of(lambda: spembed.ops.embedding_bag(ids, weight, offs, mode="sum",
                                                         include_last_offset=True), reps)
        theirs = best_of(lambda: F.embedding_bag(ids, weight, offs, mode="sum",
                                                 include_last_offset=True), reps)
        shape = f"rows {rows}, D {dim}, B {batch}, L {pool}, {dist}, {dt}"
        rep.add("fwd sum", shape, ours, theirs, ids.numel() * dim * weight.element_size())


def bench_module_forward(rep, gen, reps, quick):
    """The drop-in view: spembed.nn.EmbeddingBag vs torch.nn.EmbeddingBag, each
    module with its own table (spembed's on huge pages, torch's in its
    allocator's memory), same values."""
    import spembed
    rows, dim, batch, pool = 1 << 20, 64, 4096, 20
    for dist in ("uniform",) if quick else ("uniform", "zipf_1.2"):
        ids = make_ids(dist, batch * pool, rows, gen)
        offs = torch.arange(0, batch * pool + 1, pool)
        ours_module = spembed.nn.EmbeddingBag(rows, dim, mode="sum", include_last_offset=True)
        theirs_module = torch.nn.EmbeddingBag(rows, dim, mode="sum", include_last_offset=True)
        with torch.no_grad():
            theirs_module.weight.copy_(ours_module.weight)
            ours = best_of(lambda: ours_module(ids, offs), reps)
            theirs = best_of(lambda: theirs_module(ids, offs), reps)
        rep.add("module fwd sum", f"rows {rows}, D {dim}, B {batch}, L {pool}, {dist}, fp32",
                ours, theirs, ids.numel() * dim * 4, torch_impl="torch.nn.EmbeddingBag")


def bench_train_step(rep, gen, reps, quick):
    import spembed
    rows, dim, batch, pool = 1 << 20, 64, 4096, 20
    for dist in ("uniform",) if quick else ("uniform", "zipf_1.2"):
        ids = make_ids(dist, batch * pool, rows, gen)
        offs = torch.arange(0, batch * pool + 1, pool)
        go = torch.randn(batch, dim, generator=gen)
        for opt_name, torch_opt in (("sgd", torch.optim.SGD), ("adagrad", torch.optim.Adagrad)):
            fused = spembed.nn.EmbeddingBagCollection([(rows, dim)], optimizer=opt_name, lr=0.01)
            ours = best_of(lambda: fused([(ids, offs)]).backward(go), reps)
            w = torch.nn.Parameter(fused.weights[0].detach().clone())
            opt = torch_opt([w], lr=0.01)

            def torch_step():
                F.embedding_bag(ids, w, offs, mode="sum", include_last_offset=True,
                                sparse=True).backward(go)
                opt.step()
                opt.zero_grad(set_to_none=True)

            theirs = best_of(torch_step, reps)
            shape = f"rows {rows}, D {dim}, B {batch}, L {pool}, {dist}, fp32"
            rep.add(f"fwd+bwd+{opt_name}", shape, ours, theirs, 2 * ids.numel() * dim * 4,
                    torch_impl=f"sparse grad + torch.optim.{torch_opt.__name__}")


def bench_batched(rep, gen, reps, quick):
    import spembed
    tables = [(100_000, 64)] * 8
    batch, pool = 4096, 20
    feats = [(make_ids("uniform", batch * pool, r, gen), torch.arange(0, batch * pool + 1, pool))
             for r, _ in tables]
    ebc = spembed.nn.EmbeddingBagCollection(tables)
    # torch.nn.EmbeddingBag modules would each own their table: copies, in
    # torch's allocation (the collection's own are on huge pages).
    ws = [w.detach().clone() for w in ebc.weights]
    with torch.no_grad():
        ours = best_of(lambda: ebc(feats), reps)
        theirs = best_of(lambda: torch.cat([F.embedding_bag(i, w, o, include_last_offset=True,
                                                            mode="sum")
                                            for w, (i, o) in zip(ws, feats)], 1), reps)
    nbytes = sum(batch * pool * d * 4 for _, d in tables)
    rep.add("table-batched fwd sum", f"T {len(tables)} x rows 100000, D 64, B {batch}, L {pool}",
            ours, theirs, nbytes, torch_impl=f"{len(tables)} F.embedding_bag + cat")


# name, batch, query length (0: self-attention, = key length), longest key
# length, heads, head dim, causal, dtype. Key lengths are uniform in
# [1, longest] with the first sequence the longest (the padded width).
ATTENTION_SHAPES = [
    ("brief", 16, 0, 200, 2, 64, True, "fp32"),
    ("SASRec", 128, 0, 200, 1, 50, True, "fp32"),
    ("SASRec", 128, 0, 200, 1, 50, True, "bf16"),
    ("HSTU", 16, 0, 512, 4, 64, True, "fp32"),
    ("target, 1 candidate", 64, 1, 1000, 4, 64, False, "fp32"),
    ("target, 16 candidates", 64, 16, 1000, 4, 64, False, "fp32"),
]


def bench_attention(rep, gen, reps, quick):
    """Packed varlen attention vs SDPA on the same sequences zero-padded to
    the longest: is_causal for self-attention (a real query sees only real
    keys before it), a key-padding mask for target attention."""
    import spembed
    shapes = ATTENTION_SHAPES[:1] + ATTENTION_SHAPES[4:5] if quick else ATTENTION_SHAPES
    for name, batch, q_len, max_len, heads, head_dim, causal, dt in shapes:
        dtype = DTYPES[dt]
        lens_k = torch.randint(1, max_len + 1, (batch,), generator=gen)
        lens_k[0] = max_len
        lens_q = lens_k if q_len == 0 else torch.full((batch,), q_len)
        max_q = int(lens_q.max())
        cu_k, cu_q = (F.pad(x.cumsum(0), (1, 0)).to(torch.int32) for x in (lens_k, lens_q))

        def packed(total):
            return (torch.rand(total, heads, head_dim, generator=gen) * 2 - 1).to(dtype)

        q, k, v = packed(int(cu_q[-1])), packed(int(cu_k[-1])), packed(int(cu_k[-1]))
        go = packed(int(cu_q[-1]))

        def padded(x, cu, width):  # [B, H, width, d], zeros past each length
            out = torch.zeros(batch, width, heads, head_dim, dtype=dtype)
            for b in range(batch):
                out[b, :int(cu[b + 1] - cu[b])] = x[cu[b]:cu[b + 1]]
            return out.transpose(1, 2).contiguous()

        pq, pk, pv, pgo = (padded(q, cu_q, max_q), padded(k, cu_k, max_len),
                           padded(v, cu_k, max_len), padded(go, cu_q, max_q))
        mask = None if causal else \
            (torch.arange(max_len)[None, :] < lens_k[:, None])[:, None, None, :]
        for t in (q, k, v, pq, pk, pv):
            t.requires_grad_()

        def ours_fwd():
            return spembed.ops.varlen_attention(q, k, v, cu_q, cu_k, causal=causal,
                                                max_seqlen_q=max_q, max_seqlen_k=max_len)

        def theirs_fwd():
            return F.scaled_dot_product_attention(pq, pk, pv, attn_mask=mask, is_causal=causal)

        padding = 1 - int(cu_k[-1]) / (batch * max_len)
        shape = (f"{name}: B {batch}, Lq {'= Lk' if q_len == 0 else q_len}, Lk <= {max_len}, "
                 f"H {heads}, d {head_dim}, {'causal' if causal else 'key mask'}, "
                 f"padding {padding:.0%}, {dt}")
        with torch.no_grad():
            ours, theirs = best_of(ours_fwd, reps), best_of(theirs_fwd, reps)
        rep.add("varlen attention fwd", shape, ours, theirs, torch_impl="padded SDPA")
        ours = best_of(lambda: ours_fwd().backward(go), reps)
        theirs = best_of(lambda: theirs_fwd().backward(pgo), reps)
        rep.add("varlen attention fwd+bwd", shape, ours, theirs, torch_impl="padded SDPA")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--only", choices=["forward", "module", "train", "batched", "attention"],
                   default=None)
    p.add_argument("--cpu-time", action="store_true",
                   help="time with process CPU time (shared machines; use with --threads 1)")
    p.add_argument("--json", default=None, help="also write JSON lines here")
    p.add_argument("--markdown", default=None, help="write the markdown section here")
    args = p.parse_args()
    try:
        import spembed  # noqa: F401
    except ImportError:
        print("cpu_vs_torch: the spembed Python package is not installed; skipped")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK[0] = time.process_time
    gen = torch.Generator().manual_seed(0)
    rep = Report(args.json)
    benches = dict(forward=bench_forward, module=bench_module_forward, train=bench_train_step,
                   batched=bench_batched, attention=bench_attention)
    for name, fn in benches.items():
        if args.only in (None, name):
            fn(rep, gen, args.reps, args.quick)
    header = (f"## CPU: spembed vs torch {torch.__version__} "
              f"({torch.get_num_threads()} threads, {os.cpu_count()} CPUs, best of {args.reps}, "
              f"{'CPU' if args.cpu_time else 'wall'} time)")
    md = rep.markdown(header)
    print(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
