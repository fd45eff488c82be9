"""A sharded recommender training loop on spembed.distributed, CPU and gloo:

    torchrun --standalone --nproc_per_node=2 examples/distributed_train.py

Sparse side: a ShardedEmbeddingBagCollection placed by propose_plan (the
large table row-wise, the others whole), trained by its fused Adagrad step.
Dense side: a small MLP replicated on every rank, its gradients summed with
all_reduce. Each rank takes its own share of the global batch (uneven sizes).
Rank 0 also trains the unsharded model (spembed.nn.EmbeddingBagCollection and
the same MLP) on the global batch and prints both losses; the script exits 1
if they drift apart.
"""
import sys

import torch
import torch.distributed as dist

import spembed
from spembed.distributed import ShardedEmbeddingBagCollection, propose_plan

TABLES = [(4000, 16), (300, 16), (50, 8), (20, 8)]
STEPS = 5
LR = 0.05


def batch(gen, sizes):
    """The global batch: per table, bags of 0 to 5 ids; and the labels."""
    total = sum(sizes)
    feats = []
    for rows, _ in TABLES:
        lengths = torch.randint(0, 6, (total,), generator=gen)
        ids = torch.randint(0, rows, (int(lengths.sum()),), generator=gen)
        feats.append((ids, torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])))
    labels = torch.randint(0, 2, (total,), generator=gen).float()
    return feats, labels


def local_part(feats, labels, lo, hi):
    mine = []
    for ids, offs in feats:
        mine.append((ids[int(offs[lo]):int(offs[hi])], offs[lo:hi + 1] - offs[lo]))
    return mine, labels[lo:hi]


def mlp(width):
    torch.manual_seed(0)  # the same dense weights on every rank
    return torch.nn.Sequential(torch.nn.Linear(width, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 1))


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    # Table 0 (4000 x 16 float32 and Adagrad's state: 512 KB) exceeds the 300 KB budget: row-wise.
    plan = propose_plan(TABLES, world, budget_bytes=300_000, optimizer="adagrad")
    emb = ShardedEmbeddingBagCollection(TABLES, plan, optimizer="adagrad", lr=LR)
    dense = mlp(emb.total_dim)
    opt = torch.optim.SGD(dense.parameters(), lr=LR)
    if rank == 0:
        print("plan:", [(p.sharding, p.owner) for p in plan], flush=True)
        ref_emb = spembed.nn.EmbeddingBagCollection(TABLES, optimizer="adagrad", lr=LR)
        sd = emb.state_dict()
        sd.pop("step")
        ref_emb.load_state_dict(sd)
        ref_dense = mlp(emb.total_dim)
        ref_opt = torch.optim.SGD(ref_dense.parameters(), lr=LR)
    else:
        emb.state_dict()  # every rank takes part in the gather
    sizes = [4 + 2 * r for r in range(world)]
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(STEPS):
        feats, labels = batch(gen, sizes)
        my_feats, my_labels = local_part(feats, labels, lo, hi)
        logits = dense(emb(my_feats)).squeeze(1)
        # The global mean: each rank's sum over its samples / the global batch.
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, my_labels, reduction="sum") / sum(sizes)
        opt.zero_grad()
        loss.backward()
        for p in dense.parameters():
            dist.all_reduce(p.grad)
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            ref_logits = ref_dense(ref_emb(feats)).squeeze(1)
            ref_loss = torch.nn.functional.binary_cross_entropy_with_logits(ref_logits, labels)
            ref_opt.zero_grad()
            ref_loss.backward()
            ref_opt.step()
            worst = max(worst, abs(float(total) - float(ref_loss.detach())))
            print(f"step {step}: sharded loss {float(total):.6f}  unsharded loss "
                  f"{float(ref_loss.detach()):.6f}", flush=True)
    ok = torch.tensor([1 if worst <= 1e-5 else 0])
    dist.broadcast(ok, src=0)
    if rank == 0:
        print("losses match" if int(ok) else f"losses differ by {worst}", flush=True)
    dist.destroy_process_group()
    return 0 if int(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
