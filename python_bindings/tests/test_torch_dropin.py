"""spembed as a drop-in for torch.nn.EmbeddingBag / F.embedding_bag.

The project's own re-expression of the EmbeddingBag cases of torch's test
suite (test/nn/test_embedding.py: padding_idx with 1-D and 2-D input, empty
input, out-of-range ids, dimension errors, per_sample_weights failures and
offsets forms, from_pretrained, include_last_offset, non-contiguous
weights, half / bfloat16), of the EmbeddingBag module entries of
torch.testing._internal.common_nn, and of the OpInfo samples of
nn.functional.embedding_bag. Every case runs torch and spembed on the same
inputs, on the CPU, and compares:

* the exception: when torch raises, spembed must raise an instance of the
  class torch raised (spembed.errors derive from it);
* the outputs and gradients (weight, per_sample_weights; sparse gradients
  densified), their shapes, dtypes and layouts.

Values. Float inputs are drawn once in float32 and rounded to the case's
dtype, so every run sees identical values. Besides torch in the case's dtype
the case also runs in torch in float64 (the exact result, up to float64
rounding) and in float64 on absolute values (mag, the size of the summed
terms). With u the unit roundoff of the result's dtype, u32 that of float32
and n the number of terms a result element can sum (the `terms` of a case):

  spembed - exact  <=  u |exact| + (n + 2) u32 mag      one rounding to the
                                                        result dtype after a
                                                        float32 accumulation
  spembed - torch  <=  that + u |exact| + (n + 2) max(u, u32) mag

(torch accumulates float16 / bfloat16 weight gradients in that dtype, hence
its own term). For float16 / bfloat16 spembed is thus within one rounding
step of the exact result.

With max_norm the table is renormalised in place before the lookup, in its
own dtype (torch does the same), so every summed term carries one more
rounding to the table's dtype (u_w |term|), and its row's scale
max_norm / (norm + 1e-7) comes from a float32 norm over the row's D entries
(relative error within (D + 2) u32). Both bounds then gain

  (u_w + (D + 2) u32) mag                                  (renorm_dim=D)

and the exact result stays torch in float64 (renormalised without rounding).

What spembed does not support yet would be marked xfail(strict=True) with
_pending (such a case raises spembed.NotSupportedError); nothing is pending
now. float64 tables (pending before) accumulate in float64, so their bounds
use float64's unit roundoff for spembed's own error. (max_norm / norm_type,
pending before too, run through the library's renormalisation;
test_max_norm.py checks it in more detail.)

scale_grad_by_freq=True: torch's CPU kernel divides some rows' gradients by
another row's id count (seen in torch 2.11; its CUDA kernel is right); where the
installed torch has that bug, the torch runs here take torch's unscaled
gradient divided by each row's count (helpers.torch_embedding_bag). With
sparse=True torch raises from the backward, and so does spembed.

include_last_offset=True with offsets[-1] < number of ids follows one rule
(bag b is ids[offsets[b]:offsets[b + 1]]), where torch's CPU kernels
disagree among themselves; test_include_last_offset_* pin it down.
"""
import inspect
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

import spembed
from conftest import UNIT_ROUNDOFF
from helpers import TorchEmbeddingBag, distinct_table, torch_embedding_bag
from spembed.errors import NotSupportedError

U32 = UNIT_ROUNDOFF[torch.float32]
INDEX_PAIRS = [(torch.int64, torch.int64), (torch.int32, torch.int32),
               (torch.int32, torch.int64), (torch.int64, torch.int32)]


def _pending(what):
    return pytest.mark.xfail(strict=True, raises=NotSupportedError,
                             reason=f"core kernels pending: {what}")


FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LOW_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _name(x):
    return str(x).replace("torch.", "")


def _pair_name(p):
    return "-".join(_name(d) for d in p)


# ---- the harness ------------------------------------------------------------------------

class Impl:
    def __init__(self, name, functional, module):
        self.name, self.functional, self.module = name, functional, module


# torch's functional and module, except for the CPU scale_grad_by_freq bug
# of some torch versions (helpers.torch_embedding_bag: the gradient torch's
# CUDA kernel computes).
TORCH = Impl("torch", torch_embedding_bag, TorchEmbeddingBag)
SPEMBED = Impl("spembed", spembed.ops.embedding_bag, spembed.nn.EmbeddingBag)


class Run:
    """One run of a case: which implementation, the dtype float inputs take,
    and whether they are replaced by their absolute values (magnitudes)."""

    def __init__(self, impl, dtype, absolute=False):
        self.impl, self.dtype, self.absolute = impl, dtype, absolute

    @property
    def ours(self):
        return self.impl is SPEMBED

    def embedding_bag(self, *args, **kwargs):
        return self.impl.functional(*args, **kwargs)

    def EmbeddingBag(self, *args, **kwargs):
        return self.impl.module(*args, **kwargs)

    def from_pretrained(self, *args, **kwargs):
        return self.impl.module.from_pretrained(*args, **kwargs)

    def t(self, base, requires_grad=False):
        """A fresh leaf holding `base` (values already rounded to the case's
        dtype) in this run's dtype."""
        x = base.detach().abs() if self.absolute else base.detach()
        return x.to(self.dtype).clone().requires_grad_(requires_grad)


def values(*shape, dtype, scale=1.0):
    """Normal values rounded to `dtype`, held in float32."""
    return (torch.randn(*shape) * scale).to(dtype).float()


def table(rows, dim, dtype, mode="sum"):
    """A table for `mode`: for max pooling no two rows tie in a column (so
    the arg-max, hence the gradient, is unique), exact in every dtype."""
    if mode == "max" and rows <= 256:
        return distinct_table(rows, dim, torch.float32, "cpu")
    return values(rows, dim, dtype=dtype)


