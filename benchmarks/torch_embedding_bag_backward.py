#!/usr/bin/env python3
"""PyTorch's embedding bag backward (+ torch.optim step) on spembed_bench's shapes.

The PyTorch column of the backward benchmark (embedding_bag_backward_bench.cpp):

* shapes, ids, tables: those of torch_embedding_bag.py (the benchmark shapes,
  the same counter-based ids; uniform, Zipf(1.05), Zipf(1.2) on every shape
  and hot30, one row taking 30% of the lookups, on the first), fp32 tables,
  SUM pooling, int64 ids and offsets (include_last_offset=True); grad_output
  fp32 [B, total dim];
* cases (names <shape>/<ids>/fp32/<what>, as spembed_bench's):
    grad             backward alone, sparse=False: a dense weight.grad
    rows             backward alone, sparse=True: a sparse COO weight.grad
    sgd, adagrad, rowwise_adagrad, adam
                     backward + optimizer.step(), twice: peer torch_dense
                     (sparse=False, torch.optim.SGD / Adagrad / Adam) and
                     peer torch_sparse (sparse=True, SGD / Adagrad /
                     SparseAdam). PyTorch has no row-wise Adagrad: its
                     rowwise_adagrad rows run Adagrad (labelled so);
* timed region: autograd backward of the forward's output with grad_output
  plus the optimizer step. Before every run, outside the timed region, the
  gradients are set to None (as zero_grad(set_to_none=True) does in a training
  loop) and the forward is run again to build the graph; the
  dense backward's own zero-filled [E, D] gradient is part of PyTorch's
  backward, so it is timed. Table-batched shapes: one F.embedding_bag per
  table and torch.cat, one backward through all of them, one optimizer over
  all tables (default foreach / fused choices of torch.optim);
* timing and copy bandwidth as torch_embedding_bag.py (L2 flushed before each
  run, CUDA events, median);
* byte model: spembed_bench's backward model (nnz*dim*4 grad_output reads,
  + per output the touched rows U of the gradient / weights / states, + ids and
  offsets), U counted with torch.unique; the same bytes for both peers, so
  GB/s compare times.

Usage: torch_embedding_bag_backward.py [--json FILE] [--iters N] [--filter REGEX]
                                       [--budget-s SECONDS]
The JSON is rewritten after every case; --budget-s starts no new case once
that many seconds passed (scripts/device_check.sh runs it under a timeout).
Exits with status 0 and a message when PyTorch or a CUDA device is missing.
A case that runs out of device memory is recorded as an error and skipped.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_embedding_bag as fwd  # noqa: E402  (shapes, ids, timer, copy bandwidth)
from torch_bench_util import Budget, base_parser, torch_on_gpu, write_json  # noqa: E402

DEFAULT_ITERS = 20
OUTPUTS = ("grad", "rows", "sgd", "rowwise_adagrad", "adagrad", "adam")
LR = 0.01
EPS = 1e-8


def model_bytes(shape, what, unique):
    """spembed_bench's backward byte model (embedding_bag_backward_bench.cpp)."""
    nnz_t = shape["bags"] * shape["bag_size"]
    tables = len(shape["dims"])
    total = 8.0 * nnz_t * tables + 8.0 * (tables * shape["bags"] + 1)
    for dim, u in zip(shape["dims"], unique):
        total += nnz_t * dim * 4.0
        total += {"grad": 2.0 * u * dim * 4.0,
                  "sgd": 2.0 * u * dim * 4.0,
                  "rows": u * (8.0 + dim * 4.0),
                  "adagrad": 4.0 * u * dim * 4.0,
                  "rowwise_adagrad": 2.0 * u * dim * 4.0 + 2.0 * u * 4.0,
                  "adam": 6.0 * u * dim * 4.0}[what]
    if what == "rows":
        total += 8.0
    return total


def make_optimizer(torch, what, params, sparse):
    """(optimizer, label) for one case; None for the backward alone."""
    if what in ("grad", "rows"):
        return None, "backward"
    if what == "sgd":
        return torch.optim.SGD(params, lr=LR), "SGD"
    if what in ("adagrad", "rowwise_adagrad"):
        label = "Adagrad" if what == "adagrad" else "Adagrad (torch has no row-wise Adagrad)"
        return torch.optim.Adagrad(params, lr=LR, eps=EPS), label
    if sparse:
        return torch.optim.SparseAdam(params, lr=LR, eps=EPS), "SparseAdam"
    return torch.optim.Adam(params, lr=LR, eps=EPS), "Adam"


