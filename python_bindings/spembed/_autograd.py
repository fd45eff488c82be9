"""Autograd formulas of the differentiable ops, registered with
torch.library.register_autograd. Each backward is itself a custom op, so
torch.compile traces both directions without graph breaks. Double backward
is not supported."""
import torch

from . import _config

ops = torch.ops.spembed


def _pad(ctx, *grads):
    """One gradient per input the op was called with (defaults left out by
    the caller are not inputs)."""
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))


def _scale_grad_by_freq(inputs):
    """The forward op's last argument, scale_grad_by_freq (the forward
    ignores it; the backward divides each row's gradient by its id count)."""
    return int(inputs[9]) if len(inputs) > 9 else 0


# ---- embedding_bag ------------------------------------------------------------------

def _eb_setup(ctx, inputs, output):
    weight, indices, offsets, psw, mode, padding_idx, bounds_policy, fixed_bag_size = inputs[:8]
    ctx.lookup = (mode, padding_idx, bounds_policy, fixed_bag_size)
    ctx.scale_grad_by_freq = _scale_grad_by_freq(inputs)
    ctx.save_for_backward(weight, indices, offsets, psw, output[1])


def _eb_backward(ctx, grad_output, _grad_argmax):
    weight, indices, offsets, psw, argmax = ctx.saved_tensors
    need_w = ctx.needs_input_grad[0]
    need_p = psw is not None and ctx.needs_input_grad[3]
    gw, gp = ops.embedding_bag_backward(grad_output, weight, indices, offsets, psw, argmax,
                                        *ctx.lookup, _config.deterministic_backward, need_w,
                                        need_p, ctx.scale_grad_by_freq)
    return _pad(ctx, gw if need_w else None, None, None, gp if need_p else None)


torch.library.register_autograd("spembed::embedding_bag", _eb_backward, setup_context=_eb_setup)


# ---- embedding_bag_batched ----------------------------------------------------------

def _ebb_setup(ctx, inputs, output):
    weights, indices, offsets, psw, mode, padding_idx, bounds_policy, fixed_bag_size = inputs[:8]
    ctx.lookup = (mode, padding_idx, bounds_policy, fixed_bag_size)
    ctx.scale_grad_by_freq = _scale_grad_by_freq(inputs)
    ctx.save_for_backward(indices, offsets, psw, output[1], *weights)


def _ebb_backward(ctx, grad_output, _grad_argmax):
    indices, offsets, psw, argmax, *weights = ctx.saved_tensors
    need_ws = ctx.needs_input_grad[0]  # one flag per table
    need_w = any(need_ws)
    need_p = psw is not None and ctx.needs_input_grad[3]
    grads, gp = ops.embedding_bag_batched_backward(
        grad_output, weights, indices, offsets, psw, argmax, *ctx.lookup,
        _config.deterministic_backward, need_w, need_p, ctx.scale_grad_by_freq)
    grads = ([g if need else None for g, need in zip(grads, need_ws)] if need_w
             else [None] * len(weights))
    return _pad(ctx, grads, None, None, gp if need_p else None)


torch.library.register_autograd("spembed::embedding_bag_batched", _ebb_backward,
                                setup_context=_ebb_setup)


# ---- varlen_attention ---------------------------------------------------------------

def _va_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, causal, scale, window_left, window_right = inputs[:9]
    ctx.mask = (causal, scale, window_left, window_right)
    ctx.save_for_backward(q, k, v, cu_q, cu_k, output[0], output[1])
    # The backward has no LSE term: the LSE is marked non-differentiable
    # (requires_grad False), so a loss through it raises instead of getting
    # a silently dropped gradient.
    ctx.mark_non_differentiable(output[1])


def _va_backward(ctx, grad_out, _grad_lse):
    q, k, v, cu_q, cu_k, out, lse = ctx.saved_tensors
    dq, dk, dv = ops.varlen_attention_backward(grad_out, q, k, v, out, lse, cu_q, cu_k,
                                               *ctx.mask, _config.deterministic_backward)
    return _pad(ctx, dq, dk, dv)


torch.library.register_autograd("spembed::varlen_attention", _va_backward,
                                setup_context=_va_setup)
