"""torch.compile(fullgraph=True) of a small model built on the ops: forward
and backward agree with eager (the same kernels run, so exactly, up to the
float32 non-associativity of the surrounding torch ops, which compile may
fuse differently)."""
import pytest
import torch

import spembed
from conftest import DEVICES


class TinyRecModel(torch.nn.Module):
    def __init__(self, device):
        super().__init__()
        self.bag = spembed.nn.EmbeddingBag(40, 8, mode="sum", include_last_offset=True,
                                           device=device)
        self.ebc = spembed.nn.EmbeddingBagCollection([(30, 8), (20, 8)], mode="mean",
                                                     device=device)
        self.block = spembed.nn.SASRecBlock(8, 2, device=device)
        self.head = torch.nn.Linear(8 + 16, 1, device=device)

    def forward(self, ids, offsets, psw, table_ids, table_offsets, hist, cu_seqlens):
        a = self.bag(ids, offsets, psw)
        b = self.ebc(table_ids, table_offsets)
        h = self.block(hist, cu_seqlens)
        last = h[cu_seqlens[1:] - 1]  # every history is non-empty here
        return self.head(torch.cat([a + last, b], 1)).sum()


def _inputs(device):
    ids = torch.randint(0, 40, (13,), device=device)
    offsets = torch.tensor([0, 3, 3, 8, 13], device=device)
    psw = torch.rand(13, device=device, requires_grad=True)
    table_ids = torch.cat([torch.randint(0, 30, (9,)), torch.randint(0, 20, (6,))]).to(device)
    table_offsets = torch.tensor([0, 2, 5, 7, 9, 10, 12, 12, 15], device=device)
    cu = torch.tensor([0, 3, 4, 9, 11], dtype=torch.int32, device=device)
    hist = torch.randn(11, 8, device=device, requires_grad=True)
    return ids, offsets, psw, table_ids, table_offsets, hist, cu


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    model = TinyRecModel(device)
    inputs = _inputs(device)
    loss = model(*inputs)
    loss.backward()
    eager = [p.grad.clone() for p in model.parameters()] + [inputs[2].grad.clone(),
                                                             inputs[5].grad.clone()]
    model.zero_grad()
    inputs[2].grad = None
    inputs[5].grad = None
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    closs = compiled(*inputs)
    closs.backward()
    got = [p.grad for p in model.parameters()] + [inputs[2].grad, inputs[5].grad]
    torch.testing.assert_close(closs, loss, rtol=1e-6, atol=1e-6)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor_embedding_bag(device):
    torch._dynamo.reset()
    m = spembed.nn.EmbeddingBag(50, 4, mode="mean", include_last_offset=True, device=device)
    ids = torch.randint(0, 50, (10,), device=device)
    offs = torch.tensor([0, 4, 4, 10], device=device)
    f = torch.compile(lambda i, o: m(i, o).square().sum(), fullgraph=True)
    f(ids, offs).backward()
    g = m.weight.grad.clone()
    m.weight.grad = None
    m(ids, offs).square().sum().backward()
    torch.testing.assert_close(g, m.weight.grad, rtol=1e-6, atol=1e-6)