def _outcome(case, run):
    try:
        return case(run), None
    except Exception as e:  # noqa: BLE001  (any class: compared below)
        return None, e


def check(case, dtype, terms, float64_runs=True, renorm_dim=None):
    """Runs `case` (a function of a Run returning {name: tensor or None})
    with torch and with spembed on the same inputs and compares the
    exception, or every result, as the module docstring says.
    float64_runs=False: no float64 runs (where torch's float64 kernel
    crashes); torch's own result stands in for the exact one.
    renorm_dim=D: the case renormalises a table of D columns (max_norm);
    the bounds gain the terms of the module docstring."""
    ref, ref_err = _outcome(case, Run(TORCH, dtype))
    got, got_err = _outcome(case, Run(SPEMBED, dtype))
    if isinstance(got_err, NotSupportedError):
        raise got_err  # what the core does not do yet: xfail where marked
    if ref_err is not None:
        if got_err is not None and isinstance(got_err, type(ref_err)):
            return got_err
        raise AssertionError(
            f"torch raised {type(ref_err).__name__}({ref_err}); spembed "
            + ("returned a result" if got_err is None else
               f"raised {type(got_err).__name__}({got_err}), not an instance of it"))
    if got_err is not None:
        raise AssertionError(f"torch returned a result; spembed raised "
                             f"{type(got_err).__name__}: {got_err}") from got_err
    exact = case(Run(TORCH, torch.float64)) if float64_runs else ref
    mags = case(Run(TORCH, torch.float64, absolute=True)) if float64_runs else ref
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    renorm = None if renorm_dim is None else (UNIT_ROUNDOFF[dtype], renorm_dim)
    for name in ref:
        compare(name, got[name], ref[name], exact[name], mags[name], terms, renorm)
    return None


def _dense(x):
    return x.to_dense() if x.is_sparse else x


def compare(name, got, ref, exact, mag, terms, renorm=None):
    if ref is None:
        assert got is None, f"{name}: torch gives None, spembed a tensor"
        return
    assert got is not None, f"{name}: torch gives a tensor, spembed None"
    assert got.is_sparse == ref.is_sparse, f"{name}: layout {got.layout} vs torch's {ref.layout}"
    got, ref, exact, mag = _dense(got), _dense(ref), _dense(exact), _dense(mag)
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    assert got.dtype == ref.dtype, f"{name}: dtype {got.dtype} vs torch's {ref.dtype}"
    if not got.is_floating_point():
        assert torch.equal(got, ref), name
        return
    if got.numel() == 0:
        return
    u = UNIT_ROUNDOFF[got.dtype]
    # spembed accumulates float64 tables in float64, the others in float32.
    u_acc = u if got.dtype == torch.float64 else U32
    exact = exact.detach().double()
    m = max(float(mag.detach().double().abs().max()), float(exact.abs().max()))
    tiny = torch.finfo(got.dtype).smallest_normal * u
    ours = u * exact.abs() + (terms + 2) * u_acc * m + tiny
    theirs = u * exact.abs() + (terms + 2) * max(u, U32) * m + tiny
    if renorm is not None:  # the table renormalised in place in its dtype u_w
        u_w, dim = renorm
        ours = ours + (u_w + (dim + 2) * u_acc) * m
        theirs = theirs + (u_w + (dim + 2) * U32) * m
    g = got.detach().double()
    err = (g - exact).abs()
    assert bool((err <= ours).all()), (
        f"{name}: spembed vs exact: max error {float(err.max()):.3g}, "
        f"worst excess {float((err - ours).max()):.3g}")
    err = (g - ref.detach().double()).abs()
    assert bool((err <= ours + theirs).all()), (
        f"{name}: spembed vs torch: max error {float(err.max()):.3g}, "
        f"worst excess {float((err - ours - theirs).max()):.3g}")


def grads(**named):
    """{name: leaf.grad} for the given leaves (None where absent)."""
    return {k: (None if v is None else v.grad) for k, v in named.items()}


# ---- test_embedding.py: the known example and its variants ------------------------------

KNOWN_MODES = [("sum", False), ("mean", False), ("max", False), ("sum", True), ("mean", True)]


@pytest.mark.parametrize("index_dtypes", INDEX_PAIRS, ids=_pair_name)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_name)
@pytest.mark.parametrize("mode,sparse", KNOWN_MODES, ids=lambda x: str(x))
def test_known_bags(mode, sparse, dtype, index_dtypes):
    """Five rows 1..10; bags (with empty ones) over 1-D input + offsets, the
    same ids as a 2-D input, and all-empty bags: outputs and gradients."""
    idt, odt = index_dtypes
    w_base = torch.arange(1.0, 11.0).view(5, 2)
    ids = torch.tensor([3, 1, 1, 1, 4, 0], dtype=idt)
    offsets = torch.tensor([0, 0, 3, 3, 6], dtype=odt)
    go5 = torch.tensor([[99.0, 99], [1, 2], [99, 99], [3, 4], [99, 99]])
    go2 = torch.tensor([[1.0, 2], [3, 4]])

    def case(run):
        m = run.EmbeddingBag(5, 2, mode=mode, sparse=sparse, _weight=run.t(w_base))
        out1 = m(ids, offsets)
        out1.backward(run.t(go5))
        g1 = m.weight.grad
        m.weight.grad = None
        out2 = m(ids.view(2, 3))
        out2.backward(run.t(go2))
        g2 = m.weight.grad
        m.weight.grad = None
        out3 = m(torch.tensor([], dtype=idt), torch.tensor([0, 0, 0, 0], dtype=odt))
        out3.sum().backward()
        return {"out 1-D": out1, "grad 1-D": g1, "out 2-D": out2, "grad 2-D": g2,
                "out empty": out3, "grad empty": m.weight.grad}

    check(case, dtype, terms=6)


