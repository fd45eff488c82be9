"""Functional API over torch.ops.spembed.* with torch-style arguments."""
import math
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _config
from ._enums import BoundsPolicy, Optimizer, Pooling
from .errors import (IndexOutOfRangeError, InvalidArgumentError, NotSupportedError)

# The string arguments of the Python API and the codes (spembed.h's enums,
# mirrored in _enums.py) the ops take for them.
_MODES = {"sum": Pooling.SUM, "mean": Pooling.MEAN, "max": Pooling.MAX, "none": Pooling.NONE}
_BOUNDS = {"error": BoundsPolicy.ERROR, "skip": BoundsPolicy.SKIP}
OPTIMIZERS = {"sgd": Optimizer.SGD, "adagrad": Optimizer.ADAGRAD,
              "rowwise_adagrad": Optimizer.ROWWISE_ADAGRAD, "adam": Optimizer.ADAM}
_TABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def acc_dtype(table_dtype):
    """What the core computes in for a table dtype: float64 for float64
    tables (their per-sample weights, gradients and optimizer states too),
    float32 for the others."""
    return torch.float64 if table_dtype == torch.float64 else torch.float32
_INDEX_DTYPES = (torch.int32, torch.int64)


def mode_code(mode: str) -> int:
    """The ops' pooling code (int(Pooling.*)) of a mode string."""
    try:
        return int(_MODES[mode])
    except KeyError:
        raise InvalidArgumentError(
            f"spembed: mode must be one of {sorted(_MODES)}, got {mode!r}") from None


def bounds_code(policy: str) -> int:
    """The ops' bounds_policy code (int(BoundsPolicy.*)) of a policy string."""
    try:
        return int(_BOUNDS[policy])
    except KeyError:
        raise InvalidArgumentError(
            f"spembed: bounds_policy must be one of {sorted(_BOUNDS)}, got {policy!r}") from None


def check_scale_grad_by_freq(mode: str, scale_grad_by_freq: bool, where: str) -> None:
    """torch's rule: mode 'max' takes no scale_grad_by_freq=True."""
    if scale_grad_by_freq and mode == "max":
        raise InvalidArgumentError(f"{where}: mode 'max' does not support "
                                   "scale_grad_by_freq=True")


def call_op(op, *args, index_message=None):
    """Calls a spembed op and raises the package's exception classes
    (spembed.errors) in place of the op's ValueError / IndexError /
    NotImplementedError, message unchanged (an IndexError's passed through
    index_message(message) when given). Under torch.compile the op is called
    as it is: the fake kernels check nothing data-dependent."""
    if torch.compiler.is_compiling():
        return op(*args)
    try:
        return op(*args)
    except IndexError as e:
        message = str(e) if index_message is None else index_message(str(e))
        raise IndexOutOfRangeError(message) from None
    except NotImplementedError as e:
        raise NotSupportedError(str(e)) from None
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from None


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError("spembed.embedding_bag: " + message)


