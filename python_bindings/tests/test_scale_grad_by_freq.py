"""scale_grad_by_freq=True against torch: each row's weight gradient divided
by the number of ids of that row in the call (padding ids and ids skipped by
bounds_policy 'skip' not counted); the forward is unchanged.

spembed runs on the test's device, torch (float32, CPU) on the same inputs;
values and gradients are compared with torch.testing.assert_close's float32
tolerances. torch 2.11's CPU kernel divides some rows by another row's
count, so the torch reference is helpers.torch_embedding_bag:
torch itself where it is right, else torch's unscaled gradient divided by
each row's count (what torch's CUDA kernel computes); test_known_gradients
pins the values by hand (the sums here have a handful of terms of magnitude ~1, so both
sides are within a few float32 roundings of each other). Covered: modes
sum / mean, per_sample_weights (sum), padding_idx, ids repeated within and
across bags, empty bags, 1-D + offsets and 2-D input, the nn module, the
dense backward in both algorithms, sparse=True (rejected from the backward,
as torch does; the raw row-sparse op computes it), the table-batched op and
EmbeddingBagCollection (dense gradients and the fused optimizer step), the
ops' opcheck with the new argument, and torch.compile.
"""
import pytest
import torch
import torch.nn.functional as F

import spembed
from conftest import DEVICES
from helpers import TorchEmbeddingBag, torch_embedding_bag
from spembed import _config

ops = torch.ops.spembed

ROWS, DIM = 10, 6
# Ids repeated within a bag (1, 3) and across bags (1, 2, 3, 7); an empty bag.
IDS = [1, 1, 3, 2, 1, 5, 3, 3, 0, 7, 2, 1, 7, 9, 3]
OFFSETS = [0, 4, 4, 9, 12]  # torch's form: bag starts (the last bag runs to the end)
PAD = 3  # a padding id that repeats, so counting it would change the other rows' scale


def _name(x):
    return str(x).replace("torch.", "")


def _close(got, want, what):
    torch.testing.assert_close(got.detach().cpu(), want.detach().cpu(),
                               msg=lambda m: f"{what}: {m}")


def _run(fn, weight, psw, device):
    """fn(weight, psw) -> out on `device` with leaves there; returns out,
    weight.grad, psw.grad (after backward with a fixed grad_output)."""
    w = weight.detach().clone().to(device).requires_grad_()
    p = None if psw is None else psw.detach().clone().to(device).requires_grad_()
    out = fn(w, p)
    go = torch.linspace(-1.5, 2.0, out.numel()).view_as(out).to(device)
    (out * go).sum().backward()
    return out, w.grad, None if p is None else p.grad