EMB_SHAPES = [(1, 1, 1, 1), (2, 1, 2, 1), (1, 2, 2, 2), (2, 2, 2, 2), (37, 23, 11, 7),
              (5, 3, 40, 31)]


@pytest.mark.parametrize("max_norm", [None, 3.0], ids=["no_max_norm", "max_norm"])
@pytest.mark.parametrize("shape", EMB_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=_name)
@pytest.mark.parametrize("mode,sparse", KNOWN_MODES, ids=lambda x: str(x))
def test_bags_of_equal_length(mode, sparse, dtype, shape, max_norm):
    """B bags of L ids each over an [N, D] table, given as 1-D input with
    offsets (the comparison torch makes against Embedding + reduction)."""
    n, d, b, length = shape
    w_base = table(n, d, dtype, mode)
    ids = torch.randint(n, (b, length))
    offsets = torch.arange(0, b) * length
    go = values(b, d, dtype=dtype)

    def case(run):
        m = run.EmbeddingBag(n, d, mode=mode, sparse=sparse, max_norm=max_norm,
                             _weight=run.t(w_base))
        out = m(ids.view(-1), offsets)
        out.backward(run.t(go))
        return {"out": out, "weight.grad": m.weight.grad}

    check(case, dtype, terms=b * length, renorm_dim=None if max_norm is None else d)


PSW_SHAPES = [(2, 3, 5, 7), (2, 5, 53, 23), (101, 5, 3, 7), (2, 101, 3, 7)]


@pytest.mark.parametrize("trainable", [False, True], ids=["psw_fixed", "psw_trained"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("shape", PSW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=_name)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_name)
def test_per_sample_weights_equal_bags(dtype, index_dtype, shape, sparse, trainable):
    """mode 'sum' with per-sample weights summing to 1 in each bag; sparse
    and dense weight gradients, and the per-sample-weight gradient (also
    with sparse=True)."""
    n, d, b, length = shape
    w_base = values(n, d, dtype=dtype)
    ids = torch.randint(n, (b, length), dtype=index_dtype)
    offsets = torch.arange(0, b, dtype=index_dtype) * length
    p_base = torch.randn(b, length).softmax(-1).to(dtype).float()
    go = values(b, d, dtype=dtype)

    def case(run):
        m = run.EmbeddingBag(n, d, mode="sum", sparse=sparse, _weight=run.t(w_base))
        p = run.t(p_base, requires_grad=trainable)
        out = m(ids.view(-1), offsets, p.view(-1))
        out.backward(run.t(go))
        return {"out": out, **grads(weight=m.weight, psw=p if trainable else None)}

    check(case, dtype, terms=max(b * length, d))  # a psw gradient is a d-term dot product


@pytest.mark.parametrize("index_dtypes", INDEX_PAIRS, ids=_pair_name)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_name)
@pytest.mark.parametrize("trainable", [False, True], ids=["psw_fixed", "psw_trained"])
@pytest.mark.parametrize("empty", [False, True], ids=["ids", "no_ids"])
def test_per_sample_weights_and_offsets(empty, trainable, dtype, index_dtypes):
    idt, odt = index_dtypes
    w_base = torch.arange(1.0, 11.0).view(5, 2)
    ids = torch.tensor([] if empty else [3, 1, 1, 1, 4, 0], dtype=idt)
    offsets = torch.tensor([0, 0, 0, 0, 0] if empty else [0, 0, 3, 3, 6], dtype=odt)
    p_base = values(ids.numel(), dtype=dtype)
    go = values(offsets.numel(), 2, dtype=dtype)

    def case(run):
        m = run.EmbeddingBag(5, 2, mode="sum", _weight=run.t(w_base))
        p = run.t(p_base, requires_grad=trainable)
        out = m(ids, offsets, p)
        out.backward(run.t(go))
        return {"out": out, **grads(weight=m.weight, psw=p if trainable else None)}

    check(case, dtype, terms=6)


@pytest.mark.parametrize("index_dtypes", INDEX_PAIRS[:2], ids=_pair_name)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_name)
@pytest.mark.parametrize("include_last_offset", [False, True], ids=["offsets", "last_offset"])
@pytest.mark.parametrize("trainable", [False, True], ids=["psw_fixed", "psw_trained"])
@pytest.mark.parametrize("mode,with_psw", [("sum", True), ("sum", False), ("max", False),
                                           ("mean", False)], ids=lambda x: str(x))
def test_per_sample_weights_and_new_offsets(mode, with_psw, trainable, include_last_offset,
                                            dtype, index_dtypes):
    """Both offsets forms (include_last_offset appends len(input))."""
    idt, odt = index_dtypes
    w_base = torch.arange(1.0, 11.0).view(5, 2)
    ids = torch.tensor([3, 1, 1, 1, 4, 0], dtype=idt)
    offsets = torch.tensor([0, 0, 3, 3, 6] + ([6] if include_last_offset else []), dtype=odt)
    p_base = values(6, dtype=dtype)
    go = values(5, 2, dtype=dtype)

    def case(run):
        m = run.EmbeddingBag(5, 2, mode=mode, include_last_offset=include_last_offset,
                             _weight=run.t(w_base))
        p = run.t(p_base, requires_grad=trainable) if with_psw else None
        out = m(ids, offsets, p)
        out.backward(run.t(go))
        return {"out": out, **grads(weight=m.weight,
                                    psw=p if with_psw and trainable else None)}

    check(case, dtype, terms=6)


