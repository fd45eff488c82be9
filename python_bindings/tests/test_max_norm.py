"""max_norm / norm_type against torch: before the lookup, every distinct row
named by an id of the input (padding rows included) whose norm_type-norm
exceeds max_norm is scaled in place by max_norm / (norm + 1e-7)
(torch.embedding_renorm_, what F.embedding_bag's max_norm does), through
the library's spembed_embedding_renorm (torch.ops.spembed.embedding_renorm_).

spembed runs on the test's device, torch in float32 on the CPU on the same
(dtype-rounded) values. Bounds, with u_w the unit roundoff of the table's
dtype, u32 float32's and D the row length: a row's scale comes from a
float32 norm over D entries on either side (relative error within
(D + 2) u32 each), and spembed stores the renormalised row in the table's
dtype (one rounding, u_w), so

  renormalised weight:  |spembed - torch|  <=  (u_w + 2 (D + 2) u32) |w|
  pooled output:        |spembed - torch|  <=  u_out |ref| + (L + 2) u32 mag
                                               + (u_w + 2 (D + 2) u32) mag

(mag: the same pooling over absolute values, L: the ids a bag sums). Rows
no id names, and rows within max_norm, must be left bitwise unchanged.
Covered: fp32 / fp16 / bf16 tables, norm_type 1, 2, 3 (and 0.5 on the raw
op), modes sum / mean / max, per_sample_weights, repeated ids, padding_idx,
the gradient after the renormalisation (dense and sparse), nn.EmbeddingBag
and from_pretrained against torch's modules, 2-D, nested and
include_last_offset inputs, a transposed weight, bad max_norm / norm_type,
out-of-range ids (both bounds policies), opcheck of the op, torch.compile,
and (with a GPU) CUDA against the CPU, bitwise for norm_type 1 and 2.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import spembed
from conftest import DEVICES, UNIT_ROUNDOFF
from spembed.errors import IndexOutOfRangeError, InvalidArgumentError

ops = torch.ops.spembed
U32 = UNIT_ROUNDOFF[torch.float32]
ROWS, DIM = 12, 7
# Ids repeated within a bag (1, 3) and across bags (1, 2, 3); an empty bag;
# rows 4, 6, 8, 10, 11 are named by no id.
IDS = [1, 1, 3, 2, 1, 5, 3, 3, 0, 7, 2, 1, 7, 9, 3]
OFFSETS = [0, 4, 4, 9, 12]  # torch's form: bag starts
UNNAMED = [4, 6, 8, 10, 11]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CUDA_ONLY = [d for d in DEVICES if not isinstance(d, str)]


def _name(x):
    return str(x).replace("torch.", "")


def _table(dtype, scale=1.0):
    """Normal values in `dtype`, held in float32, with row norms spread
    around 1 * scale (so some rows exceed a max_norm near the middle)."""
    w = torch.randn(ROWS, DIM) * torch.linspace(0.2, 2.0, ROWS)[:, None] * scale
    return w.to(dtype).float()


def _norms(w, p):
    return w.double().abs().pow(p).sum(1).pow(1.0 / p)


def _max_norm_between(w, p, rows):
    """A max_norm halfway between two adjacent norms of the named rows, so
    that no row is within rounding of it (both sides then renormalise the
    same rows)."""
    n = _norms(w[rows], p).sort().values
    k = n.numel() // 2
    return float((n[k - 1] + n[k]) / 2)


def _scale_bound(w_ref, dtype):
    return (UNIT_ROUNDOFF[dtype] + 2 * (DIM + 2) * U32) * w_ref.double().abs()


def _assert_within(got, ref, bound, what):
    err = (got.detach().double().cpu() - ref.detach().double().cpu()).abs()
    bound = bound.cpu() + torch.finfo(torch.float32).tiny
    assert bool((err <= bound).all()), (
        f"{what}: max error {float(err.max()):.3g}, worst excess {float((err - bound).max()):.3g}")


def _torch_bag(ids, w, offsets, **kw):
    return F.embedding_bag(ids.cpu().long(), w, None if offsets is None else offsets.cpu().long(),
                           **kw)


# ---- the functional against torch --------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("mode,with_psw", [("sum", False), ("sum", True), ("mean", False),
                                           ("max", False)],
                         ids=["sum", "sum_psw", "mean", "max"])
def test_functional_matches_torch(mode, with_psw, dtype, norm_type, device):
    base = _table(dtype)
    max_norm = _max_norm_between(base, norm_type, sorted(set(IDS)))
    ids, offsets = torch.tensor(IDS), torch.tensor(OFFSETS)
    psw = (torch.rand(len(IDS)) + 0.5) if with_psw else None
    go = torch.linspace(-1.5, 2.0, len(OFFSETS) * DIM).view(len(OFFSETS), DIM)

    w_ref = base.clone().requires_grad_()
    ref = _torch_bag(ids, w_ref, offsets, max_norm=max_norm, norm_type=norm_type, mode=mode,
                     per_sample_weights=psw)
    (ref * go).sum().backward()

    w = base.to(dtype=dtype, device=device, copy=True).requires_grad_()
    out = spembed.ops.embedding_bag(ids.to(device), w, offsets.to(device), max_norm=max_norm,
                                    norm_type=norm_type, mode=mode,
                                    per_sample_weights=None if psw is None else psw.to(device))
    (out.float() * go.to(device)).sum().backward()
    assert out.dtype == dtype and w.dtype == dtype

    # The weight, in place: renormalised rows as torch's; the rest untouched.
    w_after = w.detach().float().cpu()
    renormed = _norms(base, norm_type) > max_norm
    named = torch.zeros(ROWS, dtype=torch.bool)
    named[sorted(set(IDS))] = True
    assert bool(renormed[named].any()) and bool((~renormed[named]).any())
    assert torch.equal(w_after[~(named & renormed)], base[~(named & renormed)])
    assert torch.equal(w_ref.detach()[UNNAMED], base[UNNAMED])
    _assert_within(w_after, w_ref.detach(), _scale_bound(w_ref.detach(), dtype), "weight")
    assert bool((_norms(w_after[named], norm_type) <= max_norm * (1 + 4 * UNIT_ROUNDOFF[dtype])
                 ).all())

    # The output, from the renormalised rows.
    terms = max(b - a for a, b in zip(OFFSETS, OFFSETS[1:] + [len(IDS)]))
    mag = _torch_bag(ids, w_ref.detach().abs(), offsets, mode=mode,
                     per_sample_weights=None if psw is None else psw.abs())
    bound = (UNIT_ROUNDOFF[dtype] * ref.detach().double().abs()
             + ((terms + 2) * U32 + UNIT_ROUNDOFF[dtype] + 2 * (DIM + 2) * U32)
             * mag.double())
    _assert_within(out, ref, bound, "output")

    # The gradient: the lookup's, on the renormalised table (for max, the
    # arg-max of low-precision rows may differ from float32 ones: fp32 only).
    # Bound: grad_output rounded to the output's dtype (u_w |go| per term),
    # a float32 sum of at most len(IDS) terms on either side, one rounding to
    # the table's dtype; magnitudes from |go| and |psw| (w_mag.grad).
    if mode != "max" or dtype == torch.float32:
        w_mag = w_ref.detach().clone().requires_grad_()
        (_torch_bag(ids, w_mag, offsets, mode=mode,
                    per_sample_weights=None if psw is None else psw.abs()) * go.abs()
         ).sum().backward()
        grad_bound = (UNIT_ROUNDOFF[dtype] * w_ref.grad.double().abs()
                      + (UNIT_ROUNDOFF[dtype] + 2 * (len(IDS) + 2) * U32)
                      * w_mag.grad.double())
        _assert_within(w.grad, w_ref.grad, grad_bound, "weight.grad")


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_ids_renormalise_once(device):
    """A row named many times is scaled once (to max_norm), not once per id."""
    w = torch.zeros(4, 2, device=device)
    w[3] = torch.tensor([3.0, 4.0])  # norm 5
    w[1] = torch.tensor([0.3, 0.4])  # norm 0.5: within max_norm, untouched
    ids = torch.tensor([3, 3, 1, 3, 3, 3], device=device)
    out = spembed.ops.embedding_bag(ids, w, torch.tensor([0, 2], device=device), max_norm=1.0,
                                    mode="sum")
    scale = 1.0 / (5.0 + 1e-7)
    torch.testing.assert_close(w[3].cpu(), torch.tensor([3.0, 4.0]) * scale, rtol=4 * U32, atol=0)
    assert torch.equal(w[1].cpu(), torch.tensor([0.3, 0.4]))
    assert torch.equal(w[0].cpu(), torch.zeros(2)) and torch.equal(w[2].cpu(), torch.zeros(2))
    ref_w = torch.zeros(4, 2)
    ref_w[3], ref_w[1] = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    ref = F.embedding_bag(ids.cpu(), ref_w, torch.tensor([0, 2]), max_norm=1.0, mode="sum")
    torch.testing.assert_close(out.cpu(), ref, rtol=8 * U32, atol=8 * U32)
    torch.testing.assert_close(w.cpu(), ref_w, rtol=4 * U32, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_padding_row_is_renormalised(mode, device):
    """As in torch, the padding row is renormalised when an id names it,
    though the lookup leaves it out (from_pretrained keeps a non-zero
    padding row)."""
    base = _table(torch.float32, scale=3.0)
    pad = 3
    ids = torch.tensor([[1, 3, 2], [3, 3, 0], [5, 3, 3]])
    ref_bag = torch.nn.EmbeddingBag.from_pretrained(base.clone(), freeze=False, max_norm=1.0,
                                                    mode=mode, padding_idx=pad)
    bag = spembed.nn.EmbeddingBag.from_pretrained(base.clone().to(device), freeze=False,
                                                  max_norm=1.0, mode=mode, padding_idx=pad)
    ref = ref_bag(ids)
    out = bag(ids.to(device))
    assert float(_norms(base[pad:pad + 1], 2.0)) > 1.0
    assert not torch.equal(bag.weight.detach()[pad].cpu(), base[pad])
    _assert_within(bag.weight.detach(), ref_bag.weight.detach(),
                   _scale_bound(ref_bag.weight.detach(), torch.float32), "weight")
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-5)
    ref.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(bag.weight.grad.cpu(), ref_bag.weight.grad, rtol=1e-6, atol=1e-6)


# ---- the modules ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0])
def test_module_matches_torch_over_steps(norm_type, device):
    """nn.EmbeddingBag(max_norm, norm_type) against torch's module over three
    SGD steps: the weight is renormalised by every forward and updated in
    between; attributes and repr as torch's."""
    base = _table(torch.float32, scale=2.0)
    max_norm = _max_norm_between(base, norm_type, sorted(set(IDS)))
    kw = dict(max_norm=max_norm, norm_type=norm_type, mode="mean")
    ref_bag = torch.nn.EmbeddingBag(ROWS, DIM, _weight=base.clone(), **kw)
    bag = spembed.nn.EmbeddingBag(ROWS, DIM, _weight=base.clone().to(device), **kw)
    assert (bag.max_norm, bag.norm_type) == (ref_bag.max_norm, ref_bag.norm_type)
    assert bag.extra_repr() == ref_bag.extra_repr()
    ids, offsets = torch.tensor(IDS), torch.tensor(OFFSETS)
    opt_ref = torch.optim.SGD(ref_bag.parameters(), lr=0.5)
    opt = torch.optim.SGD(bag.parameters(), lr=0.5)
    for step in range(3):
        ref = ref_bag(ids, offsets)
        out = bag(ids.to(device), offsets.to(device))
        torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"step {step}: {m}")
        ref.square().sum().backward()
        out.square().sum().backward()
        torch.testing.assert_close(bag.weight.grad.cpu(), ref_bag.weight.grad, rtol=1e-5,
                                   atol=1e-5, msg=lambda m: f"step {step}: {m}")
        opt_ref.step()
        opt.step()
        opt_ref.zero_grad()
        opt.zero_grad()
    torch.testing.assert_close(bag.weight.detach().cpu(), ref_bag.weight.detach(), rtol=1e-5,
                               atol=1e-5)