CASES = [("sum", False), ("sum", True), ("mean", False)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=_name)
@pytest.mark.parametrize("padding_idx", [None, PAD], ids=["nopad", "pad"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["sorted", "atomic"])
@pytest.mark.parametrize("mode,with_psw", CASES, ids=["sum", "sum_psw", "mean"])
def test_functional_matches_torch(mode, with_psw, deterministic, padding_idx, index_dtype,
                                  device, monkeypatch):
    monkeypatch.setattr(_config, "deterministic_backward", deterministic)
    weight = torch.randn(ROWS, DIM)
    psw = torch.rand(len(IDS)) + 0.5 if with_psw else None
    ids, offsets = torch.tensor(IDS, dtype=index_dtype), torch.tensor(OFFSETS, dtype=index_dtype)

    def ours(w, p):
        return spembed.ops.embedding_bag(ids.to(device), w, offsets.to(device), mode=mode,
                                         scale_grad_by_freq=True, per_sample_weights=p,
                                         padding_idx=padding_idx)

    def theirs(w, p):
        return torch_embedding_bag(ids.long(), w, offsets.long(), mode=mode,
                                   scale_grad_by_freq=True, per_sample_weights=p,
                                   padding_idx=padding_idx)

    out, gw, gp = _run(ours, weight, psw, device)
    ref, rgw, rgp = _run(theirs, weight, psw, "cpu")
    assert gw.dtype == torch.float32 and not gw.is_sparse
    _close(out, ref, "output")
    _close(gw, rgw, "weight grad")
    if with_psw:
        _close(gp, rgp, "per_sample_weights grad")
    # The scaling did happen: a row used 4 times does not get the plain sum.
    _, plain, _ = _run(lambda w, p: torch_embedding_bag(ids.long(), w, offsets.long(), mode=mode,
                                                     per_sample_weights=p,
                                                     padding_idx=padding_idx),
                       weight, psw, "cpu")
    assert not torch.allclose(plain[1], rgw[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sparse_grad", [False, True], ids=["dense", "row_sparse_op"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["sorted", "atomic"])
def test_known_gradients(deterministic, sparse_grad, device, monkeypatch):
    """Hand-computed: ids [5, 1, 1 | 3, 1, 0 | 3] (padding_idx 0, psw 1..7),
    grad_output 1: sum -> row 1: (1 + 1 + 1) / 3 = 1 (psw: (2 + 3 + 5) / 3),
    row 3: 2 / 2, row 5: 1 / 1 (torch's CPU kernel gives row 5 1/2 and row 3
    1/3); the padding id is not counted."""
    monkeypatch.setattr(_config, "deterministic_backward", deterministic)
    ids = torch.tensor([5, 1, 1, 3, 1, 0, 3], device=device)
    offsets = torch.tensor([0, 3, 6], device=device)
    psw = torch.arange(1.0, 8.0, device=device)
    want = {
        ("sum", False): {1: 1.0, 3: 1.0, 5: 1.0},
        ("sum", True): {1: (2 + 3 + 5) / 3, 3: (4 + 7) / 2, 5: 1.0},
        # mean: bag sizes 3, 2 (the padding id is not counted), 1
        ("mean", False): {1: (1 / 3 + 1 / 3 + 1 / 2) / 3, 3: (1 / 2 + 1) / 2, 5: 1 / 3},
    }
    for (mode, with_psw), rows in want.items():
        expected = torch.zeros(8, 2, dtype=torch.float64)
        for r, v in rows.items():
            expected[r] = v
        p = psw if with_psw else None
        w = torch.ones(8, 2, device=device, requires_grad=True)
        if sparse_grad:
            pooling = int(spembed.Pooling.SUM if mode == "sum" else spembed.Pooling.MEAN)
            full = torch.cat([offsets, torch.tensor([7], device=device)])
            out, argmax = ops.embedding_bag(w.detach(), ids, full, p, pooling, 0, 0, 0)
            uids, grows = ops.embedding_bag_backward_sparse(torch.ones_like(out), w.detach(), ids,
                                                            full, p, argmax, pooling, 0, 0, 0, 1)
            got = torch.zeros(8, 2).index_put_((uids.cpu().long(),), grows.cpu())
        else:
            spembed.ops.embedding_bag(ids, w, offsets, mode=mode, per_sample_weights=p,
                                      padding_idx=0, scale_grad_by_freq=True).sum().backward()
            got = w.grad
        torch.testing.assert_close(got.double().cpu(), expected, rtol=2**-22, atol=0,
                                   msg=lambda m: f"{mode} psw={with_psw}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_module_2d_input_matches_torch(mode, device):
    weight = torch.randn(ROWS, DIM)
    ids = torch.tensor([[1, 1, 4], [4, 2, 1], [0, 0, 0], [9, 1, 4]])
    results = []
    for cls, dev in ((spembed.nn.EmbeddingBag, device), (TorchEmbeddingBag, "cpu")):
        m = cls.from_pretrained(weight.clone().to(dev), freeze=False, mode=mode,
                                scale_grad_by_freq=True, padding_idx=0)
        out = m(ids.to(dev))
        (out * torch.linspace(-1.5, 2.0, out.numel()).view_as(out).to(dev)).sum().backward()
        results.append((out, m.weight.grad))
    (out, gw), (ref, rgw) = results
    _close(out, ref, "output")
    _close(gw, rgw, "weight grad")
    m = spembed.nn.EmbeddingBag(ROWS, DIM, scale_grad_by_freq=True)
    assert m.scale_grad_by_freq is True and "scale_grad_by_freq=True" in repr(m)


@pytest.mark.parametrize("device", DEVICES)
def test_skipped_ids_not_counted(device):
    """bounds_policy 'skip': the out-of-range ids count for nothing, so the
    result is torch's on the input without them."""
    weight = torch.randn(5, 3)
    ids = torch.tensor([1, 9, 1, 2, -1, 1, 2])
    offsets = torch.tensor([0, 3, 5])
    keep = (ids >= 0) & (ids < 5)
    kept_offsets = torch.tensor([0, int(keep[:3].sum()), int(keep[:5].sum())])
    for mode in ("sum", "mean"):
        out, gw, _ = _run(lambda w, p: spembed.ops.embedding_bag(
            ids.to(device), w, offsets.to(device), mode=mode, scale_grad_by_freq=True,
            bounds_policy="skip"), weight, None, device)
        ref, rgw, _ = _run(lambda w, p: torch_embedding_bag(
            ids[keep], w, kept_offsets, mode=mode, scale_grad_by_freq=True), weight, None, "cpu")
        _close(out, ref, f"{mode} output")
        _close(gw, rgw, f"{mode} weight grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,with_psw", CASES, ids=["sum", "sum_psw", "mean"])
def test_sparse_is_rejected_like_torch(mode, with_psw, device):
    """torch has no sparse scale_grad_by_freq gradient (its backward raises
    RuntimeError); spembed raises an instance of it from the backward too,
    after the same forward."""
    weight = torch.randn(ROWS, DIM)
    psw = torch.rand(len(IDS)) + 0.5 if with_psw else None
    ids, offsets = torch.tensor(IDS), torch.tensor(OFFSETS)
    errors = {}
    for name, fn, dev in (("torch", F.embedding_bag, "cpu"),
                          ("spembed", spembed.ops.embedding_bag, device)):
        w = weight.clone().to(dev).requires_grad_()
        p = None if psw is None else psw.clone().to(dev).requires_grad_()
        out = fn(ids.to(dev), w, offsets.to(dev), mode=mode, sparse=True,
                 scale_grad_by_freq=True, per_sample_weights=p, padding_idx=PAD)
        _close(out, F.embedding_bag(ids, weight, offsets, mode=mode, per_sample_weights=psw,
                                    padding_idx=PAD), f"{name} output")
        with pytest.raises(RuntimeError) as info:
            out.sum().backward()
        errors[name] = info.value
    assert isinstance(errors["spembed"], spembed.InvalidArgumentError)
    assert "scale_grad_by_freq" in str(errors["spembed"])
    # Without a weight gradient nothing is scaled: no error, psw grad as torch's.
    if with_psw:
        p = psw.clone().to(device).requires_grad_()
        out = spembed.ops.embedding_bag(ids.to(device), weight.to(device), offsets.to(device),
                                        mode=mode, sparse=True, scale_grad_by_freq=True,
                                        per_sample_weights=p, padding_idx=PAD)
        out.sum().backward()
        p_ref = psw.clone().requires_grad_()
        F.embedding_bag(ids, weight, offsets, mode=mode, scale_grad_by_freq=True,
                        per_sample_weights=p_ref, padding_idx=PAD).sum().backward()
        _close(p.grad, p_ref.grad, "per_sample_weights grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding_idx", [None, PAD], ids=["nopad", "pad"])
@pytest.mark.parametrize("mode,with_psw", CASES, ids=["sum", "sum_psw", "mean"])
def test_raw_ops_scale_dense_and_row_sparse(mode, with_psw, padding_idx, device):
    """The backward ops' scale_grad_by_freq argument: the dense gradient and
    the row-sparse one (touched rows, padding left out) are torch's dense
    scaled gradient; 0 (the default) leaves it unscaled."""
    weight = torch.randn(ROWS, DIM)
    psw = torch.rand(len(IDS)) + 0.5 if with_psw else None
    ids, offsets = torch.tensor(IDS), torch.tensor(OFFSETS + [len(IDS)])
    pooling = int(spembed.Pooling.SUM if mode == "sum" else spembed.Pooling.MEAN)
    pad = -1 if padding_idx is None else padding_idx
    args = (weight.to(device), ids.to(device), offsets.to(device),
            None if psw is None else psw.to(device))
    out, argmax = ops.embedding_bag(*args, pooling, pad, 0, 0)
    go = torch.randn(out.shape)
    wants = {}
    for scale in (False, True):
        w = weight.clone().requires_grad_()
        ref = torch_embedding_bag(ids, w, offsets[:-1], mode=mode, scale_grad_by_freq=scale,
                                  per_sample_weights=psw, padding_idx=padding_idx)
        (ref * go).sum().backward()
        wants[scale] = w.grad
    common = (go.to(device), *args, argmax, pooling, pad, 0, 0)
    gw, _ = ops.embedding_bag_backward(*common, True, True, False, 1)
    _close(gw, wants[True], "dense, scaled")
    gw, _ = ops.embedding_bag_backward(*common, True, True, False)
    _close(gw, wants[False], "dense, default (unscaled)")
    uids, rows = ops.embedding_bag_backward_sparse(*common, 1)
    uids = uids.cpu().long()
    assert torch.equal(uids, torch.unique(uids)), "unique ids, sorted"
    assert set(torch.unique(ids[ids != pad]).tolist()) <= set(uids.tolist())
    dense = torch.zeros(ROWS, DIM).index_put_((uids,), rows.cpu())
    _close(dense, wants[True], "row-sparse, scaled")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_single_table_fused_step(optimizer, device):
    """embedding_bag_fused_step steps with the scaled gradient."""
    weight = torch.randn(ROWS, DIM)
    ids, offsets = torch.tensor(IDS), torch.tensor(OFFSETS + [len(IDS)])
    go = torch.randn(len(OFFSETS), DIM)
    lr, eps = 0.1, 1e-8
    w_ref = weight.double().clone().requires_grad_()
    torch_embedding_bag(ids, w_ref, offsets[:-1], mode="mean", scale_grad_by_freq=True,
                        padding_idx=PAD).mul(go.double()).sum().backward()
    opt = (torch.optim.SGD([w_ref], lr=lr) if optimizer == "sgd"
           else torch.optim.Adagrad([w_ref], lr=lr, eps=eps))
    opt.step()
    w = weight.clone().to(device)
    state = None if optimizer == "sgd" else torch.zeros(ROWS, DIM, device=device)
    ops.embedding_bag_fused_step(
        w, state, None, go.to(device), ids.to(device), offsets.to(device), None, None,
        int(spembed.Pooling.MEAN), PAD, 0, 0, int(spembed.ops.OPTIMIZERS[optimizer]), lr, eps,
        0.9, 0.999, 0.0, 1, 0, False, 1)
    torch.testing.assert_close(w.double().cpu(), w_ref.detach(), rtol=1e-5, atol=1e-5)


# ---- table-batched ----------------------------------------------------------------------

TABLES = [(10, 4), (6, 3), (8, 5)]
B = 4


def _features(device, seed=7):
    g = torch.Generator().manual_seed(seed)
    feats = []
    for rows, _ in TABLES:
        lengths = torch.randint(0, 6, (B,), generator=g)
        lengths[1] = 0
        offs = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        # Few distinct ids (0..3): repeats within and across bags.
        ids = torch.randint(0, 4, (int(offs[-1]),), generator=g)
        feats.append((ids.to(device), offs.to(device)))
    return feats


def _table_major(feats, device):
    indices = torch.cat([ids for ids, _ in feats])
    offsets, base = [], 0
    for ids, offs in feats:
        offsets.append(offs[:-1] + base)
        base += ids.numel()
    return indices, torch.cat(offsets + [torch.tensor([base], device=device)])


def _torch_tables(weights, feats, mode, padding_idx):
    return torch.cat([torch_embedding_bag(ids.cpu(), w, offs[:-1].cpu(), mode=mode,
                                          scale_grad_by_freq=True, padding_idx=padding_idx)
                      for w, (ids, offs) in zip(weights, feats)], 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding_idx", [None, 2], ids=["nopad", "pad"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_collection_dense_gradients(mode, padding_idx, device):
    ebc = spembed.nn.EmbeddingBagCollection(TABLES, mode=mode, padding_idx=padding_idx,
                                            device=device, scale_grad_by_freq=True)
    feats = _features(device)
    out = ebc(feats)
    ref_w = [w.detach().cpu().clone().requires_grad_() for w in ebc.weights]
    ref = _torch_tables(ref_w, feats, mode, padding_idx)
    _close(out, ref, "output")
    go = torch.randn(ref.shape)
    (out * go.to(device)).sum().backward()
    (ref * go).sum().backward()
    for t, (w, r) in enumerate(zip(ebc.weights, ref_w)):
        _close(w.grad, r.grad, f"table {t} grad")
    # The functional batched op, table-major input.
    indices, offsets = _table_major(feats, device)
    ws = [w.detach().clone().requires_grad_() for w in ebc.weights]
    out2 = spembed.ops.embedding_bag_batched(ws, indices, offsets, mode=mode,
                                             padding_idx=padding_idx, scale_grad_by_freq=True)
    (out2 * go.to(device)).sum().backward()
    for t, (w, r) in enumerate(zip(ws, ref_w)):
        _close(w.grad, r.grad, f"batched op, table {t} grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_collection_fused_step(mode, optimizer, device):
    """The fused step applies the scaled gradient: two steps against
    torch.optim on a float64 copy trained with torch's scaled gradient
    (untouched rows have a zero gradient, which neither optimizer moves)."""
    lr, eps = 0.05, 1e-6
    ebc = spembed.nn.EmbeddingBagCollection(TABLES, mode=mode, padding_idx=2, device=device,
                                            optimizer=optimizer, lr=lr, eps=eps,
                                            scale_grad_by_freq=True)
    ref_w = [w.detach().double().cpu().clone().requires_grad_() for w in ebc.weights]
    opt = (torch.optim.SGD(ref_w, lr=lr) if optimizer == "sgd"
           else torch.optim.Adagrad(ref_w, lr=lr, eps=eps))
    for step in range(2):
        feats = _features(device, seed=step)
        target = torch.randn(B, sum(d for _, d in TABLES))
        ((ebc(feats) - target.to(device)) ** 2).sum().backward()
        ((_torch_tables(ref_w, feats, mode, 2) - target.double()) ** 2).sum().backward()
        opt.step()
        opt.zero_grad()
    for t, (got, want) in enumerate(zip(ebc.weights, ref_w)):
        torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"table {t}: {m}")


def test_max_mode_is_rejected():
    weight = torch.randn(4, 2)
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        spembed.ops.embedding_bag(torch.tensor([[1, 2]]), weight, mode="max",
                                  scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        spembed.nn.EmbeddingBag(4, 2, mode="max", scale_grad_by_freq=True)(
            torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        spembed.nn.EmbeddingBagCollection(TABLES, mode="max", scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        spembed.ops.embedding_bag_batched([weight], torch.tensor([1]), torch.tensor([0, 1]),
                                          mode="max", scale_grad_by_freq=True)


# ---- opcheck and torch.compile ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_with_scale_grad(device):
    ids = torch.tensor(IDS, device=device)
    offsets = torch.tensor(OFFSETS + [len(IDS)], device=device)
    weight = torch.randn(ROWS, DIM, device=device).requires_grad_()
    torch.library.opcheck(ops.embedding_bag.default,
                          (weight, ids, offsets, None, 1, PAD, 0, 0, None, 1))
    out, argmax = ops.embedding_bag(weight.detach(), ids, offsets, None, 1, PAD, 0, 0, None, 1)
    go = torch.randn_like(out)
    torch.library.opcheck(ops.embedding_bag_backward.default,
                          (go, weight.detach(), ids, offsets, None, argmax, 1, PAD, 0, 0, True,
                           True, False, 1))
    torch.library.opcheck(ops.embedding_bag_backward_sparse.default,
                          (go, weight.detach(), ids, offsets, None, argmax, 1, PAD, 0, 0, 1),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))
    w1 = torch.randn(5, 2, device=device).requires_grad_()
    bids = torch.tensor([0, 3, 3, 1, 1, 1], device=device)
    boffs = torch.tensor([0, 2, 3, 5, 6], device=device)
    torch.library.opcheck(ops.embedding_bag_batched.default,
                          ([weight, w1], bids, boffs, None, 0, -1, 0, 0, None, 1))
    bout, bargmax = ops.embedding_bag_batched([weight.detach(), w1.detach()], bids, boffs, None,
                                              0, -1, 0, 0, None, 1)
    torch.library.opcheck(ops.embedding_bag_batched_backward.default,
                          (torch.randn_like(bout), [weight.detach(), w1.detach()], bids, boffs,
                           None, bargmax, 0, -1, 0, 0, True, True, False, 1))
    hp = (0, 0.1, 1e-8, 0.9, 0.999, 0.0, 1, 0, False, 1)
    torch.library.opcheck(ops.embedding_bag_fused_step.default,
                          (weight.detach().clone(), None, None, go, ids, offsets, None, None, 1,
                           PAD, 0, 0, *hp))
    torch.library.opcheck(ops.embedding_bag_batched_fused_step.default,
                          ([weight.detach().clone(), w1.detach().clone()], [], [],
                           torch.randn_like(bout), bids, boffs, None, None, 0, -1, 0, 0, *hp))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_matches_eager(device):
    torch._dynamo.reset()
    m = spembed.nn.EmbeddingBag(ROWS, DIM, mode="mean", scale_grad_by_freq=True,
                                padding_idx=PAD, device=device)
    ebc = spembed.nn.EmbeddingBagCollection(TABLES, mode="sum", device=device,
                                            scale_grad_by_freq=True)
    ids, offsets = torch.tensor(IDS, device=device), torch.tensor(OFFSETS, device=device)
    t_ids, t_offsets = _table_major(_features(device), device)

    def loss(i, o, ti, to):
        return m(i, o).square().sum() + ebc(ti, to).square().sum()

    loss(ids, offsets, t_ids, t_offsets).backward()
    eager = [p.grad.clone() for p in (m.weight, *ebc.weights)]
    for p in (m.weight, *ebc.weights):
        p.grad = None
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    compiled(ids, offsets, t_ids, t_offsets).backward()
    for g, e in zip((m.weight.grad, *(w.grad for w in ebc.weights)), eager):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
