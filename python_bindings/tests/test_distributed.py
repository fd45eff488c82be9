"""spembed.distributed.ShardedEmbeddingBagCollection on gloo (CPU), in 1, 2 and
3 spawned processes, against the unsharded spembed.nn.EmbeddingBagCollection
run on the global batch (the ranks' local batches in rank order): outputs and
updated weights after several fused optimizer steps, TABLE_WISE bitwise,
ROW_WISE within a bound derived from the summation order. Plus the edge cases
of the sharding contract, the global state dict across world sizes, and the
planner."""
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import spembed
from spembed.distributed import (ROW_WISE, TABLE_WISE, PlanEntry, ShardedEmbeddingBagCollection,
                                 local_shards, propose_plan)

U32 = 2.0**-24
STEPS = 3
# t2 has 2 rows: at world 3 rank 2 holds no row of it.
TABLES = [(11, 4), (7, 3), (2, 5), (5, 2)]


def _mixed_plan(world):
    return [PlanEntry(ROW_WISE), PlanEntry(TABLE_WISE, world - 1), PlanEntry(ROW_WISE),
            PlanEntry(TABLE_WISE, 0)]


# Each case: a sharding plan (by world size) and the collection's options.
CASES = {
    "tw_sum_sgd_psw": dict(plan=lambda w: [PlanEntry(TABLE_WISE, t % w) for t in range(4)],
                           mode="sum", optimizer="sgd", psw=True),
    "tw_mean_adagrad_pad": dict(plan=lambda w: [PlanEntry(TABLE_WISE, (t + 1) % w)
                                                for t in range(4)],
                                mode="mean", optimizer="adagrad", padding_idx=1),
    # Every table on ranks 0 and 1: at world 3, rank 2 owns nothing.
    "tw_max_rowwise_adagrad": dict(plan=lambda w: [PlanEntry(TABLE_WISE, t % min(w, 2))
                                                   for t in range(4)],
                                   mode="max", optimizer="rowwise_adagrad"),
    "rw_sum_adam": dict(plan=lambda w: [PlanEntry(ROW_WISE)] * 4, mode="sum", optimizer="adam",
                        psw=True),
    "mixed_mean_adam_freq": dict(plan=_mixed_plan, mode="mean", optimizer="adam",
                                 scale_grad_by_freq=True),
    "mixed_sum_sgd_skip": dict(plan=_mixed_plan, mode="sum", optimizer="sgd",
                               bounds_policy="skip", bad_ids=True),
}


def _init(rank, world, store):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)


def _batch_sizes(world, step):
    # A rank with an empty local batch in every world > 1, at a rank that moves.
    sizes = [3, 0, 5, 2][:world] if world > 1 else [6]
    return sizes[step % world:] + sizes[:step % world]


def _global_batch(gen, world, step, bad_ids=False):
    """Per rank, per table, per sample: a list of ids (bags of 0 to 4 ids,
    some at row-block edges; at step 0 rank r's table r % T has no ids)."""
    sizes = _batch_sizes(world, step)
    batch = []
    for r, b_local in enumerate(sizes):
        per_table = []
        for t, (rows, _) in enumerate(TABLES):
            blk = -(-rows // world)
            edges = [v for v in (0, blk - 1, blk, rows - 1) if 0 <= v < rows]
            bags = []
            for _ in range(b_local):
                n = int(torch.randint(0, 5, (1,), generator=gen))
                if step == 0 and t == r % len(TABLES):
                    n = 0
                ids = torch.randint(0, rows, (n,), generator=gen).tolist()
                if ids and int(torch.randint(0, 2, (1,), generator=gen)):
                    ids[0] = edges[int(torch.randint(0, len(edges), (1,), generator=gen))]
                if bad_ids and ids and r == world - 1:
                    ids[-1] = rows + 3  # skipped by bounds_policy 'skip'
                bags.append(ids)
            per_table.append(bags)
        batch.append(per_table)
    return batch


def _table_major(per_rank):
    """(indices, offsets) of a list of ranks' [table][sample] bags, the ranks'
    samples concatenated in rank order."""
    ids, offsets = [], [0]
    for t in range(len(TABLES)):
        for per_table in per_rank:
            for bag in per_table[t]:
                ids.extend(bag)
                offsets.append(len(ids))
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)


def _psw_for(indices, gen):
    return torch.rand(indices.numel(), generator=gen) + 0.5