def test_module_repr_and_from_pretrained_options():
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    for kw in (dict(max_norm=2.0), dict(max_norm=2.0, norm_type=1.0), dict(norm_type=3.0)):
        ours = spembed.nn.EmbeddingBag.from_pretrained(a.clone(), **kw)
        theirs = torch.nn.EmbeddingBag.from_pretrained(a.clone(), **kw)
        assert ours.extra_repr() == theirs.extra_repr(), kw
        assert (ours.max_norm, ours.norm_type) == (theirs.max_norm, theirs.norm_type)


# ---- input forms and layouts --------------------------------------------------------------

def _renormalised_like_torch(run_ours, run_torch, base, what):
    w_ref = base.clone()
    run_torch(w_ref)
    w = base.clone()
    run_ours(w)
    _assert_within(w, w_ref, _scale_bound(w_ref, torch.float32), what)
    return w


def test_input_forms():
    """The ids of 2-D, nested and include_last_offset inputs (ids after
    offsets[-1] included, as torch renormalises every id of the input) and
    an empty input."""
    base = _table(torch.float32, scale=3.0)
    two_d = torch.tensor([[1, 2, 2], [7, 0, 1]])
    _renormalised_like_torch(lambda w: spembed.ops.embedding_bag(two_d, w, max_norm=1.0),
                             lambda w: F.embedding_bag(two_d, w, max_norm=1.0), base, "2-D")
    nt = torch.nested.nested_tensor([torch.tensor([1, 2, 3]), torch.tensor([9]),
                                     torch.tensor([5, 5])], layout=torch.jagged)
    _renormalised_like_torch(
        lambda w: spembed.ops.embedding_bag(nt, w, max_norm=1.5, mode="sum"),
        lambda w: F.embedding_bag(nt, w, max_norm=1.5, mode="sum"), base, "nested")
    ids, offs = torch.tensor([1, 2, 3, 9, 11]), torch.tensor([0, 2, 3])
    w = _renormalised_like_torch(
        lambda w: spembed.ops.embedding_bag(ids, w, offs, max_norm=1.0, mode="sum",
                                            include_last_offset=True),
        lambda w: F.embedding_bag(ids, w, offs, max_norm=1.0, mode="sum",
                                  include_last_offset=True), base, "include_last_offset")
    assert float(_norms(w[11:12], 2.0)) <= 1.0 + 4 * U32  # named after offsets[-1]
    empty = base.clone()
    out = spembed.ops.embedding_bag(torch.tensor([], dtype=torch.long), empty,
                                    torch.tensor([0, 0]), max_norm=1.0)
    assert out.shape == (2, DIM) and torch.equal(empty, base)


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_weight(device):
    """A weight whose rows are not contiguous (a transposed leaf) is
    renormalised in place too (through a copy), and its gradient is torch's."""
    base = _table(torch.float32, scale=3.0).t().contiguous()  # [DIM, ROWS]
    ids, offsets = torch.tensor(IDS), torch.tensor(OFFSETS)
    leaf_ref = base.clone().requires_grad_()
    ref = F.embedding_bag(ids, leaf_ref.t(), offsets, max_norm=1.0, mode="sum")
    ref.sum().backward()
    leaf = base.clone().to(device).requires_grad_()
    out = spembed.ops.embedding_bag(ids.to(device), leaf.t(), offsets.to(device), max_norm=1.0,
                                    mode="sum")
    out.sum().backward()
    _assert_within(leaf.detach(), leaf_ref.detach(), _scale_bound(leaf_ref.detach(),
                                                                 torch.float32), "weight")
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(leaf.grad.cpu(), leaf_ref.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_gradient(device):
    base = _table(torch.float32, scale=3.0)
    ids, offsets = torch.tensor(IDS), torch.tensor(OFFSETS)
    w_ref = base.clone().requires_grad_()
    F.embedding_bag(ids, w_ref, offsets, max_norm=1.0, mode="sum", sparse=True,
                    padding_idx=2).sum().backward()
    w = base.clone().to(device).requires_grad_()
    spembed.ops.embedding_bag(ids.to(device), w, offsets.to(device), max_norm=1.0, mode="sum",
                              sparse=True, padding_idx=2).sum().backward()
    assert w.grad.is_sparse
    torch.testing.assert_close(w.grad.to_dense().cpu(), w_ref.grad.to_dense())
    _assert_within(w.detach(), w_ref.detach(), _scale_bound(w_ref.detach(), torch.float32),
                   "weight")


# ---- errors -----------------------------------------------------------------------------------

BAD_NORMS = [(0.0, 2.0, "max_norm"), (-1.0, 2.0, "max_norm"), (math.nan, 2.0, "max_norm"),
             (math.inf, 2.0, "max_norm"), (1.0, 0.0, "norm_type"), (1.0, -2.0, "norm_type"),
             (1.0, math.inf, "norm_type"), (1.0, math.nan, "norm_type")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm,norm_type,named", BAD_NORMS,
                         ids=[f"{n}={m if n == 'max_norm' else t}" for m, t, n in BAD_NORMS])
def test_bad_max_norm_or_norm_type(max_norm, norm_type, named, device):
    """max_norm and norm_type must be finite and > 0 (the library's rule;
    torch does not check them): InvalidArgumentError (a ValueError and a
    RuntimeError) naming the argument, the weight left as it was."""
    base = _table(torch.float32, scale=3.0)
    w = base.clone().to(device)
    ids, offsets = torch.tensor(IDS, device=device), torch.tensor(OFFSETS, device=device)
    with pytest.raises(InvalidArgumentError, match=named) as info:
        spembed.ops.embedding_bag(ids, w, offsets, max_norm=max_norm, norm_type=norm_type)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    bag = spembed.nn.EmbeddingBag(ROWS, DIM, max_norm=max_norm, norm_type=norm_type,
                                  _weight=w)
    with pytest.raises(InvalidArgumentError, match=named):
        bag(ids, offsets)
    with pytest.raises(ValueError, match=named):
        ops.embedding_renorm_(w, ids, max_norm, norm_type, 0)
    assert torch.equal(w.cpu(), base)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [ROWS, -1, 1000])
