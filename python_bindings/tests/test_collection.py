"""spembed.nn.EmbeddingBagCollection: the batched lookup against per-table
torch lookups, both input forms, dense gradients, and the fused optimizer
against a dense torch model trained with the matching torch.optim optimizer."""
import os
import re

import pytest
import torch
import torch.nn.functional as F

import spembed
from conftest import DEVICES, UNIT_ROUNDOFF
from helpers import random_bags

TABLES = [(30, 4), (17, 1), (50, 9)]
B = 7


def _features(device, index_dtype=torch.int64, max_len=4, tables=TABLES):
    feats = []
    for rows, _ in tables:
        ids, offsets, _ = random_bags(B, rows, max_len, index_dtype, device)
        feats.append((ids, offsets))
    return feats


def _torch_lookup(weights, feats, mode):
    return torch.cat([F.embedding_bag(ids.long(), w, offs.long(), mode=mode,
                                      include_last_offset=True)
                      for w, (ids, offs) in zip(weights, feats)], 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_collection_matches_per_table_torch(mode, index_dtype, device):
    ebc = spembed.nn.EmbeddingBagCollection(TABLES, mode=mode, device=device)
    feats = _features(device, index_dtype)
    out = ebc(feats)
    assert out.shape == (B, sum(d for _, d in TABLES))
    ref = _torch_lookup(list(ebc.weights), feats, mode)
    # float32 sums of at most 4 terms: bound (4 + 2) u32 * |terms| <= 6 u32 * 4 max|w|.
    tol = 6 * UNIT_ROUNDOFF[torch.float32] * 4 * max(float(w.detach().abs().max()) for w in ebc.weights)
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)

    go = torch.randn_like(out)
    (out * go).sum().backward()
    grads = [w.grad.clone() for w in ebc.weights]
    for w in ebc.weights:
        w.grad = None
    (_torch_lookup(list(ebc.weights), feats, mode) * go).sum().backward()
    gtol = (sum(f[0].numel() for f in feats) + 2) * UNIT_ROUNDOFF[torch.float32] * float(
        go.abs().max())
    for g, w in zip(grads, ebc.weights):
        torch.testing.assert_close(g, w.grad, rtol=0, atol=gtol)


@pytest.mark.parametrize("device", DEVICES)
def test_table_major_input_form(device):
    ebc = spembed.nn.EmbeddingBagCollection(TABLES, mode="sum", device=device)
    feats = _features(device)
    indices = torch.cat([ids for ids, _ in feats])
    offsets, base = [], 0
    for ids, offs in feats:
        offsets.append(offs[:-1] + base)
        base += ids.numel()
    offsets = torch.cat(offsets + [torch.tensor([base], device=device)])
    torch.testing.assert_close(ebc(indices, offsets), ebc(feats), rtol=0, atol=0)


def _dense_reference_step(opt_name, params, lr, eps, betas, wd):
    if opt_name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if opt_name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=wd)
    if opt_name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=eps, betas=betas, weight_decay=wd)
    return None


def _rowwise_adagrad_step(weights, states, lr, eps, wd):
    """The row-wise Adagrad of spembed.h, in float64, touched rows only."""
    with torch.no_grad():
        for w, s in zip(weights, states):
            g = w.grad + wd * w
            touched = (w.grad != 0).any(1)
            s += torch.where(touched, (g * g).mean(1), torch.zeros_like(s))
            upd = lr * g / (s.sqrt() + eps)[:, None]
            w -= torch.where(touched[:, None], upd, torch.zeros_like(upd))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "rowwise_adagrad", "adam"])
def test_fused_optimizer_matches_torch_optim(opt_name, device):
    lr, eps, betas = 0.05, 1e-6, (0.8, 0.95)
    # Weight decay reaches touched rows only, so it is compared where torch's
    # dense step decays the same rows: Adam (every row touched) and the
    # touched-rows reference of row-wise Adagrad.
    wd = 0.01 if opt_name in ("adam", "rowwise_adagrad") else 0.0
    # Adam leaves untouched rows alone (like SparseAdam) while torch.optim.Adam
    # moves them by their momentum: small tables with long bags touch every row.
    tables = [(6, 4), (5, 3)] if opt_name == "adam" else TABLES
    ebc = spembed.nn.EmbeddingBagCollection(tables, mode="sum", device=device,
                                            optimizer=opt_name, lr=lr, eps=eps, betas=betas,
                                            weight_decay=wd)
    assert not any(w.requires_grad for w in ebc.weights)
    ref_w = [w.detach().double().cpu().clone().requires_grad_() for w in ebc.weights]
    opt = _dense_reference_step(opt_name, ref_w, lr, eps, betas, wd)
    ref_states = [torch.zeros(w.shape[0], dtype=torch.float64) for w in ref_w]
    for step in range(4):
        if opt_name == "adam":
            feats = [(torch.arange(rows, device=device).repeat(B),
                      torch.arange(0, B * rows + 1, rows, device=device)) for rows, _ in tables]
        else:
            feats = _features(device, tables=tables)
        target = torch.randn(B, sum(d for _, d in tables), device=device)
        out = ebc(feats)
        loss = ((out - target) ** 2).sum()
        loss.backward()
        assert all(w.grad is None for w in ebc.weights), "a dense gradient was built"

        ref_out = _torch_lookup(ref_w, [(i.cpu(), o.cpu()) for i, o in feats], "sum")
        ((ref_out - target.double().cpu()) ** 2).sum().backward()
        if opt is not None:
            opt.step()
            opt.zero_grad()
        else:
            _rowwise_adagrad_step(ref_w, ref_states, lr, eps, wd)
            for w in ref_w:
                w.grad = None
    # Four float32 steps against float64 ones: each step's update has relative
    # error of a few u32 (sums of <= 4 * B terms; Adam / Adagrad normalise by
    # their float32 state), so after 4 steps the weights agree to ~1e-5.
    for got, want in zip(ebc.weights, ref_w):
        torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=1e-5, atol=1e-5)