def _check_embedding_bag(input, weight, offsets, max_norm, scale_grad_by_freq, mode, sparse,
                         per_sample_weights, include_last_offset, padding_idx):
    """F.embedding_bag's argument checks, in torch's order, so that an input
    with several problems raises the class torch raises. Returns input,
    offsets and include_last_offset with a nested (jagged) input unpacked."""
    psw = per_sample_weights
    if psw is not None and psw.shape != input.shape:
        raise _bad("per_sample_weights must have the same shape as the input: got "
                   f"per_sample_weights of shape {tuple(psw.shape)} for input of shape "
                   f"{tuple(input.shape)}")
    if weight.dim() != 2:
        raise _bad("weight has to be a 2-D tensor [num_embeddings, embedding_dim], got "
                   f"{weight.dim()}-D")
    if input.is_nested:
        if input.layout != torch.jagged or input.dim() != 2:
            raise NotSupportedError("spembed.embedding_bag: a nested input must be a 2-D "
                                    "torch.jagged tensor")
        if psw is not None and not psw.is_nested:
            raise _bad("per_sample_weights must be nested when input is nested")
        offsets, input, include_last_offset = input.offsets(), input.values(), True
    elif input.dim() == 2:
        if offsets is not None:
            raise _bad("offsets must be None when input is 2-D (every row of input is one bag); "
                       f"got offsets of shape {tuple(offsets.shape)}")
    elif input.dim() == 1:
        if offsets is None:
            if mode != "none":
                raise _bad("offsets has to be a 1-D tensor when input is 1-D, got None")
        elif offsets.dim() != 1:
            raise _bad(f"offsets has to be a 1-D tensor, got shape {tuple(offsets.shape)}")
    else:
        raise _bad(f"input has to be a 1-D or 2-D tensor, got {input.dim()}-D "
                   f"(shape {tuple(input.shape)})")
    if mode not in _MODES:
        raise _bad(f"mode has to be one of 'sum', 'mean', 'max' (or spembed's 'none'), "
                   f"got {mode!r}")
    if mode == "max":
        if scale_grad_by_freq:
            raise _bad("mode 'max' does not support scale_grad_by_freq=True")
        if sparse:
            raise _bad("mode 'max' does not support sparse=True (sparse weight gradients)")
    # max_norm: torch renormalises here; spembed does it after every argument
    # check has passed (embedding_bag), so a rejected call leaves weight as it was.
    if psw is not None and mode not in ("sum", "none"):
        raise NotImplementedError(
            "spembed.embedding_bag: per_sample_weights is only supported for mode='sum' "
            f"(and spembed's mode='none'), got mode={mode!r}")
    if input.dtype not in _INDEX_DTYPES:
        raise _bad(f"input must be int32 or int64, got {input.dtype}")
    if offsets is not None and offsets.dtype not in _INDEX_DTYPES:
        raise _bad(f"offsets must be int32 or int64, got {offsets.dtype}")
    if weight.dtype not in _TABLE_DTYPES:
        raise _bad(f"weight must be float32, float16, bfloat16 or float64, got {weight.dtype}")
    if psw is not None and psw.dtype not in (weight.dtype, acc_dtype(weight.dtype)):
        raise _bad(f"per_sample_weights must have the same type as weight ({weight.dtype}), "
                   f"or be float32; got {psw.dtype}")
    rows = weight.shape[0]
    if padding_idx is not None and not -rows <= padding_idx < rows:
        raise _bad(f"padding_idx must be within the number of embeddings, -{rows} through "
                   f"{rows - 1}, but got {padding_idx}")
    if input.dim() == 1 and mode != "none" and include_last_offset and offsets.numel() == 0:
        raise _bad("include_last_offset=True needs at least one offset (offsets are "
                   "[bags + 1]), got an empty offsets")
    return input, offsets, include_last_offset


def _offsets_problem(offsets: torch.Tensor, nnz: int, include_last_offset: bool):
    """What is wrong with the caller's offsets, in the caller's terms, or None."""
    o = offsets.detach().to("cpu", torch.int64)
    n = o.numel()
    if n == 0:
        return None
    where = "spembed.embedding_bag: "
    if int(o[0]) != 0:
        return where + f"offsets[0]={int(o[0])}: offsets[0] has to be 0 (the first bag " \
            "starts at the first id)"
    down = (o[1:] < o[:-1]).nonzero()
    if down.numel() > 0:
        i = int(down[0, 0])
        return where + f"offsets[{i}]={int(o[i])} > offsets[{i + 1}]={int(o[i + 1])}: " \
            "offsets must be non-decreasing"
    last = int(o[-1])
    if last > nnz:
        role = ("where the last bag ends (include_last_offset=True)" if include_last_offset
                else f"where bag {n - 1} starts (include_last_offset=False)")
        return where + f"offsets[{n - 1}]={last} > {nnz}, the number of ids in input; " \
            f"offsets[{n - 1}] is {role}"
    return None