def test_out_of_range_ids(bad, device):
    """bounds_policy 'error': the class the lookup raises without max_norm
    (IndexOutOfRangeError, naming the caller's position), and nothing is
    written, not even the valid rows. 'skip': the bad id is ignored, the
    valid rows are renormalised."""
    base = _table(torch.float32, scale=3.0)
    ids = torch.tensor([1, 2, bad, 5], device=device)
    offsets = torch.tensor([0, 2], device=device)
    w = base.clone().to(device)
    with pytest.raises(IndexOutOfRangeError) as without:
        spembed.ops.embedding_bag(ids, w, offsets)
    with pytest.raises(IndexOutOfRangeError, match=r"input\[2\]") as with_max_norm:
        spembed.ops.embedding_bag(ids, w, offsets, max_norm=1.0)
    assert type(with_max_norm.value) is type(without.value)
    assert isinstance(with_max_norm.value, IndexError)
    assert isinstance(with_max_norm.value, RuntimeError)
    assert torch.equal(w.cpu(), base)
    with pytest.raises(IndexError):
        ops.embedding_renorm_(w, ids, 1.0, 2.0, int(spembed.BoundsPolicy.ERROR))
    assert torch.equal(w.cpu(), base)

    out = spembed.ops.embedding_bag(ids, w, offsets, max_norm=1.0, mode="sum",
                                    bounds_policy="skip")
    w_ref = base.clone()
    valid = torch.tensor([1, 2, 5])
    ref = F.embedding_bag(valid, w_ref, torch.tensor([0, 2]), max_norm=1.0, mode="sum")
    _assert_within(w, w_ref, _scale_bound(w_ref, torch.float32), "weight")
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0])
def test_float64_table_matches_torch(norm_type):
    """float64 tables renormalise in float64 (pow / sqrt in double, as torch's
    kernel), then pool in float64."""
    base = torch.randn(12, 5, dtype=torch.float64) * 2.0
    ids = torch.tensor([1, 3, 3, 9, 0, 1, 11])
    offsets = torch.tensor([0, 3, 5])
    max_norm = _max_norm_between(base, norm_type, [0, 1, 3, 9, 11])
    w, w_ref = base.clone(), base.clone()
    out = spembed.ops.embedding_bag(ids, w, offsets, max_norm=max_norm, norm_type=norm_type)
    ref = F.embedding_bag(ids, w_ref, offsets, max_norm=max_norm, norm_type=norm_type)
    assert out.dtype == torch.float64
    assert not torch.equal(w, base)  # some rows were over max_norm
    torch.testing.assert_close(w, w_ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-15)