def _local_rows(per_rank, rank):
    start = sum(len(p[0]) for p in per_rank[:rank])
    return start, start + len(per_rank[rank][0])


def _abs_bound(ref, per_rank, mode, psw_global):
    """Per output element: |sharded - unsharded| for a float32 sum of L terms
    in two different orders is at most 2 (L - 1) u |terms|; mean adds one
    rounding for each division."""
    ids, offsets = _table_major(per_rank)
    b = len(offsets) - 1
    bags = b // len(TABLES)
    lengths = offsets.diff()
    out = []
    for t, w in enumerate(ref.weights):
        lo, hi = t * bags, (t + 1) * bags
        a, z = int(offsets[lo]), int(offsets[hi])
        offs = offsets[lo:hi + 1] - a
        valid = (ids[a:z] >= 0) & (ids[a:z] < w.shape[0])  # skipped ids add nothing
        psw = valid.double() if psw_global is None else psw_global[a:z].abs().double() * valid
        absum = F.embedding_bag(ids[a:z] * valid, w.detach().cpu().abs().double(), offs[:-1],
                                mode="sum", per_sample_weights=psw, include_last_offset=False)
        n = lengths[lo:hi].double()[:, None]
        bound = 2 * n.clamp(min=1) * U32 * absum
        if mode == "mean":
            bound = bound / n.clamp(min=1) + 2 * U32 * absum / n.clamp(min=1)
        out.append(bound)
    return torch.cat(out, 1).float()


def _same_weights(sharded_sd, ref_sd, exact, lr, step):
    for key, want in ref_sd.items():
        got = sharded_sd[key]
        if exact:
            assert torch.equal(got, want), f"{key} differs (max {(got - want).abs().max()})"
        else:
            # States and weights follow from gradients that differ by a few
            # roundings per contribution: 64 u of the weight and of the steps taken.
            tol = 64 * U32 * (want.abs() + lr * step)
            assert bool(((got - want).abs() <= tol).all()), \
                f"{key}: max diff {(got - want).abs().max()}"


def _run_case(rank, world, name, seed, device="cpu"):
    c = CASES[name]
    plan = c["plan"](world)
    opts = dict(mode=c["mode"], optimizer=c["optimizer"], lr=0.05,
                padding_idx=c.get("padding_idx"),
                bounds_policy=c.get("bounds_policy", "error"),
                scale_grad_by_freq=c.get("scale_grad_by_freq", False), device=device)
    sharded = ShardedEmbeddingBagCollection(TABLES, plan, init_seed=seed, **opts)
    ref = spembed.nn.EmbeddingBagCollection(TABLES, **opts)
    sd = sharded.state_dict()
    assert int(sd.pop("step")) == 0
    ref.load_state_dict(sd)
    exact = all(p.sharding == TABLE_WISE for p in sharded.plan)
    gen = torch.Generator().manual_seed(seed)
    for step in range(STEPS):
        per_rank = _global_batch(gen, world, step, c.get("bad_ids", False))
        g_ids, g_offs = _table_major(per_rank)
        l_ids, l_offs = _table_major(per_rank[rank:rank + 1])
        g_psw = _psw_for(g_ids, gen) if c.get("psw") else None
        l_psw = None
        if g_psw is not None:  # this rank's weights: its ids' positions in the global input
            keep = torch.zeros(g_ids.numel(), dtype=torch.bool)
            bags = (len(g_offs) - 1) // len(TABLES)
            lo, hi = _local_rows(per_rank, rank)
            for t in range(len(TABLES)):
                keep[int(g_offs[t * bags + lo]):int(g_offs[t * bags + hi])] = True
            l_psw = g_psw[keep]
        lo, hi = _local_rows(per_rank, rank)
        grad = torch.randn((len(g_offs) - 1) // len(TABLES), sum(d for _, d in TABLES),
                           generator=gen).to(device)
        on = (lambda t: None if t is None else t.to(device))
        out = sharded(on(l_ids), on(l_offs), on(l_psw))
        want = ref(on(g_ids), on(g_offs), on(g_psw))
        assert out.device == want.device == torch.device(device)
        assert out.shape == (hi - lo, sum(d for _, d in TABLES))
        assert out.grad_fn is not None
        if exact:
            assert torch.equal(out, want[lo:hi]), f"{name} step {step}: outputs differ"
        else:
            bound = _abs_bound(ref, per_rank, c["mode"], g_psw)[lo:hi].to(device)
            diff = (out - want[lo:hi]).abs()
            assert bool((diff <= bound).all()), \
                f"{name} step {step}: max diff {diff.max()} over the bound"
        (out * grad[lo:hi]).sum().backward()
        (want * grad).sum().backward()
        got_sd = sharded.state_dict()
        assert int(got_sd.pop("step")) == step + 1
        # ROW_WISE SUM steps add the same gradient contributions in the same
        # (global batch) order, so only MEAN's per-bag division differs.
        _same_weights(got_sd, ref.state_dict(), exact or c["mode"] == "sum", 0.05, step + 1)