@pytest.mark.parametrize("index_dtypes", INDEX_PAIRS, ids=_pair_name)
def test_per_sample_weights_failures(index_dtypes):
    """Mismatched dtype, shapes (1-D and 2-D input) and modes without
    per-sample weights: torch's exception classes."""
    idt, odt = index_dtypes
    w_base = values(5, 2, dtype=torch.float32)
    ids = torch.tensor([3, 1, 1, 1, 4, 0], dtype=idt)
    offsets = torch.tensor([0, 0, 3, 3, 6], dtype=odt)
    ids2 = torch.randint(5, (7, 3), dtype=idt)
    cases = [
        ("sum", ids, offsets, torch.randn(6, dtype=torch.float64)),  # type
        ("sum", ids, offsets, torch.randn(5)),                       # shape, 1-D
        ("sum", ids2, None, torch.randn(7 * 3)),                     # shape, 2-D
        ("max", ids2, None, torch.randn(7, 3)),                      # mode
        ("mean", ids2, None, torch.randn(7, 3)),
    ]
    for mode, i, o, p in cases:
        def case(run):
            m = run.EmbeddingBag(5, 2, mode=mode, _weight=run.t(w_base))
            return {"out": m(i, o, p)}

        err = check(case, torch.float32, terms=6)
        assert err is not None, (mode, tuple(i.shape), p.dtype, tuple(p.shape))


# ---- padding_idx ------------------------------------------------------------------------

def _ragged_bags(num_bags, max_len, num_words, allpad):
    """Random bag lengths with one empty and one full bag."""
    empty = random.randrange(num_bags)
    full = (empty + 1 + random.randrange(num_bags - 1)) % num_bags
    ids, offsets = [], []
    for bag in range(num_bags):
        offsets.append(len(ids))
        n = max_len if bag == full else 0 if bag == empty else random.randint(1, max_len - 1)
        ids += [1 if allpad else random.randrange(num_words) for _ in range(n)]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