# ---- the raw op: torch.embedding_renorm_, opcheck, compile, CUDA --------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=_name)
@pytest.mark.parametrize("norm_type", [0.5, 1.0, 2.0, 3.0])
def test_raw_op_matches_torch_embedding_renorm(norm_type, index_dtype, device):
    base = _table(torch.float32, scale=2.0)
    ids = torch.tensor([[1, 3, 3], [9, 0, 1]], dtype=index_dtype)  # any shape
    max_norm = _max_norm_between(base, norm_type, [0, 1, 3, 9])
    w_ref = base.clone()
    torch.embedding_renorm_(w_ref, ids.long(), max_norm, norm_type)
    w = base.clone().to(device)
    assert ops.embedding_renorm_(w, ids.to(device), max_norm, norm_type, 0) is None
    # powf (norm_type 0.5, 3) errs by a few ulps per entry: within (D + 2) u32.
    _assert_within(w, w_ref, _scale_bound(w_ref, torch.float32), "weight")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=_name)
def test_opcheck_embedding_renorm(index_dtype, device):
    w = _table(torch.float32, scale=3.0).to(device)
    ids = torch.tensor(IDS, dtype=index_dtype, device=device)
    torch.library.opcheck(ops.embedding_renorm_.default, (w.clone(), ids, 1.0, 2.0, 0))
    torch.library.opcheck(ops.embedding_renorm_.default,
                          (w.clone(), ids.view(3, 5), 0.5, 3.0, 0))
    bad = torch.tensor([1, ROWS, -1, 3], dtype=index_dtype, device=device)
    torch.library.opcheck(ops.embedding_renorm_.default, (w.clone(), bad, 1.0, 1.0, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_matches_eager(device):
    """torch.compile(fullgraph=True) of a module with max_norm: the op mutates
    the weight inside the graph (functionalised); output, renormalised weight
    and gradient as in eager mode."""
    base = _table(torch.float32, scale=3.0).to(device)
    ids, offsets = torch.tensor(IDS, device=device), torch.tensor(OFFSETS, device=device)

    def make():
        return spembed.nn.EmbeddingBag.from_pretrained(base.clone(), freeze=False,
                                                       max_norm=1.0, mode="sum")

    eager = make()
    eager(ids, offsets).square().sum().backward()
    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        bag = make()
        f = torch.compile(lambda i, o: bag(i, o).square().sum(), fullgraph=True,
                          backend=backend)
        f(ids, offsets).backward()
        torch.testing.assert_close(bag.weight.detach(), eager.weight.detach(), rtol=0, atol=0)
        torch.testing.assert_close(bag.weight.grad, eager.weight.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0])
def test_cuda_matches_cpu(norm_type, dtype, device):
    """The library sums the norm in the same order on both devices: bitwise
    equal renormalised tables for norm_type 1 and 2 (powf may differ by an
    ulp between the devices for other norm types)."""
    base = _table(dtype, scale=2.0).to(dtype)
    ids = torch.randint(0, ROWS, (200,))
    w_cpu, w_gpu = base.clone(), base.clone().to(device)
    ops.embedding_renorm_(w_cpu, ids, 1.0, norm_type, 0)
    ops.embedding_renorm_(w_gpu, ids.to(device), 1.0, norm_type, 0)
    if norm_type in (1.0, 2.0):
        assert torch.equal(w_gpu.cpu(), w_cpu)
    else:
        _assert_within(w_gpu.float(), w_cpu.float(), _scale_bound(w_cpu.float(), dtype), "weight")