def _bad_input_everywhere(rank, world, seed):
    """Out-of-range ids (then bad offsets) on the last rank only: every rank
    raises the same error, nothing hangs, nothing is written, and the next
    step works."""
    m = ShardedEmbeddingBagCollection(TABLES, _mixed_plan(world), optimizer="sgd",
                                      init_seed=seed)
    before = m.state_dict()
    gen = torch.Generator().manual_seed(seed)
    per_rank = _global_batch(gen, world, 1)
    ids, offs = _table_major(per_rank[rank:rank + 1])
    bad = rank == world - 1
    if bad:
        ids = torch.cat([ids, torch.tensor([TABLES[-1][0]])])
        offs = offs.clone()
        offs[-1] += 1
        if offs.numel() == 1:  # an empty local batch has no bag to hold it
            offs = torch.tensor([0, 0, 0, 0, 1])
            ids = torch.tensor([TABLES[-1][0]])
    with pytest.raises(spembed.IndexOutOfRangeError) as e:
        m(ids, offs)
    assert f"rank {world - 1}" in str(e.value) and f"[0, {TABLES[-1][0]})" in str(e.value)
    messages = [None] * world
    dist.all_gather_object(messages, str(e.value).split(" (raised on rank")[0])
    assert len(set(messages)) == 1, messages
    good_ids, good_offs = _table_major(per_rank[rank:rank + 1])
    bad_offs = good_offs.clone()
    if bad:
        bad_offs[0] = 1
    with pytest.raises(spembed.InvalidArgumentError):
        m(good_ids, bad_offs)
    after = m.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    out = m(good_ids, good_offs)
    out.sum().backward()
    assert int(m.state_dict()["step"]) == 1


def _max_row_wise_rejected(rank, world, seed):
    with pytest.raises(spembed.NotSupportedError, match="max"):
        ShardedEmbeddingBagCollection(TABLES, _mixed_plan(world), mode="max")


def _worker(rank, world, store, jobs, seed):
    _init(rank, world, store)
    try:
        for job in jobs:
            if job in CASES:
                _run_case(rank, world, job, seed)
            else:
                globals()[job](rank, world, seed)
    finally:
        dist.destroy_process_group()


