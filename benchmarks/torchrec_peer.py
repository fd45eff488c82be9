"""TorchRec's sharded EmbeddingBagCollection beside spembed's, CPU and gloo.

Spawns `--world` processes; each builds the same tables with the same
weights, sharded by the same plan (table-wise: table t on rank t % world;
row-wise: every table in blocks of ceil(rows / world) rows), in both
libraries, feeds both the same local batches (seeded), compares the pooled
outputs before and after an SGD step (loss = sum(out * G), G random), and
times forward + backward (with the fused SGD step) of each. A benchmark, not
a test. TorchRec and spembed share the process: both need torch 2.11 here.

    PYTHONPATH=<site-packages holding spembed> <python with torchrec> \\
        benchmarks/torchrec_peer.py --world 2
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TABLES = [(200_000, 64), (100_000, 64), (50_000, 32), (10_000, 32)]


def _batch(gen, rank, world, batch, max_len):
    """The same global batch on every rank; this rank's (ids, lengths) per table."""
    feats = []
    for rows, _ in TABLES:
        lengths = torch.randint(0, max_len + 1, (world * batch,), generator=gen)
        ids = torch.randint(0, rows, (int(lengths.sum()),), generator=gen)
        offs = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        lo, hi = rank * batch, (rank + 1) * batch
        feats.append((ids[int(offs[lo]):int(offs[hi])], lengths[lo:hi]))
    return feats


def _torchrec_model(plan_kind, world, weights, lr):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
    from torchrec.distributed.comm_ops import set_gradient_division
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import (construct_module_sharding_plan, row_wise,
                                                    table_wise)
    from torchrec.distributed.types import ShardingEnv, ShardingPlan

    # TorchRec divides the embedding gradients by the world size by default
    # (to pair with DDP's averaged dense gradients); spembed steps with the
    # global sum, as the unsharded collection does.
    set_gradient_division(False)
    configs = [EmbeddingBagConfig(name=f"t{t}", embedding_dim=d, num_embeddings=r,
                                  feature_names=[f"f{t}"], pooling=PoolingType.SUM)
               for t, (r, d) in enumerate(TABLES)]
    ebc = EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
    sharder = EmbeddingBagCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": lr})
    # The fused kernel (fbgemm's CPU TBE with the SGD step in its backward);
    # the planner's CPU default is the dense kernel, which takes no step.
    per_param = {f"t{t}": (table_wise(rank=t % world, compute_kernel="fused")
                           if plan_kind == "table_wise" else row_wise(compute_kernel="fused"))
                 for t in range(len(TABLES))}
    module_plan = construct_module_sharding_plan(ebc, per_param, sharder=sharder,
                                                 local_size=world, world_size=world,
                                                 device_type="cpu")
    model = DistributedModelParallel(ebc, env=ShardingEnv.from_process_group(dist.group.WORLD),
                                     device=torch.device("cpu"),
                                     plan=ShardingPlan({"": module_plan}), sharders=[sharder])
    # Copy the global tables into this rank's shards (state dict views of the weights).
    for key, st in model.state_dict().items():
        t = int(key.split("embedding_bags.t")[1].split(".")[0])
        for shard in st.local_shards():
            (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(weights[t][r0:r0 + nr, c0:c0 + nc])
    return model


def _torchrec_forward(model, feats):
    from torchrec import KeyedJaggedTensor
    kjt = KeyedJaggedTensor(keys=[f"f{t}" for t in range(len(TABLES))],
                            values=torch.cat([ids for ids, _ in feats]),
                            lengths=torch.cat([lengths for _, lengths in feats]))
    out = model(kjt)
    out = out.wait() if hasattr(out, "wait") else out
    by_key = out.to_dict()  # the keys come grouped by sharding: back to table order
    return torch.cat([by_key[f"f{t}"] for t in range(len(TABLES))], 1)


def _spembed_forward(model, feats):
    return model([(ids, torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]))
                  for ids, lengths in feats])


