"""Reference computations and error bounds shared by the tests."""
import torch
import torch.nn.functional as F

from conftest import UNIT_ROUNDOFF

U32 = UNIT_ROUNDOFF[torch.float32]


def random_bags(bags, rows, max_len, index_dtype, device, empty_every=3):
    """Bag lengths in [0, max_len] (every empty_every-th bag empty) and ids."""
    lengths = torch.randint(1, max_len + 1, (bags,))
    lengths[::empty_every] = 0
    offsets = torch.zeros(bags + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    nnz = int(offsets[-1])
    ids = torch.randint(0, rows, (nnz,))
    return ids.to(index_dtype).to(device), offsets.to(index_dtype).to(device), int(lengths.max())


def distinct_table(rows, dim, dtype, device):
    """Each column a permutation of distinct integers in [-rows/2, rows/2),
    scaled by 1/rows: exact in every dtype for rows <= 256, and no two rows
    tie in a column (so max pooling's argmax is unique)."""
    cols = [torch.randperm(rows) for _ in range(dim)]
    w = torch.stack(cols, 1).to(torch.float64) - rows // 2
    return (w / rows).to(dtype).to(device)


def reference_bag(ids, weight, offsets, mode, psw, padding_idx, include_last_offset):
    """torch's F.embedding_bag in float64 (offsets given as [bags + 1])."""
    offs = offsets if include_last_offset else offsets[:-1]
    return F.embedding_bag(ids.cpu().long(), weight, offs.cpu().long(), mode=mode,
                           per_sample_weights=psw, padding_idx=padding_idx,
                           include_last_offset=include_last_offset)


def sum_bound(ref, magnitude, terms, out_dtype):
    """|computed - ref| for a float32 accumulation of `terms` products rounded
    once to out_dtype: u_out |ref| + (terms + 2) u32 * magnitude, where
    magnitude is the same sum over absolute values."""
    return UNIT_ROUNDOFF[out_dtype] * ref.abs() + (terms + 2) * U32 * magnitude


def assert_within(actual, ref, bound, what):
    err = (actual.double().cpu() - ref.double().cpu()).abs()
    bad = err > bound.cpu()
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} elements outside the bound; worst excess "
        f"{float((err - bound.cpu()).max()):.3g}, max error {float(err.max()):.3g}")


# ---- torch's scale_grad_by_freq, with its CPU bug worked around ---------------------------

def _torch_cpu_scale_grad_is_wrong():
    """torch's CPU embedding_bag backward (_embedding_bag_dense_backward_cpu_sum_mean)
    divides a row's gradient by counts[indices_data[i]], i the unique-row
    counter, instead of the row's own count (seen in torch 2.11; torch's CUDA
    kernel and F.embedding are right): ids
    [1, 1, 3] give row 3 the gradient 0.5, not 1. True where this torch has it."""
    w = torch.ones(4, 1, dtype=torch.float64, requires_grad=True)
    F.embedding_bag(torch.tensor([1, 1, 3]), w, torch.tensor([0]), mode="sum",
                    scale_grad_by_freq=True).sum().backward()
    return float(w.grad[3, 0]) != 1.0


TORCH_CPU_SCALE_GRAD_BUG = _torch_cpu_scale_grad_is_wrong()


class _DivideRowGrads(torch.autograd.Function):
    """Identity on the table; its gradient's row r divided by the number of
    ids equal to r (rows without ids keep their zero gradient)."""

    @staticmethod
    def forward(ctx, weight, ids):
        ctx.save_for_backward(ids)
        ctx.rows = weight.shape[0]
        return weight.clone()

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        counts = torch.bincount(ids.reshape(-1).long().cpu(), minlength=ctx.rows)[:ctx.rows]
        counts = counts.clamp(min=1).to(grad.device, torch.float64)
        return (grad.double() / counts[:, None]).to(grad.dtype), None


def torch_embedding_bag(input, weight, offsets=None, max_norm=None, norm_type=2.0,
                        scale_grad_by_freq=False, mode="mean", sparse=False,
                        per_sample_weights=None, include_last_offset=False, padding_idx=None):
    """F.embedding_bag, except that on a torch with TORCH_CPU_SCALE_GRAD_BUG
    a CPU call whose dense weight gradient torch scales by frequency gets the
    right scaling: torch's unscaled gradient divided by each row's id count
    (what torch's CUDA kernel computes). Everything else, errors included
    (mode 'max', sparse=True), is torch's own."""
    if (scale_grad_by_freq and TORCH_CPU_SCALE_GRAD_BUG and not weight.is_cuda
            and mode != "max" and not sparse and max_norm is None
            and weight.requires_grad and torch.is_grad_enabled()):
        ids = input.values() if input.is_nested else input
        weight = _DivideRowGrads.apply(weight, ids.detach())
        scale_grad_by_freq = False
    return F.embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq,
                           mode, sparse, per_sample_weights, include_last_offset, padding_idx)


class TorchEmbeddingBag(torch.nn.EmbeddingBag):
    """torch.nn.EmbeddingBag whose forward is torch_embedding_bag."""

    def forward(self, input, offsets=None, per_sample_weights=None):
        return torch_embedding_bag(input, self.weight, offsets, self.max_norm, self.norm_type,
                                   self.scale_grad_by_freq, self.mode, self.sparse,
                                   per_sample_weights, self.include_last_offset,
                                   self.padding_idx)