@pytest.mark.parametrize("allpad", [False, True], ids=["mixed", "allpad"])
@pytest.mark.parametrize("include_last_offset", [False, True], ids=["offsets", "last_offset"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_name)
@pytest.mark.parametrize("mode,sparse", KNOWN_MODES, ids=lambda x: str(x))
def test_padding_idx_1d(mode, sparse, dtype, include_last_offset, allpad):
    """1-D input + offsets, padding_idx set to each id that occurs (and None)."""
    random.seed(7)
    ids, offsets = _ragged_bags(10, 10, 100, allpad)
    if include_last_offset:
        offsets = torch.cat([offsets, torch.tensor([ids.numel()])])
    w_base = table(100, 3, dtype, mode)
    go = values(10, 3, dtype=dtype)
    for pad in sorted(set(ids.tolist())) + [None]:
        def case(run):
            w = run.t(w_base, requires_grad=True)
            out = run.embedding_bag(ids, w, offsets, padding_idx=pad, mode=mode, sparse=sparse,
                                    include_last_offset=include_last_offset)
            out.backward(run.t(go))
            return {"out": out, "weight.grad": w.grad}

        check(case, dtype, terms=ids.numel())


@pytest.mark.parametrize("rows", [1, 10])
@pytest.mark.parametrize("allpad", [False, True], ids=["mixed", "allpad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_name)
@pytest.mark.parametrize("mode,sparse", KNOWN_MODES, ids=lambda x: str(x))
def test_padding_idx_2d(mode, sparse, dtype, allpad, rows):
    """2-D input with one row of a repeated id (fully padded for that
    padding_idx), padding_idx set to each id that occurs."""
    if allpad:
        ids = torch.ones(rows, 10, dtype=torch.long)
    else:
        ids = torch.randint(0, 10, (rows, 10))
        if rows > 1:
            r = random.Random(rows).randrange(rows)
            ids[r] = ids[r][0]
    w_base = table(10, 3, dtype, mode)
    go = values(rows, 3, dtype=dtype)
    for pad in sorted(set(ids.flatten().tolist())):
        def case(run):
            w = run.t(w_base, requires_grad=True)
            out = run.embedding_bag(ids, w, padding_idx=pad, mode=mode, sparse=sparse)
            out.backward(run.t(go))
            return {"out": out, "weight.grad": w.grad}

        check(case, dtype, terms=ids.numel())


def test_padding_idx_out_of_range():
    """The functional raises RuntimeError, the constructor AssertionError,
    for padding_idx outside [-num_embeddings, num_embeddings)."""
    a = torch.tensor([[1, 3, 2], [0, 2, 1]])
    w_base = values(4, 3, dtype=torch.float32)
    raised = 0
    for pad in range(-6, 6):
        def functional(run):
            return {"out": run.embedding_bag(a, run.t(w_base, requires_grad=True),
                                             padding_idx=pad)}

        def module(run):
            run.EmbeddingBag(4, 3, padding_idx=pad)
            return {}

        raised += check(functional, torch.float32, terms=3) is not None
        raised += check(module, torch.float32, terms=3) is not None
    assert raised == 8  # -6, -5, 4, 5 for each


def test_module_zeroes_padding_row():
    m = spembed.nn.EmbeddingBag(5, 4, padding_idx=-2)
    assert m.padding_idx == 3 == torch.nn.EmbeddingBag(5, 4, padding_idx=-2).padding_idx
    assert torch.equal(m.weight[3], torch.zeros(4))


# ---- empty input, out-of-range ids, dimension errors, illegal combinations -------------

@pytest.mark.parametrize("index_dtypes", INDEX_PAIRS, ids=_pair_name)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_empty_input(sparse, index_dtypes):
    idt, odt = index_dtypes
    w_base = values(4, 3, dtype=torch.float32)
    for offs in ([0], [0, 0]):
        def case(run):
            m = run.EmbeddingBag(4, 3, sparse=sparse, _weight=run.t(w_base))
            out = m(torch.tensor([], dtype=idt), torch.tensor(offs, dtype=odt))
            out.sum().backward()
            return {"out": out, "weight.grad": m.weight.grad}

        check(case, torch.float32, terms=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64],
                         ids=_name)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=_name)
@pytest.mark.parametrize("padding_idx", [None, 0], ids=["nopad", "pad0"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_out_of_range_ids(mode, padding_idx, index_dtype, dtype):
    """Negative and too-large ids raise (RuntimeError in torch)."""
    w_base = values(10, 2, dtype=dtype)
    for ids in (torch.tensor([[-1, 1]], dtype=index_dtype),
                torch.tensor([[11, 8]], dtype=index_dtype)):
        for with_psw in ([False, True] if mode == "sum" else [False]):
            p_base = values(1, 2, dtype=dtype)

            def case(run):
                p = run.t(p_base) if with_psw else None
                return {"out": run.embedding_bag(ids, run.t(w_base), per_sample_weights=p,
                                                 padding_idx=padding_idx, mode=mode)}

            assert check(case, dtype, terms=2) is not None


def test_out_of_range_id_message_names_the_callers_position():
    w = torch.randn(10, 2)
    with pytest.raises(RuntimeError, match=r"input\[1, 0\]=11 is out of range"):
        spembed.ops.embedding_bag(torch.tensor([[1, 2], [11, 3]]), w)
    with pytest.raises(IndexError, match=r"input\[2\]=-4 is out of range"):
        spembed.ops.embedding_bag(torch.tensor([1, 2, -4]), w, torch.tensor([0, 1]))


def test_dimension_errors():
    """A 5-D input, a 5-D offsets, a 3-D weight: ValueError in torch's
    functional (whose tables are float64 here; the shape is checked first)."""
    big = torch.full((2, 0, 0, 6, 6), 2, dtype=torch.int64)
    cases = [
        (torch.zeros(2, 6, dtype=torch.float64), big, torch.zeros_like(big)),
        (torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.int64),
         torch.zeros_like(big)),
        (torch.zeros(2, 2, 2, dtype=torch.float64), torch.full((2,), 2),
         torch.zeros(2, dtype=torch.int64)),
    ]
    for weight, ids, offsets in cases:
        def case(run):
            return {"out": run.embedding_bag(ids, weight, offsets)}

        err = check(case, torch.float32, terms=1)
        assert isinstance(err, ValueError) and isinstance(err, RuntimeError)


@pytest.mark.parametrize("index_dtypes", INDEX_PAIRS, ids=_pair_name)
@pytest.mark.parametrize("mode,sparse", KNOWN_MODES, ids=lambda x: str(x))
def test_illegal_input_combinations(mode, sparse, index_dtypes):
    """2-D input with offsets, 1-D input without, offsets[0] != 0, an offset
    past the end of the input."""
    idt, odt = index_dtypes
    w_base = values(10, 20, dtype=torch.float32)
    ids = torch.ones(3, 4, dtype=idt)
    starts = torch.arange(0, 3, dtype=odt)
    bad_first = starts.clone()
    bad_first[0] = 1
    past_end = starts.clone()
    past_end[-1] = 100
    for i, o in [(ids, starts), (ids.view(-1), None), (ids.view(-1), bad_first),
                 (ids.view(-1), past_end)]:
        def case(run):
            m = run.EmbeddingBag(10, 20, mode=mode, sparse=sparse, _weight=run.t(w_base))
            return {"out": m(i, o)}

        assert check(case, torch.float32, terms=12) is not None


def test_offsets_messages_name_the_callers_offsets():
    """offsets [0, 1, 100] over 12 ids: the message names offsets[2] and
    the input's length, not an offset the caller never passed."""
    w, ids = torch.randn(4, 2), torch.zeros(12, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"offsets\[2\]=100 > 12, the number of ids") as e:
        spembed.ops.embedding_bag(ids, w, torch.tensor([0, 1, 100]))
    assert "offsets[3]" not in str(e.value)
    with pytest.raises(ValueError, match=r"offsets\[1\]=5 > offsets\[2\]=3"):
        spembed.ops.embedding_bag(ids, w, torch.tensor([0, 5, 3]))
    with pytest.raises(RuntimeError, match=r"offsets\[0\]=2"):
        spembed.ops.embedding_bag(ids, w, torch.tensor([2, 5, 12]), include_last_offset=True)


# ---- include_last_offset ----------------------------------------------------------------

@pytest.mark.parametrize("padding_idx", [None, 4], ids=["nopad", "pad4"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_include_last_offset_short_last_offset(mode, padding_idx):
    """offsets[-1] < len(input) with include_last_offset=True: bag b is
    input[offsets[b]:offsets[b + 1]], the ids after offsets[-1] belong to no
    bag, i.e. the result is torch's on input[:offsets[-1]]. torch's own CPU
    result on the full input depends on the kernel it picks: float32 /
    float16 / bfloat16 without padding_idx agree for 'sum', run the last bag
    to the end for 'max' and divide its 'sum' by the count to the end for
    'mean'; float64, and any dtype with padding_idx, run the last bag to the
    end (docs/python.md)."""
    ids = torch.tensor([0, 1, 4, 2, 3, 4, 5, 6])
    offsets = torch.tensor([0, 3, 5])
    w_base = table(8, 3, torch.float32, mode)
    go = values(2, 3, dtype=torch.float32)

    def case(run):
        w = run.t(w_base, requires_grad=True)
        out = run.embedding_bag(ids if run.ours else ids[:5], w, offsets, mode=mode,
                                include_last_offset=True, padding_idx=padding_idx)
        out.backward(run.t(go))
        return {"out": out, "weight.grad": w.grad}

    check(case, torch.float32, terms=8)
    if mode == "sum" and padding_idx is None:
        # torch's float32 kernel gives the same on the full input (its
        # float64 one does not: there the last bag runs to the end).
        args = (ids, w_base, offsets)
        torch.testing.assert_close(
            spembed.ops.embedding_bag(*args, mode="sum", include_last_offset=True),
            F.embedding_bag(*args, mode="sum", include_last_offset=True),
            rtol=10 * U32, atol=10 * U32 * float(w_base.abs().max()))


def test_include_last_offset_with_padding_idx():
    """A regression case of torch's own tests: mode 'mean', padding_idx 61,
    ids [0, 1, 2, 3]. offsets [0, 3, 4] match torch; offsets [0, 3, 3] give
    an empty last bag (torch: the last bag runs on to the end)."""
    ids = torch.tensor([0, 1, 2, 3])
    w_base = values(100, 3, dtype=torch.float32)
    for offs in ([0, 3, 4], [0, 3, 3]):
        offsets = torch.tensor(offs)

        def case(run):
            m = run.EmbeddingBag(100, 3, include_last_offset=True, padding_idx=61,
                                 _weight=run.t(w_base))
            return {"out": m(ids if run.ours else ids[:offs[-1]], offsets)}

        check(case, torch.float32, terms=4)
    out = spembed.nn.EmbeddingBag.from_pretrained(w_base, include_last_offset=True,
                                                  padding_idx=61)(ids, torch.tensor([0, 3, 3]))
    assert torch.equal(out[1], torch.zeros(3))


def test_include_last_offset_empty_offsets_and_no_bags():
    """No bags: offsets [] (include_last_offset=False) or [0] (True); and
    include_last_offset=True with no offsets at all (RuntimeError)."""
    w_base = values(6, 2, dtype=torch.float32)
    ids = torch.arange(6)
    for offs, last in [([], True), ([0], True), ([], False)]:
        def case(run):
            o = torch.tensor(offs, dtype=torch.long)
            return {"out": run.embedding_bag(ids, run.t(w_base), o, mode="sum",
                                             include_last_offset=last)}

        # torch 2.11's float64 kernel crashes on offsets [0] with input left over
        check(case, torch.float32, terms=6, float64_runs=False)


# ---- weights: non-contiguous, from_pretrained, per-sample-weight grad flags -------------

@pytest.mark.parametrize("index_dtypes", INDEX_PAIRS, ids=_pair_name)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=_name)
@pytest.mark.parametrize("layout", ["columns", "transposed"])
def test_non_contiguous_weight(layout, dtype, index_dtypes):
    """A column slice of a wider table (row stride > dim) and a transposed
    one, every mode; gradients reach the underlying leaf."""
    idt, odt = index_dtypes
    ids = torch.tensor([0, 1, 2], dtype=idt)
    offsets = torch.tensor([0, 2], dtype=odt)
    for mode in ("sum", "mean", "max"):
        base = table(3, 4, dtype, mode)
        go = values(2, 3, dtype=dtype)

        def case(run):
            leaf = run.t(base if layout == "columns" else base[:, :3].t().contiguous(),
                         requires_grad=True)
            w = leaf[:, :3] if layout == "columns" else leaf.t()
            out = run.embedding_bag(input=ids, weight=w, offsets=offsets, mode=mode)
            out.backward(run.t(go))
            return {"out": out, "leaf.grad": leaf.grad}

        check(case, dtype, terms=3)


def test_from_pretrained():
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])

    def plain(run):
        bag = run.from_pretrained(run.t(a))
        assert not bag.weight.requires_grad
        assert torch.equal(bag.weight.detach(), a.to(run.dtype))
        return {"1-D": bag(torch.tensor([0, 1]), torch.arange(2)),
                "2-D mean": bag(torch.tensor([[0, 1]]))}

    check(plain, torch.float32, terms=2)
    out = spembed.nn.EmbeddingBag.from_pretrained(a)(torch.tensor([0, 1]), torch.arange(2))
    assert torch.equal(out, a)

    emb = torch.rand(4, 3)

    def padded(run):
        e = run.t(emb, requires_grad=True)
        bag = run.from_pretrained(e, padding_idx=2, freeze=False, mode="sum")
        assert torch.equal(bag.weight.detach(), emb.to(run.dtype)) and bag.weight.requires_grad
        assert bag.padding_idx == 2
        out = bag(torch.tensor([[1, 2, 3], [2, 2, 0]]))
        out.sum().backward()
        return {"out": out, "weight.grad": bag.weight.grad}

    check(padded, torch.float32, terms=3)

    def not_2d(run):
        run.from_pretrained(run.t(torch.rand(2, 3, 4)))
        return {}

    assert isinstance(check(not_2d, torch.float32, terms=1), AssertionError)

    def wrong_shape(run):
        run.EmbeddingBag(4, 3, _weight=run.t(torch.rand(3, 4)))
        return {}

    assert isinstance(check(wrong_shape, torch.float32, terms=1), AssertionError)


@pytest.mark.parametrize("mode", ["max", "mean", "sum"])
def test_from_pretrained_options(mode):
    """max_norm 2 / norm_type 0.5 renormalise the looked-up rows in place."""
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])

    def case(run):
        w = run.t(a)
        bag = run.from_pretrained(w, max_norm=2.0, norm_type=0.5, mode=mode)
        out = bag(torch.tensor([[0, 1]]))
        return {"out": out, "renormalised weight": bag.weight.detach().clone()}

    check(case, torch.float32, terms=2, renorm_dim=3)


