#!/usr/bin/env python3
"""torch.nn.functional.embedding_bag on the shapes of spembed_bench, on the GPU.

The PyTorch column of the embedding bag benchmark. It mirrors spembed_bench
(benchmarks/embedding_bag_bench.cpp):

* shapes: those of benchmarks/README.md (and the same names), fp32 and fp16
  tables, SUM pooling plus one MEAN case, int64 ids, offsets of length
  bags + 1 (include_last_offset=True);
* ids: the same counter-based generator and Zipf inverse CDF as
  benchmarks/id_sampler.cpp, so the ids are the same up to floating-point
  rounding at the CDF's boundaries (pow and the cumulative sum may round
  differently in the last bit);
* table-batched shapes: one F.embedding_bag per table and torch.cat along
  dim 1, which is how a PyTorch model without a fused op builds the
  [B, sum of dims] output; the whole loop is timed;
* timing: warm-up, L2 flushed before each timed run by reading a buffer of
  twice the L2 size, CUDA events, median of the timed runs;
* byte model: rows read (repeats counted) + int64 ids + int64 offsets + output
  written, the same for Zipf ids; GB/s and % of the copy bandwidth measured
  first (1 GiB device-to-device copy_, bytes read + written).

Usage: torch_embedding_bag.py [--json FILE] [--iters N] [--filter REGEX]
                              [--budget-s SECONDS]
The JSON is rewritten after every case; --budget-s starts no new case once
that many seconds passed (scripts/device_check.sh runs it under a timeout).
Exits with status 0 and a message when PyTorch or a CUDA device is missing.
"""

import re
import sys

from torch_bench_util import Budget, base_parser, torch_on_gpu, write_json

SEED = 0x5EED
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
RANK_SCATTER = 2654435761
HOT_SHARE = 0.3  # the hot row's share of the lookups in the "hot30" ids
MIXED_DIMS = [16, 32, 48, 64, 96, 128, 192, 256]
WARMUP = 3
DEFAULT_ITERS = 50
COPY_BYTES = 1 << 30
COPY_RUNS = 10


def as_int64(value):
    """A 64-bit pattern as the signed value torch's int64 arithmetic uses."""
    return value - (1 << 64) if value >= (1 << 63) else value


