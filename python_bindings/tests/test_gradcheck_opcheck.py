"""torch.autograd.gradcheck on every differentiable op and
torch.library.opcheck on every op.

gradcheck runs the embedding bag ops in float64 (float64 tables accumulate
in float64, as gradcheck expects) and in float32 (the accumulation of the
float32 / float16 / bfloat16 tables); attention has no float64 kernel and
runs in float32. The step and tolerance follow from the numerics:
  * embedding bag: the output is linear in each table entry and in each
    per-sample weight, so a central difference is exact up to rounding. A
    forward value is a float32 sum of at most L = 4 products of magnitude
    <= 1, off by at most (L + 2) u32 * L; the difference quotient therefore
    errs by at most (L + 2) * L * u32 / eps = 6 * 4 * 6e-8 / 1e-2 = 1.4e-4.
    atol = rtol = 1e-3 leaves a 7x margin. In float64 with eps = 1e-6 the
    bound is 6 * 4 * 1.1e-16 / 1e-6 = 2.7e-9: atol = rtol = 1e-7. Max
    pooling is piecewise linear; the table's values are 1/8 apart (> 2 eps),
    so no perturbation changes an argmax.
  * attention: the CPU path computes in float64 and rounds O to float32
    (error u32 |O| <= 6e-8); with eps = 1e-3 the quotient's rounding error
    is <= 6e-5 and its truncation error eps^2 / 6 * |f'''| ~ 1e-6 for
    inputs in [-1, 1]; atol = rtol = 1e-3 again leaves a margin.
"""
import warnings

import pytest
import torch

import spembed
from conftest import DEVICES
from helpers import distinct_table

ops = torch.ops.spembed
# (eps, tolerance) of the embedding bag gradchecks per dtype.
EB_STEP = {torch.float32: (1e-2, 1e-3), torch.float64: (1e-6, 1e-7)}
EB_DTYPES = [torch.float64, torch.float32]
ATT_EPS, ATT_TOL = 1e-3, 1e-3


def _gradcheck(fn, inputs, eps, tol):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*double precision.*")
        assert torch.autograd.gradcheck(fn, inputs, eps=eps, atol=tol, rtol=tol,
                                        nondet_tol=0.0)


def _small_lookup(device, index_dtype=torch.int64):
    ids = torch.tensor([0, 3, 3, 5, 1, 7, 2, 6], dtype=index_dtype, device=device)
    offsets = torch.tensor([0, 3, 3, 7, 8], dtype=index_dtype, device=device)
    return ids, offsets


@pytest.mark.parametrize("dtype", EB_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["sum", "mean", "max", "none"])
def test_gradcheck_embedding_bag(mode, device, dtype):
    ids, offsets = _small_lookup(device)
    weight = distinct_table(8, 3, dtype, device).requires_grad_()
    psw = ((torch.rand(ids.numel(), device=device, dtype=dtype) + 0.5).requires_grad_()
           if mode in (0, 3) else None)
    offs = None if mode == 3 else offsets

    def fn(w, p=None):
        return ops.embedding_bag(w, ids, offs, p, mode, 1, 0, 0)[0]

    _gradcheck(fn, (weight,) if psw is None else (weight, psw), *EB_STEP[dtype])


@pytest.mark.parametrize("dtype", EB_DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [0, 1, 2], ids=["sum", "mean", "max"])
def test_gradcheck_embedding_bag_batched(mode, device, dtype):
    ids = torch.tensor([0, 3, 3, 5, 1, 2, 1, 0, 0], device=device)
    offsets = torch.tensor([0, 2, 4, 5, 9], device=device)  # 2 tables x 2 bags + 1
    w0 = distinct_table(8, 3, dtype, device).requires_grad_()
    w1 = distinct_table(4, 2, dtype, device).requires_grad_()
    psw = ((torch.rand(ids.numel(), device=device, dtype=dtype) + 0.5).requires_grad_()
           if mode == 0 else None)

    def fn(a, b, p=None):
        return ops.embedding_bag_batched([a, b], ids, offsets, p, mode, -1, 0, 0)[0]

    _gradcheck(fn, (w0, w1) if psw is None else (w0, w1, psw), *EB_STEP[dtype])


def _attention_inputs(device, heads=2, kv_heads=1, head_dim=5, lens_q=(3, 0, 4),
                      lens_k=(3, 2, 5)):
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32,
                        device=device)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32,
                        device=device)
    q = (torch.rand(int(cu_q[-1]), heads, head_dim, device=device) * 2 - 1).requires_grad_()
    k = (torch.rand(int(cu_k[-1]), kv_heads, head_dim, device=device) * 2 - 1).requires_grad_()
    v = (torch.rand(int(cu_k[-1]), kv_heads, head_dim, device=device) * 2 - 1).requires_grad_()
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradcheck_varlen_attention(causal, device):
    q, k, v, cu_q, cu_k = _attention_inputs(device)

    def fn(q, k, v):
        return ops.varlen_attention(q, k, v, cu_q, cu_k, causal, 0.0, -1, -1, 0, 0)[0]

    _gradcheck(fn, (q, k, v), ATT_EPS, ATT_TOL)


