"""Fake (meta) kernels of torch.ops.spembed.*: output shapes and dtypes only,
so that torch.compile and FakeTensor tracing can run the ops symbolically.
The one data-dependent size, the number U of unique rows of the sparse
backward, is an unbacked symbolic size from ctx.new_dynamic_size(), as
torch.library documents for data-dependent output shapes."""
import torch

from ._enums import Pooling


def _bags(indices, offsets, pooling, fixed_bag_size, num_tables=1):
    if pooling == Pooling.NONE:
        return indices.shape[0]
    if fixed_bag_size > 0:
        return indices.shape[0] // (fixed_bag_size * num_tables)
    torch._check(offsets is not None, lambda: "spembed: offsets are required")
    return (offsets.shape[0] - 1) // num_tables



def _acc(dtype):
    # The core's accumulation dtype (spembed.ops.acc_dtype).
    return torch.float64 if dtype == torch.float64 else torch.float32

@torch.library.register_fake("spembed::embedding_bag")
def _embedding_bag(weight, indices, offsets, per_sample_weights, pooling, padding_idx,
                   bounds_policy, fixed_bag_size, output_dtype=None, scale_grad_by_freq=0):
    bags = _bags(indices, offsets, pooling, fixed_bag_size)
    out = weight.new_empty((bags, weight.shape[1]),
                           dtype=output_dtype if output_dtype is not None else weight.dtype)
    argmax = indices.new_empty((bags, weight.shape[1]) if pooling == Pooling.MAX else (0,))
    return out, argmax


@torch.library.register_fake("spembed::embedding_bag_backward")
def _embedding_bag_backward(grad_output, weight, indices, offsets, per_sample_weights, argmax,
                            pooling, padding_idx, bounds_policy, fixed_bag_size, deterministic,
                            weight_grad, per_sample_weights_grad, scale_grad_by_freq=0):
    gw = weight.new_empty(weight.shape if weight_grad else (0,))
    gp = weight.new_empty((indices.shape[0],) if per_sample_weights_grad else (0,),
                          dtype=_acc(weight.dtype))
    return gw, gp


@torch.library.register_fake("spembed::embedding_bag_backward_sparse")
def _embedding_bag_backward_sparse(grad_output, weight, indices, offsets, per_sample_weights,
                                   argmax, pooling, padding_idx, bounds_policy, fixed_bag_size,
                                   scale_grad_by_freq=0):
    ctx = torch.library.get_ctx()
    u = ctx.new_dynamic_size(min=0, max=indices.shape[0])
    return indices.new_empty((u,)), weight.new_empty((u, weight.shape[1]))


@torch.library.register_fake("spembed::embedding_bag_fused_step")
def _embedding_bag_fused_step(*args):
    return None


@torch.library.register_fake("spembed::embedding_renorm_")
def _embedding_renorm_(weight, indices, max_norm, norm_type, bounds_policy):
    return None  # mutates weight in place; no outputs


@torch.library.register_fake("spembed::embedding_bag_batched")
def _embedding_bag_batched(weights, indices, offsets, per_sample_weights, pooling, padding_idx,
                           bounds_policy, fixed_bag_size, output_dtype=None,
                           scale_grad_by_freq=0):
    b = _bags(indices, offsets, pooling, fixed_bag_size, len(weights))
    total = sum(w.shape[1] for w in weights)
    out = weights[0].new_empty(
        (b, total), dtype=output_dtype if output_dtype is not None else weights[0].dtype)
    argmax = indices.new_empty((b, total) if pooling == Pooling.MAX else (0,))
    return out, argmax


@torch.library.register_fake("spembed::embedding_bag_batched_backward")
def _embedding_bag_batched_backward(grad_output, weights, indices, offsets, per_sample_weights,
                                    argmax, pooling, padding_idx, bounds_policy, fixed_bag_size,
                                    deterministic, weight_grad, per_sample_weights_grad,
                                    scale_grad_by_freq=0):
    grads = [w.new_empty(w.shape) for w in weights] if weight_grad else []
    gp = weights[0].new_empty((indices.shape[0],) if per_sample_weights_grad else (0,),
                              dtype=_acc(weights[0].dtype))
    return grads, gp


@torch.library.register_fake("spembed::embedding_bag_batched_fused_step")
def _embedding_bag_batched_fused_step(*args):
    return None


@torch.library.register_fake("spembed::varlen_attention")
def _varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=False, scale=0.0,
                      window_left=-1, window_right=-1, max_seqlen_q=0, max_seqlen_k=0):
    out = q.new_empty(q.shape)
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("spembed::varlen_attention_backward")
def _varlen_attention_backward(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal,
                               scale, window_left, window_right, deterministic=True):
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape)


@torch.library.register_fake("spembed::to_huge_pages")
def _to_huge_pages(src):
    return src.new_empty(src.shape)