def time_median(timer, prepare, fn, iters):
    """Median of `iters` timed runs of fn, each after an untimed prepare()."""
    def once():
        prepare()
        return timer.run(fn)
    for _ in range(fwd.WARMUP):
        once()
    times = sorted(once() for _ in range(iters))
    return times[len(times) // 2]


def run_case(torch, F, timer, ids_per_table, offsets, tables, grad_output, what, sparse, iters):
    """Seconds of backward (+ step) for one case, and the optimizer's label."""
    optimizer, label = make_optimizer(torch, what, tables, sparse)
    graph = {}

    def prepare():
        # Untimed: clear the gradients and build a fresh graph (the optimizer
        # updates the tables in place, which a retained graph would reject).
        for t in tables:
            t.grad = None
        outs = [F.embedding_bag(ids, table, offsets, mode="sum", include_last_offset=True,
                                sparse=sparse)
                for ids, table in zip(ids_per_table, tables)]
        graph["out"] = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def fn():
        graph["out"].backward(grad_output)
        if optimizer is not None:
            optimizer.step()

    try:
        seconds = time_median(timer, prepare, fn, iters)
    finally:
        graph.clear()
        del optimizer
        for t in tables:
            t.grad = None
    return seconds, label


def main():
    parser = base_parser(__doc__, DEFAULT_ITERS)
    Budget.add_argument(parser)
    args = parser.parse_args()
    budget = Budget(args.budget_s)

    found = torch_on_gpu("the embedding bag backward benchmark")
    if found is None:
        return 0
    torch, F = found

    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    timer = fwd.Timer(torch, device)
    copy_gbps = fwd.copy_bandwidth(torch, timer, device)
    print(f"torch {torch.__version__} on {name}; copy bandwidth (1 GiB copy_, read + write) "
          f"{copy_gbps:.0f} GB/s; embedding bag backward (+ optimizer step)")
    print(f"{'case':52} {'peer':13} {'us':>11} {'GB/s':>9} {'%copy':>7}")

    pattern = re.compile(args.filter)
    results = []
    meta = {"device": name, "torch": torch.__version__, "copy_GBps": copy_gbps,
            "iters": args.iters,
            "byte_model": "spembed_bench's backward model (grad_output nnz*dim*4 + "
                          "touched rows of gradient / weights / states + ids and "
                          "offsets)",
            "results": results}
    shapes = fwd.issue_shapes()
    for shape_index, shape in enumerate(shapes):
        dists = ["uniform", "zipf1.05", "zipf1.2"] + (["hot30"] if shape_index == 0 else [])
        tables = None
        grad_output = None
        for dist in dists:
            cases = [f"{shape['name']}/{dist}/fp32/{w}" for w in OUTPUTS]
            if not any(pattern.search(c) for c in cases) or budget.over():
                continue
            if tables is None:
                tables = [torch.empty(shape["rows"], d, dtype=torch.float32, device=device)
                          .uniform_(-1, 1).requires_grad_() for d in shape["dims"]]
                grad_output = torch.empty(shape["bags"], sum(shape["dims"]),
                                          dtype=torch.float32, device=device).uniform_(-1, 1)
            ids_per_table = fwd.make_ids(torch, shape, dist, device)
            unique = [int(torch.unique(ids).numel()) for ids in ids_per_table]
            offsets = torch.arange(0, shape["bags"] + 1, dtype=torch.int64,
                                   device=device) * shape["bag_size"]
            for what, case in zip(OUTPUTS, cases):
                if not pattern.search(case) or budget.over():
                    continue
                variants = {"grad": [False], "rows": [True]}.get(what, [False, True])
                for sparse in variants:
                    peer = "torch_sparse" if sparse else "torch_dense"
                    row = {"case": case, "peer": peer}
                    try:
                        seconds, label = run_case(torch, F, timer, ids_per_table, offsets, tables,
                                                  grad_output, what, sparse, args.iters)
                    except torch.cuda.OutOfMemoryError:
                        row["error"] = "out of device memory"
                        results.append(row)
                        print(f"{case:52} {peer:13} skipped: out of device memory", flush=True)
                        torch.cuda.empty_cache()
                        continue
                    gbps = model_bytes(shape, what, unique) / seconds / 1e9
                    row.update(us=seconds * 1e6, GBps=gbps, pct_copy_bw=100.0 * gbps / copy_gbps,
                               label=("sparse=True" if sparse else "sparse=False") + ", " + label
                               + (", per table + torch.cat" if shape["batched"] else ""))
                    results.append(row)
                    print(f"{case:52} {peer:13} {row['us']:11.1f} {gbps:9.1f} "
                          f"{row['pct_copy_bw']:6.1f}%", flush=True)
                write_json(args.json, meta)
                torch.cuda.empty_cache()
            del ids_per_table
        del tables, grad_output
        torch.cuda.empty_cache()

    write_json(args.json, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