def test_functional_matches_module():
    a = torch.tensor([[1, 3, 2], [0, 2, 1]])
    emb = torch.rand(4, 3)

    def case(run):
        e = run.t(emb)
        mod = run.EmbeddingBag(4, 3)
        mod.weight = torch.nn.Parameter(e)
        padded = run.from_pretrained(e, padding_idx=2)
        res = {"module": mod(a), "functional": run.embedding_bag(a, e),
               "pretrained padded": padded(a), "functional padded": run.embedding_bag(
                   a, e, padding_idx=2)}
        assert torch.equal(res["module"], res["functional"])
        assert torch.equal(res["pretrained padded"], res["functional padded"])
        return res

    check(case, torch.float32, terms=3)


@pytest.mark.parametrize("bag_grad,psw_grad", list(itertools.product([True, False], repeat=2)))
def test_per_sample_weights_grad_flags(bag_grad, psw_grad):
    """Per-sample weights from a softmax, the table trainable or not, on an
    expanded (stride-0) input."""
    w_base = values(256, 256, dtype=torch.float32)
    s_base = torch.rand(3, 4)
    x = torch.arange(1, 5).expand(3, -1)

    def case(run):
        bag = run.EmbeddingBag(256, 256, mode="sum", _weight=run.t(w_base))
        bag.requires_grad_(bag_grad)
        s = run.t(s_base, requires_grad=psw_grad)
        out = bag(x, per_sample_weights=F.softmax(s, dim=-1))
        if out.requires_grad:
            out.sum().backward()
        return {"out": out, "weight.grad": bag.weight.grad, "scores.grad": s.grad}

    check(case, torch.float32, terms=256 + 16)


