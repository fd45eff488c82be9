"""spembed.nn.EmbeddingBag against torch.nn.functional.embedding_bag computed
in float64: forward and gradients, every mode, padding_idx,
per_sample_weights, include_last_offset, int32 / int64 ids and
float32 / float16 / bfloat16 tables. Errors are bounded by the rounding of a
float32 accumulation plus one rounding to the output dtype (helpers.sum_bound)."""
import pytest
import torch
import torch.nn.functional as F

import spembed
from conftest import DEVICES, UNIT_ROUNDOFF
from helpers import assert_within, distinct_table, random_bags, reference_bag, sum_bound

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INDEX_DTYPES = [torch.int32, torch.int64]


def _name(x):
    return str(x).replace("torch.", "")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("include_last_offset", [False, True], ids=["offsets", "last_offset"])
@pytest.mark.parametrize("padding_idx", [None, 2], ids=["nopad", "pad2"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=_name)
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_matches_torch(mode, dtype, index_dtype, padding_idx, include_last_offset, device):
    rows, dim, bags = 40, 19, 11
    ids, offsets, max_len = random_bags(bags, rows, 6, index_dtype, device)
    if padding_idx is not None:
        ids[::4] = padding_idx
    weight = distinct_table(rows, dim, dtype, device)
    if padding_idx is not None:
        weight[padding_idx] = 0
    m = spembed.nn.EmbeddingBag(rows, dim, mode=mode, padding_idx=padding_idx,
                                include_last_offset=include_last_offset, _weight=weight.clone())
    offs = offsets if include_last_offset else offsets[:-1]
    out = m(ids, offs)
    assert out.dtype == dtype and out.shape == (bags, dim) and out.device.type == device

    w64 = weight.double().cpu().requires_grad_()
    ref = reference_bag(ids, w64, offsets, mode, None, padding_idx, include_last_offset)
    mag = reference_bag(ids, w64.detach().abs(), offsets, mode, None, padding_idx,
                        include_last_offset)
    assert_within(out, ref, sum_bound(ref, mag, max_len, dtype), "forward")

    go = torch.randn(bags, dim, dtype=torch.float64).to(dtype)
    (out * go.to(device)).sum().backward()
    (ref * go.double()).sum().backward()
    # A row's gradient: at most nnz float32 additions, rounded once to the table dtype.
    g_mag = torch.zeros_like(w64)
    g_mag.index_add_(0, ids.cpu().long(), torch.ones(ids.numel(), dim, dtype=torch.float64)
                     * go.double().abs().max())
    assert_within(m.weight.grad, w64.grad, sum_bound(w64.grad, g_mag, ids.numel(), dtype),
                  "weight grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=_name)
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_per_sample_weights(dtype, index_dtype, device):
    rows, dim, bags = 30, 8, 9
    ids, offsets, max_len = random_bags(bags, rows, 5, index_dtype, device)
    weight = torch.randn(rows, dim).to(dtype).to(device)
    psw = torch.rand(ids.numel(), device=device).requires_grad_()
    m = spembed.nn.EmbeddingBag(rows, dim, mode="sum", include_last_offset=True,
                                _weight=weight.clone())
    out = m(ids, offsets, psw)
    w64 = weight.double().cpu().requires_grad_()
    p64 = psw.detach().double().cpu().requires_grad_()
    ref = reference_bag(ids, w64, offsets, "sum", p64, None, True)
    mag = reference_bag(ids, w64.detach().abs(), offsets, "sum", p64.detach().abs(), None, True)
    assert_within(out, ref, sum_bound(ref, mag, max_len, dtype), "forward")
    go = torch.randn(bags, dim, dtype=torch.float64).to(dtype)
    (out * go.to(device)).sum().backward()
    (ref * go.double()).sum().backward()
    # d/dpsw_i = go[bag] . w[id]: a dim-term float32 dot product, kept in float32.
    dot_mag = (go.double().abs()[_bag_of(offsets.cpu(), ids.numel())]
               * w64.detach().abs()[ids.cpu().long()]).sum(1)
    bound = (dim + 2) * UNIT_ROUNDOFF[torch.float32] * dot_mag + 1e-300
    assert_within(psw.grad, p64.grad, bound, "per_sample_weights grad")
    assert psw.grad.dtype == torch.float32


def _bag_of(offsets, nnz):
    return torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets.diff().long())[:nnz]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_2d_input_fixed_bags(mode, device):
    rows, dim = 25, 4
    weight = distinct_table(rows, dim, torch.float32, device)
    ids = torch.randint(0, rows, (6, 3), device=device)
    out = spembed.ops.embedding_bag(ids, weight, mode=mode)
    ref = F.embedding_bag(ids.cpu(), weight.double().cpu(), mode=mode)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=4 * 2.0**-24, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_mode_none_gathers_rows(device):
    weight = torch.randn(10, 5, device=device)
    ids = torch.tensor([3, 0, 9, 3], device=device)
    psw = torch.tensor([1.0, 2.0, 0.5, -1.0], device=device)
    out = spembed.ops.embedding_bag(ids, weight, mode="none", per_sample_weights=psw,
                                    padding_idx=0)
    want = weight[ids] * psw[:, None]
    want[1] = 0  # the padding row contributes nothing
    torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_name)
