"""nn modules over the spembed ops."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import ops as _ops
from ._enums import OPTIMIZER_STATES
from .errors import ConstructorArgumentError, InvalidArgumentError

__all__ = ["EmbeddingBag", "EmbeddingBagCollection", "VarlenSelfAttention", "SASRecBlock"]


class EmbeddingBag(torch.nn.Module):
    """torch.nn.EmbeddingBag on spembed's fused lookup (spembed.ops.embedding_bag).

    torch's constructor, attributes, from_pretrained and forward(input,
    offsets, per_sample_weights), with the same results and exceptions that
    derive from torch's (spembed.errors), plus:
      mode 'none'      the gathered rows [nnz, dim] (per-sample weights applied);
      output_dtype     float32 / float16 / bfloat16 output (default: weight's);
      bounds_policy    'error' (default; an IndexError / RuntimeError naming the
                       position and id) or 'skip' (the id is ignored and not
                       counted by 'mean');
      sparse           the gradient is a coalesced sparse COO tensor (eager only).
    scale_grad_by_freq=True divides each row's weight gradient by the number
    of ids of that row in the forward call, padding ids (and ids skipped by
    bounds_policy='skip') not counted, as torch does; as in torch, not with
    mode 'max' (an error from forward) nor with sparse=True (an error from
    the backward).
    max_norm / norm_type: forward renormalises in place the rows its ids name
    whose norm_type-norm exceeds max_norm, before the lookup, as torch does
    (spembed.ops.embedding_bag; both must be finite and > 0, checked by
    forward).
    Tables are float32, float16, bfloat16 or float64; pooling accumulates in
    float32, or float64 for float64 tables (whose output is float64).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: Optional[float] = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                 sparse: bool = False, _weight: Optional[Tensor] = None,
                 include_last_offset: bool = False, padding_idx: Optional[int] = None,
                 device=None, dtype=None, output_dtype: Optional[torch.dtype] = None,
                 bounds_policy: str = "error") -> None:
        super().__init__()
        _ops.mode_code(mode)
        _ops.bounds_code(bounds_policy)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        if padding_idx is not None:  # torch's rule, torch's exception class
            if (padding_idx > 0 and padding_idx >= num_embeddings) or padding_idx < -num_embeddings:
                raise ConstructorArgumentError(
                    "spembed.nn.EmbeddingBag: padding_idx must be within num_embeddings, "
                    f"-{num_embeddings} through {num_embeddings - 1}, but got {padding_idx}")
            if padding_idx < 0:
                padding_idx += num_embeddings
        self.padding_idx = padding_idx
        if _weight is None:
            self.weight = torch.nn.Parameter(on_huge_pages(
                torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype)))
            self.reset_parameters()
        else:
            if list(_weight.shape) != [num_embeddings, embedding_dim]:
                raise ConstructorArgumentError(
                    "spembed.nn.EmbeddingBag: Shape of weight does not match num_embeddings and "
                    f"embedding_dim: _weight is {list(_weight.shape)}, expected "
                    f"[{num_embeddings}, {embedding_dim}]")
            self.weight = torch.nn.Parameter(_weight)
        self.mode = mode
        self.sparse = sparse
        self.include_last_offset = include_last_offset
        self.output_dtype = output_dtype
        self.bounds_policy = bounds_policy

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return _ops.embedding_bag(input, self.weight, offsets, self.max_norm, self.norm_type,
                                  self.scale_grad_by_freq, self.mode, self.sparse,
                                  per_sample_weights, self.include_last_offset, self.padding_idx,
                                  output_dtype=self.output_dtype,
                                  bounds_policy=self.bounds_policy)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm!r}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type!r}"
        if self.scale_grad_by_freq is not False:
            s += f", scale_grad_by_freq={self.scale_grad_by_freq!r}"
        s += f", mode={self.mode!r}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx!r}"
        return s

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True,
                        max_norm: Optional[float] = None, norm_type: float = 2.0,
                        scale_grad_by_freq: bool = False, mode: str = "mean",
                        sparse: bool = False, include_last_offset: bool = False,
                        padding_idx: Optional[int] = None, *,
                        output_dtype: Optional[torch.dtype] = None,
                        bounds_policy: str = "error") -> "EmbeddingBag":
        """torch.nn.EmbeddingBag.from_pretrained: a module whose weight is
        `embeddings` itself (rows = num_embeddings, columns = embedding_dim),
        trainable unless freeze. The padding row is left as it is.
        max_norm, norm_type and scale_grad_by_freq as in the constructor
        (max_norm renormalises `embeddings` itself, in forward)."""
        if embeddings.dim() != 2:
            raise ConstructorArgumentError(
                "spembed.nn.EmbeddingBag.from_pretrained: Embeddings parameter is expected to be "
                f"2-dimensional, got {embeddings.dim()}-D")
        rows, cols = embeddings.shape
        bag = cls(rows, cols, max_norm=max_norm, norm_type=norm_type,
                  scale_grad_by_freq=scale_grad_by_freq, mode=mode, sparse=sparse,
                  _weight=embeddings, include_last_offset=include_last_offset,
                  padding_idx=padding_idx, output_dtype=output_dtype,
                  bounds_policy=bounds_policy)
        bag.weight.requires_grad = not freeze
        return bag


