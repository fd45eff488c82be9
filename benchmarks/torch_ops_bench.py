#!/usr/bin/env python3
"""spembed's torch ops side by side with torch's own, on the GPU.

  embedding bag forward      spembed.ops.embedding_bag     vs F.embedding_bag
  embedding bag fwd + bwd    (dense gradient)              vs F.embedding_bag + autograd
  table-batched lookup       EmbeddingBagCollection        vs one F.embedding_bag per table
  fused SGD step             EmbeddingBagCollection(optimizer="sgd")
                                                           vs sparse grad + torch.optim.SGD
  varlen attention fwd/bwd   spembed.ops.varlen_attention  vs padded F.scaled_dot_product_attention

Byte model of a lookup: every id reads one row (dim * element size) plus the
id (and offsets); the output is written once. Attention reports TFLOP/s of
4 * sum(Lq * Lk) * heads * head_dim (forward; x2.5 for forward + backward),
counting all keys of the unmasked problem. Each case warms up, flushes L2
(a 256 MiB write) before every timed run and times with CUDA events;
the median is printed as one JSON line per case. Ids are uniform or Zipf
(alpha 1.05 / 1.2). Without a GPU it prints "no GPU" and exits 0.
"""
import argparse
import json
import os
import statistics
import sys

# The ops' default host-side check of the device's bounds report synchronises
# once per call; torch's own ops do not, so the timed comparison turns it off
# (read once, when the first op runs).
os.environ.setdefault("SPEMBED_SYNC_CHECKS", "0")

import torch
import torch.nn.functional as F

from torch_bench_util import make_ids