def test_output_dtype(out_dtype, device):
    weight = torch.randn(12, 6).to(torch.bfloat16).to(device)
    ids, offsets, max_len = random_bags(5, 12, 4, torch.int64, device)
    out = spembed.ops.embedding_bag(ids, weight, offsets, mode="sum", include_last_offset=True,
                                    output_dtype=out_dtype)
    assert out.dtype == out_dtype
    ref = reference_bag(ids, weight.double().cpu(), offsets, "sum", None, None, True)
    mag = reference_bag(ids, weight.double().cpu().abs(), offsets, "sum", None, None, True)
    assert_within(out, ref, sum_bound(ref, mag, max_len, out_dtype), "forward")


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_gradient(device):
    rows, dim = 20, 3
    ids, offsets, _ = random_bags(6, rows, 5, torch.int64, device)
    dense = spembed.nn.EmbeddingBag(rows, dim, mode="mean", include_last_offset=True).to(device)
    sparse = spembed.nn.EmbeddingBag(rows, dim, mode="mean", include_last_offset=True,
                                     sparse=True, _weight=dense.weight.detach().clone())
    go = torch.randn(6, dim, device=device)
    (dense(ids, offsets) * go).sum().backward()
    (sparse(ids, offsets) * go).sum().backward()
    g = sparse.weight.grad
    assert g.is_sparse
    # One entry per touched row, in increasing order (autograd's accumulation
    # may drop the coalesced flag, not the layout).
    assert torch.equal(g._indices()[0].cpu(), torch.unique(ids.cpu()))
    torch.testing.assert_close(g.to_dense(), dense.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_skip_policy_ignores_out_of_range(device):
    weight = torch.arange(8.0, device=device).view(4, 2)
    ids = torch.tensor([1, 7, -2, 3], device=device)
    offsets = torch.tensor([0, 4], device=device)
    out = spembed.ops.embedding_bag(ids, weight, offsets, mode="mean", include_last_offset=True,
                                    bounds_policy="skip")
    torch.testing.assert_close(out, ((weight[1] + weight[3]) / 2)[None], rtol=0, atol=0)


# ---- bad inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_id_raises_index_error(device):
    weight = torch.randn(4, 2, device=device)
    ids = torch.tensor([1, 2, 9, 0], device=device)
    with pytest.raises(IndexError, match=r"9"):
        spembed.ops.embedding_bag(ids, weight, torch.tensor([0, 2], device=device), mode="sum")


@pytest.mark.parametrize("device", DEVICES)
def test_decreasing_offsets_raise_value_error(device):
    weight = torch.randn(4, 2, device=device)
    ids = torch.tensor([1, 2, 3, 0], device=device)
    with pytest.raises(ValueError, match=r"offsets"):
        spembed.ops.embedding_bag(ids, weight, torch.tensor([0, 3, 1], device=device),
                                  mode="sum")


def test_bad_arguments_raise():
    weight = torch.randn(4, 2)
    ids = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="mode"):
        spembed.ops.embedding_bag(ids, weight, torch.tensor([0]), mode="median")
    with pytest.raises(ValueError, match="int32 or int64"):
        spembed.ops.embedding_bag(ids.float(), weight, torch.tensor([0]))
    with pytest.raises(ValueError, match="weight must be"):
        spembed.ops.embedding_bag(ids, weight.to(torch.int32), torch.tensor([0]))
    # float64 tables (unsupported before) accumulate in float64, as torch's.
    got = spembed.ops.embedding_bag(ids, weight.double(), torch.tensor([0]))
    want = F.embedding_bag(ids, weight.double(), torch.tensor([0]))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=2**-50, atol=0.0)
    with pytest.raises(NotImplementedError, match="per_sample_weights"):
        spembed.ops.embedding_bag(ids, weight, torch.tensor([0]), mode="mean",
                                  per_sample_weights=torch.ones(2))
    with pytest.raises(ValueError, match="padding_idx"):
        spembed.nn.EmbeddingBag(4, 2, padding_idx=4)
    with pytest.raises(ValueError, match="max_norm"):  # supported, but must be > 0
        spembed.nn.EmbeddingBag(4, 2, max_norm=-1.0)(ids, torch.tensor([0]))
    with pytest.raises(ValueError, match="offsets"):
        spembed.ops.embedding_bag(ids, weight, None)
    with pytest.raises(ValueError, match="bounds_policy"):
        spembed.ops.embedding_bag(ids, weight, torch.tensor([0]), bounds_policy="clamp")
