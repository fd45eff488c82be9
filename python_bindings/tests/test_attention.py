"""spembed.ops.varlen_attention against torch's scaled_dot_product_attention
(math backend, float64) run sequence by sequence, with the bottom-right
causal / window mask of spembed.h written as an explicit boolean mask.
The library's CPU path computes in float64 and rounds once to the output
dtype, so O is within 2 u_dtype * max|v| of the reference built from the
same (rounded) inputs; gradients, sums of up to Lk terms, within
(Lk + 2) u_dtype * max|ref| per tensor."""
import math

import pytest
import torch
import torch.nn.functional as F

import spembed
from conftest import DEVICES, UNIT_ROUNDOFF

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cu(lens, device):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32,
                        device=device)


def _visible(lq, lk, causal, window):
    i = torch.arange(lq)[:, None]
    j = torch.arange(lk)[None, :]
    shift = lk - lq
    ok = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        ok &= j <= i + shift
    if window is not None:
        left, right = window
        if left >= 0:
            ok &= j >= i + shift - left
        if right >= 0:
            ok &= j <= i + shift + right
    return ok


def reference(q, k, v, lens_q, lens_k, causal, scale, window):
    """Per-sequence float64 SDPA (math); rows that see no key give 0."""
    heads, kv_heads = q.shape[1], k.shape[1]
    outs, sq, sk = [], 0, 0
    for lq, lk in zip(lens_q, lens_k):
        qs, ks, vs = q[sq:sq + lq], k[sk:sk + lk], v[sk:sk + lk]
        sq, sk = sq + lq, sk + lk
        if lq == 0:
            continue
        if lk == 0:
            outs.append(qs * 0)
            continue
        rep = heads // kv_heads
        ks = ks.repeat_interleave(rep, 1)
        vs = vs.repeat_interleave(rep, 1)
        mask = _visible(lq, lk, causal, window)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            o = F.scaled_dot_product_attention(qs.transpose(0, 1), ks.transpose(0, 1),
                                               vs.transpose(0, 1), attn_mask=mask, scale=scale)
        o = o.transpose(0, 1)
        o = torch.where(mask.any(1)[:, None, None], o, torch.zeros_like(o))
        outs.append(o)
    return torch.cat(outs) if outs else q * 0


CASES = {
    "self": ((5, 0, 1, 9), (5, 0, 1, 9)),
    "target": ((2, 3, 0, 4), (7, 0, 5, 4)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mask", ["none", "causal", "window"])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(8, 4, 2), (3, 2, 2), (33, 2, 1)],
                         ids=["d8_gqa", "d3", "d33_mqa"])
def test_matches_sdpa(head_dim, heads, kv_heads, mask, case, dtype, device):
    lens_q, lens_k = CASES[case]
    causal = mask == "causal"
    window = (2, 1) if mask == "window" else None
    tq, tk = sum(lens_q), sum(lens_k)
    q = (torch.rand(tq, heads, head_dim) * 2 - 1).to(dtype)
    k = (torch.rand(tk, kv_heads, head_dim) * 2 - 1).to(dtype)
    v = (torch.rand(tk, kv_heads, head_dim) * 2 - 1).to(dtype)
    qd, kd, vd = (t.clone().to(device).requires_grad_() for t in (q, k, v))
    out, lse = spembed.ops.varlen_attention(qd, kd, vd, _cu(lens_q, device), _cu(lens_k, device),
                                            causal=causal, window=window, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (heads, tq)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    scale = 1.0 / math.sqrt(head_dim)
    ref = reference(q64, k64, v64, lens_q, lens_k, causal, scale, window)
    u = UNIT_ROUNDOFF[dtype]
    torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=0,
                               atol=2 * u * float(v.abs().max()))
    assert torch.isfinite(out).all()

    go = (torch.rand(tq, heads, head_dim) * 2 - 1).to(dtype)
    out.backward(go.to(device))
    ref.backward(go.double())
    lk_max = max(lens_k)
    for got, want, name in ((qd.grad, q64.grad, "dq"), (kd.grad, k64.grad, "dk"),
                            (vd.grad, v64.grad, "dv")):
        assert torch.isfinite(got).all(), name
        tol = (lk_max + max(lens_q) + 2) * u * max(float(want.abs().max()), 1.0)
        torch.testing.assert_close(got.double().cpu(), want, rtol=0, atol=tol, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_masked_rows_give_zeros(device):
    # Sequence 0 has queries but no keys; in sequence 1 a window of (0, 0)
    # with 3 queries against 1 key hides the key from the first two queries.
    q = torch.randn(5, 2, 4, device=device, requires_grad=True)
    k = torch.randn(1, 2, 4, device=device, requires_grad=True)
    v = torch.randn(1, 2, 4, device=device, requires_grad=True)
    cu_q = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 0, 1], dtype=torch.int32, device=device)
    out, lse = spembed.ops.varlen_attention(q, k, v, cu_q, cu_k, window=(0, 0), return_lse=True)
    assert torch.equal(out[:4], torch.zeros_like(out[:4]))
    assert torch.isneginf(lse[:, :4]).all()
    torch.testing.assert_close(out[4], v[0], rtol=0, atol=0)
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q.grad))
    assert torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_lse_is_not_differentiable(device):
    """The backward has no LSE term, so the LSE is marked non-differentiable:
    requires_grad is False (also under torch.compile) and a loss through the
    LSE alone raises instead of silently getting no gradient."""
    q = torch.randn(5, 2, 8, device=device, requires_grad=True)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32, device=device)
    out, lse = spembed.ops.varlen_attention(q, q, q, cu, cu, causal=True, return_lse=True)
    assert out.requires_grad and not lse.requires_grad and lse.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        lse.sum().backward()
    (out.sum() + lse.sum()).backward()  # O's gradient alone, as documented
    g = q.grad.clone()
    q.grad = None
    spembed.ops.varlen_attention(q, q, q, cu, cu, causal=True).sum().backward()
    torch.testing.assert_close(q.grad, g, rtol=0, atol=0)
    torch._dynamo.reset()
    f = torch.compile(lambda x: spembed.ops.varlen_attention(x, x, x, cu, cu, return_lse=True),
                      fullgraph=True, backend="aot_eager")
    out, lse = f(q)
    assert out.requires_grad and not lse.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_sasrec_block_runs_and_backprops(device):
    block = spembed.nn.SASRecBlock(16, 4, device=device)
    cu = torch.tensor([0, 4, 4, 11], dtype=torch.int32, device=device)
    x = torch.randn(11, 16, device=device, requires_grad=True)
    y = block(x, cu)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    # Causality: the output of a sequence's first token ignores later tokens.
    x2 = x.detach().clone()
    x2[5:] += 1.0
    torch.testing.assert_close(block(x2, cu)[:5], y[:5].detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_attention_inputs(device):
    q = torch.randn(4, 2, 8, device=device)
    k = torch.randn(4, 2, 8, device=device)
    cu = torch.tensor([0, 4], dtype=torch.int32, device=device)
    bad = torch.tensor([0, 5], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="cu_seqlens"):
        spembed.ops.varlen_attention(q, k, k, bad, cu)
    with pytest.raises(ValueError):
        spembed.ops.varlen_attention(q, torch.randn(4, 3, 8, device=device),
                                     torch.randn(4, 3, 8, device=device), cu, cu)
    with pytest.raises(ValueError, match="scale"):
        spembed.ops.varlen_attention(q, k, k, cu, cu, scale=float("nan"))
    with pytest.raises(ValueError):
        spembed.ops.varlen_attention(q.double(), k.double(), k.double(), cu, cu)