def check_optimizer(optimizer: str) -> None:
    if optimizer not in _ops.OPTIMIZERS:
        raise InvalidArgumentError(
            f"spembed: optimizer must be one of {sorted(_ops.OPTIMIZERS)}, got {optimizer!r}")


def fused_hparams(lr, eps, betas, weight_decay, seed, stochastic_rounding) -> dict:
    return dict(lr=lr, eps=eps, beta1=betas[0], beta2=betas[1], weight_decay=weight_decay,
                seed=seed, stochastic_rounding=stochastic_rounding)


def optimizer_state_shapes(optimizer: str, shape) -> List[Tuple[int, Tuple[int, ...]]]:
    """(which, size) of each state the fused optimizer keeps for a table (or
    shard) of `shape` [rows, dim]; which is 1 or 2. States have the
    accumulation dtype (float64 for float64 tables, else float32)."""
    states = OPTIMIZER_STATES[_ops.OPTIMIZERS[optimizer]]
    return [(which, tuple(shape) if kind == "element" else tuple(shape[:1]))
            for which, kind in enumerate(states, start=1) if kind is not None]


def on_huge_pages(t: Tensor) -> Tensor:
    """t, or for a CPU tensor of 2 MiB or more a contiguous copy on transparent
    huge pages: what the modules do with the tables and optimizer states they
    create (a lookup into a large CPU table otherwise waits on page walks;
    docs/python.md)."""
    if t.device.type != "cpu" or t.numel() * t.element_size() < (2 << 20):
        return t
    return torch.ops.spembed.to_huge_pages(t)