def _id_problem(input: torch.Tensor, rows: int, pad: int, original: str) -> str:
    """The first out-of-range id, named by its position in the caller's input."""
    flat = input.detach().reshape(-1)
    bad = (flat < 0) | (flat >= rows)
    if pad >= 0:
        bad &= flat != pad
    count = int(bad.sum())
    if count == 0:
        return original
    pos = int(bad.nonzero()[0, 0])
    where = (f"input[{pos}]" if input.dim() == 1
             else f"input[{pos // input.shape[1]}, {pos % input.shape[1]}]")
    return (f"spembed.embedding_bag: {where}={int(flat[pos])} is out of range: weight has "
            f"{rows} rows (num_embeddings), so ids must be in [0, {rows}); {count} "
            "out-of-range id(s) in input (bounds_policy='skip' ignores them)")


def _renorm(weight, indices, max_norm, norm_type, bounds, input, rows, pad) -> None:
    """F.embedding_bag's max_norm (torch's _no_grad_embedding_renorm_) on the
    library: every distinct row named by a valid id of `indices` (padding rows
    included, as in torch) whose norm_type-norm exceeds max_norm is scaled in
    place, under no_grad, by max_norm / (norm + 1e-7). torch does not check
    max_norm / norm_type; the library needs both finite and > 0 and raises
    InvalidArgumentError with its message otherwise."""
    with torch.no_grad():
        call_op(torch.ops.spembed.embedding_renorm_, weight, indices, float(max_norm),
                float(norm_type), bounds,
                index_message=lambda message: _id_problem(input, rows, pad, message))


def _with_end(offsets: torch.Tensor, end) -> torch.Tensor:
    return torch.cat([offsets, offsets.new_full((1,), end)])