def _time_steps(fwd, model, batches, grads, warmup):
    times = []
    for i, (feats, g) in enumerate(zip(batches, grads)):
        dist.barrier()
        t0 = time.perf_counter()
        (fwd(model, feats) * g).sum().backward()
        dist.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _worker(rank, world, store, args, results):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(args.threads)
    import spembed  # noqa: F401
    from spembed.distributed import PlanEntry, ShardedEmbeddingBagCollection
    report = {}
    for plan_kind in args.plans:
        gen = torch.Generator().manual_seed(7)
        weights = [torch.rand(r, d, generator=gen) * 0.2 - 0.1 for r, d in TABLES]
        plan = [PlanEntry("table_wise", t % world) if plan_kind == "table_wise"
                else PlanEntry("row_wise") for t in range(len(TABLES))]
        sp = ShardedEmbeddingBagCollection(TABLES, plan, optimizer="sgd", lr=args.lr)
        sp.load_state_dict({f"weights.{t}": w for t, w in enumerate(weights)})
        try:
            tr = _torchrec_model(plan_kind, world, weights, args.lr)
        except Exception as e:  # recorded, not fatal: spembed is still timed
            tr, report[f"{plan_kind}/torchrec_error"] = None, f"{type(e).__name__}: {e}"
        feats = _batch(gen, rank, world, args.batch, args.max_len)
        g = torch.randn(args.batch, sum(d for _, d in TABLES), generator=gen)
        a = _spembed_forward(sp, feats)
        if tr is not None:
            b = _torchrec_forward(tr, feats)
            report[f"{plan_kind}/max_abs_diff_forward"] = float((a - b).detach().abs().max())
            (b * g).sum().backward()
        (a * g).sum().backward()
        if tr is not None:
            with torch.no_grad():
                a2, b2 = _spembed_forward(sp, feats), _torchrec_forward(tr, feats)
            report[f"{plan_kind}/max_abs_diff_after_step"] = float((a2 - b2).abs().max())
            report[f"{plan_kind}/max_abs_out"] = float(a2.abs().max())
            report[f"{plan_kind}/spembed_step_moved_out_by"] = float((a2 - a).detach().abs().max())
            report[f"{plan_kind}/torchrec_step_moved_out_by"] = float(
                (b2 - b).detach().abs().max())
        batches = [_batch(gen, rank, world, args.batch, args.max_len)
                   for _ in range(args.steps + args.warmup)]
        grads = [torch.randn(args.batch, sum(d for _, d in TABLES), generator=gen)
                 for _ in batches]
        report[f"{plan_kind}/spembed_step_ms"] = 1e3 * _time_steps(
            _spembed_forward, sp, batches, grads, args.warmup)
        if tr is not None:
            report[f"{plan_kind}/torchrec_step_ms"] = 1e3 * _time_steps(
                _torchrec_forward, tr, batches, grads, args.warmup)
    results[rank] = report
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch", type=int, default=512, help="samples per rank")
    p.add_argument("--max-len", type=int, default=20, help="ids per bag: 0 .. max-len")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--plans", nargs="+", default=["table_wise", "row_wise"])
    args = p.parse_args()
    import fbgemm_gpu
    import torchrec
    import spembed
    print(f"torch {torch.__version__}, torchrec {torchrec.__version__}, fbgemm_gpu "
          f"{fbgemm_gpu.__version__}, spembed {spembed.__version__}; world {args.world}, "
          f"batch {args.batch} per rank, ids per bag 0..{args.max_len}, tables {TABLES}, "
          f"{args.threads} thread(s) per rank", flush=True)
    with tempfile.TemporaryDirectory() as d, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(args.world, os.path.join(d, "store"), args, results),
                 nprocs=args.world, join=True)
        results = dict(results)
    for key in sorted(results[0]):
        vals = [results[r].get(key) for r in range(args.world)]
        if isinstance(vals[0], float):
            shown = max(vals)  # step times and differences: the worst rank
            print(f"{key:40s} {shown:.6g}   (per rank: {', '.join(f'{v:.6g}' for v in vals)})")
        else:
            print(f"{key:40s} {vals[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