def _rank_main(rank, target, *args):
    """Runs target(rank, *args) in a spawned rank; a failure raises as usual.
    On success the rank leaves without interpreter finalization: gloo's worker
    thread can still release a tensor while Python shuts down, which aborts
    the process ("terminate called without an active exception") after its
    work has passed."""
    target(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(world, jobs, seed, *extra):
    with tempfile.TemporaryDirectory() as d:
        target = _worker if not extra else extra[0]
        mp.spawn(_rank_main,
                 args=(target, world, os.path.join(d, "store"), jobs, seed) + tuple(extra[1:]),
                 nprocs=world, join=True)


def _seed():
    return int(torch.randint(0, 2**31 - 1, (1,)))


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_matches_unsharded(world):
    """Every case, TABLE_WISE bitwise and ROW_WISE within its bound, over
    STEPS steps with a rank of empty batch, empty bags, features with no ids
    on a rank, ids at block edges; then bad input on one rank only."""
    _spawn(world, list(CASES) + ["_bad_input_everywhere", "_max_row_wise_rejected"], _seed())


def _save_worker(rank, world, store, jobs, seed, path):
    _init(rank, world, store)
    try:
        m = ShardedEmbeddingBagCollection(TABLES, _mixed_plan(world), optimizer="adam",
                                          init_seed=seed)
        gen = torch.Generator().manual_seed(seed)
        for step in range(2):
            per_rank = _global_batch(gen, world, step)
            ids, offs = _table_major(per_rank[rank:rank + 1])
            m(ids, offs).sum().backward()
        sd = m.state_dict()
        if rank == 0:
            torch.save(sd, path)
    finally:
        dist.destroy_process_group()


def _load_worker(rank, world, store, jobs, seed, path):
    _init(rank, world, store)
    try:
        saved = torch.load(path)
        plan = _mixed_plan(world) if world > 1 else [PlanEntry(TABLE_WISE, 0)] * 4
        m = ShardedEmbeddingBagCollection(TABLES, plan, optimizer="adam", init_seed=seed + 1)
        with torch.no_grad():  # poisoned: the load must overwrite every shard
            for p in list(m.parameters()) + list(m.buffers()):
                p.fill_(float("nan"))
        m.load_state_dict(saved)
        assert m.step == 2
        got = m.state_dict()
        assert set(got) == set(saved)
        for k in saved:
            assert torch.equal(got[k], saved[k]), k
        # An unsharded collection takes the same checkpoint, less 'step'.
        ref = spembed.nn.EmbeddingBagCollection(TABLES, optimizer="adam")
        ref.load_state_dict({k: v for k, v in saved.items() if k != "step"})
        assert torch.equal(ref.weights[1], saved["weights.1"])
        for job in jobs:  # world 1 runs the cases too
            _run_case(rank, world, job, seed)
    finally:
        dist.destroy_process_group()


def test_checkpoint_moves_between_world_sizes(tmp_path):
    seed = _seed()
    path = str(tmp_path / "ckpt.pt")
    _spawn(2, [], seed, _save_worker, path)
    saved = torch.load(path)
    assert not torch.isnan(saved["weights.0"]).any()
    _spawn(3, [], seed, _load_worker, path)
    # World size 1: the checkpoint, then the cases against the unsharded collection.
    _spawn(1, ["tw_mean_adagrad_pad", "rw_sum_adam", "mixed_sum_sgd_skip"], seed, _load_worker,
           path)


def _nccl_worker(rank, world, store, jobs, seed):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for job in jobs:
            _run_case(rank, world, job, seed, device=f"cuda:{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()) and
                    os.environ.get("SPEMBED_REQUIRE_GPU") != "1",
                    reason="no usable CUDA device or no NCCL in this torch")
def test_sharded_cuda_nccl_world_one():
    """On one GPU over NCCL (world size 1: two ranks on one GPU need a newer
    NCCL): every case on CUDA tensors against the unsharded collection on the
    same device."""
    _spawn(1, list(CASES), _seed(), _nccl_worker)


def test_propose_plan():
    tables = [(1000, 16), (10, 4), (20, 4), (5000, 8)]
    # No budget: every table whole, the heaviest first, onto the least loaded rank.
    plan = propose_plan(tables, 2, ids_per_sample=[3, 1, 1, 1], optimizer="sgd")
    # t3 (160000 B) -> rank 0 (load 1); t0 (load 3) -> rank 1; t2, t1 -> rank 0 (loads 2, 3).
    assert plan == [PlanEntry(TABLE_WISE, 1), PlanEntry(TABLE_WISE, 0),
                    PlanEntry(TABLE_WISE, 0), PlanEntry(TABLE_WISE, 0)]
    # 5000 x 8 x 4 bytes = 160000 > 150000: row-wise (80000 and load 0.5 per rank); then
    # t0 -> rank 0, t2 -> rank 1, t1 -> rank 0 (a tie: the lower rank).
    plan = propose_plan(tables, 2, budget_bytes=150_000, optimizer="sgd")
    assert plan == [PlanEntry(TABLE_WISE, 0), PlanEntry(TABLE_WISE, 0),
                    PlanEntry(TABLE_WISE, 1), PlanEntry(ROW_WISE, -1)]
    # Adam's two float32 states triple a table's bytes: 192000 > 100000.
    assert propose_plan(tables[:2], 2, budget_bytes=100_000, optimizer="sgd")[0] == \
        PlanEntry(TABLE_WISE, 0)
    assert propose_plan(tables[:2], 2, budget_bytes=100_000, optimizer="adam")[0] == \
        PlanEntry(ROW_WISE, -1)
    with pytest.raises(spembed.InvalidArgumentError, match="table 3"):
        propose_plan(tables, 2, budget_bytes=50_000, optimizer="sgd")
    shards = local_shards([(5, 2), (2, 3)], [PlanEntry(ROW_WISE), PlanEntry(ROW_WISE)], 3, 2)
    assert [(s.table, s.first_row, s.rows) for s in shards] == [(0, 4, 1)]
    with pytest.raises(spembed.InvalidArgumentError, match="owner"):
        local_shards([(5, 2)], [PlanEntry(TABLE_WISE, 3)], 3, 0)
