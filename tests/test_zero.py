"""zero_grad_ (the `zero_inplace` op)."""
import torch
from hypothesis import given

from helpers import build, device_of, grad_lists, params_with

import mopt_fast


@given(case=grad_lists(nonfinite=True))
def test_zero_grad_in_place(backend, case):
    grads = build(*case, device=device_of(backend))
    params = params_with(grads)
    mopt_fast.zero_grad_(params, set_to_none=False)
    for p, g in zip(params, grads):
        assert p.grad is g  # same storage, zeroed in place
        assert torch.equal(g, torch.zeros_like(g)) and not torch.signbit(g).any()


def test_zero_grad_set_to_none(backend):
    params = params_with(build(31, [(100, torch.float32, "contiguous", 1.0, None)], device=device_of(backend)))
    mopt_fast.zero_grad_(params)
    assert params[0].grad is None


def test_zero_grad_detaches_like_optimizer(backend):
    dev = device_of(backend)
    p = torch.nn.Parameter(torch.randn(8, device=dev))
    x = torch.randn(8, device=dev, requires_grad=True)
    p.grad = (x * 2).detach().requires_grad_(True)
    mopt_fast.zero_grad_([p], set_to_none=False)
    assert not p.grad.requires_grad and p.grad.abs().sum().item() == 0


def test_zero_grad_sparse_grads_use_torch(backend):
    if device_of(backend) != "cpu":
        return
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    mopt_fast.zero_grad_(emb.parameters(), set_to_none=False)
    assert emb.weight.grad.to_dense().abs().sum().item() == 0