def embedding_bag(input: torch.Tensor, weight: torch.Tensor,
                  offsets: Optional[torch.Tensor] = None, max_norm: Optional[float] = None,
                  norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                  sparse: bool = False, per_sample_weights: Optional[torch.Tensor] = None,
                  include_last_offset: bool = False, padding_idx: Optional[int] = None, *,
                  output_dtype: Optional[torch.dtype] = None,
                  bounds_policy: str = "error") -> torch.Tensor:
    """torch.nn.functional.embedding_bag on spembed's fused lookup: the same
    arguments in the same order, the same input forms (1-D input + offsets,
    2-D input, a 2-D torch.jagged nested input) and the same results, plus

      mode 'none'      the gathered rows [nnz, dim] (per-sample weights applied);
      output_dtype     float32 / float16 / bfloat16 output (default: weight's);
      bounds_policy    'error' (default) or 'skip' (out-of-range ids are
                       ignored and not counted by 'mean').

    Exceptions derive from what torch raises (spembed.errors).
    per_sample_weights have weight's dtype (as in torch) or float32; they are
    used in acc_dtype(weight.dtype): float32, or float64 for float64 tables
    (which accumulate in float64 and need a float64 output_dtype if given).
    max_norm: before the lookup, every distinct row named by an id of input
    (padding rows included) whose norm_type-norm exceeds max_norm is scaled
    in place, under no_grad, by max_norm / (norm + 1e-7), as torch does
    (torch.embedding_renorm_); norm_type is only read with max_norm. Both
    must be finite and > 0 (InvalidArgumentError; torch does not check
    them). The renormalisation runs after the argument checks, so a call
    they reject leaves weight unchanged; out-of-range ids raise from it (with
    bounds_policy='skip' they are ignored by it too).
    scale_grad_by_freq=True: the weight gradient of each row is divided by
    the number of ids of that row in the call, padding ids (and ids skipped
    by bounds_policy='skip') not counted; the forward is unchanged. As in
    torch, not with mode 'max' (InvalidArgumentError from the call) nor with
    sparse=True (InvalidArgumentError, a RuntimeError, from the backward).
    include_last_offset=True: bag b is ids[offsets[b]:offsets[b + 1]], and
    ids after offsets[-1] belong to no bag (they are still range-checked).
    sparse=True: the weight gradient is a sparse COO tensor (eager mode).
    """
    input, offsets, include_last_offset = _check_embedding_bag(
        input, weight, offsets, max_norm, scale_grad_by_freq, mode, sparse, per_sample_weights,
        include_last_offset, padding_idx)
    bounds = bounds_code(bounds_policy)
    rows = weight.shape[0]
    pad = -1 if padding_idx is None else (padding_idx + rows if padding_idx < 0 else padding_idx)
    psw = per_sample_weights
    if psw is not None and psw.is_nested:
        psw = psw.values()
    fixed, offs, trim = 0, None, None
    if input.dim() == 2:
        bags, length = input.shape
        indices = input.reshape(-1)
        if psw is not None:
            psw = psw.reshape(-1)
        if mode != "none":
            if length > 0:
                fixed = length
            else:
                offs = torch.zeros(bags + 1, dtype=input.dtype, device=input.device)
    else:
        indices = input
        if mode != "none":
            offs = offsets.to(indices.dtype)
            nnz = indices.shape[0]
            if not include_last_offset:
                if offsets.numel() == 0:  # no bags
                    offs, trim = _with_end(offs.new_zeros(1), nnz), 0
                else:
                    offs = _with_end(offs, nnz)
            elif torch.compiler.is_compiling():
                # Ids after offsets[-1] go to an extra bag, sliced off (eager
                # mode does this only when offsets[-1] < nnz, see below).
                offs, trim = _with_end(offs, nnz), offsets.numel() - 1
    if max_norm is not None:
        _renorm(weight, indices, max_norm, norm_type, bounds, input, rows, pad)
    if psw is not None:
        psw = psw.to(acc_dtype(weight.dtype))
    lookup = (int(_MODES[mode]), pad, bounds, fixed)
    scale = 1 if scale_grad_by_freq else 0
    use_sparse = sparse and torch.is_grad_enabled() and weight.requires_grad

    def run(o):
        if use_sparse:
            return _SparseLookup.apply(weight, psw, indices, o, lookup, output_dtype, scale)
        return torch.ops.spembed.embedding_bag(weight, indices, o, psw, *lookup, output_dtype,
                                               scale)[0]

    if torch.compiler.is_compiling():
        out = run(offs)
    else:
        def attempt(o):
            return call_op(run, o,
                           index_message=lambda message: _id_problem(input, rows, pad, message))

        try:
            out = attempt(offs)
        except InvalidArgumentError as e:
            if offsets is None or offs is None or trim is not None:
                raise
            problem = _offsets_problem(offsets, indices.shape[0], include_last_offset)
            if problem is not None:
                raise InvalidArgumentError(problem) from None
            if not (include_last_offset and int(offsets[-1]) < indices.shape[0]):
                raise
            # offsets[-1] < nnz with include_last_offset=True: the ids after
            # it go to an extra bag whose row is sliced off.
            trim = offsets.numel() - 1
            out = attempt(_with_end(offs, indices.shape[0]))
    return out if trim is None else out.narrow(0, 0, trim)