def test_collection_bad_inputs():
    ebc = spembed.nn.EmbeddingBagCollection(TABLES)
    with pytest.raises(ValueError, match="features"):
        ebc(_features("cpu")[:2])
    with pytest.raises(IndexError):
        feats = _features("cpu")
        feats[1] = (torch.full_like(feats[1][0], 17), feats[1][1])  # table 1 has 17 rows
        if feats[1][0].numel() == 0:
            pytest.skip("empty feature")
        ebc(feats)
    with pytest.raises(ValueError, match="optimizer"):
        spembed.nn.EmbeddingBagCollection(TABLES, optimizer="lamb")
    with pytest.raises(NotImplementedError):
        spembed.nn.EmbeddingBagCollection(TABLES, mode="none")


HUGE_PAGE = 2 << 20


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_to_huge_pages_copies_and_aligns(dtype):
    # 2 MiB and up: a contiguous copy starting on a 2 MiB boundary; below: an
    # ordinary copy. Contents equal either way, and the copy is independent.
    for rows in (HUGE_PAGE // (8 * 4) + 3, 5):
        src = torch.randn(rows, 8, dtype=torch.float64).to(dtype)
        out = torch.ops.spembed.to_huge_pages(src)
        assert out.dtype == dtype and out.shape == src.shape and out.is_contiguous()
        assert torch.equal(out, src) and out.data_ptr() != src.data_ptr()
        if src.numel() * src.element_size() >= HUGE_PAGE:
            assert out.data_ptr() % HUGE_PAGE == 0
        out.add_(1)
        assert not torch.equal(out, src)
    strided = torch.randn(HUGE_PAGE // 4, 2)[:, 1]  # not contiguous: copied compactly
    assert torch.equal(torch.ops.spembed.to_huge_pages(strided), strided)


def test_modules_put_large_cpu_tables_and_states_on_huge_pages():
    rows = HUGE_PAGE // (16 * 4) + 1  # just over 2 MiB of float32 rows of 16
    ebc = spembed.nn.EmbeddingBagCollection([(rows, 16), (10, 4)], optimizer="adagrad")
    assert ebc.weights[0].data_ptr() % HUGE_PAGE == 0
    assert ebc.state1_0.data_ptr() % HUGE_PAGE == 0 and float(ebc.state1_0.abs().sum()) == 0
    eb = spembed.nn.EmbeddingBag(rows, 16, mode="sum")
    assert eb.weight.data_ptr() % HUGE_PAGE == 0 and eb.weight.requires_grad
    # A table handed in (_weight) is used as it is, as torch does.
    given = torch.randn(rows, 16)
    assert spembed.nn.EmbeddingBag(rows, 16, _weight=given).weight.data_ptr() == given.data_ptr()
    # Lookups and the fused step work on them as on any table.
    ids = torch.randint(0, rows, (40,))
    offs = torch.arange(0, 41, 4)
    ref = F.embedding_bag(ids, eb.weight.detach(), offs, mode="sum", include_last_offset=True)
    eb.include_last_offset = True
    torch.testing.assert_close(eb(ids, offs), ref)
    before = ebc.weights[0].detach().clone()
    ebc([(ids, offs), (torch.randint(0, 10, (40,)), offs)]).sum().backward()
    assert not torch.equal(before, ebc.weights[0].detach())


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_one_openmp_runtime_after_cpu_ops():
    # The op layer runs spembed's CPU regions on torch's OpenMP threads by
    # linking torch's own runtime: a second runtime in the process would be
    # a second pool of threads spinning on the same cores.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ids, offs, _ = random_bags(512, 1000, 20, torch.int64, "cpu")
        spembed.ops.embedding_bag(ids, torch.randn(1000, 16), offs, mode="sum")
    finally:
        torch.set_num_threads(before)
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps
                    if re.search(r"/lib(gomp|iomp5|omp)[-.][^/]*$", line.strip())}
    assert len(runtimes) <= 1, runtimes


def test_cpu_results_do_not_depend_on_torch_threads():
    # The forward, the dense backward and a fused step give the same bits for
    # any torch.set_num_threads (passed on to spembed's CPU threads).
    before = torch.get_num_threads()
    tables = [(5000, 32), (300, 16)]
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            torch.manual_seed(3)
            ebc = spembed.nn.EmbeddingBagCollection(tables, optimizer="adagrad", lr=0.1)
            feats = [random_bags(2000, rows, 40, torch.int64, "cpu")[:2] for rows, _ in tables]
            out = ebc(feats)
            out.backward(torch.randn_like(out))
            dense = spembed.nn.EmbeddingBagCollection(tables)
            dense(feats).sum().backward()
            results.append([out.detach(), ebc.weights[0].detach().clone(), ebc.state1_0.clone(),
                            dense.weights[0].grad.clone()])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