class Timer:
    def __init__(self, reps):
        self.reps = reps
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def __call__(self, fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(self.reps):
            self.flush.fill_(1)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        return statistics.median(times)


def copy_bandwidth(timer):
    a = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = timer(lambda: b.copy_(a))
    return 2 * a.numel() / t


def report(case, impl, seconds, nbytes=None, flops=None, peak_bw=None, **kw):
    row = dict(case=case, impl=impl, ms=round(seconds * 1e3, 4), **kw)
    if nbytes is not None:
        row["GB/s"] = round(nbytes / seconds / 1e9, 1)
        row["%copy_bw"] = round(100 * nbytes / seconds / peak_bw, 1)
    if flops is not None:
        row["TFLOP/s"] = round(flops / seconds / 1e12, 2)
    print(json.dumps(row), flush=True)


def bench_embedding(timer, peak, gen, args):
    import spembed
    rows, batch, pool = args.rows, args.batch, args.pooling
    for dtype in (torch.float32, torch.float16):
        for dim in (64, 128):
            weight = torch.randn(rows, dim, dtype=dtype, device="cuda")
            for dist in ("uniform", "zipf_1.05", "zipf_1.2"):
                ids = make_ids(dist, batch * pool, rows, gen).cuda()
                offs = torch.arange(0, batch * pool + 1, pool, device="cuda")
                esz = weight.element_size()
                nbytes = ids.numel() * (dim * esz + 8) + batch * dim * esz
                meta = dict(dtype=str(dtype)[6:], dim=dim, dist=dist, batch=batch, pooling=pool)
                for mode in ("sum", "mean"):
                    t = timer(lambda: spembed.ops.embedding_bag(ids, weight, offs, mode=mode,
                                                                include_last_offset=True))
                    report(f"embedding_bag_fwd_{mode}", "spembed", t, nbytes, peak_bw=peak, **meta)
                    t = timer(lambda: F.embedding_bag(ids, weight, offs, mode=mode,
                                                      include_last_offset=True))
                    report(f"embedding_bag_fwd_{mode}", "torch", t, nbytes, peak_bw=peak, **meta)
                w1 = weight.clone().requires_grad_()
                go = torch.randn(batch, dim, dtype=dtype, device="cuda")

                def ours():
                    spembed.ops.embedding_bag(ids, w1, offs, mode="sum",
                                              include_last_offset=True).backward(go)

                def theirs():
                    F.embedding_bag(ids, w1, offs, mode="sum",
                                    include_last_offset=True).backward(go)

                t = timer(ours)
                report("embedding_bag_fwd_bwd_sum", "spembed", t, 2 * nbytes, peak_bw=peak, **meta)
                t = timer(theirs)
                report("embedding_bag_fwd_bwd_sum", "torch", t, 2 * nbytes, peak_bw=peak, **meta)


def bench_collection(timer, peak, gen, args):
    import spembed
    tables = [(args.rows // 4, 64)] * 8 + [(args.rows // 16, 32)] * 8
    batch, pool = args.batch // 4, args.pooling
    for dist in ("uniform", "zipf_1.2"):
        feats = [(make_ids(dist, batch * pool, r, gen).cuda(),
                  torch.arange(0, batch * pool + 1, pool, device="cuda")) for r, _ in tables]
        nbytes = sum(batch * pool * (d * 4 + 8) + batch * d * 4 for _, d in tables)
        ebc = spembed.nn.EmbeddingBagCollection(tables, device="cuda")
        t = timer(lambda: ebc(feats))
        report("collection_fwd", "spembed", t, nbytes, peak_bw=peak, dist=dist, tables=len(tables))
        ws = list(ebc.weights)
        t = timer(lambda: torch.cat([F.embedding_bag(i, w, o, include_last_offset=True,
                                                     mode="sum") for w, (i, o) in zip(ws, feats)],
                                    1))
        report("collection_fwd", "torch", t, nbytes, peak_bw=peak, dist=dist, tables=len(tables))

        fused = spembed.nn.EmbeddingBagCollection(tables, device="cuda", optimizer="sgd")
        go = torch.randn(batch, fused.total_dim, device="cuda")
        t = timer(lambda: fused(feats).backward(go))
        report("collection_fwd_bwd_sgd", "spembed_fused", t, 2 * nbytes, peak_bw=peak, dist=dist)
        sp = [torch.nn.Parameter(w.detach().clone()) for w in fused.weights]
        opt = torch.optim.SGD(sp, lr=0.01)

        def torch_step():
            out = torch.cat([F.embedding_bag(i, w, o, include_last_offset=True, mode="sum",
                                             sparse=True) for w, (i, o) in zip(sp, feats)], 1)
            out.backward(go)
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = timer(torch_step)
        report("collection_fwd_bwd_sgd", "torch_sparse_sgd", t, 2 * nbytes, peak_bw=peak,
               dist=dist)


def bench_attention(timer, gen, args):
    import spembed
    heads, head_dim = 4, 64
    for dtype in (torch.bfloat16,):
        for max_len in (64, 256):
            lens = torch.randint(1, max_len + 1, (args.batch // 16,), generator=gen)
            cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
            cu[1:] = lens.cumsum(0)
            total = int(cu[-1])
            cu = cu.cuda()
            q, k, v = (torch.randn(total, heads, head_dim, dtype=dtype, device="cuda",
                                   requires_grad=True) for _ in range(3))
            flops = 4 * float((lens.double() ** 2).sum()) * heads * head_dim
            meta = dict(dtype=str(dtype)[6:], max_len=max_len, seqs=lens.numel(), causal=True)
            t = timer(lambda: spembed.ops.varlen_attention(q, k, v, cu, cu, causal=True,
                                                           max_seqlen_q=max_len,
                                                           max_seqlen_k=max_len))
            report("varlen_attention_fwd", "spembed", t, flops=flops, **meta)
            go = torch.randn_like(q)
            t = timer(lambda: spembed.ops.varlen_attention(q, k, v, cu, cu, causal=True).backward(go))
            report("varlen_attention_fwd_bwd", "spembed", t, flops=3.5 * flops, **meta)
            # torch: pad to [B, heads, max_len, head_dim] and run SDPA (its
            # fastest available backend) with a causal mask; padding included.
            b = lens.numel()
            pq, pk, pv = (torch.randn(b, heads, max_len, head_dim, dtype=dtype, device="cuda",
                                      requires_grad=True) for _ in range(3))
            pflops = 4 * b * max_len * max_len * heads * head_dim
            t = timer(lambda: F.scaled_dot_product_attention(pq, pk, pv, is_causal=True))
            report("varlen_attention_fwd", "torch_sdpa_padded", t, flops=flops,
                   padded_flops_ratio=round(pflops / flops, 2), **meta)
            pgo = torch.randn_like(pq)
            t = timer(lambda: F.scaled_dot_product_attention(pq, pk, pv,
                                                             is_causal=True).backward(pgo))
            report("varlen_attention_fwd_bwd", "torch_sdpa_padded", t, flops=3.5 * flops, **meta)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1 << 20)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--pooling", type=int, default=32)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--only", choices=["embedding", "collection", "attention"], default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False; nothing to benchmark")
        return 0
    gen = torch.Generator().manual_seed(0)
    timer = Timer(args.reps)
    peak = copy_bandwidth(timer)
    print(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                          copy_GBps=round(peak / 1e9, 1))), flush=True)
    if args.only in (None, "embedding"):
        bench_embedding(timer, peak, gen, args)
    if args.only in (None, "collection"):
        bench_collection(timer, peak, gen, args)
    if args.only in (None, "attention"):
        bench_attention(timer, gen, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