def shift_right_logical(z, k):
    """z >> k for uint64 bit patterns held in int64 tensors."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def counter_uniform(torch, first, n, device):
    """u_i in [0, 1) for counters first .. first + n - 1 (id_sampler.cpp)."""
    i = torch.arange(first, first + n, dtype=torch.int64, device=device)
    z = as_int64(SEED) + (i + 1) * as_int64(GOLDEN_GAMMA)  # wraps like uint64
    z = (z ^ shift_right_logical(z, 30)) * as_int64(MIX1)
    z = (z ^ shift_right_logical(z, 27)) * as_int64(MIX2)
    z = z ^ shift_right_logical(z, 31)
    return shift_right_logical(z, 11).to(torch.float64) * 2.0**-53


_zipf_cache = {}


def zipf_cumulative(torch, rows, alpha, device):
    key = (rows, alpha)
    if key not in _zipf_cache:
        ranks = torch.arange(1, rows + 1, dtype=torch.float64)
        _zipf_cache.clear()  # one table of cumulative weights at a time
        _zipf_cache[key] = ranks.pow(-alpha).cumsum(0).to(device)
    return _zipf_cache[key]


def make_ids(torch, shape, dist, device):
    """All tables' ids, table-major, as spembed_bench's make_ids."""
    parts = []
    n = shape["bags"] * shape["bag_size"]
    rows = shape["rows"]
    for t in range(len(shape["dims"])):
        u = counter_uniform(torch, t * n, n, device)
        if dist == "uniform":
            ids = (u * rows).to(torch.int64).clamp_(max=rows - 1)
        else:
            alpha = 1.2 if dist == "zipf1.2" else 1.05
            cum = zipf_cumulative(torch, rows, alpha, device)
            if dist == "hot30":
                # HOT_SHARE of the lookups on rank 0, the rest Zipf(1.05) over
                # ranks 1.. (id_sampler.h).
                target = cum[0] + (u - HOT_SHARE) / (1.0 - HOT_SHARE) * (cum[-1] - cum[0])
                rank = torch.searchsorted(cum, target, right=True).clamp_(max=rows - 1)
                rank = torch.where(u < HOT_SHARE, torch.zeros_like(rank), rank)
            else:
                rank = torch.searchsorted(cum, u * cum[-1], right=True).clamp_(max=rows - 1)
            ids = (rank * RANK_SCATTER + t) % rows
        parts.append(ids)
    return parts


def count_name(n):
    if n % 1000000 == 0:
        return f"{n // 1000000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def make_shape(batched, tables, bags, bag_size, dim, rows, mixed):
    dims = [MIXED_DIMS[t % len(MIXED_DIMS)] if mixed else dim for t in range(tables)]
    name = (f"T{tables}_" if batched else "") + f"B{bags}_L{bag_size}_D"
    name += ("mix16-256" if mixed else str(dim)) + f"_E{count_name(rows)}"
    return {"name": name, "batched": batched, "bags": bags, "bag_size": bag_size,
            "rows": rows, "dims": dims}


def issue_shapes():
    shapes = [
        make_shape(False, 1, 65536, 32, 128, 10000000, False),
        make_shape(False, 1, 65536, 1, 16, 1000000, False),
        make_shape(False, 1, 65536, 1, 32, 1000000, False),
        make_shape(False, 1, 2048, 150, 128, 5000000, False),
    ]
    for rows in (100000, 1000000):
        for bags in (512, 16384):
            shapes.append(make_shape(True, 32, bags, 20, 128, rows, False))
    for bags in (512, 16384):
        shapes.append(make_shape(True, 32, bags, 20, 0, 1000000, True))
    return shapes


def model_bytes(shape, elem_bytes):
    nnz_t = shape["bags"] * shape["bag_size"]
    tables = len(shape["dims"])
    rows_read = sum(nnz_t * d * elem_bytes for d in shape["dims"])
    return (rows_read + 8 * nnz_t * tables + 8 * (tables * shape["bags"] + 1)
            + shape["bags"] * sum(shape["dims"]) * elem_bytes)


class Timer:
    def __init__(self, torch, device):
        self.torch = torch
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
        # Twice L2, read (not written) before every timed run: L2 is left
        # holding clean lines, so no write-back lands in the timed run.
        self.flush_buffer = torch.zeros(2 * l2 // 4, dtype=torch.int32, device=device)
        self.start = torch.cuda.Event(enable_timing=True)
        self.stop = torch.cuda.Event(enable_timing=True)

    def flush(self):
        self.flush_buffer.sum()

    def run(self, fn):
        self.flush()
        self.start.record()
        fn()
        self.stop.record()
        self.stop.synchronize()
        return self.start.elapsed_time(self.stop) * 1e-3

    def median(self, fn, iters):
        for _ in range(WARMUP):
            self.run(fn)
        times = sorted(self.run(fn) for _ in range(iters))
        return times[len(times) // 2]


def copy_bandwidth(torch, timer, device):
    src = torch.ones(COPY_BYTES // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timer.run(lambda: dst.copy_(src))
    best = min(timer.run(lambda: dst.copy_(src)) for _ in range(COPY_RUNS))
    del src, dst
    return 2.0 * COPY_BYTES / best / 1e9


def main():
    parser = base_parser(__doc__, DEFAULT_ITERS)
    Budget.add_argument(parser)
    args = parser.parse_args()
    budget = Budget(args.budget_s)

    found = torch_on_gpu("the F.embedding_bag benchmark")
    if found is None:
        return 0
    torch, F = found

    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    timer = Timer(torch, device)
    copy_gbps = copy_bandwidth(torch, timer, device)
    print(f"torch {torch.__version__} on {name}; copy bandwidth (1 GiB copy_, read + write) "
          f"{copy_gbps:.0f} GB/s")
    print(f"{'case':48} {'us':>11} {'GB/s':>9} {'%copy':>7}")

    pattern = re.compile(args.filter)
    results = []
    meta = {"device": name, "torch": torch.__version__, "copy_GBps": copy_gbps,
            "iters": args.iters,
            "byte_model": "rows read (repeats counted) + int64 ids + int64 offsets "
                          "+ output written; same model for Zipf ids",
            "results": results}
    for shape_index, shape in enumerate(issue_shapes()):
        for dist in ("uniform", "zipf1.05", "zipf1.2"):
            ids_per_table = None
            for dtype_name, dtype, elem_bytes in (("fp32", torch.float32, 4),
                                                  ("fp16", torch.float16, 2)):
                poolings = ["sum"]
                # One MEAN case: the first (largest) shape, uniform ids, fp32.
                if shape_index == 0 and dist == "uniform" and dtype_name == "fp32":
                    poolings.append("mean")
                cases = [f"{shape['name']}/{dist}/{dtype_name}/{p}" for p in poolings]
                if not any(pattern.search(c) for c in cases) or budget.over():
                    continue
                if ids_per_table is None:
                    ids_per_table = make_ids(torch, shape, dist, device)
                offsets = torch.arange(0, shape["bags"] + 1, dtype=torch.int64,
                                       device=device) * shape["bag_size"]
                tables = [torch.empty(shape["rows"], d, dtype=dtype, device=device).uniform_(-1, 1)
                          for d in shape["dims"]]
                for pooling, case in zip(poolings, cases):
                    if not pattern.search(case):
                        continue

                    def run(pooling=pooling, tables=tables):
                        outs = [F.embedding_bag(ids, table, offsets, mode=pooling,
                                                include_last_offset=True)
                                for ids, table in zip(ids_per_table, tables)]
                        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

                    seconds = timer.median(run, args.iters)
                    gbps = model_bytes(shape, elem_bytes) / seconds / 1e9
                    row = {"case": case, "peer": "torch", "us": seconds * 1e6, "GBps": gbps,
                           "pct_copy_bw": 100.0 * gbps / copy_gbps,
                           "label": "F.embedding_bag" + (" per table + torch.cat"
                                                         if shape["batched"] else "")}
                    results.append(row)
                    print(f"{case:48} {row['us']:11.1f} {gbps:9.1f} {row['pct_copy_bw']:6.1f}%",
                          flush=True)
                    write_json(args.json, meta)
                del tables
                torch.cuda.empty_cache()

    write_json(args.json, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
