"""Functional API over torch.ops.spembed.* with torch-style arguments."""
import math
from typing import Optional, Sequence, Tuple, Union

import torch

_MODES = {"sum": 0, "mean": 1, "max": 2, "none": 3}
_BOUNDS = {"error": 0, "skip": 1}
OPTIMIZERS = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2, "adam": 3}


def mode_code(mode: str) -> int:
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"spembed: mode must be one of {sorted(_MODES)}, got {mode!r}") from None


def bounds_code(policy: str) -> int:
    try:
        return _BOUNDS[policy]
    except KeyError:
        raise ValueError(
            f"spembed: bounds_policy must be one of {sorted(_BOUNDS)}, got {policy!r}") from None


def normalize_lookup(input: torch.Tensor, offsets: Optional[torch.Tensor], mode: str,
                     include_last_offset: bool, per_sample_weights: Optional[torch.Tensor],
                     num_tables: int = 1):
    """torch.nn.functional.embedding_bag's input forms -> (indices [nnz],
    offsets [bags + 1] or None, fixed_bag_size, per_sample_weights float32)."""
    if input.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"spembed: input must be int32 or int64, got {input.dtype}")
    fixed = 0
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("spembed: offsets must be None when input is 2-D (bags of equal size)")
        bags, length = input.shape
        indices = input.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
        if mode == "none":
            pass
        elif length > 0:
            fixed = length
        else:
            offsets = torch.zeros(bags * num_tables + 1, dtype=input.dtype, device=input.device)
    elif input.dim() == 1:
        indices = input
        if mode != "none":
            if offsets is None:
                raise ValueError("spembed: offsets are required when input is 1-D")
            if offsets.dim() != 1:
                raise ValueError(f"spembed: offsets must be 1-D, got shape {tuple(offsets.shape)}")
            offsets = offsets.to(indices.dtype)
            if not include_last_offset:
                end = torch.full((1,), indices.shape[0], dtype=indices.dtype,
                                 device=indices.device)
                offsets = torch.cat([offsets, end])
        else:
            offsets = None
    else:
        raise ValueError(f"spembed: input must be 1-D or 2-D, got {input.dim()}-D")
    if per_sample_weights is not None:
        if mode not in ("sum", "none"):
            raise NotImplementedError(
                f"spembed: per_sample_weights need mode 'sum' (or 'none'), got {mode!r}")
        per_sample_weights = per_sample_weights.to(torch.float32)
    return indices, offsets, fixed, per_sample_weights


def embedding_bag(input: torch.Tensor, weight: torch.Tensor,
                  offsets: Optional[torch.Tensor] = None, mode: str = "mean",
                  per_sample_weights: Optional[torch.Tensor] = None,
                  include_last_offset: bool = False, padding_idx: Optional[int] = None,
                  output_dtype: Optional[torch.dtype] = None,
                  bounds_policy: str = "error") -> torch.Tensor:
    """Like torch.nn.functional.embedding_bag (same input / offsets forms),
    plus mode 'none' (the gathered rows [nnz, dim]), an output dtype and the
    out-of-range policy ('error': IndexError; 'skip': such ids are ignored)."""
    m = mode_code(mode)
    indices, offs, fixed, psw = normalize_lookup(input, offsets, mode, include_last_offset,
                                                 per_sample_weights)
    pad = _padding(padding_idx, weight.shape[0])
    out, _ = torch.ops.spembed.embedding_bag(weight, indices, offs, psw, m, pad,
                                             bounds_code(bounds_policy), fixed, output_dtype)
    return out


def embedding_bag_batched(weights: Sequence[torch.Tensor], indices: torch.Tensor,
                          offsets: Optional[torch.Tensor], mode: str = "sum",
                          per_sample_weights: Optional[torch.Tensor] = None,
                          padding_idx: Optional[int] = None,
                          output_dtype: Optional[torch.dtype] = None,
                          bounds_policy: str = "error",
                          fixed_bag_size: int = 0) -> torch.Tensor:
    """Pooled lookup into T tables at once. indices are table-major, offsets
    [T * B + 1] (or None with fixed_bag_size); returns [B, sum of dims]."""
    if per_sample_weights is not None:
        per_sample_weights = per_sample_weights.to(torch.float32)
    out, _ = torch.ops.spembed.embedding_bag_batched(
        list(weights), indices, offsets, per_sample_weights, mode_code(mode),
        -1 if padding_idx is None else padding_idx, bounds_code(bounds_policy), fixed_bag_size,
        output_dtype)
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
    (float32, not differentiable). Empty or fully masked rows give O = 0."""
    if scale is None:
        scale = 0.0  # the library's 1 / sqrt(head_dim)
    elif not math.isfinite(scale) or scale == 0.0:
        raise ValueError(f"spembed.varlen_attention: scale must be finite and non-zero, got {scale}")
    left, right = (-1, -1) if window is None else window
    out, lse = torch.ops.spembed.varlen_attention(
        q, k, v, cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), causal,
        float(scale), int(left), int(right), int(max_seqlen_q), int(max_seqlen_k))
    return (out, lse) if return_lse else out


def _padding(padding_idx: Optional[int], rows: int) -> int:
    if padding_idx is None:
        return -1
    if not -rows <= padding_idx < rows:
        raise ValueError(f"spembed: padding_idx {padding_idx} must be within [-{rows}, {rows})")
    return padding_idx + rows if padding_idx < 0 else padding_idx
