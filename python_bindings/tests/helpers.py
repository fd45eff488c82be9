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
