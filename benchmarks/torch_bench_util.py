"""Pieces shared by the PyTorch benchmark scripts (torch_attention.py,
torch_embedding_bag.py, torch_embedding_bag_backward.py), which run as
`python3 benchmarks/<script>.py` and so import this module from their own
directory."""
import argparse


def base_parser(doc, default_iters, filter_help="regex on case names"):
    """An argument parser described by the first line of `doc`, with the
    options every script takes: --json, --iters and --filter."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--iters", type=int, default=default_iters, help="timed runs per case")
    parser.add_argument("--filter", default="", help=filter_help)
    return parser


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