class _SparseLookup(torch.autograd.Function):
    """The lookup with a row-sparse (coalesced COO) weight gradient; the
    per-sample-weight gradient, when asked for, comes from the dense
    backward op with the weight gradient turned off."""

    @staticmethod
    def forward(ctx, weight, psw, indices, offsets, lookup, output_dtype, scale_grad_by_freq):
        out, argmax = torch.ops.spembed.embedding_bag(weight, indices, offsets, psw, *lookup,
                                                      output_dtype)
        ctx.lookup = lookup
        ctx.scale_grad_by_freq = scale_grad_by_freq
        ctx.save_for_backward(weight, indices, offsets, psw, argmax)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        weight, indices, offsets, psw, argmax = ctx.saved_tensors
        grad_weight = grad_psw = None
        if ctx.needs_input_grad[0]:
            if ctx.scale_grad_by_freq:
                # torch's rule (its backward raises RuntimeError); the op
                # itself computes it (embedding_bag_backward_sparse).
                raise InvalidArgumentError(
                    "spembed.embedding_bag: scale_grad_by_freq=True is not supported with "
                    "sparse=True (sparse weight gradients), as in torch; use sparse=False, or "
                    "torch.ops.spembed.embedding_bag_backward_sparse(..., scale_grad_by_freq=1)")
            ids, rows = torch.ops.spembed.embedding_bag_backward_sparse(
                grad_output, weight, indices, offsets, psw, argmax, *ctx.lookup,
                ctx.scale_grad_by_freq)
            grad_weight = torch.sparse_coo_tensor(ids.to(torch.int64).unsqueeze(0), rows,
                                                  weight.shape, is_coalesced=True,
                                                  check_invariants=False)
        if psw is not None and ctx.needs_input_grad[1]:
            _, grad_psw = torch.ops.spembed.embedding_bag_backward(
                grad_output, weight, indices, offsets, psw, argmax, *ctx.lookup,
                _config.deterministic_backward, False, True)
        return grad_weight, grad_psw, None, None, None, None, None

def embedding_bag_batched(weights: Sequence[torch.Tensor], indices: torch.Tensor,
                          offsets: Optional[torch.Tensor], mode: str = "sum",
                          per_sample_weights: Optional[torch.Tensor] = None,
                          padding_idx: Optional[int] = None,
                          output_dtype: Optional[torch.dtype] = None,
                          bounds_policy: str = "error",
                          fixed_bag_size: int = 0,
                          scale_grad_by_freq: bool = False) -> torch.Tensor:
    """Pooled lookup into T tables at once. indices are table-major, offsets
    [T * B + 1] (or None with fixed_bag_size); returns [B, sum of dims].
    scale_grad_by_freq=True divides each row's weight gradient by the number
    of ids of that row (in its table) in the call, as in embedding_bag."""
    check_scale_grad_by_freq(mode, scale_grad_by_freq, "spembed.embedding_bag_batched")
    if per_sample_weights is not None:
        per_sample_weights = per_sample_weights.to(acc_dtype(weights[0].dtype))
    out, _ = call_op(
        torch.ops.spembed.embedding_bag_batched,
        list(weights), indices, offsets, per_sample_weights, mode_code(mode),
        -1 if padding_idx is None else padding_idx, bounds_code(bounds_policy), fixed_bag_size,
        output_dtype, 1 if scale_grad_by_freq else 0)
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                     causal: bool = False, scale: Optional[float] = None,
                     window: Optional[Tuple[int, int]] = None, return_lse: bool = False,
                     max_seqlen_q: int = 0, max_seqlen_k: int = 0
                     ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Attention over packed sequences: q [total_q, heads, head_dim], k and v
    [total_k, kv_heads, head_dim], cu_seqlens_* int32 [B + 1]. causal aligns
    the mask bottom-right; window = (left, right) with -1 for unlimited.
    Returns O, and with return_lse also the log-sum-exp [heads, total_q]
    (float32, not differentiable: it is marked so, requires_grad is False,
    and a backward through it alone raises). Empty or fully masked rows give O = 0."""
    if scale is None:
        scale = 0.0  # the library's 1 / sqrt(head_dim)
    elif not math.isfinite(scale) or scale == 0.0:
        raise ValueError(f"spembed.varlen_attention: scale must be finite and non-zero, got {scale}")
    left, right = (-1, -1) if window is None else window
    out, lse = torch.ops.spembed.varlen_attention(
        q, k, v, cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), causal,
        float(scale), int(left), int(right), int(max_seqlen_q), int(max_seqlen_k))
    return (out, lse) if return_lse else out