# ---- common_nn.py: the EmbeddingBag module entries --------------------------------------

def _module_inputs():
    return {
        "mean": (dict(), torch.empty(2, 3, dtype=torch.long).random_(4)),
        "discontiguous": (dict(), torch.empty(1, 512, dtype=torch.long).random_(4)
                          .expand(7, 512)),
        "sum": (dict(mode="sum"), torch.empty(2, 3, dtype=torch.long).random_(4)),
        "max": (dict(mode="max"), torch.empty(2, 3, dtype=torch.long).random_(4)),
        "mean_padding_idx": (dict(padding_idx=1),
                             torch.stack([torch.randperm(3), torch.randperm(3)])),
        "sum_padding_idx": (dict(mode="sum", padding_idx=1),
                            torch.stack([torch.randperm(3), torch.randperm(3)])),
        "max_padding_idx": (dict(mode="max", padding_idx=1),
                            torch.stack([torch.randperm(3), torch.randperm(3)])),
        "sparse": (dict(sparse=True), torch.randperm(2).repeat(1, 2)),
    }


# common_nn runs these in float64 (its default dtype for them); float32 runs
# the same cases too.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64],
                         ids=_name)
@pytest.mark.parametrize("name", list(_module_inputs()))
def test_common_nn_module(name, dtype):
    kwargs, ids = _module_inputs()[name]
    w_base = table(4, 3, dtype, kwargs.get("mode", "mean"))
    go = values(ids.shape[0], 3, dtype=dtype)

    def case(run):
        m = run.EmbeddingBag(4, 3, _weight=run.t(w_base), **kwargs)
        out = m(ids)
        out.backward(run.t(go))
        return {"out": out, "weight.grad": m.weight.grad}

    check(case, dtype, terms=ids.numel())


# ---- OpInfo samples of nn.functional.embedding_bag --------------------------------------

M, S = 10, 5


def _long(shape, high, noncontiguous=False):
    if not noncontiguous:
        return torch.randint(0, high, shape)
    wide = torch.randint(0, high, tuple(shape[:-1]) + (2 * shape[-1],))
    return wide[..., ::2]


def _opinfo_samples(mode, with_psw):
    """(name, weight rows x cols, ids, kwargs, differentiable, marks): the
    shapes and options of torch's OpInfo samples."""
    offsets = torch.tensor([0, 3])
    yield "1d", (M, S), _long((S,), M), dict(offsets=offsets), True, ()
    yield "1d_noncontig", (M, S), _long((S,), M, True), dict(offsets=offsets), True, ()
    yield "empty_bag", (M, S), _long((S,), M, True), dict(offsets=torch.tensor([0, 0, 3])), \
        True, ()
    yield "2d", (M, S), _long((S, S), M), dict(), True, ()
    yield "2d_noncontig", (M, S), _long((S, S), M, True), dict(), True, ()
    ids = _long((6,), S)
    ids[0] = ids[4] = 4
    yield "pad_neg", (S, S), ids, dict(padding_idx=-1, offsets=offsets), True, ()
    ids = _long((3, 3), S)
    ids[0, 0] = ids[1, 1] = 2
    yield "pad_pos", (S, S), ids, dict(padding_idx=2), True, ()
    yield "last_offset", (S, S), _long((6,), S), \
        dict(offsets=torch.tensor([0, 3, 6]), include_last_offset=True), True, ("no_psw",)
    yield "max_norm", (S, S), _long((2, 2), S), dict(max_norm=1.0), False, ()
    yield "max_norm_p1", (S, S), _long((6,), S), \
        dict(max_norm=1.0, norm_type=1.0, offsets=offsets), False, ()
    if mode != "max":
        ids = _long((2, 2), S)
        ids[0, 0] = ids[0, 1] = 1
        yield "scale_grad", (S, S), ids, dict(scale_grad_by_freq=True), True, ()
        yield "sparse", (S, S), _long((6,), S), dict(sparse=True, offsets=offsets), True, ()
        ids = _long((6,), S)
        ids[0] = ids[1] = 1
        ids[3] = 0
        yield "sparse_all", (S, S), ids, dict(sparse=True, scale_grad_by_freq=True, padding_idx=0,
                                              max_norm=1.0, offsets=offsets), False, ()