def init_table(rows: int, dim: int, padding_idx: Optional[int], device=None, dtype=None,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """A table as EmbeddingBagCollection initialises it: uniform in
    +-sqrt(1 / rows), the padding row zero; on huge pages on the CPU."""
    w = torch.empty(rows, dim, device=device, dtype=dtype)
    bound = (1.0 / rows) ** 0.5
    if generator is None:
        torch.nn.init.uniform_(w, -bound, bound)
    else:
        with torch.no_grad():
            w.uniform_(-bound, bound, generator=generator)
    if padding_idx is not None and padding_idx < rows:
        with torch.no_grad():
            w[padding_idx] = 0
    return on_huge_pages(w)


def batched_fused_step(weights, states1, states2, grad_output, indices, offsets, psw, argmax,
                       lookup, optimizer: str, hparams: dict, step: int,
                       scale_grad_by_freq: bool) -> None:
    """One fused optimizer step of a batched lookup's tables (the collection's
    backward): step counts the steps taken so far, this one included."""
    h = hparams
    torch.ops.spembed.embedding_bag_batched_fused_step(
        list(weights), list(states1), list(states2), grad_output, indices, offsets, psw, argmax,
        *lookup, int(_ops.OPTIMIZERS[optimizer]), h["lr"], h["eps"], h["beta1"], h["beta2"],
        h["weight_decay"], step, h["seed"] + step, h["stochastic_rounding"],
        int(scale_grad_by_freq))


def to_table_major(features, offsets, num_tables: int):
    """The collections' input forms as one table-major (indices, offsets):
    a list of num_tables (values, offsets) pairs or 2-D values, or
    (indices, offsets [T * B + 1]) as given."""
    if isinstance(features, (list, tuple)):
        if offsets is not None:
            raise InvalidArgumentError("spembed: with per-feature (values, offsets) pairs, "
                                       "the offsets argument must be None")
        if len(features) != num_tables:
            raise InvalidArgumentError(f"spembed: expected {num_tables} features, "
                                       f"got {len(features)}")
        vals, offs, base = [], [], None
        for values, feature_offsets in features:
            if values.dim() == 2:
                if feature_offsets is not None:
                    raise InvalidArgumentError("spembed: 2-D values take offsets None")
                b, length = values.shape
                feature_offsets = torch.arange(0, b * length + 1, max(length, 1),
                                               device=values.device,
                                               dtype=values.dtype)[: b + 1]
                values = values.reshape(-1)
            feature_offsets = feature_offsets.to(values.dtype)
            shift = feature_offsets[:-1] if base is None else feature_offsets[:-1] + base
            offs.append(shift)
            base = (feature_offsets[-1:] if base is None else feature_offsets[-1:] + base)
            vals.append(values)
        offs.append(base)
        return torch.cat(vals), torch.cat(offs)
    if offsets is None:
        raise InvalidArgumentError(
            "spembed: offsets [T * B + 1] are required with table-major indices")
    return features, offsets.to(features.dtype)


TableSpec = Union[Tuple[int, int], Sequence[int]]


class EmbeddingBagCollection(torch.nn.Module):
    """T tables with their own sizes and dims, looked up in one fused launch.

    tables       [(num_embeddings, embedding_dim), ...], one per feature.
    forward      either a list of T (values, offsets) pairs, one per feature,
                 each with offsets [B + 1] (include_last_offset form) or 2-D
                 values [B, L] with offsets None; or one table-major
                 (indices, offsets) with offsets [T * B + 1].
                 Returns [B, sum of dims], table t at its column offset.
    optimizer    None: the tables are Parameters with ordinary (dense)
                 gradients. 'sgd', 'adagrad', 'rowwise_adagrad' or 'adam':
                 the backward applies that optimizer step to the touched rows
                 in place (FBGEMM-style table-batched training); no gradient
                 tensor is ever built, the tables are Parameters with
                 requires_grad=False, and the optimizer states are buffers.
                 The step semantics are spembed.h's (torch.optim.SGD /
                 Adagrad / Adam on the touched rows; Adam's untouched rows
                 are left alone, like torch.optim.SparseAdam).
    scale_grad_by_freq  True: each row's gradient (the dense one, or the one
                 the fused step applies) is divided by the number of ids of
                 that row of that table in the forward call, padding and
                 skipped ids not counted, as torch.nn.EmbeddingBag's
                 scale_grad_by_freq does per table. Not with mode 'max'.
    """

    def __init__(self, tables: Sequence[TableSpec], mode: str = "sum",
                 padding_idx: Optional[int] = None, device=None, dtype=None,
                 output_dtype: Optional[torch.dtype] = None, bounds_policy: str = "error",
                 optimizer: Optional[str] = None, lr: float = 0.01, eps: float = 1e-8,
                 betas: Tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
                 stochastic_rounding: bool = False, seed: int = 0,
                 scale_grad_by_freq: bool = False) -> None:
        super().__init__()
        if len(tables) == 0:
            raise InvalidArgumentError(
                "spembed.nn.EmbeddingBagCollection: tables must not be empty")
        if mode == "none":
            raise NotImplementedError(
                "spembed.nn.EmbeddingBagCollection: mode 'none' needs one width per table")
        self.mode_id = _ops.mode_code(mode)
        _ops.check_scale_grad_by_freq(mode, scale_grad_by_freq,
                                      "spembed.nn.EmbeddingBagCollection")
        self.mode = mode
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.padding_idx = padding_idx
        self.output_dtype = output_dtype
        self.bounds_id = _ops.bounds_code(bounds_policy)
        self.dims = [int(d) for _, d in tables]
        self.optimizer = optimizer
        fused = optimizer is not None
        if fused:
            check_optimizer(optimizer)
        self.weights = torch.nn.ParameterList()
        for rows, dim in tables:
            w = init_table(int(rows), int(dim), padding_idx, device=device, dtype=dtype)
            self.weights.append(torch.nn.Parameter(w, requires_grad=not fused))
        if fused:
            self.hparams = fused_hparams(lr, eps, betas, weight_decay, seed, stochastic_rounding)
            self.step = 0
            for t, w in enumerate(self.weights):
                for which, size in optimizer_state_shapes(optimizer, w.shape):
                    self.register_buffer(f"state{which}_{t}", on_huge_pages(torch.zeros(
                        size, device=w.device, dtype=_ops.acc_dtype(w.dtype))))
            # Makes the output require grad so that the backward (the fused
            # step) runs; it never receives a gradient.
            self._trigger = torch.zeros((), requires_grad=True)

    @property
    def total_dim(self) -> int:
        return sum(self.dims)

    def _states(self, which: int) -> List[Tensor]:
        return [getattr(self, f"state{which}_{t}") for t in range(len(self.weights))
                if hasattr(self, f"state{which}_{t}")]

    def _table_major(self, features, offsets):
        return to_table_major(features, offsets, len(self.weights))

    def forward(self, features: Union[Tensor, Sequence[Tuple[Tensor, Optional[Tensor]]]],
                offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        indices, offs = self._table_major(features, offsets)
        psw = (None if per_sample_weights is None
               else per_sample_weights.to(_ops.acc_dtype(self.weights[0].dtype)))
        pad = -1 if self.padding_idx is None else self.padding_idx
        lookup = (self.mode_id, pad, self.bounds_id, 0)
        if self.optimizer is None:
            out, _ = _ops.call_op(torch.ops.spembed.embedding_bag_batched, list(self.weights),
                                  indices, offs, psw, *lookup, self.output_dtype,
                                  int(self.scale_grad_by_freq))
            return out
        if psw is not None and per_sample_weights.requires_grad:
            raise NotImplementedError("spembed: a fused-optimizer collection gives no "
                                      "per_sample_weights gradient")
        if not torch.is_grad_enabled():
            out, _ = _ops.call_op(torch.ops.spembed.embedding_bag_batched, list(self.weights),
                                  indices, offs, psw, *lookup, self.output_dtype)
            return out
        return _FusedBatchedLookup.apply(self._trigger, self, indices, offs, psw, lookup,
                                         *self.weights)

    def _fused_step(self, grad_output, indices, offsets, psw, argmax, lookup):
        self.step += 1
        batched_fused_step(self.weights, self._states(1), self._states(2), grad_output, indices,
                           offsets, psw, argmax, lookup, self.optimizer, self.hparams, self.step,
                           self.scale_grad_by_freq)


class _FusedBatchedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, trigger, module, indices, offsets, psw, lookup, *weights):
        out, argmax = torch.ops.spembed.embedding_bag_batched(list(weights), indices, offsets, psw,
                                                              *lookup, module.output_dtype)
        ctx.module = module
        ctx.lookup = lookup
        ctx.num_weights = len(weights)
        ctx.save_for_backward(indices, offsets, psw, argmax)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        indices, offsets, psw, argmax = ctx.saved_tensors
        ctx.module._fused_step(grad_output.contiguous(), indices, offsets, psw, argmax,
                               ctx.lookup)
        return (None,) * (6 + ctx.num_weights)


class VarlenSelfAttention(torch.nn.Module):
    """Multi-head self-attention over packed sequences x [total, dim] with
    cu_seqlens [B + 1] (int32), on spembed.ops.varlen_attention."""

    def __init__(self, dim: int, heads: int, causal: bool = True,
                 window: Optional[Tuple[int, int]] = None, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"spembed: dim {dim} must be a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.causal, self.window = causal, window
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=bias, device=device, dtype=dtype)
        self.proj = torch.nn.Linear(dim, dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor, cu_seqlens: Tensor, max_seqlen: int = 0) -> Tensor:
        total = x.shape[0]
        q, k, v = self.qkv(x).view(total, 3, self.heads, self.head_dim).unbind(1)
        o = _ops.varlen_attention(q, k, v, cu_seqlens, cu_seqlens, causal=self.causal,
                                  window=self.window, max_seqlen_q=max_seqlen,
                                  max_seqlen_k=max_seqlen)
        return self.proj(o.reshape(total, -1))


class SASRecBlock(torch.nn.Module):
    """One SASRec transformer block over jagged user histories: pre-norm causal
    self-attention and a point-wise feed-forward network, each with a residual.
    x [total, dim] packs the histories; cu_seqlens [B + 1] (int32) delimits them."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, ffn_mult: int = 1,
                 causal: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim, device=device, dtype=dtype)
        self.attn = VarlenSelfAttention(dim, heads, causal=causal, device=device, dtype=dtype)
        self.norm2 = torch.nn.LayerNorm(dim, device=device, dtype=dtype)
        self.ffn = torch.nn.Sequential(
            torch.nn.Linear(dim, ffn_mult * dim, device=device, dtype=dtype), torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(ffn_mult * dim, dim, device=device, dtype=dtype))
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: Tensor, cu_seqlens: Tensor, max_seqlen: int = 0) -> Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), cu_seqlens, max_seqlen))
        return x + self.dropout(self.ffn(self.norm2(x)))