# ---- opcheck ----------------------------------------------------------------------------

def _opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["sum", "mean", "max", "none"])
def test_opcheck_embedding_bag_and_backward(mode, device):
    ids, offsets = _small_lookup(device, torch.int32)
    offs = None if mode == 3 else offsets
    weight = distinct_table(8, 3, torch.float32, device).requires_grad_()
    psw = torch.rand(ids.numel(), device=device) if mode in (0, 3) else None
    _opcheck(ops.embedding_bag.default, (weight, ids, offs, psw, mode, 1, 0, 0, None))
    out, argmax = ops.embedding_bag(weight.detach(), ids, offs, psw, mode, 1, 0, 0)
    go = torch.randn_like(out)
    _opcheck(ops.embedding_bag_backward.default,
             (go, weight.detach(), ids, offs, psw, argmax, mode, 1, 0, 0, True, True,
              psw is not None))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_embedding_bag_backward_sparse(device):
    ids, offsets = _small_lookup(device)
    weight = torch.randn(8, 3, device=device)
    go = torch.randn(4, 3, device=device)
    # A data-dependent output size: the fake kernel returns an unbacked size,
    # which AOT dispatch with dynamic shapes cannot check against a real run.
    torch.library.opcheck(ops.embedding_bag_backward_sparse.default,
                          (go, weight, ids, offsets, None, None, 0, -1, 0, 0),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", [0, 1, 2, 3], ids=["sgd", "adagrad", "rowwise", "adam"])
def test_opcheck_fused_steps(optimizer, device):
    ids, offsets = _small_lookup(device)
    weight = torch.randn(8, 3, device=device)
    s1 = (torch.zeros(8, device=device) if optimizer == 2 else torch.zeros(8, 3, device=device)
          ) if optimizer else None
    s2 = torch.zeros(8, 3, device=device) if optimizer == 3 else None
    go = torch.randn(4, 3, device=device)
    hp = (optimizer, 0.1, 1e-8, 0.9, 0.999, 0.0, 1, 0, False)
    _opcheck(ops.embedding_bag_fused_step.default,
             (weight, s1, s2, go, ids, offsets, None, None, 0, -1, 0, 0, *hp))
    w1 = torch.randn(5, 2, device=device)
    bids = torch.tensor([0, 3, 4, 1, 2, 2], device=device)
    boffs = torch.tensor([0, 2, 3, 5, 6], device=device)
    st1 = [] if s1 is None else [s1, torch.zeros(5, device=device) if optimizer == 2
                                 else torch.zeros(5, 2, device=device)]
    st2 = [] if s2 is None else [s2, torch.zeros(5, 2, device=device)]
    _opcheck(ops.embedding_bag_batched_fused_step.default,
             ([weight, w1], st1, st2, torch.randn(2, 5, device=device), bids, boffs, None, None,
              0, -1, 0, 0, *hp))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [0, 1, 2], ids=["sum", "mean", "max"])
def test_opcheck_batched(mode, device):
    w0 = distinct_table(8, 3, torch.float32, device).requires_grad_()
    w1 = distinct_table(5, 2, torch.float32, device).requires_grad_()
    ids = torch.tensor([0, 3, 4, 1, 2, 2], device=device)
    offs = torch.tensor([0, 2, 3, 5, 6], device=device)
    _opcheck(ops.embedding_bag_batched.default, ([w0, w1], ids, offs, None, mode, -1, 0, 0, None))
    out, argmax = ops.embedding_bag_batched([w0.detach(), w1.detach()], ids, offs, None, mode,
                                            -1, 0, 0)
    _opcheck(ops.embedding_bag_batched_backward.default,
             (torch.randn_like(out), [w0.detach(), w1.detach()], ids, offs, None, argmax, mode,
              -1, 0, 0, True, True, False))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_varlen_attention(device):
    q, k, v, cu_q, cu_k = _attention_inputs(device)
    _opcheck(ops.varlen_attention.default, (q, k, v, cu_q, cu_k, True, 0.0, -1, -1, 0, 0))
    out, lse = ops.varlen_attention(q.detach(), k.detach(), v.detach(), cu_q, cu_k, True, 0.0,
                                    -1, -1, 0, 0)
    _opcheck(ops.varlen_attention_backward.default,
             (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, cu_q, cu_k,
              True, 0.0, -1, -1, True))
