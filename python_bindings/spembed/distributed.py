"""Sharded embedding-bag collections on torch.distributed.

ShardedEmbeddingBagCollection is spembed.nn.EmbeddingBagCollection with its
tables spread over the ranks of a process group by a plan (TABLE_WISE: a
table whole on one rank; ROW_WISE: contiguous row blocks of ceil(rows / world)
rows). Each rank passes its own local batch and gets its own samples' pooled
rows; the backward sends the pooled-gradient slices to the shards' owners,
which apply the fused optimizer step to their shards. Only torch.distributed
collectives are used (all_gather_into_tensor, all_to_all_single, and
broadcast for the state dict), so it runs on gloo with CPU tensors and on NCCL
with CUDA tensors. Local lookups and steps are spembed's own ops.
"""
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import ops as _ops
from .errors import (IndexOutOfRangeError, InvalidArgumentError, NotSupportedError)
from .nn import (TableSpec, batched_fused_step, check_optimizer, fused_hparams, init_table,
                 on_huge_pages, optimizer_state_shapes, to_table_major)

__all__ = ["TABLE_WISE", "ROW_WISE", "PlanEntry", "Shard", "propose_plan", "local_shards",
           "ShardedEmbeddingBagCollection"]

TABLE_WISE = "table_wise"
ROW_WISE = "row_wise"
_WHO = "spembed.distributed.ShardedEmbeddingBagCollection"


class PlanEntry(NamedTuple):
    """Where one table lives: sharding TABLE_WISE on rank `owner`, or
    ROW_WISE (owner -1: every rank holds a block)."""
    sharding: str
    owner: int = -1


class Shard(NamedTuple):
    """A shard a rank holds: `rows` rows of `table` from global row `first_row`."""
    table: int
    first_row: int
    rows: int
    dim: int


def _specs(tables: Sequence[TableSpec], who: str) -> List[Tuple[int, int]]:
    if len(tables) == 0:
        raise InvalidArgumentError(f"{who}: tables must not be empty")
    out = []
    for t, spec in enumerate(tables):
        rows, dim = (int(v) for v in spec)
        if rows < 1 or dim < 1:
            raise InvalidArgumentError(
                f"{who}: table {t} must have rows >= 1 and dim >= 1, got ({rows}, {dim})")
        out.append((rows, dim))
    return out


