"""Pieces shared by the PyTorch benchmark scripts (torch_attention.py,
torch_embedding_bag.py, torch_embedding_bag_backward.py), which run as
`python3 benchmarks/<script>.py` and so import this module from their own
directory."""
import argparse
import json
import os
import time


def base_parser(doc, default_iters, filter_help="regex on case names"):
    """An argument parser described by the first line of `doc`, with the
    options every script takes: --json, --iters and --filter."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--iters", type=int, default=default_iters, help="timed runs per case")
    parser.add_argument("--filter", default="", help=filter_help)
    return parser


class Budget:
    """--budget-s: the time after which a script starts no new case (0: no
    limit), so that a caller's timeout still finds a JSON of the cases that
    ran (the scripts rewrite it after every case)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.started = time.monotonic()
        self.reached = False

    @staticmethod
    def add_argument(parser):
        parser.add_argument("--budget-s", type=float, default=0.0,
                            help="start no new case after this many seconds (0: no limit)")

    def over(self):
        """True once the budget is spent (says so once)."""
        if self.seconds and time.monotonic() - self.started > self.seconds:
            if not self.reached:
                print(f"--budget-s {self.seconds:.0f} reached: the remaining cases are not run",
                      flush=True)
            self.reached = True
        return self.reached


def write_json(path, payload):
    """Writes payload to path (if given) through a temporary file, so that a
    reader never sees half a file."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def torch_on_gpu(benchmark):
    """(torch, torch.nn.functional) when PyTorch sees a CUDA device; else None,
    after printing why `benchmark` is skipped."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"PyTorch is not available ({e}): skipping {benchmark}")
        return None
    if not torch.cuda.is_available():
        print(f"No CUDA device visible to PyTorch: skipping {benchmark} "
              "(GPU numbers need a GPU machine)")
        return None
    return torch, F


def zipf_ids(n, rows, alpha, gen):
    """n ids of a truncated Zipf law over [0, rows), by inverse-CDF sampling."""
    import torch
    ranks = torch.arange(1, rows + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow(-alpha), 0)
    cdf /= cdf[-1].clone()
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    ids = torch.searchsorted(cdf, u).clamp_(max=rows - 1)
    perm = torch.randperm(rows, generator=gen)  # hot rows scattered over the table
    return perm[ids]


def make_ids(dist, n, rows, gen):
    """n ids over [0, rows): dist "uniform" or "zipf_<alpha>"."""
    import torch
    if dist == "uniform":
        return torch.randint(0, rows, (n,), generator=gen)
    return zipf_ids(n, rows, float(dist.split("_")[1]), gen)