def _opinfo_params():
    torch.manual_seed(2024)
    params = []
    for with_psw, mode in itertools.product([True, False], ["sum", "mean", "max"]):
        if with_psw and mode != "sum":
            continue
        for name, wshape, ids, kwargs, diff, marks in _opinfo_samples(mode, with_psw):
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                m = tuple(mk for mk in marks if mk != "no_psw")
                params.append(pytest.param(
                    mode, with_psw and "no_psw" not in marks, wshape, ids, kwargs, diff, dtype,
                    marks=m, id=f"{mode}-{'psw' if with_psw else 'nopsw'}-{name}-{_name(dtype)}"))
    return params


@pytest.mark.parametrize("mode,with_psw,wshape,ids,kwargs,diff,dtype", _opinfo_params())
def test_opinfo_samples(mode, with_psw, wshape, ids, kwargs, diff, dtype):
    w_base = table(*wshape, dtype, mode) * 2
    p_base = values(*ids.shape, dtype=dtype) if with_psw else None
    bags = ids.shape[0] if ids.dim() == 2 else kwargs["offsets"].numel() - int(
        kwargs.get("include_last_offset", False))
    go = values(bags, wshape[1], dtype=dtype)

    def case(run):
        w = run.t(w_base, requires_grad=diff)
        p = run.t(p_base, requires_grad=diff) if with_psw else None
        out = run.embedding_bag(ids, w, mode=mode, per_sample_weights=p, **kwargs)
        res = {"out": out}
        if diff:
            out.backward(run.t(go))
            res.update(grads(weight=w, psw=p))
        return res

    check(case, dtype, terms=ids.numel(),
          renorm_dim=wshape[1] if kwargs.get("max_norm") is not None else None)


# ---- signatures and the remaining keyword arguments -------------------------------------

def _params(f):
    return [(p.name, p.default) for p in inspect.signature(f).parameters.values()
            if p.kind is not inspect.Parameter.KEYWORD_ONLY]


def test_signatures_follow_torch():
    """F.embedding_bag's parameters in torch's order with torch's defaults;
    spembed's own (output_dtype, bounds_policy) are keyword-only."""
    assert _params(spembed.ops.embedding_bag) == _params(F.embedding_bag)
    assert _params(spembed.nn.EmbeddingBag.from_pretrained) == \
        _params(torch.nn.EmbeddingBag.from_pretrained)
    ours = _params(spembed.nn.EmbeddingBag.__init__)
    assert ours[:len(_params(torch.nn.EmbeddingBag.__init__))] == \
        _params(torch.nn.EmbeddingBag.__init__)


def test_positional_call_in_torchs_order():
    ids, offsets = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 4])
    w_base = values(10, 3, dtype=torch.float32)
    p_base = values(8, dtype=torch.float32)

    def case(run):
        w, p = run.t(w_base, requires_grad=True), run.t(p_base, requires_grad=True)
        out = run.embedding_bag(ids, w, offsets, None, 2, False, "sum", True, p, False, 2)
        out.sum().backward()
        return {"out": out, **grads(weight=w, psw=p)}

    check(case, torch.float32, terms=8)


def test_nested_input():
    w_base = values(10, 3, dtype=torch.float32)
    nt = torch.nested.nested_tensor([torch.tensor([1, 2, 3]), torch.tensor([4]),
                                     torch.tensor([5, 6])], layout=torch.jagged)

    def case(run):
        w = run.t(w_base, requires_grad=True)
        out = run.embedding_bag(nt, w, mode="sum")
        out.sum().backward()
        return {"out": out, "weight.grad": w.grad}

    check(case, torch.float32, terms=3)


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(max_norm=1.0), id="max_norm"),
    pytest.param(dict(max_norm=1.0, norm_type=1.0), id="max_norm_p1"),
    pytest.param(dict(scale_grad_by_freq=True), id="scale_grad_by_freq"),
    pytest.param(dict(scale_grad_by_freq=True, sparse=True), id="scale_grad_by_freq_sparse"),
    pytest.param(dict(dtype=torch.float64), id="float64"),
    pytest.param(dict(norm_type=1.0), id="norm_type_without_max_norm"),
])
def test_pending_options(kwargs):
    """The options that needed (or still need) core kernels, through the
    module, with gradients (norm_type alone is accepted: torch ignores it
    too; scale_grad_by_freq with sparse=True raises from the backward, as
    torch does)."""
    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype", torch.float32)
    ids = torch.tensor([[1, 1, 3], [0, 2, 1]])
    w_base = values(4, 3, dtype=dtype, scale=2.0)
    go = values(2, 3, dtype=dtype)

    def case(run):
        m = run.EmbeddingBag(4, 3, mode="sum", _weight=run.t(w_base), **kwargs)
        out = m(ids)
        out.backward(run.t(go))
        return {"out": out, "weight.grad": m.weight.grad}

    check(case, dtype, terms=6, renorm_dim=3 if kwargs.get("max_norm") is not None else None)