def _block(rows: int, world: int) -> int:
    return -(-rows // world)


def _table_bytes(rows: int, dim: int, dtype: torch.dtype, optimizer: Optional[str]) -> int:
    per_row = dim * torch.empty((), dtype=dtype).element_size()
    if optimizer is not None:
        per_row += sum(4 * math.prod(size[1:])
                       for _, size in optimizer_state_shapes(optimizer, (1, dim)))
    return rows * per_row


def propose_plan(tables: Sequence[TableSpec], world_size: int,
                 budget_bytes: Optional[int] = None,
                 ids_per_sample: Optional[Sequence[float]] = None,
                 dtype: torch.dtype = torch.float32,
                 optimizer: Optional[str] = "sgd") -> List[PlanEntry]:
    """A greedy plan. A table's bytes: rows x dim x dtype bytes plus its
    optimizer's float32 state. Tables are placed in decreasing bytes (ties:
    lower index first); one larger than budget_bytes (per rank; None: no
    limit) becomes ROW_WISE, each rank taking its block; the others go
    TABLE_WISE to the rank of least load (sum of the expected ids per sample
    of its tables, default 1 each; a ROW_WISE table adds its share to every
    rank; ties: lower rank) among those whose bytes still fit the budget.
    InvalidArgumentError naming the table that fits nowhere."""
    who = "spembed.distributed.propose_plan"
    specs = _specs(tables, who)
    if world_size < 1:
        raise InvalidArgumentError(f"{who}: world_size must be >= 1, got {world_size}")
    if optimizer is not None:
        check_optimizer(optimizer)
    load_of = [1.0] * len(specs) if ids_per_sample is None else [float(x) for x in ids_per_sample]
    if len(load_of) != len(specs) or any(not (x >= 0) for x in load_of):
        raise InvalidArgumentError(
            f"{who}: ids_per_sample must have one value >= 0 per table ({len(specs)})")
    budget = math.inf if budget_bytes is None else int(budget_bytes)
    sizes = [_table_bytes(r, d, dtype, optimizer) for r, d in specs]
    used = [0] * world_size
    load = [0.0] * world_size
    plan: List[Optional[PlanEntry]] = [None] * len(specs)
    for t in sorted(range(len(specs)), key=lambda i: (-sizes[i], i)):
        rows, dim = specs[t]
        if sizes[t] > budget:
            blk = _table_bytes(_block(rows, world_size), dim, dtype, optimizer)
            if any(u + blk > budget for u in used):
                raise InvalidArgumentError(
                    f"{who}: table {t} ({rows} x {dim}, {sizes[t]} bytes) does not fit: its "
                    f"row-wise block of {blk} bytes exceeds the budget of {budget} bytes left "
                    f"on some rank")
            for r in range(world_size):
                first = min(rows, r * _block(rows, world_size))
                used[r] += _table_bytes(min(rows, first + _block(rows, world_size)) - first,
                                        dim, dtype, optimizer)
                load[r] += load_of[t] / world_size
            plan[t] = PlanEntry(ROW_WISE, -1)
            continue
        fits = [r for r in range(world_size) if used[r] + sizes[t] <= budget]
        if not fits:
            raise InvalidArgumentError(
                f"{who}: table {t} ({rows} x {dim}, {sizes[t]} bytes) fits on no rank "
                f"(budget {budget} bytes)")
        r = min(fits, key=lambda i: (load[i], i))
        used[r] += sizes[t]
        load[r] += load_of[t]
        plan[t] = PlanEntry(TABLE_WISE, r)
    return plan  # type: ignore[return-value]


def _check_plan(plan, specs, world: int, who: str) -> List[PlanEntry]:
    if len(plan) != len(specs):
        raise InvalidArgumentError(
            f"{who}: plan has {len(plan)} entries, expected one per table ({len(specs)})")
    out = []
    for t, entry in enumerate(plan):
        if isinstance(entry, str):
            entry = (entry,)
        entry = PlanEntry(*entry)
        if entry.sharding == TABLE_WISE:
            if not 0 <= int(entry.owner) < world:
                raise InvalidArgumentError(
                    f"{who}: plan[{t}]: TABLE_WISE owner must be a rank in [0, {world}), "
                    f"got {entry.owner}")
            out.append(PlanEntry(TABLE_WISE, int(entry.owner)))
        elif entry.sharding == ROW_WISE:
            out.append(PlanEntry(ROW_WISE, -1))
        else:
            raise InvalidArgumentError(
                f"{who}: plan[{t}]: sharding must be {TABLE_WISE!r} or {ROW_WISE!r}, got "
                f"{entry.sharding!r} (DATA_PARALLEL and column-wise are not supported)")
    return out


def local_shards(tables: Sequence[TableSpec], plan: Sequence[PlanEntry], world: int,
                 rank: int) -> List[Shard]:
    """The shards `rank` holds, in its local order: TABLE_WISE shards by table
    index, then ROW_WISE blocks by table index (blocks with no rows left out)."""
    specs = _specs(tables, "spembed.distributed.local_shards")
    plan = _check_plan(plan, specs, world, "spembed.distributed.local_shards")
    out = [Shard(t, 0, r, d) for t, ((r, d), p) in enumerate(zip(specs, plan))
           if p.sharding == TABLE_WISE and p.owner == rank]
    for t, ((r, d), p) in enumerate(zip(specs, plan)):
        if p.sharding == ROW_WISE:
            first = min(r, rank * _block(r, world))
            last = min(r, first + _block(r, world))
            if last > first:
                out.append(Shard(t, first, last - first, d))
    return out


# Status codes exchanged before any data moves, so that every rank raises the
# same error for one rank's bad input.
_ERRORS = [None, InvalidArgumentError, IndexOutOfRangeError, NotSupportedError,
           NotImplementedError, RuntimeError]
_MSG = 256


def _error_code(e: Exception) -> int:
    if isinstance(e, IndexError):
        return 2
    if isinstance(e, NotSupportedError):
        return 3
    if isinstance(e, NotImplementedError):
        return 4
    if isinstance(e, ValueError):
        return 1
    return 5


class _Route:
    """One forward call's exchange plan and received data."""


class ShardedEmbeddingBagCollection(torch.nn.Module):
    """spembed.nn.EmbeddingBagCollection sharded over a process group.

    tables, mode, padding_idx, dtype, output_dtype, bounds_policy, optimizer
    and its hyper-parameters, scale_grad_by_freq: as EmbeddingBagCollection
    (optimizer defaults to 'sgd'; None: frozen tables, forward only).
    plan         one PlanEntry (or (sharding, owner) / 'row_wise') per table,
                 the same on every rank; None: propose_plan(tables, world,
                 budget_bytes, ids_per_sample, dtype, optimizer).
    process_group  the group to shard over (None: the default group).
    device       where this rank's shards, inputs and collectives live (CPU
                 tensors for gloo, this rank's CUDA device for NCCL).
    init_seed    table t starts as init_table draws it from a generator
                 seeded init_seed + t, whatever the world size.
    forward      this rank's local batch in any of EmbeddingBagCollection's
                 input forms (B_local may differ between ranks, and be 0);
                 returns [B_local, sum of dims]. Every rank of the group must
                 call forward, and backward, the same number of times.
    state_dict / load_state_dict  the global view: full tables
                 ('weights.<t>') and optimizer states ('state<k>_<t>') as
                 EmbeddingBagCollection names them, plus 'step'; saving
                 gathers (every rank must call it), loading takes each rank's
                 slice, so a checkpoint moves between world sizes.
    Not supported: mode 'max' with a ROW_WISE table, mode 'none',
    DATA_PARALLEL and column-wise sharding, per_sample_weights gradients.
    """

    def __init__(self, tables: Sequence[TableSpec], plan: Optional[Sequence] = None,
                 process_group=None, mode: str = "sum", padding_idx: Optional[int] = None,
                 device=None, dtype=None, output_dtype: Optional[torch.dtype] = None,
                 bounds_policy: str = "error", optimizer: Optional[str] = "sgd",
                 lr: float = 0.01, eps: float = 1e-8, betas: Tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, stochastic_rounding: bool = False, seed: int = 0,
                 scale_grad_by_freq: bool = False, budget_bytes: Optional[int] = None,
                 ids_per_sample: Optional[Sequence[float]] = None, init_seed: int = 0) -> None:
        super().__init__()
        specs = _specs(tables, _WHO)
        if mode == "none":
            raise NotImplementedError(f"{_WHO}: mode 'none' needs one width per table")
        self.mode_id = _ops.mode_code(mode)
        _ops.check_scale_grad_by_freq(mode, scale_grad_by_freq, _WHO)
        self.bounds_id = _ops.bounds_code(bounds_policy)
        if optimizer is not None:
            check_optimizer(optimizer)
        self.pg = process_group if process_group is not None else dist.group.WORLD
        self.world = dist.get_world_size(self.pg)
        self.rank = dist.get_rank(self.pg)
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if dtype == torch.float64:
            # Partial sums and exchanged rows are float32 here.
            raise NotSupportedError(f"{_WHO}: float64 tables are not supported by the sharded "
                                    "collection yet (float32, float16, bfloat16 are)")
        if plan is None:
            plan = propose_plan(specs, self.world, budget_bytes, ids_per_sample, dtype, optimizer)
        self.plan = _check_plan(plan, specs, self.world, _WHO)
        if mode == "max" and any(p.sharding == ROW_WISE for p in self.plan):
            raise NotSupportedError(
                f"{_WHO}: mode 'max' with a ROW_WISE table is not supported (table "
                f"{[p.sharding for p in self.plan].index(ROW_WISE)}); use TABLE_WISE")
        self.specs = specs
        self.dims = [d for _, d in specs]
        self.mode = mode
        self.padding_idx = padding_idx
        self.output_dtype = output_dtype
        self.dtype = dtype
        self.optimizer = optimizer
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._check_same_everywhere()

        T, W = len(specs), self.world
        self.col = [0]
        for d in self.dims:
            self.col.append(self.col[-1] + d)
        self.shards_of = [local_shards(specs, self.plan, W, r) for r in range(W)]
        self.n_tw = [sum(1 for s in sh if self.plan[s.table].sharding == TABLE_WISE)
                     for sh in self.shards_of]
        self.width_of = [sum(s.dim for s in sh) for sh in self.shards_of]
        # slot[r][t]: the position of table t's shard in rank r's local order (-1: none).
        slot = torch.full((W, T), -1, dtype=torch.int64)
        for r, sh in enumerate(self.shards_of):
            for i, s in enumerate(sh):
                slot[r, s.table] = i
        is_rw = [p.sharding == ROW_WISE for p in self.plan]
        self._t_slot = slot.to(self.device)
        self._t_rows = torch.tensor([r for r, _ in specs], device=self.device)
        self._t_rw = torch.tensor(is_rw, device=self.device)
        self._t_blk = torch.tensor([_block(r, W) for r, _ in specs], device=self.device)
        self._t_owner = torch.tensor([max(p.owner, 0) for p in self.plan], device=self.device)

        mine = self.shards_of[self.rank]
        for i, s in enumerate(mine):
            gen = torch.Generator().manual_seed(init_seed + s.table)
            full = init_table(specs[s.table][0], s.dim, padding_idx, dtype=dtype, generator=gen)
            w = on_huge_pages(full[s.first_row:s.first_row + s.rows].to(self.device).clone())
            self.register_parameter(f"shard_{i}", torch.nn.Parameter(w, requires_grad=False))
            if optimizer is not None:
                for which, size in optimizer_state_shapes(optimizer, w.shape):
                    self.register_buffer(f"state{which}_{i}", on_huge_pages(torch.zeros(
                        size, device=self.device, dtype=torch.float32)))
        if optimizer is not None:
            self.hparams = fused_hparams(lr, eps, betas, weight_decay, seed, stochastic_rounding)
        self.step = 0
        # Makes the output require grad so that the backward (the exchange and
        # the fused step) runs; it never receives a gradient.
        self._trigger = torch.zeros((), requires_grad=True)

    # ---- helpers --------------------------------------------------------------

    @property
    def total_dim(self) -> int:
        return self.col[-1]

    @property
    def local_shards(self) -> List[Shard]:
        return list(self.shards_of[self.rank])

    def shard_weights(self) -> List[Tensor]:
        return [getattr(self, f"shard_{i}") for i in range(len(self.shards_of[self.rank]))]

    def _shard_states(self, which: int, lo: int, hi: int) -> List[Tensor]:
        return [getattr(self, f"state{which}_{i}") for i in range(lo, hi)
                if hasattr(self, f"state{which}_{i}")]

    def _check_same_everywhere(self) -> None:
        """Plans or tables that differ between ranks would exchange garbage:
        compare them once (one small all_gather)."""
        desc = [len(self.specs), self.mode_id]
        for (r, d), p in zip(self.specs, self.plan):
            desc += [r, d, 1 if p.sharding == ROW_WISE else 0, p.owner]
        mine = torch.tensor(desc, dtype=torch.int64, device=self.device)
        sizes = torch.empty(self.world, dtype=torch.int64, device=self.device)
        dist.all_gather_into_tensor(sizes, mine.new_tensor([mine.numel()]), group=self.pg)
        n = int(sizes.max())
        padded = torch.full((n,), -7, dtype=torch.int64, device=self.device)
        padded[:mine.numel()] = mine
        every = torch.empty(self.world * n, dtype=torch.int64, device=self.device)
        dist.all_gather_into_tensor(every, padded, group=self.pg)
        every = every.view(self.world, n)
        if not bool((every == every[0]).all()):
            bad = [r for r in range(self.world) if not bool((every[r] == every[0]).all())]
            raise InvalidArgumentError(
                f"{_WHO}: the tables, mode or plan differ between ranks (rank 0 and rank "
                f"{bad[0]}); every rank must pass the same")

    # ---- forward ----------------------------------------------------------------

    def _prepare(self, features, offsets, per_sample_weights):
        """This rank's input, checked and routed: what it sends to each owner."""
        T, W = len(self.specs), self.world
        indices, offs = to_table_major(features, offsets, T)
        if not isinstance(indices, Tensor) or indices.dim() != 1 or indices.dtype not in (
                torch.int32, torch.int64):
            raise InvalidArgumentError(f"{_WHO}: indices must be a 1-D int32 / int64 tensor")
        if offs.dim() != 1 or (offs.numel() - 1) % T != 0 or offs.numel() < 1:
            raise InvalidArgumentError(
                f"{_WHO}: offsets must be 1-D with T * B + 1 entries (T = {T}), got "
                f"{offs.numel()}")
        indices = indices.to(self.device, torch.int64)
        offs = offs.to(self.device, torch.int64)
        n, B = indices.numel(), (offs.numel() - 1) // T
        lengths = offs.diff()
        if int(offs[0]) != 0 or int(offs[-1]) != n or bool((lengths < 0).any()):
            raise InvalidArgumentError(
                f"{_WHO}: offsets must start at 0, not decrease, and end at the number of "
                f"indices ({n})")
        psw = per_sample_weights
        if psw is not None:
            if self.mode != "sum":
                raise NotImplementedError(
                    f"{_WHO}: per_sample_weights is only supported with mode 'sum'")
            if psw.shape != (n,):
                raise InvalidArgumentError(
                    f"{_WHO}: per_sample_weights must have the shape of indices ({n}), got "
                    f"{list(psw.shape)}")
            if psw.requires_grad and torch.is_grad_enabled() and self.optimizer is not None:
                raise NotImplementedError(f"{_WHO}: a fused-optimizer collection gives no "
                                          "per_sample_weights gradient")
            psw = psw.detach().to(self.device, torch.float32)
        bag = torch.repeat_interleave(torch.arange(T * B, device=self.device), lengths)
        tid = bag // max(B, 1)
        bad = (indices < 0) | (indices >= self._t_rows[tid])
        if self.bounds_id == int(_ops.BoundsPolicy.ERROR) and bool(bad.any()):
            pos = int(bad.nonzero()[0])
            t = int(tid[pos])
            raise IndexOutOfRangeError(
                f"{_WHO}: rank {self.rank}: index {int(indices[pos])} at position {pos} "
                f"(table {t}) is out of range [0, {self.specs[t][0]})")
        keep = ~bad
        if self.padding_idx is not None:
            keep &= indices != self.padding_idx
        ids, bag, tid = indices[keep], bag[keep], tid[keep]
        if psw is not None:
            psw = psw[keep]
        rw = self._t_rw[tid]
        blk = self._t_blk[tid]
        dest = torch.where(rw, ids // blk, self._t_owner[tid])
        local = ids - torch.where(rw, dest * blk, torch.zeros_like(ids))
        slot = self._t_slot[dest, tid]
        S = max(len(sh) for sh in self.shards_of) or 1
        key = (dest * S + slot) * B + (bag % max(B, 1))
        order = torch.sort(key, stable=True).indices
        lens = torch.bincount(key, minlength=W * S * B).view(W, S * B)
        cnt = torch.bincount(dest, minlength=W)
        local = local[order]
        psw = None if psw is None else psw[order]
        pieces, psw_splits = [], cnt.tolist()
        start = 0
        for o in range(W):
            pieces.append(lens[o, :len(self.shards_of[o]) * B])
            pieces.append(local[start:start + psw_splits[o]])
            start += psw_splits[o]
        r = _Route()
        r.B = B
        r.send = torch.cat(pieces) if pieces else local
        r.send_splits = [len(self.shards_of[o]) * B + psw_splits[o] for o in range(W)]
        r.cnt = psw_splits
        r.psw = psw
        # Ids per (table, bag) that count for 'mean' (kept ones), for ROW_WISE means.
        r.count = torch.bincount(bag, minlength=T * B).view(T, B) if B else None
        return r

    def _agree(self, r: Optional[_Route], error: Optional[Exception]) -> None:
        """One all_gather of every rank's status, batch size and send counts;
        every rank raises the first bad rank's error."""
        W = self.world
        head = torch.zeros(4 + W + _MSG, dtype=torch.int64)
        if error is not None:
            head[0] = _error_code(error)
            msg = str(error).encode()[:_MSG]
            head[3] = len(msg)
            head[4 + W:4 + W + len(msg)] = torch.tensor(list(msg), dtype=torch.int64)
        else:
            head[1] = r.B
            head[2] = int(r.psw is not None)
            head[4:4 + W] = torch.tensor(r.cnt, dtype=torch.int64)
        every = torch.empty(W * head.numel(), dtype=torch.int64, device=self.device)
        dist.all_gather_into_tensor(every, head.to(self.device), group=self.pg)
        every = every.view(W, -1).cpu()
        codes = every[:, 0].tolist()
        for src, code in enumerate(codes):
            if code:
                n = int(every[src, 3])
                msg = bytes(every[src, 4 + W:4 + W + n].tolist()).decode(errors="replace")
                if src != self.rank:
                    msg = f"{msg} (raised on rank {src}; every rank raises it)"
                raise _ERRORS[code](msg)
        r.Bs = every[:, 1].tolist()
        r.any_psw = bool(every[:, 2].any())
        r.recv_cnt = every[:, 4 + self.rank].tolist()

    def forward(self, features, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        route, error = None, None
        try:
            route = self._prepare(features, offsets, per_sample_weights)
        except Exception as e:  # every rank must still reach the status exchange
            error = e
        self._agree(route, error)
        if self.optimizer is None or not torch.is_grad_enabled():
            return self._exchange_forward(route, keep=False)
        return _ShardedLookup.apply(self._trigger, self, route)

    def _exchange_forward(self, r: _Route, keep: bool) -> Tensor:
        W, me = self.world, self.rank
        mine = self.shards_of[me]
        nS, Bg = len(mine), sum(r.Bs)
        r.starts = [sum(r.Bs[:s]) for s in range(W)]
        recv_splits = [nS * r.Bs[s] + r.recv_cnt[s] for s in range(W)]
        recv = r.send.new_empty(sum(recv_splits))
        dist.all_to_all_single(recv, r.send, recv_splits, r.send_splits, group=self.pg)
        if r.any_psw:
            psw = r.psw if r.psw is not None else torch.ones(
                sum(r.cnt), dtype=torch.float32, device=self.device)
            rpsw = psw.new_empty(sum(r.recv_cnt))
            dist.all_to_all_single(rpsw, psw, r.recv_cnt, r.cnt, group=self.pg)
        # Received per source (slot, bag); the local lookup wants (slot, global bag).
        lens_by_src, ids_by_src, psw_by_src = [], [], []
        base = 0
        for s in range(W):
            ln = recv[base:base + nS * r.Bs[s]].view(nS, r.Bs[s])
            lens_by_src.append(ln)
            ids = recv[base + nS * r.Bs[s]:base + recv_splits[s]]
            per_slot = ln.sum(1).tolist()
            ids_by_src.append(ids.split(per_slot))
            if r.any_psw:
                b0 = sum(r.recv_cnt[:s])
                psw_by_src.append(rpsw[b0:b0 + r.recv_cnt[s]].split(per_slot))
            base += recv_splits[s]
        lens = torch.cat(lens_by_src, 1) if nS else recv.new_empty(0, 0)
        ids = [ids_by_src[s][i] for i in range(nS) for s in range(W)]
        ids = torch.cat(ids) if ids else recv.new_empty(0)
        lpsw = None
        if r.any_psw:
            lpsw = [psw_by_src[s][i] for i in range(nS) for s in range(W)]
            lpsw = torch.cat(lpsw) if lpsw else rpsw.new_empty(0)
        offs = torch.cat([recv.new_zeros(1), lens.reshape(-1).cumsum(0)])
        nT = self.n_tw[me]
        out_dtype = self.output_dtype or self.dtype
        weights = self.shard_weights()
        groups = []  # (lo, hi, mode, ids, offsets, psw, argmax)
        blocks = []
        for lo, hi, native in ((0, nT, True), (nT, nS, False)):
            mode = self.mode_id if native else int(_ops.Pooling.SUM)
            width = sum(s.dim for s in mine[lo:hi])
            if hi == lo:
                continue
            a, b = int(offs[lo * Bg]), int(offs[hi * Bg])
            g_ids = ids[a:b]
            g_offs = offs[lo * Bg:hi * Bg + 1] - a
            g_psw = None if lpsw is None else lpsw[a:b]
            argmax = None
            if Bg == 0:
                out = torch.zeros(0, width, dtype=torch.float32, device=self.device)
            else:
                # The native group pools as the collection does (bitwise as the
                # unsharded lookup); ROW_WISE partial sums stay float32.
                out, argmax = _ops.call_op(
                    torch.ops.spembed.embedding_bag_batched, weights[lo:hi], g_ids, g_offs, g_psw,
                    mode, -1, int(_ops.BoundsPolicy.ERROR), 0,
                    out_dtype if native else torch.float32)
            blocks.append(out.to(torch.float32))
            groups.append((lo, hi, mode, g_ids, g_offs, g_psw, argmax, out.dtype))
        wire = torch.cat(blocks, 1) if blocks else torch.zeros(
            Bg, 0, dtype=torch.float32, device=self.device)
        got = wire.new_empty(sum(r.B * self.width_of[o] for o in range(W)))
        dist.all_to_all_single(got, wire.reshape(-1).contiguous(),
                               [r.B * self.width_of[o] for o in range(W)],
                               [r.Bs[s] * self.width_of[me] for s in range(W)], group=self.pg)
        out = torch.zeros(r.B, self.total_dim, dtype=torch.float32, device=self.device)
        base = 0
        for o in range(W):  # fixed rank order: ROW_WISE partials add in rank order
            block = got[base:base + r.B * self.width_of[o]].view(r.B, self.width_of[o])
            base += r.B * self.width_of[o]
            c = 0
            for s in self.shards_of[o]:
                cols = slice(self.col[s.table], self.col[s.table + 1])
                if self.plan[s.table].sharding == TABLE_WISE:
                    out[:, cols] = block[:, c:c + s.dim]
                else:
                    out[:, cols] += block[:, c:c + s.dim]
                c += s.dim
        if self.mode == "mean":
            for t, p in enumerate(self.plan):
                if p.sharding == ROW_WISE and r.B:
                    cols = slice(self.col[t], self.col[t + 1])
                    out[:, cols] /= r.count[t].clamp(min=1).to(torch.float32)[:, None]
        if keep:
            r.groups = groups
            r.Bg = Bg
        r.send = r.psw = None
        return out.to(out_dtype)

    # ---- backward ---------------------------------------------------------------

    def _exchange_backward(self, r: _Route, grad: Optional[Tensor]) -> None:
        W, me = self.world, self.rank
        if grad is None:
            grad = torch.zeros(r.B, self.total_dim, device=self.device)
        grad = grad.to(self.device, torch.float32)
        if self.mode == "mean":  # ROW_WISE means: owners step with the SUM gradient / count
            scaled = grad.clone()
            for t, p in enumerate(self.plan):
                if p.sharding == ROW_WISE and r.B:
                    cols = slice(self.col[t], self.col[t + 1])
                    scaled[:, cols] /= r.count[t].clamp(min=1).to(torch.float32)[:, None]
            grad = scaled
        # Owner o gets [B, its width]: its shards' columns, in its local order.
        blocks = [torch.cat([grad[:, self.col[s.table]:self.col[s.table + 1]]
                             for s in self.shards_of[o]], 1).reshape(-1)
                  for o in range(W) if self.shards_of[o]]
        send = torch.cat(blocks) if blocks else grad.new_empty(0)
        recv = send.new_empty(r.Bg * self.width_of[me])
        dist.all_to_all_single(recv, send, [r.Bs[s] * self.width_of[me] for s in range(W)],
                               [r.B * self.width_of[o] for o in range(W)], group=self.pg)
        self.step += 1
        if self.optimizer is None or r.Bg == 0:
            return
        g_all = recv.view(r.Bg, self.width_of[me])
        weights = self.shard_weights()
        mine = self.shards_of[me]
        c = 0
        for lo, hi, mode, ids, offs, psw, argmax, dtype in r.groups:
            width = sum(s.dim for s in mine[lo:hi])
            g = g_all[:, c:c + width].to(dtype).contiguous()
            c += width
            batched_fused_step(weights[lo:hi], self._shard_states(1, lo, hi),
                               self._shard_states(2, lo, hi), g, ids, offs, psw, argmax,
                               (mode, -1, int(_ops.BoundsPolicy.ERROR), 0), self.optimizer,
                               self.hparams, self.step, self.scale_grad_by_freq)

    # ---- global state dict --------------------------------------------------------

    def _global_names(self) -> Dict[str, Tuple[int, int]]:
        """name -> (table, which): which 0 the weight, k the optimizer state k."""
        names = {f"weights.{t}": (t, 0) for t in range(len(self.specs))}
        if self.optimizer is not None:
            for t, (rows, dim) in enumerate(self.specs):
                for which, _ in optimizer_state_shapes(self.optimizer, (rows, dim)):
                    names[f"state{which}_{t}"] = (t, which)
        return names

    def _local_tensor(self, t: int, which: int) -> Optional[Tensor]:
        for i, s in enumerate(self.shards_of[self.rank]):
            if s.table == t:
                return getattr(self, f"shard_{i}" if which == 0 else f"state{which}_{i}")
        return None

    def _global_shape(self, t: int, which: int) -> Tuple[int, ...]:
        rows, dim = self.specs[t]
        if which == 0:
            return (rows, dim)
        return dict(optimizer_state_shapes(self.optimizer, (rows, dim)))[which]

    def _gather(self, t: int, which: int) -> Tensor:
        shape = self._global_shape(t, which)
        dtype = self.dtype if which == 0 else torch.float32
        local = self._local_tensor(t, which)
        p = self.plan[t]
        if p.sharding == TABLE_WISE:
            full = local.detach().clone() if local is not None else torch.empty(
                shape, dtype=dtype, device=self.device)
            dist.broadcast(full, group=self.pg, group_src=p.owner)
            return full
        blk = _block(shape[0], self.world)
        padded = torch.zeros((blk,) + shape[1:], dtype=dtype, device=self.device)
        if local is not None:
            padded[:local.shape[0]] = local.detach()
        every = torch.empty((self.world * blk,) + shape[1:], dtype=dtype, device=self.device)
        dist.all_gather_into_tensor(every, padded, group=self.pg)
        return every[:shape[0]]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, (t, which) in self._global_names().items():
            destination[prefix + name] = self._gather(t, which)
        destination[prefix + "step"] = torch.tensor(self.step, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        names = self._global_names()
        for name, (t, which) in names.items():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            shape = self._global_shape(t, which)
            if tuple(value.shape) != shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{tuple(value.shape)}, the shape in this module is {shape}")
                continue
            local = self._local_tensor(t, which)
            if local is None:
                continue
            first = next(s.first_row for s in self.shards_of[self.rank] if s.table == t)
            with torch.no_grad():
                local.copy_(value[first:first + local.shape[0]])
        if prefix + "step" in state_dict:
            self.step = int(state_dict[prefix + "step"])
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key[len(prefix):] not in names and \
                        key[len(prefix):] != "step":
                    unexpected_keys.append(key)


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, trigger, module, route):
        ctx.module, ctx.route = module, route
        return module._exchange_forward(route, keep=True)

    @staticmethod
    def backward(ctx, grad_output):
        ctx.module._exchange_backward(ctx.route, grad_output)
        ctx.route = None
        return None, None, None
